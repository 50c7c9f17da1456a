"""Soak: normal load with and without hostile traffic against one server (``python -m turboseq.bench.loadtest
--soak``).

One server, warmed up; each sentence's answer asked alone first. Then the normal load (N clients sending
single sentences back to back) runs for T seconds alone, and again for T seconds beside hostile clients:
slow-header connections that trickle a byte at a time, idle connections, a flood of idle sockets from one
address reopened every 10 s, oversized and chunked bodies, a chunk declaring terabytes, ambiguous framing
(Transfer-Encoding with Content-Length, bare LF, obsolete folding), malformed and deeply nested JSON, and
parameters far past the limits or that failed inside the engine (50,000 bad words, a huge length penalty, a
lone surrogate key). The hostile clients connect from another loopback address than the normal load. Reported: wrong answers and errors of
the normal requests, their p99 in both phases, every 5xx anyone got, and the server's RSS from the start to a
few seconds after the hostile phase. Bounded: every loop stops at its deadline.
"""

from __future__ import annotations

import asyncio
import json
import time

HOSTILE_BODIES = [
    # (name, body bytes, headers); every one must get a 4xx
    ("malformed", b'{"inputs": ', {}),
    ("nested", b"[" * 50_000 + b"]" * 50_000, {}),
    ("beams", b'{"inputs": "Hello.", "parameters": {"num_beams": 1000000}}', {}),
    ("new-tokens", b'{"inputs": "Hello.", "parameters": {"max_new_tokens": 1000000000}}', {}),
    ("nan", b'{"inputs": "Hello.", "parameters": {"do_sample": true, "temperature": NaN}}', {}),
    ("many-inputs", json.dumps({"inputs": ["hi"] * 5000}).encode(), {}),
    ("oversized", b'{"inputs": "' + b"x" * (2 << 20) + b'"}', {}),
    ("png", b"\x89PNG\r\n", {"content-type": "image/png"}),
    # the second round: parameters that would buy minutes of engine time, engine-time errors, surrogate keys
    ("bad-words", json.dumps({"inputs": "Hello.", "parameters": {"bad_words_ids": [[5, 6, 7]] * 50000}}).encode(), {}),
    ("length-penalty", b'{"inputs": "Hello.", "parameters": {"num_beams": 2, "length_penalty": -1e308}}', {}),
    ("surrogate-key", b'{"inputs": "Hello.", "parameters": {"\\ud800": 1}}', {}),
    ("internal-key", b'{"inputs": "Hello.", "parameters": {"_trim_stop": true}}', {}),
]

# raw requests whose framing is ambiguous (each must get 400 and a closed connection) or oversized
HOSTILE_RAW = [
    ("te-and-cl", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bare-lf", b"GET /health HTTP/1.1\nHost: x\n\n"),
    ("obs-fold", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n"),
    (
        "huge-chunk",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffff\r\nxx",
    ),
]

# the hostile clients connect from other loopback addresses than the normal load: the flood of idle sockets
# from one (the per-address limit answers it 503), the slow, idle and malformed-framing clients from another
FLOOD_ADDRESS = "127.0.0.2"
HOSTILE_ADDRESS = "127.0.0.3"


async def _slow_header_client(port: int, stop: float, counts: dict) -> None:
    """Opens a connection and sends a request's headers a byte every 0.5 s until the server cuts it."""
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
    while time.perf_counter() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE_ADDRESS, 0))
        except OSError:
            counts["connect_failed"] = counts.get("connect_failed", 0) + 1
            await asyncio.sleep(0.5)
            continue
        try:
            for byte in request:
                if time.perf_counter() > stop or reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
            answer = await asyncio.wait_for(reader.read(200), timeout=max(0.1, stop - time.perf_counter()))
            status = answer[9:12].decode(errors="replace") or "closed"
            counts[f"slow:{status}"] = counts.get(f"slow:{status}", 0) + 1
        except (OSError, asyncio.TimeoutError):
            counts["slow:cut"] = counts.get("slow:cut", 0) + 1
        finally:
            writer.close()


