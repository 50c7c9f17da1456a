"""Ray Serve: the same FastAPI app as ``turboseq serve`` (routes, errors, streaming, metrics, dynamic batching
inside each replica), as a Ray Serve deployment of N replicas, each holding one model.

    turboseq serve --model DIR --ray --replicas 2 --num-cpus-per-replica 1
    serve run turboseq.serving.rayserve:app_builder model=DIR replicas=2        (Ray's own CLI, or KubeRay)

A replica loads its model and runs a full-size warm-up batch in its constructor: a model that fails to load
or to run fails the replica, which therefore never takes traffic nor reports healthy (Ray retries it and, if it
keeps failing, marks the application DEPLOY_FAILED). Each replica uses as many torch threads as CPUs it was
given, labels its ``/metrics`` with ``turboseq_replica_info{replica=...}`` and its answers with the
``X-Turboseq-Replica`` header. Ray is optional: ``pip install 'turboseq[ray]'``."""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict, replace
from pathlib import Path

from turboseq.errors import require_extra
from turboseq.serving.config import ServerConfig

APP_NAME = "turboseq"
# Requests reach a replica through Ray's proxy, which parses and forwards them one at a time: clients answered
# together come back tens of milliseconds apart, and the plain server's 5 ms wait split them into two batches
# (measured: 9.8 req/s with 5 ms, 12.3 with 20 ms; README, Scale out on Ray)
BATCH_WAIT_MS = 20.0
_APP: dict = {}  # this replica's ASGI app, built by its constructor (one replica per Ray actor process)


def _replica_app():
    return _APP["app"]


