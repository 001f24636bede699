"""What altlas tells operators about itself: tracing, metrics, structured logs, resource sampling,
liveness and event-loop lag, and the HTTP probes that serve them.
"""
