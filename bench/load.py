"""Benchmark: twitch-cds against the bare-FastAPI floor, side by side in one run.

    .venv/bin/python bench/load.py            # ~15 min; table on stdout, plot in docs/bench.png

What it does, on loopback only:
- starts the floor (a bare FastAPI app that parses the same JSON body and answers
  {"cards": []}) and `twitch-cds serve` (SQLite in a temporary directory, authentication off,
  INFO logs to a file as in production), both with the same uvicorn settings, for
  `--workers 1` and then `--workers 2`;
- checks that every bench case (bench/cases.py: small, medium, large, x-large) gives exactly
  the cards of bench/expected-cards.json (bench/expected.py), and that the floor answers;
- drives each case with `wrk` (Debian package `wrk`; one thread, so that the load generator
  leaves the server a core) at concurrency 1 and 16, alternating floor and twitch-cds in
  rounds of a fixed time (5 s; large 10 s, x-large 20 s) after a warm-up, so that both see
  the same machine load; a request still running when a round ends is not counted, and
  each server is let go idle before and after its round (`Server.settle`: calls wrk
  abandons at the end of a round are still worked off), so no round overlaps another's work;
- prints requests/s, p50/p95/p99 latency, the ratio of twitch-cds to the floor, the peak RSS
  per worker during the rounds (Linux VmHWM, reset before each round), and the targets of
  issue 12 as met or not; and, for small and medium, the best ratio the fixed stack allows
  (bench/stack_costs.py: the floor's time per call against that plus validating the
  resources that become facts and running the rules); writes the plot (matplotlib, the
  `bench` extra) and, with --json, the raw results.

Absolute numbers depend on the machine and on what else runs; the ratios are the result.
`--smoke` runs a few seconds (small and medium, one worker): the test suite uses it to check
that numbers come out and that the cards are the expected ones, never the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make `bench` and `cds` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import expected
from bench.cases import CASE_NAMES, CASES, ROOT, SERVICE, body, resource_count

if TYPE_CHECKING:
    from bench.stack_costs import StackCost

DEFAULT_PLOT = ROOT / "docs" / "bench.png"
SERVERS = ("floor", "twitch-cds")
# The x-large body (~6.6 MB) is over the service's default 5 MiB limit.
MAX_BODY_BYTES = 16 * 1024 * 1024

# --- servers ----------------------------------------------------------------------------------


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
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
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

    def workers(self) -> list[int]:
        """Pids of the processes that serve requests: the server itself with one worker, else
        the supervisor's worker children (not multiprocessing's resource tracker)."""
        import psutil

        children = [
            child
            for child in psutil.Process(self.process.pid).children()
            if "resource_tracker" not in " ".join(child.cmdline())
        ]
        return [child.pid for child in children] or [self.process.pid]

    def worker_cpu_seconds(self) -> list[float]:
        """CPU time (user + system) used so far by each worker."""
        import psutil

        return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in self.workers()]

    def peak_rss_mb(self) -> float:
        """The largest peak resident set (VmHWM) of any worker since the last reset, in MB."""
        return max(_peak_rss_bytes(pid) for pid in self.workers()) / 1e6

    def reset_peak_rss(self) -> bool:
        """Start a new peak (Linux: `5` to /proc/PID/clear_refs resets VmHWM to the current
        RSS); False where that is not possible, and peaks then span the server's life."""
        try:
            for pid in self.workers():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the workers are idle.

        When wrk ends a run it closes its connections with calls still in flight; the server
        cannot know until it has read their bodies, so it goes on working on them for a while
        (at x-large and c=16, about a second). That work belongs to no measured run.
        """
        deadline = time.monotonic() + timeout
        before = sum(self.worker_cpu_seconds())
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = sum(self.worker_cpu_seconds())
            if now - before < 0.02:
                return
            before = now

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self._log.close()


def _peak_rss_bytes(pid: int) -> int:
    """VmHWM from /proc (Linux); elsewhere the current RSS, a lower bound."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def start_service(workers: int, directory: Path) -> Server:
    env = {
        "TWITCH_CDS_AUTH": "none",
        "TWITCH_CDS_LOG_LEVEL": "INFO",
        "TWITCH_CDS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "TWITCH_CDS_DATABASE_URL": f"sqlite:///{directory / 'bench.sqlite3'}",
    }
    return Server(
        [sys.executable, "-m", "cds.tools.cli", "serve", "--workers", str(workers)],
        env,
        directory / f"service-{workers}.log",
    )


