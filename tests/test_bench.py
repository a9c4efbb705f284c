"""The benchmark in smoke mode (`bench/load.py --smoke`, a few seconds): it runs against real
servers, produces numbers, and every bench case gives the cards of bench/expected-cards.json.

Benchmarks are not timed tests: nothing here asserts a speed or a ratio.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import expected, load, stack_costs
from bench.cases import CASE_NAMES, CASES, ROOT, body

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk not installed (scripts/install-test-deps.sh)"
)
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_smoke_run_gives_numbers_for_both_servers_and_the_expected_cards(tmp_path: Path) -> None:
    results, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    plot_args = ["--plot", str(plot)] if HAS_MATPLOTLIB else ["--no-plot"]

    exit_code = load.main(["--smoke", "--json", str(results), *plot_args])

    report = json.loads(results.read_text())
    assert report["cards_identical"], "\n".join(report["problems"])
    assert exit_code == 0
    measured = {(r["server"], r["case"], r["concurrency"]) for r in report["results"]}
    assert measured == {
        (server, case, concurrency)
        for server in load.SERVERS
        for case in load.SMOKE.cases
        for concurrency in load.SMOKE.concurrency
    }
    for row in report["results"]:
        assert row["errors"] == 0, row
        assert row["requests"] > 0 and row["rps"] > 0, row
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
        assert row["peak_rss_mb"] > 0, row
    if HAS_MATPLOTLIB:
        assert plot.read_bytes().startswith(b"\x89PNG")
    minimum = report["stack_minimum_ms"]
    assert set(minimum) == set(load.SMOKE.cases)
    for cost in minimum.values():
        assert cost["validated"] > 0 and cost["facts"] > 0, cost
        assert 0 < cost["validation_ms"] < cost["total_ms"], cost


def test_the_stack_minimum_counts_the_validations_of_the_real_facts_step() -> None:
    """The count comes from the facts step itself: some validations, never more than the
    case has resources, and each validated resource gives at least one fact."""
    small = next(case for case in CASES if case.name == "small")
    [cost] = stack_costs.minimum_costs({"small": body(small.build())}, repeats=1).values()
    request = small.build()
    resources = [e["resource"] for v in request["prefetch"].values() for e in v.get("entry", [])]
    assert 0 < cost.validated <= len(resources)
    assert cost.facts >= cost.validated


def test_the_floor_process_loads_fastapi_not_the_service() -> None:
    """The floor is served from bench/load.py itself: importing it must not load the
    service, whose objects would slow the floor's garbage collections."""
    check = "import sys, bench.load; print(sorted(m for m in sys.modules if m.startswith('cds.')))"
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = result.stdout.strip()
    assert "cds.web.app" not in loaded and "cds.decision.facts" not in loaded, loaded


def test_the_snapshot_holds_cards_for_every_case() -> None:
    """The check compares all four cases, also in smoke mode, which loads only two."""
    assert set(expected.load()) == set(CASE_NAMES)
    assert all(expected.load()[case] for case in CASE_NAMES), "a bench case without cards"


def test_a_changed_card_is_reported_with_the_command_that_regenerates_the_snapshot() -> None:
    snapshot = expected.load()["small"]
    served = json.loads(json.dumps(snapshot))
    served[0]["summary"] += " (changed)"

    problem = expected.differences("small", snapshot, served)

    assert "(changed)" in problem and expected.UPDATE_COMMAND in problem
    assert expected.differences("small", snapshot, snapshot) == ""


def test_bench_bodies_have_the_sizes_the_benchmark_names() -> None:
    sizes = {case.name: len(body(case.build())) for case in CASES}
    resources = {
        case.name: sum(
            len(v.get("entry", []))
            for v in case.build()["prefetch"].values()
            if v.get("resourceType") == "Bundle"
        )
        for case in CASES
    }
    assert resources["small"] == 14  # a complaint, 10 labs, 3 medications
    assert 90 <= resources["medium"] <= 110
    assert resources["large"] == 1111  # the Synthea record's 1,110 resources + the complaint
    assert resources["x-large"] == 5000
    assert sizes["small"] < sizes["medium"] < sizes["large"] < sizes["x-large"]
