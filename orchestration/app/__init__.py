"""Building and running one altlas instance: settings (and their generated reference), Kafka client
settings, topic creation and ACLs, the transactional identity, the starter registry, GC tuning, the
components one instance is made of (``components``), its stream workers (``streams``), its probes and
monitor, and the Orchestrator that orders start, run and shutdown.
"""