def start_floor(workers: int, directory: Path) -> Server:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return Server(
        [sys.executable, str(Path(__file__).resolve()), "--serve-floor", "--workers", str(workers)],
        env,
        directory / f"floor-{workers}.log",
    )


def serve_floor(port: int, workers: int) -> None:
    """Run the bare app with the uvicorn settings `twitch-cds serve` uses."""
    import uvicorn

    uvicorn.run(
        "bench.load:make_bare_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level="warning",
    )


# --- the cards check --------------------------------------------------------------------------


def post(url: str, payload: bytes) -> dict[str, Any]:
    import httpx

    response = httpx.post(
        url, content=payload, timeout=120, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:500]}")
    return response.json()


def served_cards(server: Server, bodies: dict[str, bytes]) -> dict[str, list[dict[str, Any]]]:
    url = f"{server.base_url}/cds-services/{SERVICE}"
    return {case: expected.projection(post(url, payload)) for case, payload in bodies.items()}


def check_cards(service: Server, floor: Server, bodies: dict[str, bytes]) -> list[str]:
    """Problems found: cards that differ from the snapshot, or a floor that does not answer."""
    snapshot = expected.load()
    problems = [
        diff
        for case, cards in served_cards(service, bodies).items()
        if (diff := expected.differences(case, snapshot.get(case), cards))
    ]
    floor_url = f"{floor.base_url}/cds-services/{SERVICE}"
    problems += [
        f"floor answered {answer} to {case}"
        for case, payload in bodies.items()
        if (answer := post(floor_url, payload)) != {"cards": []}
    ]
    return problems


# --- load -------------------------------------------------------------------------------------

WRK_SCRIPT = """
local body_file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = body_file:read("*a")
body_file:close()
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bad = 0
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total_bad = 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + thread:get("bad")
  end
  io.write(string.format(
    'BENCH {"requests": %d, "bad": %d, "duration_us": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d}\\n',
    summary.requests, total_bad, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclass
class Run:
    """One wrk run: answered requests, time, errors and latency percentiles (ms)."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


def run_wrk(url: str, body_path: Path, script_path: Path, concurrency: int, seconds: int) -> Run:
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "60s",
        "-s",
        str(script_path),
        url,
    ]
    done = subprocess.run(
        command,
        env={**os.environ, "BENCH_BODY": str(body_path)},
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH "))
    return Run(
        raw["requests"],
        raw["duration_us"] / 1e6,
        raw["bad"] + raw["socket_errors"],
        raw["p50_us"] / 1000,
        raw["p95_us"] / 1000,
        raw["p99_us"] / 1000,
    )


@dataclass
class Measurement:
    """One server, case, concurrency and worker count, over all its rounds."""

    server: str
    case: str
    resources: int
    body_kib: float
    workers: int
    concurrency: int
    runs: list[Run] = field(default_factory=list)
    # Peak resident memory of a worker during the measured runs, and while the server then
    # worked off the calls wrk abandoned at the end of each run (see `Server.settle`).
    peak_rss_mb: float = 0.0
    abandoned_peak_rss_mb: float = 0.0
    # CPU seconds each worker used during the rounds: shows whether the workers shared the
    # load (uvicorn's workers share one listening socket, and one may accept every connection).
    worker_cpu_s: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        seconds = sum(run.seconds for run in self.runs)
        return sum(run.requests for run in self.runs) / seconds if seconds else 0.0

    def latency(self, name: str) -> float:
        """The mean over rounds of one percentile (each round's is wrk's own)."""
        return statistics.fmean(getattr(run, name) for run in self.runs)

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs)

    def summary(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "runs"},
            "rps": self.rps,
            "p50_ms": self.latency("p50_ms"),
            "p95_ms": self.latency("p95_ms"),
            "p99_ms": self.latency("p99_ms"),
            "requests": sum(run.requests for run in self.runs),
            "errors": self.errors,
        }


@dataclass(frozen=True)
class Plan:
    cases: tuple[str, ...]
    workers: tuple[int, ...]
    concurrency: tuple[int, ...]
    seconds: int  # wrk takes whole seconds
    warmup: int
    rounds: int


