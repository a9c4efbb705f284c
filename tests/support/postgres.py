"""Throwaway PostgreSQL clusters for storage tests.

Storage code must be tested against a real server (locking, ON CONFLICT,
durability), not SQLite, so each test session gets its own cluster: created
with ``initdb`` in a temp directory, listening only on 127.0.0.1 on a free
port, trust auth, ``fsync=on``, and removed again on :meth:`PostgresTestServer.stop`.

The server binaries come from the Debian ``postgresql`` package; run
``scripts/install-test-deps.sh`` to install them.

The pytest fixtures wrapping it are in ``tests/conftest.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = [
    "PostgresBinariesNotFound",
    "PostgresStartError",
    "PostgresTestServer",
    "find_postgres_bindir",
    "running_postgres",
    "start_postgres",
    "temporary_database",
]

INSTALL_HINT = "run scripts/install-test-deps.sh to install the PostgreSQL server binaries"
SUPERUSER = "postgres"
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
# Keep database names to plain identifiers so they need no quoting in URLs.
_DB_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_START_ATTEMPTS = 3  # retries only cover losing the free-port race


class PostgresBinariesNotFound(RuntimeError):
    """initdb/pg_ctl/postgres are not installed; a fixture may turn this into a skip."""


class PostgresStartError(RuntimeError):
    """The cluster could not be initialised or did not come up in time."""


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED_BINARIES)


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<ver>/bin -> prefer the newest major version.
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def find_postgres_bindir() -> Path:
    """Locate the directory holding initdb, pg_ctl and postgres.

    Order: ``$PG_BINDIR`` (explicit override), ``pg_config --bindir``, the
    Debian layout ``/usr/lib/postgresql/*/bin``, then ``$PATH``. Debian's
    ``pg_config`` (from libpq-dev) reports the server bindir even when the
    server is not installed, so every candidate is checked for the binaries.
    """
    candidates: list[Path] = []
    if env_bindir := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env_bindir))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if _has_binaries(bindir):
            return bindir
    raise PostgresBinariesNotFound(
        f"PostgreSQL server binaries ({', '.join(_REQUIRED_BINARIES)}) not found "
        f"(looked in: {', '.join(map(str, candidates)) or 'nothing'}); {INSTALL_HINT}"
    )


def _free_port() -> int:
    # Racy by nature (someone may grab it before postgres binds); start() retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # PGDATA/PGPORT/PGHOST/PGSSLMODE etc. from the developer's shell must not
    # leak into the throwaway cluster or our admin connections.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PostgresTestServer:
    """A private PostgreSQL cluster living in a temp dir; use as a context manager.

    ``start()`` runs ``initdb`` and launches ``postgres``; ``stop()`` shuts it
    down (``pg_ctl stop -m fast``; SIGQUIT/SIGKILL by PID as fallback) and deletes
    the temp dir.
    When running as root every server binary runs as the ``postgres`` OS user
    via ``runuser``, because PostgreSQL refuses to run as root.
    """

    def __init__(
        self,
        bindir: Path | None = None,
        *,
        startup_timeout: float = 30.0,
        base_tmpdir: str | None = None,
    ) -> None:
        self.bindir = bindir if bindir is not None else find_postgres_bindir()
        if not _has_binaries(self.bindir):
            raise PostgresBinariesNotFound(
                f"{self.bindir} lacks {', '.join(_REQUIRED_BINARIES)}; {INSTALL_HINT}"
            )
        self.startup_timeout = startup_timeout
        self._base_tmpdir = base_tmpdir
        self._run_as: list[str] = self._run_as_prefix()
        self._env = _clean_env()
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._pid: int | None = None

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> PostgresTestServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server is not running")
        return self._port

    @property
    def pid(self) -> int:
        """PID of the postmaster (not of the runuser wrapper), for liveness checks."""
        if self._pid is None:
            raise RuntimeError("server is not running")
        return self._pid

    @property
    def data_dir(self) -> Path:
        return self._require_tmpdir() / "data"

    @property
    def log_path(self) -> Path:
        return self._require_tmpdir() / "postgres.log"

    @property
    def tmpdir(self) -> Path:
        return self._require_tmpdir()

    def start(self) -> PostgresTestServer:
        """Create the cluster and block until it accepts TCP connections."""
        if self._proc is not None:
            raise RuntimeError("server already started")
        tmpdir = Path(tempfile.mkdtemp(prefix="twitch-cds-pg-", dir=self._base_tmpdir))
        self._tmpdir = tmpdir
        # Stop even if the test process exits without reaching stop()/__exit__.
        atexit.register(self.stop)
        try:
            if self._run_as:
                user = pwd.getpwnam(SUPERUSER)
                os.chown(tmpdir, user.pw_uid, user.pw_gid)
            self._initdb()
            for attempt in range(1, _START_ATTEMPTS + 1):
                if self._launch_and_wait(final_attempt=attempt == _START_ATTEMPTS):
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop the cluster and delete its directory; safe to call repeatedly."""
        atexit.unregister(self.stop)
        try:
            if self._proc is not None:
                self._shutdown()
        finally:
            self._proc = None
            self._pid = None
            self._port = None
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    # -- databases -----------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``database`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect_admin(self, *, via_socket: bool = False) -> psycopg.Connection[TupleRow]:
        """Autocommit superuser connection to the ``postgres`` database.

        ``via_socket`` uses the Unix socket in our private temp dir, which can
        only belong to our server; TCP could reach a process squatting the port.
        """
        return psycopg.connect(
            host=str(self.tmpdir) if via_socket else "127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            sslmode="disable",
            connect_timeout=5,
            autocommit=True,  # CREATE/DROP DATABASE cannot run in a transaction
        )

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        _check_db_name(name)
        with self.connect_admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, terminating leftover sessions (e.g. an undisposed pool)."""
        _check_db_name(name)
        with self.connect_admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- internals -----------------------------------------------------------

    def _require_tmpdir(self) -> Path:
        if self._tmpdir is None:
            raise RuntimeError("server is not running")
        return self._tmpdir

    @staticmethod
    def _run_as_prefix() -> list[str]:
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        if not os.access(runuser, os.X_OK):
            raise PostgresStartError("running as root but runuser(1) is not available")
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise PostgresBinariesNotFound(
                f"running as root but there is no {SUPERUSER!r} OS user; {INSTALL_HINT}"
            ) from None
        return [runuser, "-u", SUPERUSER, "--"]

    def _cmd(self, binary: str, *args: str) -> list[str]:
        return [*self._run_as, str(self.bindir / binary), *args]

    def _run(self, cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd,
            cwd=self._require_tmpdir(),  # postgres user may not be able to read our cwd
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _initdb(self) -> None:
        result = self._run(
            self._cmd(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                # Skips only initdb's final bulk sync of template files: the
                # cluster is disposable. The *server* still runs with fsync=on.
                "--no-sync",
            ),
            timeout=120,
        )
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    def _launch_and_wait(self, *, final_attempt: bool) -> bool:
        """Launch postgres on a fresh port; False means "port taken, try again"."""
        port = _free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.tmpdir),
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
        }
        args = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        log = self.log_path.open("ab")
        log_offset = log.tell()
        try:
            # Run postgres in the foreground (not `pg_ctl start`) so we hold a
            # handle: an early crash is noticed immediately instead of after the
            # timeout. A new session keeps terminal Ctrl-C away from it, so
            # shutdown always goes through stop().
            self._proc = subprocess.Popen(
                self._cmd("postgres", "-D", str(self.data_dir), *args),
                cwd=self.tmpdir,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._port = port
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.01
        while True:
            if self._proc.poll() is not None:
                log_text = self._log_tail(offset=log_offset)
                self._proc = None
                self._port = None
                if "could not bind" in log_text and not final_attempt:
                    return False
                raise PostgresStartError(f"postgres exited during startup:\n{log_text}")
            try:
                # The postmaster only accepts connections once all its listen
                # sockets exist, so an answer here means 127.0.0.1:<port> is ours.
                with self.connect_admin(via_socket=True) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    self._shutdown()
                    raise PostgresStartError(
                        f"postgres not accepting connections after {self.startup_timeout}s: "
                        f"{exc}\n{self._log_tail(offset=log_offset)}"
                    ) from exc
                time.sleep(delay)  # back-off between polls, not a fixed wait
                delay = min(delay * 2, 0.2)
                continue
            with self.connect_admin() as conn:  # and the URL we hand out works
                conn.execute("SELECT 1")
            self._pid = self._read_postmaster_pid()
            return True

    def _read_postmaster_pid(self) -> int:
        # With runuser in between, Popen.pid is the wrapper; the real
        # postmaster PID is the first line of postmaster.pid.
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def _shutdown(self) -> None:
        proc = self._proc
        if proc is None:
            return
        pid = self._pid
        if pid is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = self._read_postmaster_pid()
        try:
            result = self._run(
                self._cmd(
                    "pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30"
                ),
                timeout=40,
            )
            stopped = result.returncode == 0
        except subprocess.TimeoutExpired:
            stopped = False
        if stopped:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if proc.poll() is None:
            self._kill(proc, pid)
        self._proc = None

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], pid: int | None) -> None:
        """Fallback when pg_ctl fails: signal the postmaster by PID.

        SIGQUIT first (immediate shutdown): the postmaster still reaps its
        backends and frees its SysV shared memory. SIGKILL would orphan the
        backends and leak that segment, so it is only the last resort.
        """
        target = pid if pid is not None else proc.pid
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(target, sig)
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the runuser wrapper's session
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def _log_tail(self, lines: int = 40, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no postgres log)"
        return "\n".join(text.splitlines()[-lines:])


def _check_db_name(name: str) -> None:
    if not _DB_NAME_RE.fullmatch(name):
        raise ValueError(f"database name must match {_DB_NAME_RE.pattern}: {name!r}")


def start_postgres(
    bindir: Path | None = None, *, startup_timeout: float = 30.0
) -> PostgresTestServer:
    """Start a throwaway server; the caller must call ``stop()``."""
    return PostgresTestServer(bindir, startup_timeout=startup_timeout).start()


@contextlib.contextmanager
def running_postgres(
    bindir: Path | None = None, *, startup_timeout: float = 30.0
) -> Iterator[PostgresTestServer]:
    """Context manager form of :func:`start_postgres`, for session fixtures."""
    server = start_postgres(bindir, startup_timeout=startup_timeout)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def temporary_database(server: PostgresTestServer, name: str | None = None) -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards.

    One database per test keeps tests isolated without paying for a new cluster.
    """
    db_name = name or f"test_{uuid.uuid4().hex[:16]}"
    url = server.create_database(db_name)
    try:
        yield url
    finally:
        server.drop_database(db_name)
