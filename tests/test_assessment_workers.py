"""The assessment app behind `twitch-cds serve --workers 2` with no session key configured: a
session cookie sealed by one worker must open in the other, since the launch, the callback and
the submit of one clinician may each reach another worker (cds/web/serving.py)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import LiveServer
from tests.support.fhir_server import FhirTestServer, node_available
from tests.support.waiting import wait_for
from tests.support.workers import CONCURRENT_CALLS, worker_of

pytestmark = pytest.mark.skipif(not node_available(), reason="node is needed for the FHIR server")


def test_a_session_made_by_one_worker_opens_in_every_worker(
    start_server: Callable[..., LiveServer], fhir: FhirTestServer
) -> None:
    server = start_server(workers=2, TWITCH_CDS_FHIR_ALLOWED_BASES=fhir.base_url)
    # A standalone launch on an open FHIR server (no SMART configuration) opens the session
    # at once: the answer carries the sealed cookie.
    launched = httpx.get(
        f"{server.base_url}/app/launch",
        params={"iss": fhir.base_url, "patient": "patient-1"},
        timeout=30,
    )
    assert launched.status_code == 303, launched.text
    cookies = launched.cookies
    assert cookies, "the launch set no session cookie"
    answered: dict[str, int] = {}

    def open_form(_: int) -> None:
        with httpx.Client(cookies=cookies) as client:  # a new connection: any worker
            page = client.get(f"{server.base_url}/app/", timeout=30)
        answered[worker_of(page)] = page.status_code

    def both_workers_answered() -> bool:
        with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
            list(pool.map(open_form, range(CONCURRENT_CALLS)))
        return len(answered) == 2

    wait_for(both_workers_answered, "the form page answered by both workers")
    assert set(answered.values()) == {200}, answered
