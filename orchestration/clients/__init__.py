"""Everything that talks to altlas from outside: the Python client, ``altlas send``, the HTTP gateway
and its guard, the lag report behind ``altlas status``, replay of old topics, and the AsyncAPI
document.
"""
