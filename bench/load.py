"""Benchmark: twitch-cds under load, against a bare FastAPI floor, in one run.

Starts `twitch-cds serve --workers 2` (SQLite in a temporary directory, authentication off,
INFO logs to a file as in production) and drives N patient-view calls at concurrency C with a
realistic ~100-resource prefetch body (~60 KB, a twitch complaint, so cards are produced). Then
the same load against a bare FastAPI app started the same way (uvicorn, same worker count,
access log off) that only parses the body and answers {"cards": []}: the floor of the stack.

    .venv/bin/python bench/load.py [--requests 5000] [--concurrency 32] [--workers 2]
                                   [--tool auto|wrk|httpx|raw]

Uses `wrk` (Debian package `wrk`) with one thread when it is installed, so the load generator
leaves a core to the server on a 2-core machine; else an httpx load generator (which costs
far more CPU per request than wrk: its numbers are lower bounds). Loopback only. Prints
req/s, latency p50/p95/p99, errors and the server workers' RSS.

`bench_request()` is also the body of the load test (tests/test_load_and_faults.py), and
`RawConnection` its client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "fasciculation-pv"
PATIENT_ID = "bench-patient-1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
# The findings the bench record supports (see bench_request): low magnesium, a proton-pump
# inhibitor that lowers it, and prednisone. No lifestyle review: it is not shown beside the
# low-magnesium warning.
EXPECTED_CARDS = frozenset({"hypomagnesemia", "electrolyte-depleting-drug", "corticosteroid"})

# --- the request body -----------------------------------------------------------------------


def _day(days_ago: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days_ago)).isoformat()


def _ref() -> dict[str, str]:
    return {"reference": f"Patient/{PATIENT_ID}"}


def _category(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                         "code": code}]}]


def _lab(n: int, loinc: str, display: str, value: float, unit: str, days_ago: int,
         low: float, high: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": f"lab-{n}", "status": "final",
        "category": _category("laboratory"),
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
        "subject": _ref(), "effectiveDateTime": f"{_day(days_ago)}T08:30:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "referenceRange": [{"low": {"value": low, "unit": unit},
                            "high": {"value": high, "unit": unit}}],
    }


def _vital(n: int, loinc: str, display: str, value: float, unit: str,
           days_ago: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": f"vital-{n}", "status": "final",
        "category": _category("vital-signs"),
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
        "subject": _ref(), "effectiveDateTime": f"{_day(days_ago)}T09:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _condition(n: int, code: str, system: str, display: str, days_ago: int,
               clinical: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition", "id": f"cond-{n}",
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": clinical}]},
        "verificationStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": "confirmed"}]},
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
            "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": system, "code": code, "display": display}],
                 "text": display},
        "subject": _ref(), "onsetDateTime": _day(days_ago), "recordedDate": _day(days_ago),
    }


def _medication(n: int, rxcui: str, display: str, status: str, days_ago: int,
                kind: str = "MedicationRequest") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": kind, "id": f"med-{n}", "status": status,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxcui,
                                                  "display": display}], "text": display},
        "subject": _ref(),
    }
    if kind == "MedicationRequest":
        resource.update(intent="order", authoredOn=_day(days_ago),
                        requester={"reference": "Practitioner/bench-doc"},
                        dosageInstruction=[{"text": "as directed", "timing": {
                            "repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}])
    else:
        resource["effectivePeriod"] = {"start": _day(days_ago)}
    return resource


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, r['id'])}",
                       "resource": r} for r in resources]}


def bench_resources() -> dict[str, list[dict[str, Any]]]:
    """~100 resources of one patient: five years of labs and vitals, problems, drugs."""
    labs: list[dict[str, Any]] = []
    panels = [  # (LOINC, display, unit, low, high, values oldest..newest)
        ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", 1.7, 2.2,
         [2.0, 1.9, 1.8, 1.7, 1.6, 1.4]),
        ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3,
         [9.4, 9.2, 9.5, 9.1, 9.3, 9.2]),
        ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1,
         [4.2, 4.0, 4.4, 3.9, 4.1, 4.0]),
        ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145,
         [140, 139, 141, 138, 140, 139]),
        ("62292-8", "25-Hydroxyvitamin D2+D3 [Mass/volume] in Serum or Plasma", "ng/mL",
         30, 100, [32, 35, 31, 38, 34, 36]),
        ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0,
         [4.2, 4.1, 4.3, 4.0, 4.2, 4.1]),
        ("2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma", "pg/mL",
         200, 900, [450, 480, 430, 460, 470, 455]),
        ("2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma", "U/L",
         30, 200, [90, 110, 95, 100, 105, 98]),
        ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.4, 4.0,
         [1.8, 2.1, 1.9, 2.0, 2.2, 1.7]),
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99,
         [92, 88, 95, 90, 97, 93]),
        ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2,
         [0.9, 0.8, 0.9, 1.0, 0.9, 0.9]),
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12, 16,
         [13.5, 13.8, 13.2, 13.6, 13.9, 13.4]),
    ]
    ages = [1800, 1460, 1095, 730, 365, 14]  # days ago: five years, the latest two weeks ago
    n = 0
    for loinc, display, unit, low, high, values in panels:
        for value, days_ago in zip(values, ages, strict=True):
            n += 1
            labs.append(_lab(n, loinc, display, value, unit, days_ago, low, high))
    vitals = [_vital(i, code, display, value, unit, days)
              for i, (code, display, value, unit, days) in enumerate([
                  ("8867-4", "Heart rate", 72, "/min", 14), ("8867-4", "Heart rate", 70, "/min",
                                                             365),
                  ("8480-6", "Systolic blood pressure", 128, "mm[Hg]", 14),
                  ("8462-4", "Diastolic blood pressure", 82, "mm[Hg]", 14),
                  ("29463-7", "Body weight", 71.5, "kg", 14),
                  ("8302-2", "Body height", 168, "cm", 14),
                  ("39156-5", "Body mass index", 25.3, "kg/m2", 14),
                  ("8310-5", "Body temperature", 36.8, "Cel", 14),
                  ("9279-1", "Respiratory rate", 14, "/min", 14)], start=1)]
    conditions = [
        _condition(1, "R25.3", ICD10, "Fasciculation", 20),
        _condition(2, "38341003", SNOMED, "Hypertensive disorder", 2000),
        _condition(3, "235595009", SNOMED, "Gastroesophageal reflux disease", 900),
        _condition(4, "195967001", SNOMED, "Asthma", 3000),
        _condition(5, "44054006", SNOMED, "Diabetes mellitus type 2", 1500, "resolved"),
        _condition(6, "40055000", SNOMED, "Chronic sinusitis", 2500, "resolved"),
        _condition(7, "10509002", SNOMED, "Acute bronchitis", 400, "resolved"),
        _condition(8, "162864005", SNOMED, "Body mass index 30+ - obesity", 1200, "resolved"),
    ]
    medications = [
        _medication(1, "7646", "omeprazole", "active", 800),
        _medication(2, "312617", "predniSONE 5 MG Oral Tablet", "active", 30),
        _medication(3, "29046", "lisinopril", "active", 1900),
        _medication(4, "6809", "metformin", "stopped", 1400),
        _medication(5, "745679", "albuterol 0.09 MG/ACTUAT inhalant", "active", 2900),
        _medication(6, "308182", "amoxicillin 250 MG Oral Capsule", "completed", 400),
        _medication(7, "161", "acetaminophen", "active", 100, "MedicationStatement"),
        _medication(8, "5640", "ibuprofen", "completed", 600, "MedicationStatement"),
    ]
    family = [{
        "resourceType": "FamilyMemberHistory", "id": "fmh-1", "status": "completed",
        "patient": _ref(),
        "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                     "code": "FTH"}]},
        "condition": [{"code": {"coding": [{"system": SNOMED, "code": "38341003",
                                            "display": "Hypertensive disorder"}]}}],
    }]
    return {"observations": labs + vitals, "conditions": conditions,
            "medicationRequests": [m for m in medications
                                   if m["resourceType"] == "MedicationRequest"],
            "medicationStatements": [m for m in medications
                                     if m["resourceType"] == "MedicationStatement"],
            "familyHistory": family}


def bench_request() -> dict[str, Any]:
    """The patient-view call of the benchmark and of the load test (~100 resources, ~60 KB)."""
    patient = {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female",
               "birthDate": "1981-03-14", "active": True}
    return {
        "hookInstance": str(uuid.uuid4()), "hook": "patient-view",
        "context": {"patientId": PATIENT_ID, "userId": "Practitioner/bench-doc"},
        "prefetch": {"patient": patient,
                     **{key: _bundle(resources) for key, resources in bench_resources().items()}},
    }


def bench_body() -> bytes:
    """`bench_request()` as compact JSON bytes, as sent on the wire."""
    return json.dumps(bench_request(), separators=(",", ":")).encode()


def card_codes(response_json: dict[str, Any]) -> set[str]:
    return {card["source"]["topic"]["code"] for card in response_json["cards"]}


# --- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_bare_app() -> Any:
    """The floor: FastAPI that parses the JSON body and answers no card."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/cds-services/{service_id}")
    async def call(service_id: str, body: dict[str, Any]) -> dict[str, list[Any]]:
        return {"cards": []}

    @app.get("/cds-services")
    async def discovery() -> dict[str, list[Any]]:
        return {"services": []}

    return app