FULL = Plan(CASE_NAMES, (1, 2), (1, 16), seconds=5, warmup=2, rounds=2)
# Larger bodies run longer: at c=16 the first answers of x-large come only after all sixteen
# bodies are in, and a short run would measure that start rather than the steady state.
THROUGHPUT_TARGET_CASES = ("small", "medium")
TIME_FACTOR = {"small": 1, "medium": 1, "large": 2, "x-large": 4}
SMOKE = Plan(("small", "medium"), (1,), (16,), seconds=1, warmup=0, rounds=1)


def measure(
    plan: Plan, bodies: dict[str, bytes], directory: Path, progress: Any
) -> tuple[list[Measurement], list[str]]:
    """Every measurement of the plan, and the problems of the cards check."""
    script_path = directory / "bench.lua"
    script_path.write_text(WRK_SCRIPT)
    measurements: list[Measurement] = []
    problems: list[str] = []
    for workers in plan.workers:
        servers = {
            "floor": start_floor(workers, directory),
            "twitch-cds": start_service(workers, directory),
        }
        try:
            problems += check_cards(servers["twitch-cds"], servers["floor"], bodies)
            for case in plan.cases:
                body_path = directory / f"{case}.json"
                body_path.write_bytes(bodies[case])
                for concurrency in plan.concurrency:
                    found = {
                        name: Measurement(
                            name,
                            case,
                            resource_count(json.loads(bodies[case])),
                            len(bodies[case]) / 1024,
                            workers,
                            concurrency,
                        )
                        for name in SERVERS
                    }
                    for server in servers.values() if plan.warmup else ():
                        run_wrk(
                            f"{server.base_url}/cds-services/{SERVICE}",
                            body_path,
                            script_path,
                            concurrency,
                            plan.warmup * TIME_FACTOR[case],
                        )
                    for round_number in range(plan.rounds):
                        # Alternate which server goes first, so neither always follows the
                        # other's after-effects (caches, a busy neighbour).
                        order = SERVERS if round_number % 2 == 0 else SERVERS[::-1]
                        for name in order:
                            servers[name].settle()
                            servers[name].reset_peak_rss()
                            before = servers[name].worker_cpu_seconds()
                            found[name].runs.append(
                                run_wrk(
                                    f"{servers[name].base_url}/cds-services/{SERVICE}",
                                    body_path,
                                    script_path,
                                    concurrency,
                                    plan.seconds * TIME_FACTOR[case],
                                )
                            )
                            found[name].peak_rss_mb = max(
                                found[name].peak_rss_mb, servers[name].peak_rss_mb()
                            )
                            used = [
                                after - start
                                for after, start in zip(
                                    servers[name].worker_cpu_seconds(), before, strict=True
                                )
                            ]
                            found[name].worker_cpu_s = [
                                total + more
                                for total, more in zip(
                                    found[name].worker_cpu_s or [0.0] * len(used), used, strict=True
                                )
                            ]
                            servers[name].settle()
                            found[name].abandoned_peak_rss_mb = max(
                                found[name].abandoned_peak_rss_mb, servers[name].peak_rss_mb()
                            )
                    measurements += found.values()
                    progress(found["floor"], found["twitch-cds"])
        finally:
            for server in servers.values():
                server.stop()
    return measurements, problems


# --- report -----------------------------------------------------------------------------------


def pairs(measurements: list[Measurement]) -> list[tuple[Measurement, Measurement]]:
    """(floor, twitch-cds) for each case, worker count and concurrency, in run order."""
    floors = [m for m in measurements if m.server == "floor"]
    return [
        (
            f,
            next(
                m
                for m in measurements
                if m.server == "twitch-cds"
                and m.case == f.case
                and m.workers == f.workers
                and m.concurrency == f.concurrency
            ),
        )
        for f in floors
    ]


HEADER = (
    "| workers | c | case | resources | floor req/s | twitch-cds req/s | ratio | "
    "floor p50 ms | twitch-cds p50 / p95 / p99 ms | p50 ratio | peak RSS MB/worker |"
)


def table(measurements: list[Measurement]) -> str:
    lines = [HEADER, HEADER_RULE]
    for floor, service in pairs(measurements):
        lines.append(
            f"| {floor.workers} | {floor.concurrency} | {floor.case} | {floor.resources:,} | "
            f"{floor.rps:,.0f} | {service.rps:,.0f} | {_ratio(service.rps, floor.rps)} | "
            f"{floor.latency('p50_ms'):.1f} | {service.latency('p50_ms'):.1f} / "
            f"{service.latency('p95_ms'):.1f} / {service.latency('p99_ms'):.1f} | "
            f"{_ratio(service.latency('p50_ms'), floor.latency('p50_ms'))} | "
            f"{floor.peak_rss_mb:.0f} / {service.peak_rss_mb:.0f} |"
        )
    return "\n".join(lines)


