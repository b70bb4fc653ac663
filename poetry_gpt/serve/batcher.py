"""Dynamic batching: requests that arrive together are decoded together in one compiled program.

One worker thread owns the model. It takes the first waiting request and gathers batch mates
(``start_time``). It expects as many poems as its last batch had: clients whose answers went out
together come back together, spread over tens of milliseconds. Until that many wait (or the batch is
full, ``max_batch``), it waits up to ``MAX_WINDOWS`` windows from when it became free or the first
request arrived, whichever is later; once that many wait, it starts after a quiet gap of ``window``
seconds (a few ms) without a new request. So closed-loop clients fill every batch instead of splitting
into a small batch of those that queued and a large one of those that came back, and a lone client
waits one window. Every waiting request whose ``Plan.key`` matches is decoded in one batch (at most
``max_batch`` poems). Requests with other sampling options or another form wait for the
next round: the sampler takes top-k/top-p/min-p/temperature/penalty and the form tables once per
batch, not per row, so only requests that share them can share a batch. Rows keep their own
seed, prompt and token budget, so a request's poems are the same alone or batched
(``PoemGenerator.decode``).

Example:
    >>> batcher = Batcher(generator, max_batch=32)
    >>> batcher.start()
    >>> samples = batcher.submit(generator.plan(["春眠不觉晓"], seed=1)).result()
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from ..errors import PoetryGPTError

DEFAULT_WINDOW = 0.005  # seconds without a new request after which a batch starts
#: a batch starts at the latest this many windows after its first request arrived or the worker became free
MAX_WINDOWS = 20


def start_time(first: float, latest: float, free_since: float, expected_waiting: bool, window: float) -> float:
    """When a batch that is not full starts.

    Args:
        first: the first waiting request's arrival (``time.perf_counter()``).
        latest: the latest arrival among its batch mates.
        free_since: when the worker finished its last batch.
        expected_waiting: as many poems wait as the last batch had.
        window: the quiet gap, in seconds.
    """
    cap = max(first, free_since) + MAX_WINDOWS * window
    return min(max(latest, free_since) + window, cap) if expected_waiting else cap


class QueueFull(PoetryGPTError):
    """Too many requests are waiting; the caller should answer 503."""


@dataclass
class Job:
    """One request waiting for (or in) a batch.

    Args:
        plan: ``PoemGenerator.plan``'s result.
        on_tokens: streaming: ``on_tokens(row, ids)`` with a row's ids so far (worker thread).
        future: resolves to the request's samples, or its exception.
        submitted: ``time.perf_counter()`` at submission.
        started: when its batch began decoding.
        batch_poems: poems in its batch (its own and its batch mates').
    """

    plan: object
    on_tokens: Callable[[int, list], None] | None = None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    batch_poems: int = 0


class Batcher:
    """Gather concurrent requests and decode them in shared batches on one worker thread.

    Args:
        generator: a ``PoemGenerator``.
        max_batch: the most poems decoded together (a power of two keeps programs few).
        window: seconds without a new request after which a batch that is not full starts.
        max_queue: the most requests waiting; ``submit`` raises ``QueueFull`` beyond it.
    """

    def __init__(self, generator, max_batch: int = 32, window: float = DEFAULT_WINDOW, max_queue: int = 64):
        self.generator = generator
        self.max_batch, self.window, self.max_queue = max_batch, window, max_queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches: collections.Counter[int] = collections.Counter()  # poems per batch -> batches decoded
        self.requests = 0  # requests decoded (or failed in decoding)
        self._free_since, self._expected = 0.0, 1  # when the last batch ended, and its poems

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._loop, name="poetry-gpt-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the running batch, fail the waiting requests, and end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        for job in self._waiting:
            job.future.set_exception(QueueFull("the server is stopping"))
        self._waiting.clear()

    def summary(self) -> str:
        """What the worker decoded so far, as one line: requests, poems, batches and their sizes."""
        poems, count = sum(k * n for k, n in self.batches.items()), sum(self.batches.values())
        sizes = ", ".join(f"{n}×{k}" for k, n in self.batches.most_common(8))
        return (f"{self.requests} requests, {poems} poems in {count} batches"
                + (f" (batches × poems: {sizes})" if sizes else ""))

    def submit(self, plan, on_tokens: Callable[[int, list], None] | None = None) -> Future:
        """Queue a plan; returns a future of its samples.

        Args:
            plan: from ``PoemGenerator.plan``.
            on_tokens: optional streaming callback (called on the worker thread).

        Raises:
            QueueFull: ``max_queue`` requests are already waiting, or the batcher is stopping.
        """
        job = Job(plan, on_tokens)
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is stopping")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"busy: {len(self._waiting)} requests are waiting; try again in a moment")
            self._waiting.append(job)
            self._cond.notify()
        job.future.job = job  # the caller reads the timings from it
        return job.future

    # worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._run(jobs)

    def _next_batch(self) -> list[Job] | None:
        """Wait for a request, then for batch mates (``start_time``); take those that fit one batch."""
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            while not self._stopping:
                like = [j for j in self._waiting if j.plan.key == self._waiting[0].plan.key]
                rows = sum(len(j.plan.rows) for j in like)
                left = start_time(like[0].submitted, like[-1].submitted, self._free_since,
                                  rows >= min(self._expected, self.max_batch), self.window) - time.perf_counter()
                if rows >= self.max_batch or left <= 0:
                    return self._take(like[0].plan.key)
                self._cond.wait(left)
            return None

    def _take(self, key) -> list[Job]:
        """Remove and return the waiting jobs of ``key`` that fit ``max_batch`` (the first always)."""
        taken, rows, kept = [], 0, collections.deque()
        for job in self._waiting:
            n = len(job.plan.rows)
            if job.plan.key == key and (not taken or rows + n <= self.max_batch):
                taken.append(job)
                rows += n
            else:
                kept.append(job)
        self._waiting = kept
        return taken

    def _run(self, jobs: list[Job]) -> None:
        """Decode the jobs' rows together and hand each job its samples."""
        owners = [(job, r) for job in jobs for r in range(len(job.plan.rows))]
        rows = [job.plan.rows[r] for job, r in owners]
        streaming = any(job.on_tokens for job in jobs)

        def on_tokens(first: int, ids_per_row: list) -> None:
            for (job, r), ids in zip(owners[first:], ids_per_row):
                if job.on_tokens is not None:
                    job.on_tokens(r, ids)

        started = time.perf_counter()
        for job in jobs:
            job.started, job.batch_poems = started, len(rows)
        self.batches[len(rows)] += 1
        self.requests += len(jobs)
        plan = jobs[0].plan
        try:
            samples = self.generator.decode(rows, plan.config, plan.tables, batch_size=self.max_batch,
                                            on_tokens=on_tokens if streaming else None)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which reports it
            for job in jobs:
                job.future.set_exception(exc)
            return
        finally:
            self._free_since, self._expected = time.perf_counter(), len(rows)
        at = 0
        for job in jobs:
            n = len(job.plan.rows)
            job.future.set_result(samples[at:at + n])
            at += n
