"""Generation: ``settings`` (resolved once per call), ``processors`` (logits rules), ``search`` (greedy, sampling and
beam loops), ``batching`` (length-sorted batches, padding, the hooks a caller hands a running batch)."""