HEADER_RULE = "|" + "---:|" * (HEADER.count("|") - 1)


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}" if denominator else "n/a"


def _find(
    measurements: list[Measurement], server: str, case: str, workers: int, concurrency: int
) -> Measurement | None:
    return next(
        (
            m
            for m in measurements
            if (m.server, m.case, m.workers, m.concurrency) == (server, case, workers, concurrency)
        ),
        None,
    )


def targets(measurements: list[Measurement]) -> list[tuple[str, bool | None, str]]:
    """Issue 12's targets: (target, met or None when not measured, the numbers)."""

    def get(server: str, case: str, workers: int, concurrency: int) -> Measurement | None:
        return _find(measurements, server, case, workers, concurrency)

    found: list[tuple[str, bool | None, str]] = []
    for case in THROUGHPUT_TARGET_CASES:
        ratios = [
            (w, c, s.rps / f.rps)
            for w in (1, 2)
            for c in (1, 16)
            if (f := get("floor", case, w, c)) and (s := get("twitch-cds", case, w, c)) and f.rps
        ]
        found.append(
            (
                f"{case}: throughput >= 0.5 x floor",
                min(r for *_, r in ratios) >= 0.5 if ratios else None,
                ", ".join(f"w{w} c{c}: {r:.2f}" for w, c, r in ratios),
            )
        )
    floor, service = get("floor", "large", 1, 1), get("twitch-cds", "large", 1, 1)
    if floor and service:
        ratio = service.latency("p50_ms") / floor.latency("p50_ms")
        found.append(
            (
                "large, c=1: p50 <= 1.2 x floor p50",
                ratio <= 1.2,
                f"{service.latency('p50_ms'):.1f} ms vs {floor.latency('p50_ms'):.1f} ms "
                f"= {ratio:.2f}",
            )
        )
    for server in ("twitch-cds", "floor"):
        growth = [
            (case, m.resources, m.latency("p50_ms"))
            for case in ("medium", "large", "x-large")
            if (m := get(server, case, 1, 1))
        ]
        if len(growth) < 3:
            continue
        per_thousand = [ms / resources * 1000 for _, resources, ms in growth]
        numbers = ", ".join(
            f"{case} {value:.1f}" for (case, *_), value in zip(growth, per_thousand, strict=True)
        )
        if server == "floor":
            found.append(("(reference) the floor's p50 per 1,000 resources", None, numbers + " ms"))
        else:  # linear: the cost per resource of x-large is no more than that of medium
            found.append(
                (
                    "cost grows no worse than linearly, medium to x-large (p50 per "
                    "1,000 resources, w1 c=1)",
                    per_thousand[2] <= per_thousand[0],
                    numbers + " ms",
                )
            )
    scaling = [
        (case, two.rps / one.rps)
        for case in CASE_NAMES
        if (one := get("twitch-cds", case, 1, 16))
        and (two := get("twitch-cds", case, 2, 16))
        and one.rps
    ]
    if scaling:
        found.append(
            (
                "--workers 2 >= 1.7 x --workers 1 (c=16)",
                min(r for _, r in scaling) >= 1.7,
                ", ".join(f"{case} {r:.2f}" for case, r in scaling),
            )
        )
    rss = {
        c: max(
            m.peak_rss_mb
            for m in measurements
            if m.server == "twitch-cds" and m.case == "x-large" and m.concurrency == c
        )
        for c in sorted({m.concurrency for m in measurements if m.case == "x-large"})
    }
    if rss:
        found.append(
            (
                "peak RSS per worker < 150 MB at x-large (during the runs)",
                max(rss.values()) < 150,
                ", ".join(f"c={c}: {mb:.0f} MB" for c, mb in rss.items()),
            )
        )
    return found


