"""Building and running one altlas instance: settings (and their generated reference), Kafka client
settings, topic creation and ACLs, the transactional identity, the starter registry, GC tuning, and
the Orchestrator that builds the components and orders start, run and shutdown.
"""
