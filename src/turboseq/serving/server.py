"""Running the server process: uvicorn with turboseq's connection guards, draining on SIGTERM/SIGINT. ``serve``
holds one model (``serving.app``), ``serve_many`` several (``serving.hub``)."""

from __future__ import annotations

import signal

from turboseq.serving.config import ServerConfig


def serve(
    model_dir: str,
    host: str,
    port: int,
    config: ServerConfig,
    dtype: str | None = None,
    log_level="info",
    compute_type: str | None = None,
    name: str | None = None,
):
    """Run the server until SIGTERM/SIGINT; on either, the server stops listening (new connections are refused),
    idle keep-alive connections are closed, requests in flight (streams included) finish, and the process exits
    0. Until the listener closes, /health answers 503 and new requests on open connections get 503."""
    from turboseq.load import load
    from turboseq.serving.app import create_app

    _prepare(config)
    model = load(model_dir, dtype=dtype, compute_type=compute_type)
    app = create_app(model, name=name, config=config)
    service = app.state.service
    kind = f"{model.config.get('model_type')}, {getattr(model, 'compute_type', 'float32')}"
    service.on_ready = lambda: _say(f"turboseq: ready: {service.name} ({kind}) at http://{host}:{port}")

    def drain():
        service.draining = True

    server = _server(
        app, host, port, config, log_level, service.config.max_payload_bytes, drain, lambda: service.draining
    )
    service.on_warmup_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    return 1 if service.warmup_error else 0


def serve_many(entries, host: str, port: int, config: ServerConfig, options, log_level="info"):
    """Run a server of several models (``serving.hub``) until SIGTERM/SIGINT, draining as ``serve`` does."""
    from turboseq.serving.hub import Hub

    _prepare(config)
    hub = Hub(entries, config, options)
    names = ", ".join(e.name for e in entries)
    hub.on_started = lambda: _say(
        f"turboseq: serving {len(entries)} models ({names}; default {hub.default.name}) at http://{host}:{port}"
    )
    payload = config.max_payload_bytes or 25 << 20  # the largest task default (speech); each model keeps its own
    server = _server(hub, host, port, config, log_level, payload, hub.drain, lambda: hub.draining)
    server.run()
    return 0


def _say(line: str) -> None:
    import logging

    logging.getLogger("uvicorn.error").info(line)


def _prepare(config: ServerConfig) -> None:
    import logging
    import os

    from turboseq.serving.connections import RateLimitedErrors, raise_open_file_limit

    config.check()
    raise_open_file_limit()  # room for --max-connections sockets besides the model's files
    logging.getLogger("asyncio").addFilter(RateLimitedErrors())
    # oneDNN keeps a compiled kernel per matmul shape; a server sees every row count as batches shrink, and the
    # default cache (1024 kernels) grows RSS with them. 64 recent shapes keep the throughput (checked with
    # python -m turboseq.bench.loadtest). The environment wins if set.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def _server(app, host, port, config: ServerConfig, log_level, payload_bytes: int, drain, draining):
    """The uvicorn server of ``app``: a first signal calls ``drain`` and shuts down gracefully, a second exits."""
    import logging
    import os

    import uvicorn

    from turboseq.serving.connections import GuardedH11

    protocol = GuardedH11.configure(
        config.max_connections,
        config.header_timeout_s,
        config.body_timeout_s,
        config.first_byte_timeout_s,
        config.max_connections_per_client,
        payload_bytes,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=config.drain_seconds,
            http=protocol,
            timeout_keep_alive=config.keep_alive_timeout_s,
            h11_max_incomplete_event_size=64 * 1024,
        )
    )
    original = server.handle_exit

    def handle_exit(sig, frame):
        if draining():  # a second signal: exit now, without waiting for anything
            logging.getLogger("uvicorn.error").warning("turboseq: second signal, exiting at once")
            logging.shutdown()
            os._exit(1)
        drain()
        original(sig, frame)

    server.handle_exit = handle_exit
    # uvicorn re-raises the captured signal after its graceful shutdown, to the handler that was installed
    # before it: make that a no-op so that a drained server exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    return server
