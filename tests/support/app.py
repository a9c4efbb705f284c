"""One in-process app per test module, for modules whose calls leave no state behind.

Hook calls keep no state between requests, and hundreds of app start-ups would dominate the
run time, so such modules share one app (overriding the per-test `client` of conftest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds.settings import Settings
from cds.web.app import create_app


def module_client() -> Callable[..., Any]:
    """A module-scoped `client` fixture: assign it as `client = module_client()`."""

    @pytest.fixture(scope="module")
    def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
        database = tmp_path_factory.mktemp("app") / "cds.sqlite3"
        settings = Settings(auth="none", database_url=f"sqlite:///{database}")
        with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
            yield test_client

    return client
