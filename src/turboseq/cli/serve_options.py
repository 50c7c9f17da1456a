"""``turboseq serve``'s options: the server, its limits per request, its connections and Ray Serve."""

from __future__ import annotations

from turboseq.cli.arguments import dtype_option, non_negative, port, positive_int, seconds, wait_ms


def add_serve(verbs) -> None:
    """The `serve` verb's options."""
    sv = verbs.add_parser(
        "serve",
        help="HTTP server with dynamic batching, streaming and metrics",
        description="Serve one model over HTTP (FastAPI + uvicorn): POST / and /models/NAME in Hugging Face's task "
        "format, /generate_stream (server-sent events) for text generation, /v1/embeddings for encoders, "
        "/v1/audio/transcriptions for Whisper, /health, /info, /metrics. The model is warmed up once listening "
        "(/health is 503 until then). Concurrent requests with the same parameters are merged into engine batches. "
        "SIGTERM: stop accepting, finish requests in flight, exit 0.",
    )
    sv.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]DIR[:COMPUTE_TYPE]",
        help="model directory; repeat it (NAME=DIR, optionally :int8, :bfloat16...) to serve several models, each "
        "asked for by name (the `model` field, or /models/NAME/...)",
    )
    sv.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model's name in /info, /v1/models and answers' `model` field (default: its folder's name)",
    )
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sv.add_argument("--port", type=port, default=8000, help="port (default: 8000)")
    sv.add_argument("--max-batch-size", type=positive_int, default=32, help="inputs per engine batch and per request")
    sv.add_argument("--max-batch-tokens", type=positive_int, default=8192, help="padded input tokens per engine batch")
    sv.add_argument(
        "--batch-wait-ms",
        type=wait_ms,
        help="how long a batch waits for more requests, up to 4x while they keep arriving (default: 5; 20 with "
        "--ray, where requests reach a replica through Ray's proxy, tens of milliseconds apart)",
    )
    sv.add_argument("--max-queue", type=positive_int, default=256, help="waiting requests before 429")
    sv.add_argument("--request-timeout-s", type=seconds, default=60.0, help="per-request limit before 504")
    sv.add_argument(
        "--timeout-per-audio-second",
        type=non_negative,
        default=1.0,
        help="speech: seconds a request may take per second of its audio, on top of --request-timeout-s (default: 1)",
    )
    sv.add_argument("--max-input-tokens", type=positive_int, help="per-input token limit (default: the model's)")
    sv.add_argument(
        "--max-payload-bytes",
        type=positive_int,
        help="request body limit, 413 above (default: 1 MiB; 25 MiB for speech models)",
    )
    _serve_models(sv)
    _serve_limits(sv)
    _serve_connections(sv)
    _serve_ray(sv)
    sv.add_argument("--no-batching", action="store_true", help="one request per engine call (for comparison)")
    sv.add_argument(
        "--no-continuous-batching",
        action="store_true",
        help="text generation: a request waits for the running batch to end instead of joining it (for comparison)",
    )
    dtype_option(sv)
    sv.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")


def _serve_models(sv) -> None:
    many = sv.add_argument_group("several models (more than one --model, or --models-dir)")
    many.add_argument("--models-dir", metavar="DIR", help="serve every model directory under DIR, named by its folder")
    many.add_argument(
        "--default-model", metavar="NAME", help="the model of requests that name none (default: the first)"
    )
    many.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="NAME",
        help="load at start ('all': every model); the others load on their first request",
    )
    many.add_argument("--idle-unload-s", type=seconds, help="unload a model unused this long (default: never)")
    many.add_argument(
        "--memory-budget",
        metavar="BYTES",
        help="bytes of loaded models (e.g. 2G): the least recently used idle model is unloaded before another "
        "loads (default: no limit)",
    )
    many.add_argument(
        "--load-wait-s",
        type=non_negative,
        default=60.0,
        help="a request for a model that is loading waits this long, then gets 503 with Retry-After (default: 60)",
    )


