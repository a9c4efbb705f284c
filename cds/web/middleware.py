"""ASGI middleware at the HTTP edge: request ids, limits, security headers, access log.

Written as plain ASGI (not BaseHTTPMiddleware) so a request body is streamed through once,
the size limit holds for chunked uploads too, and the per-request overhead stays small.
Request ids are a random prefix drawn once per process and a counter: unique across workers
and restarts, without reading os.urandom (which releases the GIL) on every request.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds import metrics
from cds.errors import operation_outcome
from cds.logs import log

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
JSON_TYPES = ("application/json", "application/fhir+json")


def security_headers(present: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The security headers a response does not set itself. A response with its own
    Content-Security-Policy (the assessment app, framed by the EHR: its `frame-ancestors`
    names who may frame it) gets no X-Frame-Options: DENY, which would forbid every frame."""
    names = {name.lower() for name, _ in present}
    return [
        (name, value)
        for name, value in SECURITY_HEADERS
        if name not in names
        and not (name == b"x-frame-options" and b"content-security-policy" in names)
    ]


BODY_METHODS = ("POST", "PUT", "PATCH")


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body reader passes it on instead of making it a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


# An oversized body is still read, and dropped, up to this many times the limit (and for at
# most DISCARD_SECONDS) before the 413 goes out: see `_discard_body`.
DISCARD_FACTOR = 4
DISCARD_SECONDS = 5.0


@dataclass
class _BodyProgress:
    complete: bool = False


async def _discard_body(scope: Scope, receive: Receive, limit: int) -> None:
    """Read and drop the rest of a refused body, within bounds, like a lingering close.

    Many HTTP clients write the whole body before they read the answer. Closing the
    connection with their bytes unread makes the kernel reset it, and they see "connection
    reset" instead of the 413. A client that sent `Expect: 100-continue` has not sent its
    body (uvicorn asks for it only when it is read), so nothing is read for it.
    """
    if dict(scope["headers"]).get(b"expect", b"").lower() == b"100-continue":
        return
    discarded = 0
    with anyio.move_on_after(DISCARD_SECONDS):
        while discarded <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            discarded += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


# A failed call with a body this large is followed by a garbage collection (see __call__).
COLLECT_AFTER_FAILED_BYTES = 1024 * 1024


class BodyBudget:
    """The bytes of request bodies one worker holds at once.

    A worker decides one call at a time (the decision is CPU work), yet uvicorn would read
    the body of every concurrent call: sixteen 6.7 MB records take ~110 MB before the first
    is answered. A request over the budget waits before its body is read; uvicorn then reads
    no more than 64 KB of it and TCP holds the rest back at the client. A body larger than
    the whole budget is taken alone, so no request waits forever.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._changed = asyncio.Condition()

    async def take(self, size: int) -> int:
        """Wait until `size` bytes fit, hold them, and return what must be given back."""
        size = min(size, self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.held == 0 or self.held + size <= self.limit)
            self.held += size
        return size

    async def give_back(self, size: int) -> None:
        async with self._changed:
            self.held -= size
            self._changed.notify_all()


class EdgeMiddleware:
    """Request id, body-size and content-type limits, the body budget, security headers, one
    log line."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_budget_bytes: int,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.budget = BodyBudget(body_budget_bytes)
        self.routes = routes  # to name the route of requests answered before routing
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
        body = _BodyProgress()
        logged = False

        def log_request() -> None:
            """The request's log line and metrics, once."""
            nonlocal logged
            if logged:
                return
            logged = True
            seconds, route = time.perf_counter() - started, _route(scope, self.routes)
            log.info(
                "request",
                method=scope["method"],
                route=route,
                status=status["code"],
                duration_ms=round(seconds * 1000, 2),
            )
            metrics.observe_request(
                scope["method"], route, metrics.service_of(scope), status["code"], seconds
            )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers += [*security_headers(headers), (b"x-request-id", request_id.encode())]
                if message["status"] == 413 and not body.complete:
                    await _discard_body(scope, receive, DISCARD_FACTOR * self.max_body_bytes)
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Logged before the last byte leaves: a client holding the answer finds the
                # line in the log (tests, operators correlating by x-request-id).
                log_request()
            await send(message)

        held = 0
        try:
            rejection = self._reject(scope)
            if rejection is not None:
                await rejection(scope, receive, send_with_headers)
                return
            if scope["method"] in BODY_METHODS:
                held = await self.budget.take(self._body_size(scope))
            await self.app(scope, self._limited(receive, body), send_with_headers)
        except _BodyTooLarge:
            await self._too_large()(scope, receive, send_with_headers)
        finally:
            if held:
                await self.budget.give_back(held)
                if held >= COLLECT_AFTER_FAILED_BYTES and status["code"] >= 400:
                    # The body of a failed call (the client went away mid-upload, malformed
                    # JSON) stays referenced from the error's traceback, a reference cycle that
                    # only a full collection frees: megabytes per call, held until the next
                    # one. Collected now, which costs milliseconds, on large failures only.
                    gc.collect()
            log_request()
            structlog.contextvars.clear_contextvars()

    def _body_size(self, scope: Scope) -> int:
        """The body's announced size; a chunked body may be as large as the limit allows.
        (`_reject` has already refused a Content-Length that is not a number.)"""
        length = dict(scope["headers"]).get(b"content-length")
        return self.max_body_bytes if length is None else int(length)

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

    def _limited(self, receive: Receive, body: _BodyProgress) -> Receive:
        """Counts body bytes as they arrive: Content-Length may be absent (chunked)."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body.complete = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        return limited


def _route(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The matched route's template (`/cds-services/{service_id}`), never the raw path: a
    path may carry an identifier. A CORS preflight is answered before routing, so its
    route is looked up here; requests that match no route are logged as "unmatched"."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    for route in routes:
        template = getattr(route, "path", None)
        if isinstance(template, str) and route.matches(scope)[0] != Match.NONE:
            return template
    return "unmatched"
