"""The FastAPI application factory: store, middleware, routes, and a lifespan that loads the model in the background.

The server accepts requests as soon as it starts, and the checkpoint loads in a background thread. Until it is
ready, ``/healthz`` and the routes that need the model return 503 with Retry-After. Then ``/healthz`` returns 200.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.exceptions import RequestValidationError
from starlette.middleware import Middleware

from coldprompt.service.middleware import BodySizeLimitMiddleware, ObservabilityMiddleware, user_id_for_log
from coldprompt.service.model import ServiceModel
from coldprompt.service.routes import UnknownItemsError, router, unknown_items_handler
from coldprompt.service.schemas import MAX_BODY_BYTES
from coldprompt.service.state import ServiceSettings, ServiceState
from coldprompt.service.store import DEFAULT_DB_URL, UserStore

logger = logging.getLogger(__name__)

ModelLoader = Callable[[], ServiceModel]


def create_app(
    checkpoint: str | Path,
    db_url: str = DEFAULT_DB_URL,
    settings: ServiceSettings | None = None,
    *,
    load_model: ModelLoader | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the service for ``checkpoint`` with its user store at ``db_url`` (a SQLAlchemy URL).

    ``load_model`` replaces the default loader (:meth:`ServiceModel.load` on ``checkpoint``), which tests use to
    share one loaded model or to hold loading back. ``on_load_error`` is called from the loading thread when
    loading fails; ``coldprompt serve`` uses it to stop the server.
    """
    settings = settings or ServiceSettings()
    checkpoint = str(checkpoint)
    state = ServiceState(checkpoint, UserStore(db_url), settings)
    if load_model is None:
        def load_model() -> ServiceModel:
            return ServiceModel.load(checkpoint, backbone_source=settings.backbone_source, data_dir=settings.data_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("starting the service: checkpoint %s, store %s", checkpoint, state.store.describe())
        await anyio.to_thread.run_sync(state.store.create_schema)
        _start_loading(state, load_model, on_load_error)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.close)
            logger.info("stopped the service")

    from coldprompt import __version__

    app = FastAPI(
        title="coldprompt",
        version=__version__,
        description="Cold-start recommendations from a frozen LLM personalised by a per-user soft prompt.",
        lifespan=lifespan,
        middleware=[
            Middleware(ObservabilityMiddleware, metrics=state.metrics),
            Middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES),
        ],
    )
    app.state.service = state
    app.include_router(router)
    app.add_exception_handler(UnknownItemsError, unknown_items_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_response)
    return app


def _start_loading(state: ServiceState, load_model: ModelLoader, on_load_error) -> None:
    """Load the model in a daemon thread, so that the server serves /healthz meanwhile and can stop at once."""

    def load() -> None:
        start = time.perf_counter()
        try:
            if state.settings.torch_threads is not None:
                import torch

                torch.set_num_threads(state.settings.torch_threads)
            model = load_model()
        except Exception as error:  # noqa: BLE001 - reported through /healthz, the log and on_load_error
            logger.exception("failed to load checkpoint %s", state.checkpoint)
            state.load_error = f"{type(error).__name__}: {error}"
            if on_load_error is not None:
                on_load_error(error)
            return
        state.attach_model(model)
        logger.info(
            "loaded checkpoint %s (id %s, %s, %d items, %d inner steps) in %.1f s; ready",
            state.checkpoint, model.checkpoint_id, model.algorithm, model.num_items, model.inner_steps,
            time.perf_counter() - start,
        )

    threading.Thread(target=load, name="model-loader", daemon=True).start()


async def _validation_error_response(request: Request, error: RequestValidationError) -> JSONResponse:
    """Return FastAPI's 422 error list without the rejected input values, and log the failing fields.

    The response leaves the input values out because they may be large or non-finite floats, which Python's JSON
    parser accepts (NaN, Infinity) but the response encoder rejects. The log leaves them out because they may be
    stored data.
    """
    details = [_error_entry(entry) for entry in error.errors()]
    fields = sorted({".".join(str(part) for part in entry["loc"]) for entry in details})
    logger.info(
        "invalid request: %d validation error(s) in %s (user %s, request %s)",
        len(details), fields, user_id_for_log(request.scope), request.state.request_id,
    )
    return JSONResponse({"detail": details}, status_code=422)


def _error_entry(entry: dict) -> dict:
    result = {"type": entry["type"], "loc": list(entry["loc"]), "msg": entry["msg"]}
    if entry.get("ctx"):
        result["ctx"] = {key: _json_safe(value) for key, value in entry["ctx"].items()}
    return result


def _json_safe(value):
    if isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)
