"""A real FHIR R4 server for tests, started and stopped by the test suite itself.

Why: the CDS service talks to an EHR's FHIR API (prefetch, searches with paging, bearer
tokens, slow responses). Mocking httpx would only test our assumptions about FHIR; this runs
Medplum's FHIR engine (``tests/fhir_server/server.mjs``, in-memory, ~140 MB RSS, ready in a few
seconds) so the client code meets real search Bundles, ``next`` links and OperationOutcomes.

Usage::

    with FhirTestServer(token="secret", delay_ms=0) as fhir:
        fhir.load(bundle)                      # a transaction Bundle, e.g. from Synthea
        httpx.get(f"{fhir.base_url}/Patient", headers=fhir.headers)

Differences from a production FHIR server worth knowing: ids of POSTed resources are
server-assigned (see ``load(keep_ids=True)``), searches page 20 at a time by default, search
parameters Medplum's in-memory matcher cannot evaluate get a 400 (send
``Prefer: handling=lenient`` to get Medplum's silent empty result instead), resources are not
validated, and ``POST /_test/reset`` empties the store.

Needs ``node`` on PATH; runs ``npm ci`` in ``tests/fhir_server`` on first use.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

# The demo (`twitch-cds demo`) runs the same server: one installer, one node invocation.
from cds.tools.demo import FHIR_SERVER_DIR as SERVER_DIR
from cds.tools.demo import ensure_node_modules, node_command, stop_process

_LISTENING = re.compile(r"^listening (http://\S+)$", re.MULTILINE)


class FhirServerError(RuntimeError):
    """The FHIR test server could not be installed, started, or refused a request."""


def node_available() -> bool:
    """True if ``node`` and ``npm`` are on PATH (lets callers skip instead of erroring)."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


class FhirTestServer:
    """One in-memory FHIR server process on 127.0.0.1, usable as a context manager.

    ``token``: if set, every FHIR request must carry ``Authorization: Bearer <token>``
    (``/healthz`` stays open). ``delay_ms``: added to every FHIR request, to test deadlines.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        delay_ms: int = 0,
        startup_timeout: float = 30.0,
        server_dir: Path = SERVER_DIR,
    ) -> None:
        self.token = token
        self.delay_ms = delay_ms
        self.startup_timeout = startup_timeout
        self.server_dir = server_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """FHIR base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``."""
        if self._base_url is None:
            raise FhirServerError("FHIR test server is not running")
        return self._base_url

    @property
    def headers(self) -> dict[str, str]:
        """Headers a well-behaved client sends, including the bearer token if one is set."""
        headers = {"Accept": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> FhirTestServer:
        """Install if needed, spawn node on a free port (port 0), and wait for /healthz."""
        if self._process is not None:
            return self
        ensure_node_modules(self.server_dir)
        fd, log_name = tempfile.mkstemp(prefix="fhir-test-server-", suffix=".log")
        self._log_path = Path(log_name)
        command = [*node_command(), "server.mjs", "--host", "127.0.0.1", "--port", "0"]
        command += ["--delay-ms", str(self.delay_ms)]
        if self.token:
            command += ["--token", self.token]
        # Output goes to a file, not a pipe: nobody drains a pipe, and a full pipe blocks node.
        with os.fdopen(fd, "wb") as log:
            self._process = subprocess.Popen(
                command, cwd=self.server_dir, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_healthy(self) -> None:
        """Poll the log for the chosen port, then /healthz, until ready or the timeout."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise FhirServerError(
                    f"FHIR test server exited with {process.returncode}:\n{self.log()}"
                )
            if self._base_url is None and (match := _LISTENING.search(self.log())):
                self._base_url = match.group(1)
            if self._base_url is not None:
                try:
                    if httpx.get(f"{self._base_url}/healthz", timeout=1.0).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise FhirServerError(
            f"FHIR test server not healthy after {self.startup_timeout}s:\n{self.log()}"
        )

    def log(self) -> str:
        """Everything the node process printed so far (for error messages)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate our own node process by PID: SIGTERM, wait, then SIGKILL if needed."""
        process, self._process, self._base_url = self._process, None, None
        if process is not None:
            stop_process(process, timeout=5)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client bound to ``base_url`` that sends ``headers``."""
        return httpx.Client(base_url=self.base_url, headers=self.headers, **kwargs)

    def load(self, bundle: dict[str, Any], *, keep_ids: bool = False) -> dict[str, Any]:
        """POST a transaction Bundle and return the transaction-response Bundle.

        Medplum assigns new ids to every ``POST`` entry and rewrites ``urn:uuid:`` references
        to them (``Patient/<new id>``; see each entry's ``response.location``). With
        ``keep_ids=True`` POST entries that carry an ``id`` become ``PUT Type/id`` (create by
        update), so the ids in a Synthea file survive and tests can hard-code them. Medplum
        refuses transactions with more than 50 updates, so that bundle is sent as a ``batch``
        (same urn:uuid rewriting, no all-or-nothing) and every entry's status is checked.
        """
        if keep_ids:
            bundle = copy.deepcopy(bundle)
            bundle["type"] = "batch"
            for entry in bundle.get("entry", []):
                resource, request = entry.get("resource", {}), entry.get("request", {})
                if request.get("method") == "POST" and resource.get("id"):
                    entry["request"] = {
                        "method": "PUT",
                        "url": f"{resource['resourceType']}/{resource['id']}",
                    }
        response = httpx.post(
            f"{self.base_url}/",
            json=bundle,
            headers={**self.headers, "Content-Type": "application/fhir+json"},
            timeout=60.0 + self.delay_ms / 1000,
        )
        if response.status_code != 200:
            raise FhirServerError(f"transaction failed ({response.status_code}): {response.text}")
        result: dict[str, Any] = response.json()
        failed = [
            e["response"] for e in result.get("entry", []) if e["response"]["status"][0] != "2"
        ]
        if failed:
            raise FhirServerError(f"{len(failed)} bundle entries failed, first: {failed[0]}")
        return result

    def reset(self) -> None:
        """Delete all resources (server-side ``POST /_test/reset``), keeping the process."""
        response = httpx.post(
            f"{self.base_url}/_test/reset",
            headers=self.headers,
            timeout=10.0 + self.delay_ms / 1000,
        )
        response.raise_for_status()


def run_fhir_server(*, token: str | None = None, delay_ms: int = 0) -> Iterator[FhirTestServer]:
    """Generator for pytest fixtures: ``yield from run_fhir_server()`` starts and stops one."""
    with FhirTestServer(token=token, delay_ms=delay_ms) as server:
        yield server
