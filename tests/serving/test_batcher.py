"""The batcher's wait for concurrent requests, on a fake clock: a lone request waits ``batch_wait_ms``; requests
that keep arriving are collected a little longer, never past 4x the wait nor past a full batch."""

import asyncio
from types import SimpleNamespace

import pytest

from turboseq.serving import batcher as batcher_module
from turboseq.serving.config import ServerConfig


def _gather(monkeypatch, arrivals_ms: list[float], max_batch_size: int = 32) -> tuple[float, int]:
    """Run ``Batcher._gather`` with one request queued and others arriving at ``arrivals_ms``; returns when it
    ended (ms) and how many requests were queued by then."""
    clock = [0.0]
    pending = sorted(arrivals_ms)
    b = batcher_module.Batcher.__new__(batcher_module.Batcher)
    b.config = ServerConfig(batch_wait_ms=5.0, max_batch_size=max_batch_size)
    b.queue = [SimpleNamespace(rows=[0], cancelled=False)]

    async def sleep(seconds):
        clock[0] += seconds * 1000
        while pending and pending[0] <= clock[0]:
            pending.pop(0)
            b.queue.append(SimpleNamespace(rows=[0], cancelled=False))

    monkeypatch.setattr(batcher_module.asyncio, "sleep", sleep)
    monkeypatch.setattr(batcher_module.time, "perf_counter", lambda: clock[0] / 1000)
    asyncio.run(b._gather())
    return clock[0], len(b.queue)


def test_lone_request_waits_batch_wait(monkeypatch):
    assert _gather(monkeypatch, []) == pytest.approx((5.0, 1))
    assert _gather(monkeypatch, [30.0]) == pytest.approx((5.0, 1))  # a later arrival is the next batch's


def test_arrivals_extend_the_wait(monkeypatch):
    # one every 2 ms until 15 ms: collected until no request came for 2.5 ms
    ended, queued = _gather(monkeypatch, [1, 3, 5, 7, 9, 11, 13, 15])
    assert (ended, queued) == pytest.approx((17.5, 9))
    # a steady stream: never past 4x the wait
    ended, queued = _gather(monkeypatch, [0.5 * k for k in range(1, 400)], max_batch_size=1000)
    assert 20.0 <= ended <= 22.5 and queued >= 40


def test_a_full_batch_ends_the_wait(monkeypatch):
    ended, queued = _gather(monkeypatch, [1, 2, 3, 4, 6, 7, 8], max_batch_size=4)
    assert (ended, queued) == pytest.approx((5.0, 5))
