"""Running the chosen models: per-model lanes that batch whatever is queued, payload preparation on
threads and processes, fallback chains and ensembles over several models, the result cache, and
streamed chunks.
"""
