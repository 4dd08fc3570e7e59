"""Settings and shared state of one service instance: the store, the model once loaded, its queue, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
from fastapi import HTTPException, Request
from sqlalchemy import exc as sa_exc

from coldprompt.service.batching import BatchingQueue, QueueClosedError, QueueFullError
from coldprompt.service.metrics import ServiceMetrics
from coldprompt.service.model import ModelJob, ModelResult, ServiceModel
from coldprompt.service.store import UserStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Database errors that mean "unavailable for now" (connection lost, locked, pool exhausted) give 503.
TRANSIENT_DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


@dataclass
class ServiceSettings:
    """Tuning of one service instance; ``coldprompt serve`` exposes the first two as options."""

    workers: int = 1  # threads that run adaptation and scoring
    queue_size: int = 64  # model jobs that may wait for a worker; requests beyond get 503 with Retry-After
    max_batch_size: int = 8  # users adapted and scored together in one forward/backward pass
    max_interactions_per_user: int = 10_000  # interactions stored per user; writes beyond get 409
    retry_after_s: int = 1  # Retry-After of 503 responses, in seconds
    torch_threads: int | None = None  # torch intra-op threads for the process; None keeps torch's default
    backbone_source: str | None = None  # load the backbone from here instead of the checkpoint's source
    data_dir: str | None = None  # the data set folder, when it moved since training

    def __post_init__(self) -> None:
        for name in ("workers", "queue_size", "max_batch_size", "max_interactions_per_user", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads: must be at least 1 or None, got {self.torch_threads}")


class ServiceState:
    """Everything the routes share. ``model`` and ``queue`` stay None until the checkpoint is loaded."""

    def __init__(self, checkpoint: str, store: UserStore, settings: ServiceSettings):
        self.checkpoint = checkpoint
        self.store = store
        self.settings = settings
        self.model: ServiceModel | None = None
        self.queue: BatchingQueue[ModelJob, ModelResult] | None = None
        self.load_error: str | None = None
        self.metrics = ServiceMetrics(queue_depth=lambda: self.queue.depth if self.queue is not None else 0)

    # ------------------------------------------------------------------------------------------ model
    def attach_model(self, model: ServiceModel) -> None:
        settings = self.settings
        self.queue = BatchingQueue(
            self._run_batch, workers=settings.workers, max_queued=settings.queue_size,
            max_batch_size=settings.max_batch_size,
        )
        self.model = model  # set last, so that a request that finds the model also finds its queue
        self.metrics.model_loaded.set(1)

    def _run_batch(self, jobs: Sequence[ModelJob]) -> list[ModelResult]:
        results = self.model.run_batch(jobs)
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.adaptations.inc(sum(result.adapted for result in results))
        return results

    def require_model(self) -> ServiceModel:
        """Return the loaded model, or raise 503 while it loads (or after it failed to load)."""
        if self.model is not None:
            return self.model
        if self.load_error is not None:
            raise HTTPException(503, f"the checkpoint failed to load: {self.load_error}")
        raise HTTPException(
            503, "the model is still loading; retry shortly", headers={"Retry-After": str(self.settings.retry_after_s)}
        )

    async def run_model(
        self, request: Request, user_id: str | None, job: ModelJob, key: Hashable | None = None
    ) -> tuple[ModelResult, bool]:
        """Queue ``job`` and wait for it; return the result and whether this request queued it.

        Raises 503 with Retry-After when the queue is full.
        """
        try:
            future, queued_here = self.queue.submit(job, key)
        except QueueFullError as error:
            self.metrics.queue_rejections.inc()
            logger.warning("rejected with 503: %s (user %s, request %s)", error, user_id or "-", request.state.request_id)
            raise HTTPException(
                503, f"the service is busy: {error}; retry later",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from error
        except QueueClosedError as error:
            raise HTTPException(503, "the service is stopping; retry on another instance") from error
        # shield: a client that disconnects must not cancel a job that other requests may share.
        result = await asyncio.shield(asyncio.wrap_future(future))
        return result, queued_here

    # ------------------------------------------------------------------------------------------ store
    async def call_store(
        self, request: Request, operation: str, user_id: str, function: Callable[..., T], *args
    ) -> T:
        """Run a blocking store call in a worker thread; database errors are counted, logged and become 503."""
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except sa_exc.SQLAlchemyError as error:
            self.metrics.store_errors.labels(operation=operation).inc()
            logger.error(
                "store operation %r failed: %s (user %s, request %s)",
                operation, describe_db_error(error), user_id, request.state.request_id,
            )
            if isinstance(error, TRANSIENT_DB_ERRORS):
                raise HTTPException(
                    503, f"the database is unavailable ({operation} failed); retry later",
                    headers={"Retry-After": str(self.settings.retry_after_s)},
                ) from error
            raise

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
        self.store.close()


def describe_db_error(error: sa_exc.SQLAlchemyError) -> str:
    """Return the driver's message without the statement or its parameters, which may hold stored data."""
    original = getattr(error, "orig", None)
    message = str(original).strip().splitlines()[0] if original is not None and str(original).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
