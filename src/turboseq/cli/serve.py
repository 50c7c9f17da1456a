"""``turboseq serve``: the server's settings from the flags, and which server runs (one model, several, Ray)."""

from __future__ import annotations

from turboseq.cli.arguments import check_kind


def serve_verb(args) -> int:
    """`turboseq serve`: one model, several (``serving.hub``), or one on Ray Serve."""
    from turboseq.serving.config import ServerConfig
    from turboseq.serving.server import serve

    entries = _served_models(args)
    if entries is None:
        check_kind(args, "serve")  # the server loads the model itself
    config = _server_config(args)
    if entries is not None:
        return _serve_many(args, entries, config)
    if args.ray:
        from turboseq.serving.rayserve import serve_on_ray

        if args.served_model_name:
            raise ValueError("--served-model-name is not supported with --ray yet (the name is the folder's)")

        proxy_owned = (
            "max_connections",
            "header_timeout_s",
            "keep_alive_timeout_s",
            "first_byte_timeout_s",
            "max_connections_per_client",
        )
        if any(getattr(args, name) != getattr(ServerConfig, name) for name in proxy_owned):
            raise ValueError(
                "--max-connections, --max-connections-per-client and the header/keep-alive/first-byte timeouts are "
                "Ray's proxy's under --ray"
            )
        return serve_on_ray(
            args.model,
            args.host,
            args.port,
            config,
            compute_type=args.compute_type or args.dtype,
            replicas=args.replicas,
            max_replicas=args.max_replicas,
            num_cpus=args.num_cpus_per_replica,
            address=args.ray_address,
            log_level=args.log_level,
        )
    if args.replicas != 1 or args.max_replicas or args.ray_address or args.num_cpus_per_replica != 1.0:
        raise ValueError("--replicas, --max-replicas, --num-cpus-per-replica and --ray-address need --ray")
    return serve(
        args.model,
        args.host,
        args.port,
        config,
        dtype=args.dtype,
        compute_type=args.compute_type,
        log_level=args.log_level,
        name=args.served_model_name,
    )


def _server_config(args):
    from turboseq.serving.config import ServerConfig
    from turboseq.serving.rayserve import BATCH_WAIT_MS as RAY_WAIT_MS  # imports no Ray

    wait_ms = args.batch_wait_ms
    if wait_ms is None:
        wait_ms = RAY_WAIT_MS if args.ray else ServerConfig.batch_wait_ms
    return ServerConfig(
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        batch_wait_ms=wait_ms,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout_s,
        timeout_per_audio_second=args.timeout_per_audio_second,
        max_input_tokens=args.max_input_tokens,
        max_payload_bytes=args.max_payload_bytes,
        batching=not args.no_batching,
        continuous_batching=not args.no_continuous_batching,
        max_beams=args.max_beams,
        max_return_sequences=args.max_return_sequences,
        max_new_tokens=args.max_new_tokens,
        max_request_cost=args.max_request_cost,
        max_audio_seconds=args.max_audio_seconds,
        max_connections=args.max_connections,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        keep_alive_timeout_s=args.keep_alive_timeout_s,
        max_request_audio_seconds=args.max_request_audio_seconds,
        max_queued_audio_seconds=args.max_queued_audio_seconds,
        max_stop_sequences=args.max_stop_sequences,
        max_parameter_items=args.max_parameter_items,
        max_parameter_chars=args.max_parameter_chars,
        max_live_streams=args.max_live_streams,
        max_live_seconds=args.max_live_seconds,
        live_idle_timeout_s=args.live_idle_timeout_s,
        max_live_frame_bytes=args.max_live_frame_bytes,
        first_byte_timeout_s=args.first_byte_timeout_s,
        max_connections_per_client=args.max_connections_per_client,
        drain_timeout_s=args.drain_timeout_s,
    )


def _served_models(args):
    """The models of a many-model server (several --model, or --models-dir); None for one plain --model DIR.
    Each is read when it loads: a broken one fails its own requests, not the server."""
    from turboseq.runtime.compute import COMPUTE_TYPES
    from turboseq.serving.hub import ModelEntry, models_in

    models = args.model or []
    if not models and not args.models_dir:
        raise ValueError("give --model DIR (or several, or --models-dir DIR)")
    hub_flags = args.preload or args.idle_unload_s or args.memory_budget or args.default_model
    if len(models) == 1 and "=" not in models[0] and not args.models_dir and not hub_flags:
        args.model = models[0]
        return None
    if args.ray:
        raise ValueError("--ray serves one model per deployment: give one --model")
    if args.served_model_name:
        raise ValueError("with several models, name each one: --model NAME=DIR")
    if args.dtype or args.compute_type:
        raise ValueError("with several models, give each its compute type: --model NAME=DIR:int8")
    entries = [ModelEntry.parse(m, (*COMPUTE_TYPES, "auto")) for m in models]
    entries += models_in(args.models_dir) if args.models_dir else []
    missing = [str(e.path) for e in entries if not e.path.exists()]
    if missing:
        raise ValueError(f"no such model directory: {', '.join(missing)}")
    return entries


def _serve_many(args, entries, config) -> int:
    from turboseq.serving.hub import HubOptions, parse_bytes
    from turboseq.serving.server import serve_many

    options = HubOptions(
        default=args.default_model,
        preload=tuple(args.preload),
        idle_unload_s=args.idle_unload_s,
        memory_budget=parse_bytes(args.memory_budget) if args.memory_budget else None,
        load_wait_s=args.load_wait_s,
    )
    return serve_many(entries, args.host, args.port, config, options, log_level=args.log_level)
