"""The least a hook call can cost on the fixed stack, per bench case, measured in-process.

    .venv/bin/python bench/stack_costs.py

Two steps of every call are fixed by design (the brief): checking, against the fhir.resources
R4B element models and primitive types, the elements the service reads of each resource that
becomes a fact (an unreadable one must be set aside, not believed), and running the facts
through durable-rules. No optimisation of this service's own code can
make a call cheaper than the floor's work plus these two. So for a floor that answers in F ms,
the best throughput ratio the stack allows is F / (F + validation + rules); bench/load.py
prints it beside the measured ratios, which is how to read the small and medium targets.

Validation is timed by wrapping the element-level reader the facts step calls
(`read` in cds/decision/facts/elements.py) for the duration of the measurement, so the count
and the time are those of the real facts step, not of a guess at which resources it reads.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `cds` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench.cases import CASES, SERVICE, body
from cds.decision.catalog import load_catalog
from cds.decision.facts import elements
from cds.decision.pipeline import build_pipeline
from cds.decision.prefetch import ResourcePool
from cds.knowledge import load_knowledge
from cds.settings import Settings

REPEATS = 30


@dataclass(frozen=True)
class StackCost:
    """Median milliseconds per call of the two fixed steps, and how much each step had."""

    validation_ms: float
    validated: int
    rules_ms: float
    facts: int

    @property
    def total_ms(self) -> float:
        return self.validation_ms + self.rules_ms


class _TimedReader:
    """The element-level reader, adding its time to a running total."""

    def __init__(self, reader: Callable[..., Any]) -> None:
        self.reader, self.seconds, self.calls = reader, 0.0, 0

    def __call__(self, resource: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.reader(resource)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


@contextmanager
def timed_reader() -> Iterator[_TimedReader]:
    original = elements.read
    timed = _TimedReader(original)
    elements.read = timed  # type: ignore[assignment]
    try:
        yield timed
    finally:
        elements.read = original  # type: ignore[assignment]


def minimum_costs(bodies: dict[str, bytes], repeats: int = REPEATS) -> dict[str, StackCost]:
    settings = Settings()
    knowledge = load_knowledge(settings.rules_dir)
    pipeline = build_pipeline(knowledge, settings)
    service = load_catalog(settings.hooks_dir, knowledge)[SERVICE]
    today = datetime.now(UTC).date()
    costs: dict[str, StackCost] = {}
    for case, payload in bodies.items():
        request = orjson.loads(payload)
        pool = ResourcePool()
        pool.add_all(request["prefetch"].values(), request["context"]["patientId"])
        validation, rules = [], []
        for _ in range(repeats):
            with timed_reader() as reader:
                facts = pipeline.facts.build(pool.by_type, today, None, pool.references)
            validation.append(reader.seconds)
            validated = reader.calls
            started = time.perf_counter()
            pipeline.engine.evaluate(service.ruleset, facts.facts)
            rules.append(time.perf_counter() - started)
        costs[case] = StackCost(
            statistics.median(validation) * 1000,
            validated,
            statistics.median(rules) * 1000,
            len(facts.facts),
        )
    return costs


def main() -> None:
    bodies = {case.name: body(case.build()) for case in CASES}
    for case, cost in minimum_costs(bodies).items():
        print(
            f"{case:8s} validation {cost.validation_ms:6.2f} ms ({cost.validated} resources), "
            f"rules {cost.rules_ms:5.2f} ms ({cost.facts} facts): {cost.total_ms:6.2f} ms"
        )


if __name__ == "__main__":
    main()
