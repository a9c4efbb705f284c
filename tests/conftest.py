"""Shared fixtures: an in-process app per test, a real uvicorn server per session,
a real FHIR server and a real PostgreSQL server started by the suite itself."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cds.decision import request_body
from cds.settings import Settings
from cds.web.app import create_app
from tests.support.fhir_server import FhirTestServer, run_fhir_server
from tests.support.postgres import PostgresTestServer, running_postgres, temporary_database

SERVICE_PV = "fasciculation-pv"
SERVICE_OS = "fasciculation-order-select"
SERVICE_SIGN = "fasciculation-order-sign"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "auth": "none",
            "database_url": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """An in-process app (lifespan included) with the given settings."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(params=["whole", "lazy"])
def both_decoders(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each way of decoding a request body (cds/decision/request_body.py): in one
    go, as bodies under a megabyte are, and lazily, as larger ones are, whatever the body's size."""
    if request.param == "lazy":
        monkeypatch.setattr(request_body, "LAZY_FROM_BYTES", 0)
    return str(request.param)


class LiveServer:
    """`twitch-cds serve` in a subprocess: the real uvicorn, as an EHR reaches it."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cds.tools.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            # Its public base URL (every JWT's audience) is the URL the tests call.
            env={**os.environ, "TWITCH_CDS_PUBLIC_BASE_URL": self.base_url, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # its own process group: stop() reaches every worker
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/cds-services", timeout=1).status_code in (200, 401):
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self, kill: bool = False) -> None:
        """Terminate (or SIGKILL) uvicorn and all its worker processes."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(timeout=20)
        self._log.close()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(workers: int = 1, **env: str) -> LiveServer:
        directory = tmp_path_factory.mktemp("server")
        base_env = {
            "TWITCH_CDS_AUTH": "none",
            "TWITCH_CDS_DATABASE_URL": f"sqlite:///{directory / 'cds.sqlite3'}",
        }
        server = LiveServer({**base_env, **env}, directory / "server.log", workers=workers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def live_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """One real uvicorn server for the end-to-end tests of the whole session."""
    return start_server()


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    """One in-memory Medplum FHIR R4 server for the session; emptied before each test."""
    yield from run_fhir_server()


@pytest.fixture
def fhir(fhir_server: FhirTestServer) -> FhirTestServer:
    fhir_server.reset()
    return fhir_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresTestServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresTestServer) -> Iterator[str]:
    with temporary_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: an SQLite file, or a new database on the suite's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cds-test.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))