def ceiling(measurements: list[Measurement], costs: dict[str, StackCost]) -> list[str]:
    """The best throughput ratio the fixed stack allows per case (bench/stack_costs.py): the
    floor's time per call, against that plus validation and rules."""
    lines = []
    for case, cost in costs.items():
        if case not in THROUGHPUT_TARGET_CASES:  # larger bodies: the floor's own parse dominates
            continue
        floor = _find(measurements, "floor", case, 1, 1)
        service = _find(measurements, "twitch-cds", case, 1, 1)
        if floor is None or service is None or not floor.rps:
            continue
        floor_ms = 1000 / floor.rps
        service_ms = 1000 / service.rps
        lines.append(
            f"- {case}: floor {floor_ms:.2f} ms per call; validating {cost.validated} resources "
            f"{cost.validation_ms:.2f} ms + rules on {cost.facts} facts {cost.rules_ms:.2f} ms "
            f"-> at best {_ratio(floor_ms, floor_ms + cost.total_ms)} of the floor; "
            f"measured {_ratio(service.rps, floor.rps)} (w1 c=1)"
        )
        # The floor decodes the body too: beyond it, the call in-process without its decode,
        # and what is left of the measured time per call is the HTTP edge's own.
        beyond = cost.call_ms - cost.steps.get("decode", 0.0)
        lines.append(
            f"  where twitch-cds's {service_ms:.2f} ms go: the floor's {floor_ms:.2f}; in-process "
            + ", ".join(f"{step} {ms:.2f}" for step, ms in cost.steps.items())
            + f"; beyond the floor's work and the fixed stack: own code "
            f"{beyond - cost.total_ms:.2f} ms, HTTP edge (middleware, logs, metrics) "
            f"{service_ms - floor_ms - beyond:.2f} ms"
        )
    return lines


def report(
    measurements: list[Measurement],
    problems: list[str],
    conditions: str,
    costs: dict[str, StackCost],
) -> str:
    lines = [f"\n{conditions}\n", table(measurements), "", "targets (issue 12):"]
    for name, met, numbers in targets(measurements):
        verdict = "for reference" if met is None else "met" if met else "NOT met"
        lines.append(f"- {name}: {verdict} ({numbers})")
    lines += ["", "the fixed stack's own minimum per call (in-process, bench/stack_costs.py):"]
    lines += ceiling(measurements, costs)
    for m in measurements:
        split = sorted(m.worker_cpu_s, reverse=True)
        if m.concurrency > 1 and len(split) > 1 and split[-1] < 0.5 * split[0]:
            lines.append(
                f"note: {m.server} {m.case} w{m.workers} c{m.concurrency}: the workers "
                f"used {' / '.join(f'{s:.1f}' for s in split)} s of CPU: one accepted "
                f"most connections, so this row is not the machine's capacity"
            )
    for floor, service in pairs(measurements):
        if max(m.abandoned_peak_rss_mb - m.peak_rss_mb for m in (floor, service)) > 5:
            lines.append(
                f"note: {floor.case} w{floor.workers} c{floor.concurrency}: working off the calls "
                f"wrk abandoned at the end of each run (Server.settle) took peak RSS to "
                f"{floor.abandoned_peak_rss_mb:.0f} MB (floor) and "
                f"{service.abandoned_peak_rss_mb:.0f} MB (twitch-cds); the table shows the "
                f"peaks during the runs"
            )
    errors = [m for m in measurements if m.errors]
    lines += [
        f"errors: {m.server} {m.case} w{m.workers} c{m.concurrency}: {m.errors}" for m in errors
    ]
    lines.append(
        "cards: "
        + ("identical to bench/expected-cards.json for every case" if not problems else "DIFFERENT")
    )
    lines += problems
    return "\n".join(lines)


