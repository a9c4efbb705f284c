"""Benchmark of the CPU-bound pipeline, stage by stage, against baselines in the same run.

Run: .venv/bin/python bench/pipeline.py [--calls 2000]

Prints per-call medians for: pooling the prefetch, building facts, the rules engine, cards;
and as baselines: `json.loads` of the same body and validating every resource of the body
with fhir.resources (what the facts step avoids by selecting at the dict level first).
Also evaluates 10,000 times and prints the process RSS before and after, to show that the
rules engine leaves no per-request state behind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds.cards import CardBuilder, CardContext  # noqa: E402
from cds.engine import RulesEngine  # noqa: E402
from cds.facts import MODELS, FactBuilder, Vocabulary  # noqa: E402
from cds.findings import consolidate  # noqa: E402
from cds.knowledge import load_knowledge  # noqa: E402
from cds.prefetch import ResourcePool  # noqa: E402
from tests.support.fhir import (  # noqa: E402
    SNOMED,
    condition,
    days_ago,
    hook_request,
    lab,
    medication,
    twitch,
)


def body() -> dict[str, Any]:
    """~100 resources: a twitch complaint, red-flag signs, labs over a year, medications."""
    resources = [twitch(), condition("26544005", SNOMED), condition("J45.909"),
                 condition("E11.9"), condition("I10")]
    for month in range(12):
        for loinc, value, unit in (("19123-9", 1.5 + month / 20, "mg/dL"),
                                   ("17861-6", 8.9, "mg/dL"), ("2823-3", 3.9, "mmol/L"),
                                   ("2951-2", 139, "mmol/L"), ("2345-7", 98, "mg/dL"),
                                   ("718-7", 13.5, "g/dL"), ("4548-4", 5.9, "%")):
            resources.append(lab(loinc, value, unit, when=days_ago(30 * month + 1)))
    resources += [medication("312617", "predniSONE 5 MG Oral Tablet"),
                  medication(text="Omeprazole 20 mg capsule"),
                  medication("197361", "amLODIPine 5 MG Oral Tablet"),
                  medication("314076", "lisinopril 10 MG Oral Tablet")]
    return hook_request(*resources)


def timed(function: Any, calls: int) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls
    knowledge = load_knowledge(ROOT / "rules")
    builder = FactBuilder(Vocabulary(knowledge), 365)
    engine, cards = RulesEngine(knowledge), CardBuilder(knowledge)
    request = body()
    raw = json.dumps(request)
    today = datetime.now(UTC).date()
    resources = [e["resource"] for b in request["prefetch"].values()
                 if b.get("resourceType") == "Bundle" for e in b["entry"]]
    print(f"body: {len(resources)} resources, {len(raw) / 1024:.0f} KiB, {calls} calls each")

    def pool() -> ResourcePool:
        p = ResourcePool()
        p.add_all(request["prefetch"].values(), "p1")
        return p

    pooled = pool()
    facts = builder.build(pooled.by_type, today)
    findings = consolidate(engine.evaluate("chart", facts.facts), knowledge)
    context = CardContext(uuid.uuid4(), "p1", 365)
    stages = {
        "pool prefetch": lambda: pool(),
        "facts (select, validate selected)": lambda: builder.build(pooled.by_type, today),
        "rules engine (durable-rules)": lambda: engine.evaluate("chart", facts.facts),
        "cards": lambda: cards.build(findings, facts, context),
    }
    results = {name: timed(fn, calls) for name, fn in stages.items()}
    for name, micros in results.items():
        print(f"  {name:40s} {micros:9.1f} µs")
    total = sum(results.values())
    print(f"  {'pipeline total':40s} {total:9.1f} µs  ({len(facts.facts)} facts, "
          f"{len(findings)} findings)")
    parse = timed(lambda: json.loads(raw), calls)
    validate_all = timed(lambda: [MODELS[r["resourceType"]].model_validate(r)
                                  for r in resources], max(calls // 10, 20))
    print("baselines:")
    print(f"  {'json.loads of the body':40s} {parse:9.1f} µs")
    print(f"  {'validate every resource (naive)':40s} {validate_all:9.1f} µs  "
          f"-> pipeline is {validate_all / total:.1f}x faster than validating everything")
    process = psutil.Process()
    for _ in range(1000):
        engine.evaluate("chart", facts.facts)
    before = process.memory_info().rss
    started = time.perf_counter()
    for _ in range(10_000):
        engine.evaluate("chart", facts.facts)
    elapsed = time.perf_counter() - started
    after = process.memory_info().rss
    print(f"rules engine: 10,000 evaluations in {elapsed:.2f} s; RSS {before / 2**20:.1f} MiB -> "
          f"{after / 2**20:.1f} MiB ({(after - before) / before * 100:+.1f}%)")


if __name__ == "__main__":
    main()