class Server:
    """A server subprocess on a free loopback port; its log goes to a file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen([*command, "--port", str(self.port)], cwd=ROOT,
                                        env={**os.environ, **env}, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self._wait(log_path)

    def _wait(self, log_path: Path) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.base_url}/cds-services", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def rss_mb(self) -> float:
        """RSS of the worker processes (children of the uvicorn supervisor), in MB."""
        import psutil

        children = psutil.Process(self.process.pid).children(recursive=True)
        return sum(child.memory_info().rss for child in children) / 1e6

    def worker_cpu_seconds(self) -> list[float]:
        """CPU time (user + system) of each worker process, largest first."""
        import psutil

        children = psutil.Process(self.process.pid).children(recursive=True)
        return sorted((sum(child.cpu_times()[:2]) for child in children
                       if child.memory_info().rss > 50e6), reverse=True)  # not the tracker

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self._log.close()


def start_service(workers: int, directory: Path) -> Server:
    env = {"TWITCH_CDS_AUTH": "none", "TWITCH_CDS_LOG_LEVEL": "INFO",
           "TWITCH_CDS_DATABASE_URL": f"sqlite:///{directory / 'bench.sqlite3'}"}
    return Server([sys.executable, "-m", "cds.cli", "serve", "--workers", str(workers)],
                  env, directory / "service.log")


def start_bare(workers: int, directory: Path) -> Server:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    return Server([sys.executable, str(Path(__file__).resolve()), "--serve-bare",
                   "--workers", str(workers)], env, directory / "bare.log")


def serve_bare(port: int, workers: int) -> None:
    """Run the bare app the way `twitch-cds serve` runs the service."""
    import uvicorn

    uvicorn.run("bench.load:make_bare_app", factory=True, host="127.0.0.1", port=port,
                workers=workers, access_log=False, proxy_headers=False, server_header=False,
                log_level="warning")


# --- load generators ------------------------------------------------------------------------

WRK_SCRIPT = """
local body_file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = body_file:read("*a")
body_file:close()
local limit = tonumber(os.getenv("BENCH_REQUESTS"))
local expect = os.getenv("BENCH_EXPECT")
local done_path = os.getenv("BENCH_DONE")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  answered = 0
  bad = 0
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 or (expect ~= "" and not string.find(body, expect, 1, true)) then
    bad = bad + 1
  end
  if answered == limit then
    -- wrk's main thread sleeps for -d regardless: tell the driver, which sends SIGINT.
    local marker = io.open(done_path, "w")
    marker:write("done")
    marker:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total_answered, total_bad = 0, 0
  for _, thread in ipairs(threads) do
    total_answered = total_answered + thread:get("answered")
    total_bad = total_bad + thread:get("bad")
  end
  io.write(string.format(
    'BENCH {"requests": %d, "answered": %d, "bad": %d, "duration_us": %d, '
    .. '"socket_errors": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, total_answered, total_bad, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def run_wrk(url: str, body: bytes, requests: int, concurrency: int, expect: str,
            directory: Path) -> dict[str, float]:
    body_path, script_path = directory / "body.json", directory / "bench.lua"
    done_path = directory / "wrk.done"
    done_path.unlink(missing_ok=True)
    body_path.write_bytes(body)
    script_path.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": str(body_path), "BENCH_REQUESTS": str(requests),
           "BENCH_EXPECT": expect, "BENCH_DONE": str(done_path)}
    # -d is only a ceiling: the script stops its thread after `requests` answers and leaves
    # a marker; SIGINT then makes wrk's main thread stop sleeping and print the summary.
    process = subprocess.Popen(
        ["wrk", "-t1", f"-c{concurrency}", "-d600s", "--timeout", "30s", "-s", str(script_path),
         url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not done_path.exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    line = next((line for line in stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stdout}{stderr}")
    raw = json.loads(line.removeprefix("BENCH "))
    seconds = raw["duration_us"] / 1e6
    return {"requests": raw["answered"], "errors": raw["bad"] + raw["socket_errors"],
            "seconds": seconds, "rps": raw["answered"] / seconds,
            "p50_ms": raw["p50_us"] / 1000, "p95_ms": raw["p95_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000}


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def _httpx_load(url: str, body: bytes, requests: int, concurrency: int,
                      expect: str) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    remaining = iter(range(requests))
    headers = {"Content-Type": "application/json"}
    # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive closes them:
    # else a request may race the server's close and meet a reset.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                          keepalive_expiry=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal errors
            for _ in remaining:
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    ok = response.status_code == 200 and expect in response.text
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return summarize(latencies, errors, seconds)


def summarize(latencies: list[float], errors: int, seconds: float) -> dict[str, float]:
    """Throughput and latency percentiles of one load run."""
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "seconds": seconds,
            "rps": len(latencies) / seconds, "p50_ms": percentile(latencies, 0.50) * 1000,
            "p95_ms": percentile(latencies, 0.95) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "max_ms": latencies[-1] * 1000}


def run_httpx(url: str, body: bytes, requests: int, concurrency: int,
              expect: str) -> dict[str, float]:
    return asyncio.run(_httpx_load(url, body, requests, concurrency, expect))


class RawConnection:
    """One keep-alive HTTP/1.1 connection that POSTs the same body again and again.

    A load generator's client: the request bytes are built once, and an answer is read by its
    Content-Length. It costs several times less CPU per call than httpx, which on a 2-core
    machine otherwise takes about as much CPU as the server's workers, slows the run and
    perturbs what it measures.
    """

    def __init__(self, url: str, body: bytes, content_type: str = "application/json") -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                        f"\r\n").encode() + body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        """(status, body) of one call; raises OSError or asyncio.IncompleteReadError."""
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        try:
            self._writer.write(self.request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lowered = head.lower()
            start = lowered.index(b"\r\ncontent-length:") + 17
            length = int(lowered[start:lowered.index(b"\r\n", start)])
            answer = await self._reader.readexactly(length)
        except BaseException:
            await self.close()
            raise
        if b"\r\nconnection: close" in lowered:
            await self.close()
        return status, answer

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _raw_load(url: str, body: bytes, requests: int, concurrency: int,
                    expect: str) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    remaining = iter(range(requests))
    expected = expect.encode()

    async def lane() -> None:
        nonlocal errors
        connection = RawConnection(url, body)
        try:
            for _ in remaining:
                started = time.perf_counter()
                try:
                    status, answer = await connection.post()
                    ok = status == 200 and expected in answer
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return summarize(latencies, errors, seconds)


def run_raw(url: str, body: bytes, requests: int, concurrency: int,
            expect: str) -> dict[str, float]:
    return asyncio.run(_raw_load(url, body, requests, concurrency, expect))


def measure(name: str, server: Server, tool: str, body: bytes, requests: int,
            concurrency: int, expect: str, directory: Path) -> dict[str, Any]:
    url = f"{server.base_url}/cds-services/{SERVICE}"
    warmup = max(200, requests // 20)
    run_httpx(url, body, warmup, concurrency, expect)  # imports, JIT-free caches, pools
    rss_before = server.rss_mb()
    cpu_before = server.worker_cpu_seconds()
    if tool == "wrk":
        result = run_wrk(url, body, requests, concurrency, expect, directory)
    elif tool == "raw":
        result = run_raw(url, body, requests, concurrency, expect)
    else:
        result = run_httpx(url, body, requests, concurrency, expect)
    # uvicorn's workers share one listening socket: connections opened in one burst may all
    # be accepted by one worker, which then does all the work (the split shows it).
    cpu_split = [round(after - before, 1) for after, before
                 in zip(server.worker_cpu_seconds(), cpu_before, strict=False)]
    return {"name": name, **result, "rss_before_mb": rss_before,
            "rss_after_mb": server.rss_mb(), "worker_cpu_s": cpu_split}


def report(results: list[dict[str, Any]], tool: str, concurrency: int, workers: int,
           body: bytes) -> None:
    print(f"\nload: {tool}, concurrency {concurrency}, {workers} uvicorn workers, "
          f"body {len(body) / 1024:.1f} KiB, loopback, {os.cpu_count()} CPUs")
    print(f"{'server':<12} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'RSS MB before/after':>20} "
          f"{'worker CPU s':>14}")
    for r in results:
        print(f"{r['name']:<12} {r['requests']:>8} {r['errors']:>6} {r['rps']:>8.1f} "
              f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['max_ms']:>8.1f} {r['rss_before_mb']:>9.1f}/{r['rss_after_mb']:<9.1f} "
              f"{' / '.join(str(c) for c in r['worker_cpu_s']):>14}")
        split = r["worker_cpu_s"]
        if len(split) > 1 and split[-1] * 2 < split[0]:
            print(f"note: {r['name']}: the workers did not share the load evenly "
                  f"(connections accepted by one worker): its req/s is not the machine's")
    if tool == "httpx":
        print("note: the httpx load generator needs about as much CPU per request as the bare "
              "app; its figures are lower bounds (install the Debian package wrk)")
    if len(results) == 2 and results[1]["rps"]:
        print(f"twitch-cds throughput = {results[0]['rps'] / results[1]['rps']:.0%} of the "
              f"bare FastAPI floor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tool", choices=["auto", "wrk", "httpx", "raw"], default="auto",
                        help="auto: wrk when installed, else httpx; raw: the asyncio client "
                             "of the load test (cheaper than httpx)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.port, args.workers)
        return 0
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "httpx"
    if tool == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (Debian package `wrk`)")
    body = bench_body()
    results = []
    with tempfile.TemporaryDirectory(prefix="twitch-cds-bench-") as tmp:
        directory = Path(tmp)
        for name, start, expect in (("twitch-cds", start_service, '"hypomagnesemia"'),
                                    ("bare-fastapi", start_bare, '"cards"')):
            server = start(args.workers, directory)
            try:
                results.append(measure(name, server, tool, body, args.requests,
                                       args.concurrency, expect, directory))
            finally:
                server.stop()
    report(results, tool, args.concurrency, args.workers, body)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
