"""Pure ASGI middleware: request ids, metrics and a last-resort 500 handler, and the request body size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi import HTTPException
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coldprompt.service.metrics import ServiceMetrics
from coldprompt.service.schemas import USER_ID_PATTERN

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a client's id is kept only when it looks like this
_USER_ID = re.compile(USER_ID_PATTERN)


class ObservabilityMiddleware:
    """Give each request an id (the client's ``X-Request-ID`` when valid), count and time it by route template.

    An exception that no handler caught is logged with the request id and the path's user id, and the client
    gets a JSON 500 response.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "unhandled error in %s %s (user %s, request %s)",
                scope["method"], _route_label(scope), user_id_for_log(scope), request_id,
            )
            status = 500
            if not started:
                response = JSONResponse(
                    {"detail": f"internal server error; quote request id {request_id} when reporting it"},
                    status_code=500, headers={REQUEST_ID_HEADER: request_id},
                )
                await response(scope, receive, send)
        finally:
            self.metrics.observe_request(_route_label(scope), scope["method"], status, time.perf_counter() - start)


class BodySizeLimitMiddleware:
    """Return 413 for request bodies over ``max_bytes``, by Content-Length or by counting a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"the request body is larger than the limit of {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException raised while it reads the body, so this becomes a 413.
                    raise HTTPException(status_code=413, detail=detail)
            return message

        await self.app(scope, limited_receive, send)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _route_label(scope: Scope) -> str:
    """Return the matched route's path template (bounded label values), or "unmatched"."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


def user_id_for_log(scope: Scope) -> str:
    """Return the request path's user id when it is a valid one, else "-" (log lines never carry raw input)."""
    user_id = scope.get("path_params", {}).get("user_id")
    return user_id if isinstance(user_id, str) and _USER_ID.match(user_id) else "-"
