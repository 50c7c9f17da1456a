"""The queue and dynamic batching: one engine thread takes the oldest request and, for at most
``batch_wait_ms``, merges every queued request with the same batch key into one engine batch, runs it and
routes each answer (and each streamed token) back to its request.

Where the task lets a request join a running batch (``Task.joinable``: text generation on the eager runtime), the
engine runs a continuous batch instead (``generation.joining``): at every step boundary it admits the queued
requests, oldest first, that fit the batch limits, and answers each request the step its rows end."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from turboseq.runtime.memory import release_free_memory
from turboseq.serving.config import ServerConfig
from turboseq.serving.requests import Prepared, RequestError
from turboseq.serving.tasks import Task

STALL_GRACE_S = 10.0
# a continuous batch allocates tensors of a different row count at almost every step, and the heap that keeps freed
# blocks for reuse (``runtime.memory``) fragments: handed back this often (a mixed 16-client load grew ~6 MB/s
# without it)
TRIM_EVERY_S = 5.0  # a batch may run this long past its requests' timeout (one slow step or attempt)


class Cancelled(Exception):
    """The answer of a request whose client left: nobody reads it."""


@dataclass(eq=False)  # identity: rows may be numpy arrays, which do not compare to a bool
class Job:
    rows: list  # engine rows, one per non-blank input
    prepared: Prepared  # the request's settings and batch key (equal keys may share a batch; None: alone)
    future: asyncio.Future
    # streaming: (row of this job, token), engine thread; the token is (id, log-probability entry) where asked for
    on_token: Callable[[int, object], None] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    timeout_s: float = 60.0  # the time it is allowed (``Task.time_allowed``), from ``enqueued``
    cancelled: bool = False  # the client left or the time ran out: drop it from the queue or the batch
    watcher: asyncio.Task | None = None
    sent: dict = field(default_factory=dict)  # streaming: tokens passed on per row of this job
    started: float | None = None  # when the engine took it

    def send(self, row: int, token: int, entry=None) -> None:
        self.sent[row] = self.sent.get(row, 0) + 1
        self.on_token(row, token if entry is None else (token, entry))


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
        self.joins = Counter(
            "turboseq_batch_joins", "requests that joined a batch already running (continuous batching)", registry=r
        )
        self.time_in_batch = Histogram(
            "turboseq_time_in_batch_seconds", "from the engine taking a request to its answer", registry=r
        )
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
        self.running: list[Job] = []  # the jobs of the engine batch in progress
        # when that batch started or, in a continuous batch, last stepped (None: the engine is idle)
        self.running_since: float | None = None
        # the queue is shared with the engine thread while a continuous batch takes requests from it
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def stalled_for(self) -> float | None:
        """Seconds the engine has spent on one batch past the moment every request in it had timed out (their
        rows should have left within a step): None while it makes progress."""
        if self.running_since is None:
            return None
        allowed = max((job.timeout_s for job in self.running), default=self.config.request_timeout_s)
        overdue = time.perf_counter() - self.running_since - allowed - STALL_GRACE_S
        return overdue if overdue > 0 else None

    def cancel_all(self) -> None:
        """Shutdown: every queued and running request is given up; running rows leave at the next step."""
        with self.lock:
            jobs, self.queue = [*self.queue, *self.running], []
        for job in jobs:
            job.cancelled = True
            if not job.future.done():
                job.future.set_exception(Cancelled())
                job.future.exception()

    def submit(self, job: Job) -> None:
        with self.lock:
            self.queue = [j for j in self.queue if not j.cancelled]
            if len(self.queue) >= self.config.max_queue:
                raise RequestError(
                    429, f"queue full ({self.config.max_queue} requests waiting)", "queue_full", {"Retry-After": "1"}
                )
            self.queue.append(job)
            self.metrics.queue_size.set(len(self.queue))
        self.wakeup.set()

    def _take(self) -> list[Job]:
        with self.lock:
            return self._take_locked()

    def _take_locked(self) -> list[Job]:
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
        return sum(len(j.rows) for j in list(self.queue) if not j.cancelled)

    def _joins(self) -> bool:
        """Whether the oldest live request starts a continuous batch."""
        if not (self.config.batching and self.config.continuous_batching):
            return False
        with self.lock:
            head = next((j for j in self.queue if not j.cancelled), None)
        return head is not None and self.task.joinable(head.prepared.settings)

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
        self.loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self._joins():
                await self.loop.run_in_executor(self.executor, Continuous(self).run)
                continue
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
            _, abandoned, on_tokens = batch_hooks(jobs)
            self.running, self.running_since = jobs, time.perf_counter()
            try:
                await self._run(jobs, abandoned, on_tokens)
            finally:
                self.running, self.running_since = [], None

    async def _run(self, jobs: list[Job], abandoned, on_tokens) -> None:
        """Run one engine batch and answer its jobs. When it fails and holds several requests, each is run
        again alone: the one whose input or parameters caused the failure gets the error, the others their
        answers."""
        loop = asyncio.get_running_loop()
        rows = [r for j in jobs for r in j.rows]
        try:
            results, generated = await loop.run_in_executor(
                self.executor, self.task.run, rows, jobs[0].prepared.settings, abandoned, on_tokens
            )
        except Exception as err:
            if len(jobs) > 1:
                for job in jobs:
                    if job.cancelled:
                        if not job.future.done():
                            job.future.set_exception(Cancelled())
                            job.future.exception()
                    else:
                        await self._run_alone(job)
                return
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(engine_error(err))
                    if job.cancelled:
                        job.future.exception()  # nobody waits for it: mark it read
            return
        self.metrics.generated_tokens.inc(generated)
        start = 0
        for job in jobs:
            _answer(job, results[start : start + len(job.rows)], None)
            start += len(job.rows)

    async def _run_alone(self, job: Job) -> None:
        def abandoned() -> set[int]:
            return set(range(len(job.rows))) if job.cancelled else set()

        on_tokens = None
        if job.on_token is not None:
            seen = dict.fromkeys(range(len(job.rows)), 0)

            def on_tokens(inputs, tokens, entries=None):  # the tokens a stream already received come again: skip them
                entries = entries or [None] * len(inputs)
                for k, token, entry in zip(inputs.tolist(), tokens.tolist(), entries):
                    seen[k] += 1
                    if not job.cancelled and seen[k] > job.sent.get(k, 0):
                        job.send(k, token, entry)

        await self._run([job], abandoned, on_tokens)


def engine_error(err: Exception) -> Exception:
    """What a request whose batch failed is answered: the library raises ValueError (and TypeError) for
    arguments or input it cannot take, which is the request's fault (422, with the library's one-line message);
    anything else is a bug (500)."""
    if isinstance(err, (ValueError, TypeError)):
        return RequestError(422, str(err), "validation_error")
    return err


class Continuous:
    """One continuous batch, run in the engine thread until no request is left in it: before every step it
    admits the queued requests that may join, oldest first, while they fit ``--max-batch-size`` inputs and
    ``--max-batch-tokens`` (a request that does not fit, or may not join, stops the admissions: nobody is
    overtaken), and it answers each request the step its searches end."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.task, self.config = batcher, batcher.task, batcher.config
        self.metrics = batcher.metrics
        self.batch = self.task.joined_batch()
        self.live: list[Job] = []

    def run(self) -> None:
        b = self.batcher
        b.running_since = trimmed = time.perf_counter()
        try:
            self._admit()
            while len(self.batch):
                try:
                    self.batch.step()
                except Exception as err:  # the shared step failed: every request in it gets the error
                    self.batch.abort(err)
                    break
                b.running_since = time.perf_counter()
                if b.running_since - trimmed > TRIM_EVERY_S:
                    gc.collect()
                    release_free_memory()
                    trimmed = time.perf_counter()
                self._admit()
        finally:
            b.running, b.running_since = [], None
            release_free_memory()

    def _fits(self, inputs: int, width: int, job: Job) -> tuple[bool, int]:
        n = len(job.rows)
        wider = max([width] + [self.task.input_size(r) for r in job.rows])
        too_big = inputs + n > self.config.max_batch_size or (inputs + n) * wider > self.config.max_batch_tokens
        return not (inputs and too_big), wider

    def _admit(self) -> None:
        b = self.batcher
        if not b.queue:  # the usual case between steps: nothing to count
            return
        inputs = sum(len(job.rows) for job in self.live)
        width = max((self.task.input_size(r) for job in self.live for r in job.rows), default=0)
        taken = []
        with b.lock:
            b.queue = [j for j in b.queue if not j.cancelled]
            for job in b.queue:
                if not self.task.joinable(job.prepared.settings):
                    break
                fits, wider = self._fits(inputs, width, job)
                if not fits:
                    break
                taken.append(job)
                inputs, width = inputs + len(job.rows), wider
            b.queue = b.queue[len(taken) :]
            self.metrics.queue_size.set(len(b.queue))
        if not taken:
            return
        running = len(self.batch) > 0
        groups: dict = {}  # requests with equal batch keys share a search; a None key runs alone
        for job in taken:
            groups.setdefault(id(job) if job.prepared.key is None else job.prepared.key, []).append(job)
        for jobs in groups.values():
            self._start(jobs, running)
        self.metrics.batch_size.observe(sum(len(job.rows) for job in taken))  # the inputs that entered together
        b.running = list(self.live)

    def _start(self, jobs: list[Job], joined: bool) -> None:
        """Start the searches of ``jobs`` (equal batch keys: their rows one after the other); each job is
        answered once its own rows are done."""
        now = time.perf_counter()
        for job in jobs:
            job.started = now
            self.metrics.queue_wait.observe(now - job.enqueued)
            self.metrics.input_tokens.inc(sum(self.task.input_size(r) for r in job.rows))
            if joined:
                self.metrics.joins.inc()
        owners, abandoned, on_tokens = batch_hooks(jobs)
        rows = [r for job in jobs for r in job.rows]
        settings = jobs[0].prepared.settings
        try:
            joining = self.task.join(rows, settings, abandoned, on_tokens)
            if joining is None:  # requests that run alone (rare: see ``Task.join``) hold the batch meanwhile
                answers, generated = self.task.run(rows, settings, abandoned, on_tokens)
                start = 0
                for job in jobs:
                    self._settle(job, answers[start : start + len(job.rows)], generated if job is jobs[0] else 0)
                    start += len(job.rows)
                return
        except Exception as err:
            if len(jobs) > 1:  # each alone: the one whose input or parameters caused it gets the error
                for job in jobs:
                    self._start([job], joined)
            else:
                self._settle(jobs[0], error=err)
            return
        self.live += jobs
        outputs: list = [None] * len(rows)
        left = {id(job): len(job.rows) for job in jobs}
        first = {id(job): next(i for i, (j, _) in enumerate(owners) if j is job) for job in jobs}

        def row_done(i: int, sequences) -> None:
            job = owners[i][0]
            if outputs[i] is not None or id(job) not in left:  # reported early, or the job already failed
                return
            outputs[i] = sequences
            left[id(job)] -= 1
            if not left[id(job)]:
                del left[id(job)]
                indices = list(range(first[id(job)], first[id(job)] + len(job.rows)))
                self._finish(job, joining, indices, [outputs[k] for k in indices])

        for chunk, build in joining.searches:

            def done(result, error, chunk=chunk):
                if error is None:
                    for i, sequences in zip(chunk, result):
                        row_done(i, sequences)
                    return
                for job in dict.fromkeys(owners[i][0] for i in chunk):
                    if left.pop(id(job), None) is not None:
                        self._settle(job, error=error)

            self.batch.join(build, done, lambda j, sequences, chunk=chunk: row_done(chunk[j], sequences))

    def _finish(self, job: Job, joining, indices: list[int], outputs: list) -> None:
        try:
            answers, generated = joining.finish(indices, outputs) if not job.cancelled else (None, 0)
        except Exception as err:
            self._settle(job, error=err)
            return
        self._settle(job, answers, generated)

    def _settle(self, job: Job, answers=None, generated: int = 0, error: BaseException | None = None) -> None:
        """Answer ``job`` (engine thread; the future is set in the event loop's)."""
        if job in self.live:
            self.live.remove(job)
            self.batcher.running = list(self.live)
        if job.started is not None:
            self.metrics.time_in_batch.observe(time.perf_counter() - job.started)
        self.metrics.generated_tokens.inc(generated)
        self.batcher.loop.call_soon_threadsafe(_answer, job, answers, error)


