"""The service's batching queue: batches, bounds, shared keys, errors and shutdown, with plain-Python jobs."""

from __future__ import annotations

import threading

import pytest

from coldprompt.service.batching import BatchingQueue, QueueClosedError, QueueFullError

TIMEOUT_S = 10


class GatedBatches:
    """A ``run_batch`` that records each batch and, while the gate is closed, blocks until it opens."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, jobs):
        self.batches.append(list(jobs))
        self.entered.set()
        assert self.gate.wait(TIMEOUT_S), "the test never opened the gate"
        return [job * 10 for job in jobs]


def test_results_follow_job_order():
    run = GatedBatches()
    run.gate.set()
    queue = BatchingQueue(run, workers=1, max_queued=8, max_batch_size=8)
    futures = [queue.submit(job)[0] for job in (1, 2, 3)]
    assert [f.result(TIMEOUT_S) for f in futures] == [10, 20, 30]
    queue.close()


def test_waiting_jobs_run_as_one_batch():
    run = GatedBatches()
    queue = BatchingQueue(run, workers=1, max_queued=8, max_batch_size=8)
    first, _ = queue.submit(1)
    assert run.entered.wait(TIMEOUT_S)
    waiting = [queue.submit(job)[0] for job in (2, 3, 4)]
    assert queue.depth == 3
    run.gate.set()
    assert [f.result(TIMEOUT_S) for f in [first, *waiting]] == [10, 20, 30, 40]
    assert run.batches == [[1], [2, 3, 4]]
    queue.close()


def test_batch_size_is_capped():
    run = GatedBatches()
    queue = BatchingQueue(run, workers=1, max_queued=8, max_batch_size=2)
    queue.submit(0)
    assert run.entered.wait(TIMEOUT_S)
    futures = [queue.submit(job)[0] for job in (1, 2, 3)]
    run.gate.set()
    for future in futures:
        future.result(TIMEOUT_S)
    assert run.batches == [[0], [1, 2], [3]]
    queue.close()


def test_full_queue_rejects_submit():
    run = GatedBatches()
    queue = BatchingQueue(run, workers=1, max_queued=2, max_batch_size=8)
    running, _ = queue.submit(0)
    assert run.entered.wait(TIMEOUT_S)
    queue.submit(1)
    queue.submit(2)
    with pytest.raises(QueueFullError, match="maximum is 2"):
        queue.submit(3)
    run.gate.set()
    assert running.result(TIMEOUT_S) == 0
    queue.close()


def test_same_key_shares_one_job():
    run = GatedBatches()
    queue = BatchingQueue(run, workers=1, max_queued=8, max_batch_size=8)
    queue.submit(0)
    assert run.entered.wait(TIMEOUT_S)
    first, first_queued = queue.submit(5, key="user-a")
    second, second_queued = queue.submit(5, key="user-a")
    assert first_queued
    assert not second_queued
    assert second is first
    run.gate.set()
    assert first.result(TIMEOUT_S) == 50
    assert run.batches[1] == [5]
    # Once the job finished, the key queues a new job.
    third, third_queued = queue.submit(6, key="user-a")
    assert third_queued
    assert third.result(TIMEOUT_S) == 60
    queue.close()


def test_batch_error_reaches_every_job():
    def failing(jobs):
        raise RuntimeError("model failed")

    queue = BatchingQueue(failing, workers=1, max_queued=8, max_batch_size=8, gather_s=0.05)
    futures = [queue.submit(job)[0] for job in (1, 2)]
    for future in futures:
        with pytest.raises(RuntimeError, match="model failed"):
            future.result(TIMEOUT_S)
    queue.close()


def test_close_fails_waiting_jobs():
    run = GatedBatches()
    queue = BatchingQueue(run, workers=1, max_queued=8, max_batch_size=1)
    running, _ = queue.submit(0)
    assert run.entered.wait(TIMEOUT_S)
    waiting, _ = queue.submit(1)
    closer = threading.Thread(target=queue.close)
    closer.start()
    with pytest.raises(QueueClosedError):
        waiting.result(TIMEOUT_S)
    run.gate.set()
    closer.join(TIMEOUT_S)
    assert running.result(TIMEOUT_S) == 0
    with pytest.raises(QueueClosedError):
        queue.submit(2)


def test_invalid_sizes_rejected():
    with pytest.raises(ValueError, match="at least 1"):
        BatchingQueue(lambda jobs: jobs, workers=0, max_queued=1, max_batch_size=1)
