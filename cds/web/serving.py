"""Running the service under uvicorn: `twitch-cds serve`.

Host, port and worker count default to `TWITCH_CDS_HOST`, `TWITCH_CDS_PORT` and
`TWITCH_CDS_WORKERS`, so a container is configured by its environment alone.

The database is migrated first, in a child process (`migrate_in_child`). Shutdown is
graceful: on SIGTERM or SIGINT uvicorn stops accepting connections, lets the
requests in flight finish (up to `GRACEFUL_SHUTDOWN_SECONDS`), then runs the app's shutdown
(database connections closed) in every worker.

With `TWITCH_CDS_METRICS_PORT` set, this process (uvicorn's supervisor when there are several
workers) also answers `/metrics` on that port, from a thread: the workers' multiprocess files
are summed as on the service port, which then no longer answers `/metrics`.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from cryptography.fernet import Fernet

from cds.logs import server_log_config

GRACEFUL_SHUTDOWN_SECONDS = 10
_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# prometheus-client's multiprocess mode (see cds.metrics), chosen when it is first imported.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SESSION_KEY_ENV = "TWITCH_CDS_APP_SESSION_KEY"


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"TWITCH_CDS_{name}", default)


def serve(host: str, port: int, workers: int) -> None:
    from cds.settings import Settings

    settings = Settings()
    metrics_port = settings.metrics_port
    if metrics_port == port:
        raise SystemExit(f"twitch-cds serve: TWITCH_CDS_METRICS_PORT must differ from {port}")
    try:
        settings.check_audience()
    except ValueError as problem:  # said here in one line, not as a traceback of every worker
        raise SystemExit(f"twitch-cds serve: {problem}") from None
    migrate_in_child()
    share_session_key(settings.app_session_key)
    with tempfile.TemporaryDirectory(prefix="twitch-cds-metrics-") as scratch:
        prepare_metrics_directory(Path(os.environ.get(METRICS_DIR_ENV) or scratch))
        if metrics_port is not None:
            serve_metrics(host, metrics_port)
        # uvicorn's own lines (before the app configures logging, and in the supervisor of
        # the workers) are JSON like the service's. The root level follows the service
        # setting; the app's settings validate it again at start.
        level = os.environ.get("TWITCH_CDS_LOG_LEVEL", "INFO").upper()
        uvicorn.run(
            "cds.web.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            log_config=server_log_config(level if level in _LEVELS else "INFO"),
        )


def share_session_key(configured: str | None) -> None:
    """Give every worker of this server one key for the assessment app's session cookie.

    The launch, the authorization callback and the submit may each reach another worker; a
    key made in each worker would open no other worker's cookie, and the callback would tell
    the clinician to launch again. Made here, before the workers start, it holds for this
    server; replicas (and restarts) still need `TWITCH_CDS_APP_SESSION_KEY`.
    """
    if configured is None:
        os.environ[SESSION_KEY_ENV] = Fernet.generate_key().decode()


def migrate_in_child() -> None:
    """Bring the database to the current schema in a short-lived child process.

    The workers then find it current and never load Alembic (see `cds.store.storage.SCHEMA_HEAD`);
    with one worker, uvicorn serves from this very process, which must not load it either.
    """
    child = multiprocessing.get_context("fork").Process(target=_migrate, name="migrate")
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"twitch-cds serve: database migration failed (exit {child.exitcode})")


def _migrate() -> None:
    from cds.settings import Settings
    from cds.store.storage import migrate_database

    migrate_database(Settings().database_url)


def serve_metrics(host: str, port: int) -> None:
    """Answer Prometheus on its own port, from a daemon thread of this process.

    Called after `prepare_metrics_directory`: prometheus-client, imported here, must find the
    multiprocess directory set. A port already taken stops the start (OSError), as uvicorn's
    own port does.
    """
    from prometheus_client import start_http_server

    from cds.metrics import exposed_registry

    start_http_server(port, addr=host, registry=exposed_registry())


def prepare_metrics_directory(directory: Path) -> None:
    """Every worker process counts into files of one directory, which /metrics sums.

    It is emptied (files of a previous run would be summed into this one) and exported
    before uvicorn starts the workers, which inherit it, and before this process imports
    prometheus-client, which reads it once at import.
    """
    if directory.exists():
        for child in directory.iterdir():
            if child.is_file():
                child.unlink()
            else:
                shutil.rmtree(child)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[METRICS_DIR_ENV] = str(directory)
