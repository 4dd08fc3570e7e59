"""A bounded queue of model jobs served by worker threads, which run jobs that arrive together as one batch.

Adaptation and scoring are CPU-bound torch work. Torch releases the GIL inside its kernels, so worker threads
keep the event loop free to serve other requests. A worker that finds a job waiting gives others
``gather_s`` to arrive and then takes up to ``max_batch_size`` of them, so concurrent requests of different
users share one forward and backward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")


class QueueFullError(RuntimeError):
    """The queue already contains its maximum number of waiting jobs."""


class QueueClosedError(RuntimeError):
    """The queue was closed (the service is stopping)."""


@dataclass
class _Entry(Generic[JobT, ResultT]):
    job: JobT
    future: Future
    key: Hashable | None


class BatchingQueue(Generic[JobT, ResultT]):
    """Runs ``run_batch(jobs) -> results`` (one result per job, same order) on ``workers`` threads.

    ``max_queued`` bounds the jobs waiting for a worker; :meth:`submit` raises :class:`QueueFullError` beyond
    it. Jobs submitted with the same ``key`` while the first is queued or running share its future.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[JobT]], Sequence[ResultT]],
        *,
        workers: int,
        max_queued: int,
        max_batch_size: int,
        gather_s: float = 0.005,
        name: str = "model-worker",
    ):
        if workers < 1 or max_queued < 1 or max_batch_size < 1:
            raise ValueError(
                f"workers, max_queued and max_batch_size must be at least 1, got {workers}, {max_queued}, {max_batch_size}"
            )
        self.run_batch = run_batch
        self.max_queued = max_queued
        self.max_batch_size = max_batch_size
        self.gather_s = gather_s
        self._pending: deque[_Entry] = deque()
        self._by_key: dict[Hashable, Future] = {}
        self._condition = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker (running ones excluded)."""
        with self._condition:
            return len(self._pending)

    def submit(self, job: JobT, key: Hashable | None = None) -> tuple[Future, bool]:
        """Queue ``job``; return its future and whether this call queued it (False: it joined a job with ``key``)."""
        with self._condition:
            if self._closed:
                raise QueueClosedError("the service is stopping")
            if key is not None and key in self._by_key:
                return self._by_key[key], False
            if len(self._pending) >= self.max_queued:
                raise QueueFullError(f"{len(self._pending)} jobs are already waiting (the maximum is {self.max_queued})")
            future: Future = Future()
            self._pending.append(_Entry(job, future, key))
            if key is not None:
                self._by_key[key] = future
            self._condition.notify()
            return future, True

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the workers after their current batch; jobs still waiting fail with :class:`QueueClosedError`."""
        with self._condition:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            for entry in waiting:
                self._forget(entry)
            self._condition.notify_all()
        for entry in waiting:
            entry.future.set_exception(QueueClosedError("the service is stopping"))
        for thread in self._threads:
            thread.join(timeout_s)

    # ------------------------------------------------------------------------------------------ workers
    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._run(batch)

    def _take_batch(self) -> list[_Entry] | None:
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            # Give jobs that arrive together a moment to join this batch.
            deadline = time.monotonic() + self.gather_s
            while len(self._pending) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            count = min(len(self._pending), self.max_batch_size)
            return [self._pending.popleft() for _ in range(count)]

    def _run(self, batch: list[_Entry]) -> None:
        running = [entry for entry in batch if entry.future.set_running_or_notify_cancel()]
        outcomes: list = []
        if running:
            try:
                outcomes = list(self.run_batch([entry.job for entry in running]))
                if len(outcomes) != len(running):
                    raise RuntimeError(f"run_batch returned {len(outcomes)} results for {len(running)} jobs")
            except Exception as error:  # noqa: BLE001 - every waiting request gets the error, nothing is swallowed
                logger.exception("model batch of %d jobs failed", len(running))
                outcomes = [error] * len(running)
        with self._condition:
            for entry in batch:
                self._forget(entry)
        for entry, outcome in zip(running, outcomes):
            if isinstance(outcome, Exception):
                entry.future.set_exception(outcome)
            else:
                entry.future.set_result(outcome)

    def _forget(self, entry: _Entry) -> None:
        """Drop ``entry``'s key so that later jobs with that key are queued anew. Call with the lock held."""
        if entry.key is not None and self._by_key.get(entry.key) is entry.future:
            del self._by_key[entry.key]
