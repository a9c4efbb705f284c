"""`twitch-cds demo` as a tester runs it: a real subprocess on free loopback ports.

Tests read what it prints (sandbox links, curl lines), call both servers, and stop it the way
a tester does (SIGINT, i.e. Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

READY = "twitch-cds demo is running"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RunningDemo:
    """`python -m cds.tools.cli demo` with its own ports, database and extra environment."""

    def __init__(
        self, workdir: Path, env: dict[str, str] | None = None, startup_timeout: float = 120.0
    ) -> None:
        self.port, self.fhir_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.discovery_url = f"{self.base_url}/cds-services"
        self.fhir_url = f"http://127.0.0.1:{self.fhir_port}"
        self.database_url = f"sqlite:///{workdir / 'demo.sqlite3'}"
        self.log_path = workdir / "demo.log"
        self.service_log = workdir / "service.log"
        self._env = {**os.environ, "TWITCH_CDS_DATABASE_URL": self.database_url, **(env or {})}
        self._startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RunningDemo:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cds.tools.cli",
                    "demo",
                    "--port",
                    str(self.port),
                    "--fhir-port",
                    str(self.fhir_port),
                    "--log-file",
                    str(self.service_log),
                ],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self._startup_timeout
        while READY not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"twitch-cds demo did not start:\n{self.output()[-3000:]}")
            time.sleep(0.2)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, signum: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Ctrl-C by default; returns the exit code (SIGKILL only if it hangs)."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        return process.returncode

    def __enter__(self) -> RunningDemo:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.stop()