def batch_hooks(jobs: list[Job]):
    """The engine's view of ``jobs`` run as one batch, their rows one after the other: the owner of each row
    (job, its row), ``abandoned()`` (the rows of requests whose client left or whose time ran out, read from the
    engine thread) and ``on_tokens`` (streamed tokens to each job's stream; None where no job streams)."""
    owners = [(job, k) for job in jobs for k in range(len(job.rows))]

    def abandoned() -> set[int]:
        return {i for i, (job, _) in enumerate(owners) if job.cancelled}

    if not any(job.on_token is not None for job in jobs):
        return owners, abandoned, None

    def on_tokens(inputs, tokens, entries=None):  # engine thread: to each stream
        entries = entries or [None] * len(inputs)
        for i, token, entry in zip(inputs.tolist(), tokens.tolist(), entries):
            job, k = owners[i]
            if job.on_token is not None and not job.cancelled:
                job.send(k, token, entry)

    return owners, abandoned, on_tokens


def _answer(job: Job, answers, error: BaseException | None) -> None:
    """Answer ``job`` (event loop thread): its answers, or the error; a job cut short gets ``Cancelled``, marked
    read (nobody may read it: no "exception never retrieved" log)."""
    if job.future.done():
        return
    if job.cancelled:  # cut short: not an answer, and nobody may read it
        job.future.set_exception(Cancelled())
        job.future.exception()
    elif error is not None:
        job.future.set_exception(engine_error(error))
    else:
        job.future.set_result(answers)
