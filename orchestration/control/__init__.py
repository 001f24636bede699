"""Model commands read from Kafka (load, unload, status) and the model-status events published to the
compacted status topic.
"""
