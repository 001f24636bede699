"""Local infrastructure for tests, the demo and development: a KRaft broker or cluster from Maven
Central jars, fetch-once caches, trained model assets from wheels, and ``make run``'s demo.
"""
