"""Which model answers a request: the planner and its strategies, task detection for ``task: auto``,
and what altlas has learned about each model's health (circuit breaking).
"""
