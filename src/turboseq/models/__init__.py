"""The user-facing model objects: one encoder-decoder ``engine`` under the ``text`` and ``speech`` front ends,
the ``encoder`` models, ``exported`` artifacts and ``transcript`` results."""