async def _idle_client(port: int, stop: float, counts: dict) -> None:
    while time.perf_counter() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE_ADDRESS, 0))
            answer = await asyncio.wait_for(reader.read(200), timeout=max(0.1, stop - time.perf_counter()))
            key = f"idle:{answer[9:12].decode(errors='replace') or 'closed'}"
            counts[key] = counts.get(key, 0) + 1
            writer.close()
        except (OSError, asyncio.TimeoutError):
            counts["idle:cut"] = counts.get("idle:cut", 0) + 1


async def _body_client(url: str, stop: float, counts: dict, server_errors: list) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        i = 0
        while time.perf_counter() < stop:
            name, body, headers = HOSTILE_BODIES[i % len(HOSTILE_BODIES)]
            i += 1
            try:
                r = await http.post(url + "/", content=body, headers={"content-type": "application/json", **headers})
            except httpx.HTTPError as err:
                counts[f"{name}:{type(err).__name__}"] = counts.get(f"{name}:{type(err).__name__}", 0) + 1
                continue
            counts[f"{name}:{r.status_code}"] = counts.get(f"{name}:{r.status_code}", 0) + 1
            if r.status_code >= 500:
                server_errors.append((name, r.status_code, r.text[:200]))
            await asyncio.sleep(0.05)


async def _chunked_client(url: str, stop: float, counts: dict, server_errors: list) -> None:
    import httpx

    async def chunks():
        for _ in range(64):
            yield b"x" * 65536

    async with httpx.AsyncClient(timeout=30) as http:
        while time.perf_counter() < stop:
            try:
                r = await http.post(url + "/", content=chunks(), headers={"content-type": "application/json"})
                counts[f"chunked:{r.status_code}"] = counts.get(f"chunked:{r.status_code}", 0) + 1
                if r.status_code >= 500:
                    server_errors.append(("chunked", r.status_code, r.text[:200]))
            except httpx.HTTPError as err:
                counts[f"chunked:{type(err).__name__}"] = counts.get(f"chunked:{type(err).__name__}", 0) + 1
            await asyncio.sleep(0.2)


async def _raw_client(port: int, stop: float, counts: dict, server_errors: list) -> None:
    i = 0
    while time.perf_counter() < stop:
        name, data = HOSTILE_RAW[i % len(HOSTILE_RAW)]
        i += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE_ADDRESS, 0))
            writer.write(data + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # never served after a refusal
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=max(0.1, stop - time.perf_counter()))
            writer.close()
        except (OSError, asyncio.TimeoutError):
            counts[f"{name}:cut"] = counts.get(f"{name}:cut", 0) + 1
            continue
        status = answer[9:12].decode(errors="replace") or "closed"
        key = f"{name}:{status}" + (":kept-open" if answer.count(b"HTTP/1.1") > 1 else "")
        counts[key] = counts.get(key, 0) + 1
        if status.startswith("5") or answer.count(b"HTTP/1.1") > 1:
            server_errors.append((name, status, answer[:200].decode(errors="replace")))
        await asyncio.sleep(0.1)


async def _flood_client(port: int, stop: float, counts: dict, sockets: int = 160) -> None:
    """Opens ``sockets`` idle connections from one address, again every 10 s (the per-address limit holds)."""
    while time.perf_counter() < stop:
        opened = []
        for _ in range(sockets):
            try:
                opened.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOOD_ADDRESS, 0)))
            except OSError:
                counts["flood:connect_failed"] = counts.get("flood:connect_failed", 0) + 1
        counts["flood:opened"] = counts.get("flood:opened", 0) + len(opened)
        await asyncio.sleep(min(10.0, max(0.0, stop - time.perf_counter())))
        for _, writer in opened:
            writer.close()


async def hostile_traffic(url: str, port: int, seconds: float, slow: int = 24, idle: int = 24) -> dict:
    """Runs every kind of hostile client for ``seconds``; returns the answers they got, by kind and status."""
    counts: dict = {}
    server_errors: list = []
    stop = time.perf_counter() + seconds
    await asyncio.gather(
        *(_slow_header_client(port, stop, counts) for _ in range(slow)),
        *(_idle_client(port, stop, counts) for _ in range(idle)),
        _body_client(url, stop, counts, server_errors),
        _body_client(url, stop, counts, server_errors),
        _chunked_client(url, stop, counts, server_errors),
        _raw_client(port, stop, counts, server_errors),
        _flood_client(port, stop, counts),
    )
    return {"answers": dict(sorted(counts.items())), "server_errors": server_errors}


