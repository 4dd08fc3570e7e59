"""Run the service with uvicorn: ``coldprompt serve``."""

from __future__ import annotations

import logging
import os

from coldprompt.checkpoint import load_checkpoint
from coldprompt.service.app import create_app
from coldprompt.service.state import ServiceSettings

logger = logging.getLogger(__name__)


def serve(
    checkpoint: str,
    db_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServiceSettings | None = None,
) -> int:
    """Serve until interrupted (SIGINT or SIGTERM); return 0, or 1 when the server or the checkpoint failed.

    Logging must already be configured (the CLI does it); uvicorn's loggers propagate to the root logger.
    """
    import uvicorn

    load_checkpoint(checkpoint)  # fail fast, before binding the port, when the folder is not a checkpoint
    settings = settings or ServiceSettings()
    if settings.torch_threads is None:
        # Worker threads run torch at the same time, so each gets an equal share of the cores.
        settings.torch_threads = max(1, (os.cpu_count() or 1) // settings.workers)

    server: uvicorn.Server | None = None
    failed = False

    def stop_after_load_error(_error: BaseException) -> None:
        nonlocal failed
        failed = True
        if server is not None:
            server.should_exit = True

    app = create_app(checkpoint, db_url, settings, on_load_error=stop_after_load_error)
    # log_config=None leaves logging as the caller configured it; one process, because each would load the model.
    config = uvicorn.Config(app, host=host, port=port, log_config=None, workers=1, timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        logger.error("the server failed to start; the error is logged above")
        return 1
    if failed:
        logger.error("stopped because checkpoint %s failed to load", checkpoint)
        return 1
    return 0
