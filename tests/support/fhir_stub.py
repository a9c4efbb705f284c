"""A tiny HTTP server standing in for an EHR's FHIR server where the real one (Medplum,
tests/support/fhir_server.py) cannot cause the case: an answer on another loopback address,
a malformed Bundle, or an answer held back until the test lets it go."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMPTY_SEARCHSET = {"resourceType": "Bundle", "type": "searchset", "total": 0}
HOLD_SECONDS = 60  # how long an answer is held back at most, so a failed test cannot hang


class StubServer(ThreadingHTTPServer):
    """Answers every GET with `body` and records what it received. With `hold`, each answer
    waits until the test sets the event; `arrived` is set as soon as a request is in."""

    daemon_threads = True

    def __init__(
        self, host: str, body: dict[str, Any], hold: threading.Event | None = None
    ) -> None:
        super().__init__((host, 0), _StubHandler)
        self.body = body
        self.hold = hold
        self.arrived = threading.Event()
        self.received: list[tuple[str, str | None]] = []  # (path, Authorization header)

    @property
    def base_url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


class _StubHandler(BaseHTTPRequestHandler):
    server: StubServer

    def do_GET(self) -> None:
        self.server.received.append((self.path, self.headers.get("Authorization")))
        self.server.arrived.set()
        if self.server.hold is not None:
            self.server.hold.wait(HOLD_SECONDS)
        body = json.dumps(self.server.body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_stub(
    host: str = "127.0.0.1",
    body: dict[str, Any] = EMPTY_SEARCHSET,
    hold: threading.Event | None = None,
) -> Iterator[StubServer]:
    """A `StubServer` serving in a thread until the block ends (OSError: cannot listen there)."""
    server = StubServer(host, body, hold)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if hold is not None:
            hold.set()  # no answer left waiting
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