def run_soak(
    model_dir, clients: int, seconds: float, params: dict, sentences: list[str], calm_seconds: float | None = None
) -> dict:
    """The two phases on one server (see the module docstring): ``calm_seconds`` (default ``seconds``) of normal
    load alone, then ``seconds`` beside hostile traffic; returns the report."""
    import httpx

    from turboseq.bench.clients import normal_load, rss_mb
    from turboseq.serving.process import ServerProcess

    server = ServerProcess(model_dir, capture=False)
    try:
        expected = {}
        for text in dict.fromkeys(sentences):
            r = httpx.post(server.url + "/", json={"inputs": text, "parameters": params}, timeout=120)
            r.raise_for_status()
            expected[text] = r.json()[0]
        rss_start = rss_mb(server.pid)
        calm = asyncio.run(
            normal_load(server.url, sentences, expected, params, clients, calm_seconds or seconds, server.pid)
        )

        async def both():
            return await asyncio.gather(
                normal_load(server.url, sentences, expected, params, clients, seconds, server.pid),
                hostile_traffic(server.url, server.port, seconds),
            )

        storm, hostile = asyncio.run(both())
        time.sleep(5)  # the hostile connections' deadlines pass; the heap settles
        rss_end = rss_mb(server.pid)
        health = httpx.get(server.url + "/health", timeout=10).status_code
    finally:
        code = server.stop()
    return {
        "clients": clients,
        "seconds": seconds,
        "calm": {k: calm[k] for k in ("requests", "requests_per_s", "p50_s", "p99_s", "errors", "mismatches")},
        "hostile": {k: storm[k] for k in ("requests", "requests_per_s", "p50_s", "p99_s", "errors", "mismatches")},
        "p99_ratio": storm["p99_s"] / calm["p99_s"],
        "hostile_answers": hostile["answers"],
        "server_errors": hostile["server_errors"],
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_max_mb": max(calm["rss_samples_mb"] + storm["rss_samples_mb"]),
        "rss_change": (rss_end - rss_start) / rss_start,
        "health_after": health,
        "exit_code": code,
    }


def format_soak(r: dict) -> str:
    lines = ["| phase | requests | req/s | p50 ms | p99 ms | errors | wrong answers |", "|---|---|---|---|---|---|---|"]
    for phase in ("calm", "hostile"):
        p = r[phase]
        lines.append(
            f"| {'normal load only' if phase == 'calm' else 'normal load + hostile traffic'} | "
            f"{p['requests']} | {p['requests_per_s']:.1f} | {p['p50_s'] * 1e3:.0f} | {p['p99_s'] * 1e3:.0f} | "
            f"{p['errors']} | {p['mismatches']} |"
        )
    lines.append("")
    lines.append(
        f"p99 hostile / calm: {r['p99_ratio']:.2f}x; 5xx to anyone: {len(r['server_errors'])}; RSS "
        f"{r['rss_start_mb']:.0f} MB at the start, {r['rss_max_mb']:.0f} max, {r['rss_end_mb']:.0f} after "
        f"({r['rss_change'] * 100:+.1f}%); /health after: {r['health_after']}; exit code {r['exit_code']}"
    )
    lines.append("hostile answers: " + ", ".join(f"{k} x{v}" for k, v in r["hostile_answers"].items()))
    return "\n".join(lines)


def passed(r: dict) -> bool:
    """The bar: no wrong answers, no normal-request errors, no 5xx, p99 within 2x, RSS back within 10%."""
    return (
        r["calm"]["errors"] == r["hostile"]["errors"] == 0
        and r["calm"]["mismatches"] == r["hostile"]["mismatches"] == 0
        and not r["server_errors"]
        and r["p99_ratio"] <= 2.0
        and abs(r["rss_change"]) <= 0.10
        and r["health_after"] == 200
        and r["exit_code"] == 0
    )