def plot(measurements: list[Measurement], path: Path, conditions: str) -> None:
    """Latency against record size (lowest concurrency) and throughput ratio per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, ratio) = plt.subplots(1, 2, figsize=(12, 4.8))
    lowest = min(m.concurrency for m in measurements)
    for server, style in (("floor", "--"), ("twitch-cds", "-")):
        for workers in sorted({m.workers for m in measurements}):
            points = sorted(
                (m.resources, m.latency("p50_ms"))
                for m in measurements
                if m.server == server and m.workers == workers and m.concurrency == lowest
            )
            if points:
                latency.plot(
                    *zip(*points, strict=True),
                    style,
                    marker="o",
                    label=f"{server}, {workers} worker{'s' * (workers > 1)}",
                )
    latency.set(
        xscale="log",
        yscale="log",
        xlabel="resources in the prefetch",
        ylabel=f"p50 latency, ms (c={lowest})",
        title="Latency by record size",
    )
    latency.grid(True, which="both", alpha=0.3)
    latency.legend()
    configurations = sorted({(m.workers, m.concurrency) for m in measurements})
    width = 0.8 / max(len(configurations), 1)
    cases = [case for case in CASE_NAMES if any(m.case == case for m in measurements)]
    for index, (workers, concurrency) in enumerate(configurations):
        values = [
            service.rps / floor.rps if floor.rps else 0
            for floor, service in pairs(measurements)
            if (floor.workers, floor.concurrency) == (workers, concurrency)
        ]
        ratio.bar(
            [n + index * width for n in range(len(values))],
            values,
            width,
            label=f"{workers} worker{'s' * (workers > 1)}, c={concurrency}",
        )
    ratio.axhline(0.5, color="grey", linestyle=":", label="target 0.5")
    ratio.set(
        xticks=[n + width * (len(configurations) - 1) / 2 for n in range(len(cases))],
        xticklabels=cases,
        ylabel="twitch-cds req/s ÷ floor req/s",
        title="Throughput relative to the floor",
    )
    ratio.legend(fontsize="small")
    figure.suptitle(conditions, fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def conditions_line(plan: Plan) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"wrk -t1, {plan.seconds:g} s x {plan.rounds} rounds per server after "
        f"{plan.warmup:g} s warm-up; {os.cpu_count()} CPUs, load average {load:.1f} at the "
        f"start; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


# --- command ----------------------------------------------------------------------------------


def update_expected(bodies: dict[str, bytes], directory: Path) -> None:
    """Write bench/expected-cards.json from what the service serves now (on purpose only)."""
    service = start_service(1, directory)
    try:
        expected.save(served_cards(service, bodies))
    finally:
        service.stop()
    print(f"wrote {expected.SNAPSHOT}: review the diff before committing it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: small and medium, one worker (the test suite)",
    )
    parser.add_argument("--seconds", type=int, help="time per server and round")
    parser.add_argument("--rounds", type=int, help="alternations of floor and twitch-cds")
    parser.add_argument("--cases", nargs="+", choices=CASE_NAMES)
    parser.add_argument("--workers", nargs="+", type=int)
    parser.add_argument(
        "--plot",
        type=Path,
        default=DEFAULT_PLOT,
        help=f"PNG to write (default {DEFAULT_PLOT.relative_to(ROOT)})",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--update-expected",
        action="store_true",
        help="regenerate bench/expected-cards.json (when cards change on purpose)",
    )
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.port, args.workers[0])
        return 0
    plan = SMOKE if args.smoke else FULL
    plan = Plan(
        tuple(args.cases or plan.cases),
        tuple(args.workers or plan.workers),
        plan.concurrency,
        args.seconds or plan.seconds,
        plan.warmup,
        args.rounds or plan.rounds,
    )
    bodies = {case.name: body(case.build()) for case in CASES}
    with tempfile.TemporaryDirectory(prefix="twitch-cds-bench-") as tmp:
        if args.update_expected:
            update_expected(bodies, Path(tmp))
            return 0
        if not shutil.which("wrk"):
            parser.error("wrk is not installed (Debian package `wrk`)")
        conditions = conditions_line(plan)
        print(conditions, flush=True)

        def progress(floor: Measurement, service: Measurement) -> None:
            print(
                f"  w{floor.workers} c{floor.concurrency} {floor.case:8s} floor "
                f"{floor.rps:8.1f} req/s, twitch-cds {service.rps:8.1f} req/s",
                flush=True,
            )

        measurements, problems = measure(plan, bodies, Path(tmp), progress)
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # Imported only here: the floor runs from this same file (--serve-floor), and loading the
    # service into its process would make the floor's garbage collections walk the service's
    # modules too (measured: a third slower on the large body).
    from bench.stack_costs import minimum_costs

    costs = minimum_costs({case: bodies[case] for case in plan.cases})
    print(
        report(measurements, problems, conditions, costs)
        + f"\nload average at the end: {end_load:.1f}"
    )
    if not args.no_plot:
        plot(measurements, args.plot, conditions)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "conditions": conditions,
                    "cards_identical": not problems,
                    "problems": problems,
                    "results": [m.summary() for m in measurements],
                    "stack_minimum_ms": {
                        case: asdict(cost) | {"total_ms": cost.total_ms}
                        for case, cost in costs.items()
                    },
                    "targets": [
                        {"target": n, "met": met, "numbers": v}
                        for n, met, v in targets(measurements)
                    ],
                },
                indent=1,
            )
        )
    return 1 if problems or any(m.errors for m in measurements) else 0


if __name__ == "__main__":
    sys.exit(main())
