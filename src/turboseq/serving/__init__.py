"""The HTTP server: ``requests`` (bodies and errors), ``tasks`` (one per kind of model, registered), ``batcher``
(queue and dynamic batching), ``app`` (routes, drain, ``serve``), ``process`` (a server in a child process)."""
