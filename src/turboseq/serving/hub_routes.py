"""The many-model server's own routes: ``/health``, ``/info``, ``/v1/models`` and ``/metrics`` (each loaded
model's metrics with a ``model`` label, and the hub's loads, unloads, load time and resident bytes)."""

from __future__ import annotations

import time

from turboseq.serving.requests import RequestError
from turboseq.version import __version__


class HubMetrics:
    def __init__(self, hub):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = r = CollectorRegistry()
        self.loads = Counter("turboseq_model_loads", "model loads, by outcome", ["model", "outcome"], registry=r)
        self.unloads = Counter("turboseq_model_unloads", "model unloads, by reason", ["model", "reason"], registry=r)
        self.load_seconds = Histogram(
            "turboseq_model_load_seconds",
            "load and warm-up time",
            ["model"],
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.rejected = Counter(
            "turboseq_hub_rejected_requests", "requests the hub answered with an error", ["reason"], registry=r
        )
        r.register(_ModelsCollector(hub))


class _ModelsCollector:
    """Every loaded model's own metrics, labelled with its name, and each model's state and resident bytes."""

    def __init__(self, hub):
        self.hub = hub

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, Metric

        state = GaugeMetricFamily("turboseq_model_loaded", "1 while the model is loaded", labels=["model", "state"])
        from turboseq.runtime.memory import resident_bytes as rss

        resident = GaugeMetricFamily(
            "turboseq_model_weight_bytes",
            "bytes a loaded model's weights hold (what --memory-budget counts)",
            labels=["model"],
        )
        process = GaugeMetricFamily("turboseq_process_resident_bytes", "the server process's resident memory")
        process.add_metric([], float(rss()))
        families: dict[str, Metric] = {}
        for slot in self.hub.slots.values():
            state.add_metric([slot.name, slot.state], 1.0 if slot.state == "ready" else 0.0)
            service = slot.service
            if service is None:
                continue
            resident.add_metric([slot.name], float(slot.resident))
            for metric in service.metrics.registry.collect():
                merged = families.setdefault(metric.name, Metric(metric.name, metric.documentation, metric.type))
                for sample in metric.samples:
                    merged.add_sample(
                        sample.name, {**sample.labels, "model": slot.name}, sample.value, sample.timestamp
                    )
        yield state
        yield resident
        yield process
        yield from families.values()


def operations_app(hub):
    """The FastAPI app of the hub's own routes."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="turboseq", version=__version__)
    created = int(time.time())

    @app.exception_handler(RequestError)
    async def _request_error(request, err: RequestError):
        return JSONResponse({"error": err.message, "error_type": err.kind}, status_code=err.status, headers=err.headers)

    def card(slot) -> dict:
        return _card(hub, slot, created)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        states = {slot.name: slot.state for slot in hub.slots.values()}
        if hub.draining:
            return JSONResponse({"status": "draining", "models": states}, status_code=503)
        if not all(task.done() for task in hub.preloads):
            return JSONResponse({"status": "loading", "models": states}, status_code=503)
        return {"status": "ok", "models": states}

    @app.get("/info")
    async def info():
        return _info(hub, created)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card(slot) for slot in hub.slots.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in hub.slots:
            raise RequestError(404, f"unknown model {model_id!r}; this server serves {hub.names()}", "not_found")
        return card(hub.slots[model_id])

    @app.get("/languages")
    async def languages():
        return _languages(hub)

    @app.get("/download_file/{key}")
    async def download_file(key: str):
        from turboseq.serving.libretranslate import download_file

        return await download_file(key)

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _card(hub, slot, created: int) -> dict:
    """A model in OpenAI's list, with its state."""
    return {
        "id": slot.name,
        "object": "model",
        "created": created,
        "owned_by": "turboseq",
        "status": slot.state,
        "default": slot is hub.default,
    }


def _info(hub, created: int) -> dict:
    from turboseq.runtime.cpu import cpu_info
    from turboseq.runtime.memory import resident_bytes

    return {
        "models": [
            {
                **_card(hub, slot, created),
                "path": str(slot.entry.path),
                "compute_type": slot.entry.compute_type or "default",
            }
            | ({"weight_bytes": slot.resident} if slot.state == "ready" else {})
            | ({"error": slot.error} if slot.state == "failed" else {})
            for slot in hub.slots.values()
        ],
        "default_model": hub.default.name,
        "version": __version__,
        "cpu": cpu_info().as_dict(),
        "resident_bytes": resident_bytes(),
        "limits": {
            "memory_budget": hub.options.memory_budget,
            "idle_unload_s": hub.options.idle_unload_s,
            "load_wait_s": hub.options.load_wait_s,
        },
        "routes": [
            "/models/{name}",
            "/models/{name}/{route}",
            "/v1/models",
            "/languages",
            "/download_file/{key}",
            "/health",
            "/metrics",
        ],
    }


def _languages(hub) -> list:
    """LibreTranslate's list: every translation model's pair, by source language."""
    from turboseq.formats.languages import language_name

    targets: dict[str, list[str]] = {}
    for pair in hub.pairs.values():
        if pair is not None:
            targets.setdefault(pair[0], []).append(pair[1])
    return [{"code": src, "name": language_name(src), "targets": tgts} for src, tgts in targets.items()]
