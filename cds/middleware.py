"""ASGI middleware at the HTTP edge: request ids, limits, security headers, access log.

Written as plain ASGI (not BaseHTTPMiddleware) so a request body is streamed through once,
the size limit holds for chunked uploads too, and the per-request overhead stays small.
Request ids are a random prefix drawn once per process and a counter: unique across workers
and restarts, without reading os.urandom (which releases the GIL) on every request.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds.errors import operation_outcome
from cds.logs import log

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
JSON_TYPES = ("application/json", "application/fhir+json")


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body reader passes it on instead of making it a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class EdgeMiddleware:
    """Request id, body-size and content-type limits, security headers, one log line."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._id_prefix = uuid.uuid4().hex[:12]
        self._request_numbers = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self._id_prefix}-{next(self._request_numbers)}"
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = {"code": 500}
        logged = False

        def log_request() -> None:
            nonlocal logged
            if not logged:
                logged = True
                log.info("request", method=scope["method"], route=_route(scope),
                         status=status["code"],
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers += [*SECURITY_HEADERS, (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Logged before the last byte leaves: a client holding the answer finds the
                # line in the log (tests, operators correlating by x-request-id).
                log_request()
            await send(message)

        try:
            rejection = self._reject(scope)
            if rejection is not None:
                await rejection(scope, receive, send_with_headers)
                return
            await self.app(scope, self._limited(receive), send_with_headers)
        except _BodyTooLarge:
            await self._too_large()(scope, receive, send_with_headers)
        finally:
            log_request()
            structlog.contextvars.clear_contextvars()

    def _reject(self, scope: Scope) -> Any:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return self._too_large()
        if scope["method"] == "POST":
            content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
            if content_type.split(";")[0].strip() not in JSON_TYPES:
                return operation_outcome(415, "Content-Type must be application/json")
        return None

    def _too_large(self) -> Any:
        return operation_outcome(413, f"request body over {self.max_body_bytes} bytes")

    def _limited(self, receive: Receive) -> Receive:
        """Counts body bytes as they arrive: Content-Length may be absent (chunked)."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        return limited


def _route(scope: Scope) -> str:
    """The matched route's template (`/cds-services/{service_id}`), never the raw path: a
    path may carry an identifier. Requests that match no route are logged as "unmatched"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
