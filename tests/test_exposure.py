"""What the service port shows to whoever reaches it: the interactive API docs only when
TWITCH_CDS_API_DOCS allows, and /metrics only when no TWITCH_CDS_METRICS_PORT moves it to a
port of its own (served by `twitch-cds serve`, summed over the worker processes)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SERVICE_PV, LiveServer, free_port
from tests.support.cli import run
from tests.support.fhir import hook_request, lab, twitch
from tests.support.outcome import refusal
from tests.support.workers import calls_on_every_worker

DOCS = ("/docs", "/redoc", "/openapi.json")


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return float(found.value)
    return 0.0


def test_api_docs_are_served_by_default(client: TestClient) -> None:
    for path in DOCS:
        assert client.get(path).status_code == 200, path
    assert "/cds-services/{service_id}" in client.get("/openapi.json").json()["paths"]


def test_api_docs_setting_off_removes_them(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_docs=False)
    for path in DOCS:
        refusal(client.get(path), 404)
    assert client.get("/cds-services").status_code == 200  # the API itself is unchanged


def test_metrics_stay_on_the_service_port_by_default(client: TestClient) -> None:
    assert client.get("/cds-services").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert sample(response.text, "twitch_cds_http_requests_total", route="/cds-services") >= 1


def test_a_metrics_port_takes_metrics_off_the_service_port(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(metrics_port=free_port())
    refusal(client.get("/metrics"), 404)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_serve_answers_metrics_on_the_metrics_port_summed_over_workers(
    start_server: Callable[..., LiveServer],
) -> None:
    metrics_port = free_port()
    server = start_server(workers=2, TWITCH_CDS_METRICS_PORT=str(metrics_port))
    url = f"{server.base_url}/cds-services/{SERVICE_PV}"
    request = hook_request(twitch(), lab("19123-9", 1.4, "mg/dL"))
    calls = calls_on_every_worker(url, request, workers=2).total()
    refusal(httpx.get(f"{server.base_url}/metrics", timeout=10), 404)
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    labels = {"route": "/cds-services/{service_id}", "service": SERVICE_PV, "status": "200"}
    assert sample(scrape.text, "twitch_cds_http_requests_total", **labels) == calls
    assert (
        sample(
            scrape.text,
            "twitch_cds_cards_total",
            service=SERVICE_PV,
            indicator="warning",
            topic="hypomagnesemia",
        )
        == calls
    )


def test_serve_refuses_a_metrics_port_equal_to_the_service_port() -> None:
    port = free_port()
    status, _, stderr = run(
        "serve",
        "--port",
        str(port),
        env={"TWITCH_CDS_AUTH": "none", "TWITCH_CDS_METRICS_PORT": str(port)},
    )
    assert status == 1
    assert f"TWITCH_CDS_METRICS_PORT must differ from {port}" in stderr
