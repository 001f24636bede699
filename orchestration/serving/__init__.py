"""The request path, in the order a record takes it (each step hands on to the next):

1. ``loop``: the stream loop of one modality pulls a micro-batch (consumers/stream.py);
2. ``processor``: intake (bytes to a request or an error), admission and the cache gate, then
   execution (execution/);
3. ``answers``: the outcome of each record (``outcomes``) becomes messages (results, error results,
   dead letters), with the reply policy (``replies``), lineage headers and timings (``lineage``), and
   for a record that failed, what ``salvage`` can still read of it (request id, reply topic);
4. ``delivery``: the messages are published in order per key and the offsets committed by the delivery the
   loop was built with (``delivery.AtLeastOnce``, or ``exactly_once.ExactlyOnce``: one transaction
   per window of batches); an answer that cannot be sent is replaced (``replacements``).
"""
