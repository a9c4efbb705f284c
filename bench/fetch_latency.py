"""Benchmark: what fetching from the EHR's FHIR server costs, against full prefetch, in one run.

Starts the suite's FHIR test server (Medplum, tests/support/fhir_server.py) and a real
`twitch-cds serve` (uvicorn subprocess, TWITCH_CDS_AUTH=none, SQLite in a temporary
directory), loads one Synthea patient plus a twitch complaint, then times patient-view calls:

- "no prefetch": only `fhirServer`; the service runs all six prefetch queries itself;
- "full prefetch": the same data, fetched once beforehand with the service's own templates
  (following `next` links), sent in the request as an EHR would.

The two kinds of call alternate, so drift on the machine affects both alike. Both answers are
checked to be the same cards before timing. Loopback only; sequential calls (latency, not
throughput: see bench/load.py for that).

    .venv/bin/python bench/fetch_latency.py [--calls 200] [--warmup 20] [--patient Renato_Dare]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(ROOT))

from tests.support.fhir_server import FhirTestServer  # noqa: E402

SERVICE = "fasciculation-pv"
SYNTHEA = ROOT.parent / "shared" / "fixtures" / "synthea"
TWITCH = {
    "system": "http://hl7.org/fhir/sid/icd-10-cm",
    "code": "R25.3",
    "display": "Fasciculation",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`twitch-cds serve` on a free port, logging to a file; returns it once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "TWITCH_CDS_AUTH": "none",
        "TWITCH_CDS_DATABASE_URL": f"sqlite:///{directory / 'cds.sqlite3'}",
    }
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cds.tools.cli", "serve", "--port", str(port), "--workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited: {(directory / 'server.log').read_text()}")
        try:
            if httpx.get(f"{base_url}/cds-services", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("service did not start")


def load_patient(fhir: FhirTestServer, name: str) -> str:
    """Loads the Synthea patient (ids kept) and a twitch complaint; returns the Patient id."""
    path = next(SYNTHEA.glob(f"{name}_*.json"), None)
    if path is None:
        raise SystemExit(f"no Synthea fixture {name}_*.json in {SYNTHEA}")
    bundle = json.loads(path.read_text())
    patient_id: str = next(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    fhir.load(bundle, keep_ids=True)
    complaint = {
        "resourceType": "Condition",
        "id": "bench-twitch",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [TWITCH]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "onsetDateTime": time.strftime("%Y-%m-%d"),
    }
    fhir.load(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "resource": complaint,
                    "request": {"method": "PUT", "url": "Condition/bench-twitch"},
                }
            ],
        }
    )
    return patient_id


def service_templates(service_url: str) -> dict[str, str]:
    services = httpx.get(f"{service_url}/cds-services").json()["services"]
    templates: dict[str, str] = next(s for s in services if s["id"] == SERVICE)["prefetch"]
    return templates


def full_prefetch(
    fhir: FhirTestServer, templates: dict[str, str], patient_id: str
) -> dict[str, Any]:
    """What an EHR would prefetch: every template of the service, all pages, from the server."""
    prefetch: dict[str, Any] = {}
    with fhir.client(timeout=30) as client:
        for key, template in templates.items():
            url: str | None = template.replace("{{context.patientId}}", patient_id)
            entries: list[dict[str, Any]] = []
            while url:
                body = client.get(url).json()
                if body["resourceType"] != "Bundle":
                    prefetch[key] = body
                    break
                entries += body.get("entry", [])
                url = next(
                    (link["url"] for link in body.get("link", []) if link["relation"] == "next"),
                    None,
                )
            else:
                prefetch[key] = {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "total": len(entries),
                    "entry": entries,
                }
    return prefetch


async def measure(
    service_url: str,
    fhir: FhirTestServer,
    templates: dict[str, str],
    patient_id: str,
    prefetch: dict[str, Any],
    calls: int,
    warmup: int,
) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """Milliseconds per call of each kind, rounds interleaved; and the cards (checked equal).

    "FHIR alone" is the six template queries run concurrently, all pages, straight against
    the FHIR server, as the service runs them: the floor under "no prefetch".
    """
    context = {"patientId": patient_id, "userId": "Practitioner/bench"}
    urls = [
        f"{fhir.base_url}/{t.replace('{{context.patientId}}', patient_id)}"
        for t in templates.values()
    ]

    async def query(client: httpx.AsyncClient, url: str | None) -> None:
        while url:
            body = (await client.get(url, headers=fhir.headers)).json()
            url = next(
                (link["url"] for link in body.get("link", []) if link["relation"] == "next"), None
            )

    async def call(
        client: httpx.AsyncClient, extra: dict[str, Any], hook_instance: str
    ) -> list[dict[str, Any]]:
        body = {"hook": "patient-view", "hookInstance": hook_instance, "context": context, **extra}
        response = await client.post(f"{service_url}/cds-services/{SERVICE}", json=body)
        if response.status_code != 200:
            raise SystemExit(f"{response.status_code} {response.text}")
        cards: list[dict[str, Any]] = response.json()["cards"]
        return cards

    kinds = {"no prefetch": {"fhirServer": fhir.base_url}, "full prefetch": {"prefetch": prefetch}}
    timings: dict[str, list[float]] = {kind: [] for kind in [*kinds, "FHIR alone"]}
    async with httpx.AsyncClient(timeout=30) as client:
        hook_instance = str(uuid.uuid4())
        answers = [await call(client, extra, hook_instance) for extra in kinds.values()]
        if answers[0] != answers[1]:
            raise SystemExit("the same data fetched and prefetched gave different cards")
        for round_ in range(warmup + calls):
            for kind, extra in kinds.items():
                started = time.perf_counter()
                await call(client, extra, str(uuid.uuid4()))
                elapsed = time.perf_counter() - started
                if round_ >= warmup:
                    timings[kind].append(elapsed * 1000)
            started = time.perf_counter()
            await asyncio.gather(*(query(client, url) for url in urls))
            if round_ >= warmup:
                timings["FHIR alone"].append((time.perf_counter() - started) * 1000)
    return timings, answers[1]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: an observed latency)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls of each kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds first")
    parser.add_argument("--patient", default="Renato_Dare", help="Synthea file name prefix")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="twitch-cds-bench-") as tmp, FhirTestServer() as fhir:
        process, service_url = start_service(Path(tmp))
        try:
            patient_id = load_patient(fhir, args.patient)
            templates = service_templates(service_url)
            prefetch = full_prefetch(fhir, templates, patient_id)
            resources = sum(
                len(v.get("entry", [])) if v["resourceType"] == "Bundle" else 1
                for v in prefetch.values()
            )
            timings, cards = asyncio.run(
                measure(service_url, fhir, templates, patient_id, prefetch, args.calls, args.warmup)
            )
        finally:
            process.terminate()
            process.wait(timeout=20)
        fetch_ms = [
            event["fetch_ms"]
            for event in log_events(Path(tmp) / "server.log", "hook")
            if event.get("fetched")
        ][-args.calls :]

    codes = sorted(c["source"]["topic"]["code"] for c in cards)
    print(
        f"patient {args.patient} ({patient_id}): {resources} resources in the prefetch, "
        f"cards {', '.join(codes)}"
    )
    print(
        f"{args.calls} sequential patient-view calls of each kind, interleaved, "
        f"after {args.warmup} warm-up rounds; 1 uvicorn worker, loopback"
    )
    print(f"{'':14} {'median ms':>10} {'p95 ms':>10} {'min ms':>10} {'max ms':>10}")
    for kind, values in timings.items():
        print(
            f"{kind:14} {statistics.median(values):10.1f} {percentile(values, 0.95):10.1f} "
            f"{min(values):10.1f} {max(values):10.1f}"
        )
    print("(FHIR alone: the six template queries, concurrent, straight to the FHIR server)")
    fetched, prefetched = timings["no prefetch"], timings["full prefetch"]
    print(
        f"ratio no/full  {statistics.median(fetched) / statistics.median(prefetched):10.2f} "
        f"{percentile(fetched, 0.95) / percentile(prefetched, 0.95):10.2f}"
    )
    if fetch_ms:
        print(
            f"no prefetch, of which fetching (service log `fetch_ms`): median "
            f"{statistics.median(fetch_ms):.1f} ms, p95 {percentile(fetch_ms, 0.95):.1f} ms"
        )


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The service's JSON log lines of one event."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                events.append(entry)
    return events


if __name__ == "__main__":
    main()