def _replica_id() -> str:
    from ray import serve

    try:
        ctx = serve.get_replica_context()
    except Exception:
        return "local"
    rid = getattr(ctx, "replica_id", None)
    return str(getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", None) or rid or "unknown")


def _with_replica_header(app, replica: str):
    """``app`` answering every HTTP response with an ``X-Turboseq-Replica`` header (streams included)."""
    header = (b"x-turboseq-replica", replica.encode())

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await app(scope, receive, send_with_header)

    wrapped.state = app.state
    return wrapped


class Replica:
    """One Serve replica: the model, warmed up, behind ``create_app``'s FastAPI app."""

    def __init__(self, model_dir: str, config: dict, compute_type: str | None = None, num_threads: int | None = None):
        from prometheus_client import Gauge

        from turboseq.load import load
        from turboseq.runtime.threads import set_worker_threads
        from turboseq.serving.app import create_app

        set_worker_threads(num_threads)
        config = ServerConfig(**config)
        model = load(model_dir, compute_type=compute_type)
        app = create_app(model, config=config, warmup=False)
        service = app.state.service
        service.task.warm(config.max_batch_size)  # raises: this replica never becomes ready
        self.replica = _replica_id()
        Gauge(
            "turboseq_replica_info", "this replica (Ray Serve)", ["replica"], registry=service.metrics.registry
        ).labels(self.replica).set(1)
        self.service = service
        _APP["app"] = _with_replica_header(app, self.replica)

    def check_health(self) -> None:
        """Ray Serve's periodic health check: unhealthy when the app failed or drains."""
        if self.service.warmup_error or self.service.draining:
            raise RuntimeError(f"turboseq replica {self.replica}: {self.service.warmup_error or 'draining'}")


def deployment(
    model_dir: str | Path,
    *,
    config: ServerConfig | None = None,
    compute_type: str | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    num_cpus: float = 1.0,
    num_threads: int | None = None,
):
    """The bound Serve application for ``model_dir`` (``config`` default: the server's, with a batch wait of
    ``BATCH_WAIT_MS``): ``replicas`` replicas of ``num_cpus`` CPUs (torch threads:
    ``num_threads``, default the CPUs rounded down, at least 1), or, with ``max_replicas``, autoscaling between
    the two on ongoing requests (a replica's target: one full batch)."""
    serve = require_extra("ray.serve", "ray", "Ray Serve deployment")
    config = config or ServerConfig(batch_wait_ms=BATCH_WAIT_MS)
    config.check()
    for name, value in (("replicas", replicas), ("max_replicas", max_replicas)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
    if max_replicas is not None and max_replicas < replicas:
        raise ValueError(f"`max_replicas` ({max_replicas}) must be >= `replicas` ({replicas})")
    if not isinstance(num_cpus, (int, float)) or num_cpus <= 0:
        raise ValueError(f"`num_cpus` must be a number > 0, got {num_cpus!r}")
    options = dict(
        name=APP_NAME,
        ray_actor_options={"num_cpus": num_cpus},
        # the replica's own queue does the admission (429 past --max-queue); Ray must not hold requests back
        max_ongoing_requests=config.max_queue + config.max_batch_size,
        health_check_period_s=5,
        # a log line per request costs the replica CPU that the model needs; errors still reach the log
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    if max_replicas is not None:
        options["autoscaling_config"] = dict(
            min_replicas=replicas, max_replicas=max_replicas, target_ongoing_requests=config.max_batch_size
        )
    else:
        options["num_replicas"] = replicas
    cls = serve.deployment(**options)(serve.ingress(_replica_app)(Replica))
    return cls.bind(str(Path(model_dir).resolve()), asdict(config), compute_type, num_threads)


def app_builder(args: dict):
    """For Ray's CLI and KubeRay: ``serve run turboseq.serving.rayserve:app_builder model=DIR [replicas=N]
    [max_replicas=M] [num_cpus=K] [compute_type=int8] [max_batch_size=32 ...any ServerConfig field]``."""
    args = dict(args)
    if "model" not in args:
        raise ValueError("app_builder needs model=DIR")
    model = args.pop("model")
    top = {}
    for name, kind in (("replicas", int), ("max_replicas", int), ("num_cpus", float), ("num_threads", int)):
        if name in args:
            top[name] = kind(args.pop(name))
    compute_type = args.pop("compute_type", None)
    fields = ServerConfig.__dataclass_fields__
    unknown = [k for k in args if k not in fields]
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; see turboseq.serving.config.ServerConfig")
    defaults = ServerConfig(batch_wait_ms=BATCH_WAIT_MS)
    config = replace(defaults, **{k: _like(getattr(defaults, k), v) for k, v in args.items()})
    return deployment(model, config=config, compute_type=compute_type, **top)


def _like(default, value):
    """A command-line string as the type of the setting's default."""
    if not isinstance(value, str):
        return value
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return int(value) if value.isdigit() else value


def deploy_failure(app_name: str = APP_NAME) -> str | None:
    """Why the application's replicas failed to start: the last line of the error a replica raised (e.g.
    ``turboseq.errors.ModelLoadError: DIR/model.safetensors: cannot read weights (...)``), or None."""
    from ray import serve

    try:
        status = serve.status().applications[app_name]
    except (KeyError, Exception):
        return None
    for dep in status.deployments.values():
        lines = [line.strip() for line in (dep.message or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return None


def serve_on_ray(
    model_dir: str,
    host: str,
    port: int,
    config: ServerConfig,
    *,
    compute_type: str | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    num_cpus: float = 1.0,
    address: str | None = None,
    log_level: str = "info",
) -> int:
    """``turboseq serve --ray``: start (or join, with ``address``) Ray, run the application on ``host:port``
    and wait for SIGTERM/SIGINT, then shut Serve down (requests in flight finish). Returns the exit code."""
    ray = require_extra("ray", "ray", "turboseq serve --ray")
    serve = require_extra("ray.serve", "ray", "turboseq serve --ray")
    app = deployment(
        model_dir, config=config, compute_type=compute_type, replicas=replicas, max_replicas=max_replicas,
        num_cpus=num_cpus,
    )  # fmt: skip
    import logging
    import os

    if address is None and not os.environ.get("RAY_ADDRESS"):
        # a local Ray started here: its workers (the replicas, the proxy) at the priority `turboseq serve` has;
        # Ray's default (15) leaves the model less CPU than any other process on the machine
        os.environ.setdefault("RAY_worker_niceness", "0")
    # replicas log to their Ray log files, not here: a replica's traceback is summed up in one line below
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(getattr(logging, log_level.upper(), logging.INFO))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            http_options={"host": host, "port": port},
            logging_config={"enable_access_log": False, "log_level": log_level.upper()},
        )
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as err:  # the replicas failed to start: their error, one line
        reason = deploy_failure(APP_NAME) or str(err).strip()
        serve.shutdown()
        ray.shutdown()
        raise ValueError(f"Ray Serve could not start {model_dir}: {reason}") from None
    logs = Path(ray.get_runtime_context().get_temp_dir()) / "session_latest" / "logs" / "serve"
    print(f"turboseq: serving {model_dir} on Ray Serve at http://{host}:{port} ({replicas} replicas; logs: {logs})",
          flush=True)  # fmt: skip
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0
