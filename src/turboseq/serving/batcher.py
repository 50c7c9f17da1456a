"""The queue and dynamic batching: one engine thread takes the oldest request and, for at most
``batch_wait_ms``, merges every queued request with the same batch key into one engine batch, runs it and
routes each answer (and each streamed token) back to its request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from turboseq.serving.config import ServerConfig
from turboseq.serving.requests import Prepared, RequestError
from turboseq.serving.tasks import Task


class Cancelled(Exception):
    """The answer of a request whose client left: nobody reads it."""


@dataclass(eq=False)  # identity: rows may be numpy arrays, which do not compare to a bool
class Job:
    rows: list  # engine rows, one per non-blank input
    prepared: Prepared  # the request's settings and batch key (equal keys may share a batch; None: alone)
    future: asyncio.Future
    on_token: Callable[[int, int], None] | None = None  # streaming: (row of this job, token), engine thread
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # the client left or the time ran out: drop it from the queue or the batch
    watcher: asyncio.Task | None = None


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.queue_size = Gauge("turboseq_queue_size", "requests waiting for the engine", registry=r)
        self.batch_size = Histogram(
            "turboseq_batch_size", "inputs per engine batch", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.request_duration = Histogram("turboseq_request_duration_seconds", "request latency", registry=r)
        self.queue_wait = Histogram("turboseq_queue_wait_seconds", "time from arrival to engine start", registry=r)
        self.time_to_first_token = Histogram(
            "turboseq_time_to_first_token_seconds", "streaming: first token", registry=r
        )
        self.input_tokens = Counter("turboseq_input_tokens", "input tokens (for audio: encoder positions)", registry=r)
        self.generated_tokens = Counter("turboseq_generated_tokens", "tokens generated", registry=r)
        self.rejected = Counter(
            "turboseq_rejected_requests", "requests answered with an error, by error_type", ["reason"], registry=r
        )


class Batcher:
    def __init__(self, task: Task, config: ServerConfig, metrics: Metrics):
        from concurrent.futures import ThreadPoolExecutor

        self.task, self.config, self.metrics = task, config, metrics
        # one engine thread: batches run one at a time anyway, and one thread means one malloc arena, so memory
        # freed by a batch is reused by the next instead of being held per thread
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turboseq-engine")
        self.queue: list[Job] = []
        self.wakeup = asyncio.Event()
        self.task_handle: asyncio.Task | None = None

    def submit(self, job: Job) -> None:
        self.queue = [j for j in self.queue if not j.cancelled]
        if len(self.queue) >= self.config.max_queue:
            raise RequestError(
                429, f"queue full ({self.config.max_queue} requests waiting)", "queue_full", {"Retry-After": "1"}
            )
        self.queue.append(job)
        self.metrics.queue_size.set(len(self.queue))
        self.wakeup.set()

    def _take(self) -> list[Job]:
        """The oldest live job plus every queued job it may share a batch with, within the limits."""
        self.queue = [j for j in self.queue if not j.cancelled]
        self.metrics.queue_size.set(len(self.queue))
        if not self.queue:
            return []
        first = self.queue[0]
        if not self.config.batching or first.prepared.key is None:
            taken = [first]
        else:
            taken, rows, longest = [], 0, 0
            for job in self.queue:
                if job.prepared.key != first.prepared.key:
                    continue
                n = len(job.rows)
                width = max([longest] + [self.task.input_size(r) for r in job.rows])
                if taken and (
                    rows + n > self.config.max_batch_size or (rows + n) * width > self.config.max_batch_tokens
                ):
                    break
                taken.append(job)
                rows, longest = rows + n, width
        ids = {id(j) for j in taken}
        self.queue = [j for j in self.queue if id(j) not in ids]
        self.metrics.queue_size.set(len(self.queue))
        return taken

    def _queued_rows(self) -> int:
        return sum(len(j.rows) for j in self.queue if not j.cancelled)

    async def _gather(self) -> None:
        """Let concurrent requests arrive: ``batch_wait_ms``, then, while requests keep arriving (each within
        half of that after the last) and the queue holds less than a full batch, a little longer, up to four
        times ``batch_wait_ms`` in all. Clients that all got their answers at once send their next requests a
        few milliseconds apart; a fixed wait that ends in the middle of them splits them into two batches for
        good (the second group's batch runs while the first group's next requests queue)."""
        wait = self.config.batch_wait_ms / 1000
        start, before = time.perf_counter(), len(self.queue)
        await asyncio.sleep(wait)
        gap = wait / 2
        if len(self.queue) == before:  # nobody else is arriving: a lone request waits no longer than it did
            return
        while gap > 0 and time.perf_counter() - start < 4 * wait and self._queued_rows() < self.config.max_batch_size:
            before = len(self.queue)
            await asyncio.sleep(gap)
            if len(self.queue) == before:
                return

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self.config.batching:
                await self._gather()
            jobs = self._take()
            if not jobs:
                continue
            rows = [r for j in jobs for r in j.rows]
            now = time.perf_counter()
            for job in jobs:
                self.metrics.queue_wait.observe(now - job.enqueued)
            self.metrics.batch_size.observe(len(rows))
            self.metrics.input_tokens.inc(sum(self.task.input_size(r) for r in rows))
            owners = [(job, k) for job in jobs for k in range(len(job.rows))]  # batch row -> (job, its row)

            def abandoned(owners=owners) -> set[int]:
                # rows of requests whose client left or whose time ran out, read from the engine thread
                return {i for i, (job, _) in enumerate(owners) if job.cancelled}

            on_tokens = None
            if any(job.on_token is not None for job in jobs):

                def on_tokens(inputs, tokens, owners=owners):  # engine thread: route each new token to its stream
                    for i, token in zip(inputs.tolist(), tokens.tolist()):
                        job, k = owners[i]
                        if job.on_token is not None and not job.cancelled:
                            job.on_token(k, token)

            try:
                results, generated = await loop.run_in_executor(
                    self.executor, self.task.run, rows, jobs[0].prepared.settings, abandoned, on_tokens
                )
            except Exception as err:  # an engine failure fails the batch's requests, not the server
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                        if job.cancelled:
                            job.future.exception()  # nobody waits for it: mark it read
                continue
            self.metrics.generated_tokens.inc(generated)
            start = 0
            for job in jobs:
                part = results[start : start + len(job.rows)]
                start += len(job.rows)
                if not job.future.done():
                    if job.cancelled:  # cut short: not an answer, and nobody may read it
                        job.future.set_exception(Cancelled())
                        job.future.exception()  # marks it read: no "exception never retrieved" log
                    else:
                        job.future.set_result(part)
