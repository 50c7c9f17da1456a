"""The runtime: tensors only. ``spec`` (what a transformer is made of), ``layers`` (pure functions over the spec),
``head`` (the LM head and its exact greedy shortcut), ``cache`` (the decoder state), ``memory`` (allocator tuning)."""