def _serve_limits(sv) -> None:
    limits = sv.add_argument_group("limits per request (422 past them; see README, Limits and security)")
    limits.add_argument("--max-beams", type=positive_int, default=16, help="num_beams (default: 16)")
    limits.add_argument(
        "--max-return-sequences", type=positive_int, default=16, help="num_return_sequences (default: 16)"
    )
    limits.add_argument("--max-new-tokens", type=positive_int, help="new tokens (default: the model's positions)")
    limits.add_argument(
        "--max-request-cost",
        type=positive_int,
        default=65536,
        help="inputs x max(beams, sequences) x decoder positions (default: 65536)",
    )
    limits.add_argument(
        "--max-audio-seconds", type=seconds, default=3600.0, help="per audio input; 413 past it (default: 3600)"
    )
    limits.add_argument(
        "--max-request-audio-seconds",
        type=seconds,
        help="all audio of one request; 413 past it (default: --max-audio-seconds)",
    )
    limits.add_argument(
        "--max-queued-audio-seconds",
        type=seconds,
        default=14400.0,
        help="decoded audio held by all requests at once; 503 past it (default: 14400)",
    )
    limits.add_argument(
        "--max-stop-sequences", type=positive_int, default=16, help="stop strings per request (default: 16)"
    )
    limits.add_argument(
        "--max-parameter-items",
        type=positive_int,
        default=1024,
        help="list items in a request's parameters, e.g. bad_words_ids (default: 1024)",
    )
    limits.add_argument(
        "--max-live-streams",
        type=positive_int,
        default=16,
        help="live transcription streams open at once (default: 16)",
    )
    limits.add_argument(
        "--max-live-seconds", type=seconds, default=14400.0, help="audio of one live stream (default: 14400)"
    )
    limits.add_argument(
        "--live-idle-timeout-s",
        type=seconds,
        default=30.0,
        help="a live stream silent this long is closed (default: 30)",
    )
    limits.add_argument(
        "--max-live-frame-bytes",
        type=positive_int,
        default=4 << 20,
        help="one live stream WebSocket message (default: 4 MiB)",
    )
    limits.add_argument(
        "--max-parameter-chars",
        type=positive_int,
        default=16384,
        help="characters of text in a request's parameters (default: 16384)",
    )


def _serve_connections(sv) -> None:
    conns = sv.add_argument_group("connections")
    conns.add_argument(
        "--max-connections",
        type=positive_int,
        default=512,
        help="open connections; more get 503 at once (default: 512)",
    )
    conns.add_argument(
        "--header-timeout-s", type=seconds, default=10.0, help="to receive a request's headers (default: 10)"
    )
    conns.add_argument(
        "--body-timeout-s", type=seconds, default=30.0, help="to receive a request's body; 408 past it (default: 30)"
    )
    conns.add_argument(
        "--keep-alive-timeout-s",
        type=seconds,
        default=5.0,
        help="an idle keep-alive connection is closed after this (default: 5)",
    )
    conns.add_argument(
        "--first-byte-timeout-s",
        type=seconds,
        default=3.0,
        help="a new connection that has sent nothing is closed after this (default: 3)",
    )
    conns.add_argument(
        "--max-connections-per-client",
        type=positive_int,
        default=128,
        help="open connections from one peer address; more get 503 at once (default: 128)",
    )
    conns.add_argument(
        "--drain-timeout-s",
        type=seconds,
        help="on SIGTERM, requests in flight get this long; a second signal exits at once "
        "(default: --request-timeout-s + 5)",
    )


def _serve_ray(sv) -> None:
    ray = sv.add_argument_group("Ray Serve (pip install 'turboseq[ray]')")
    ray.add_argument(
        "--ray", action="store_true", help="serve as a Ray Serve deployment: same routes, one model per replica"
    )
    ray.add_argument("--replicas", type=positive_int, default=1, help="--ray: replicas (default: 1)")
    ray.add_argument("--max-replicas", type=positive_int, help="--ray: autoscale from --replicas up to this many")
    ray.add_argument(
        "--num-cpus-per-replica",
        type=seconds,
        default=1.0,
        help="--ray: CPUs per replica, its torch threads (default: 1)",
    )
    ray.add_argument("--ray-address", help="--ray: join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
