"""Where a hook call's time goes, per bench case, measured in-process; and the least a call
can cost on the fixed stack.

    .venv/bin/python bench/stack_costs.py

Two steps of every call are fixed by design (the brief): checking, against the fhir.resources
R4B element models and primitive types, the elements the service reads of each resource that
becomes a fact (an unreadable one must be set aside, not believed), and running the facts
through durable-rules. No optimisation of this service's own code can
make a call cheaper than the floor's work plus these two. So for a floor that answers in F ms,
the best throughput ratio the stack allows is F / (F + validation + rules); bench/load.py
prints it beside the measured ratios, which is how to read the small and medium targets.

Every step of the call is timed as the service runs it (`decode` the body, build the
`pool`, `decide`: facts, rules, findings and cards, then `serialise` the answer), by wrapping
the real functions for the duration of the measurement: so the counts and times are those of
the real pipeline, not of a re-enactment. Validation is the element-level reader the facts
step calls (`read` in cds/decision/facts/elements.py). What the service's own code costs
beyond the fixed stack is the call minus validation and rules; what the HTTP edge costs
(middleware, logs, metrics) is the measured time per call minus the floor's and this.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `cds` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cases import CASES, SERVICE, body
from cds.cdshooks import HookRequest
from cds.decision import request_body
from cds.decision.catalog import load_catalog
from cds.decision.facts import elements
from cds.decision.pipeline import build_pipeline
from cds.decision.prefetch import ResourcePool
from cds.knowledge import load_knowledge
from cds.settings import Settings
from cds.web.routes import cards_response

REPEATS = 30


@dataclass(frozen=True)
class StackCost:
    """Median milliseconds per call of the two fixed steps, and how much each step had; and
    of every step of the call (`steps`, in the order they run)."""

    validation_ms: float
    validated: int
    rules_ms: float
    facts: int
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return self.validation_ms + self.rules_ms

    @property
    def call_ms(self) -> float:
        """The whole call in-process: every step."""
        return sum(self.steps.values())

    @property
    def own_ms(self) -> float:
        """What the service's own code costs beyond the fixed stack."""
        return self.call_ms - self.total_ms


class _Timed:
    """A function, adding its time to a running total."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function, self.seconds, self.calls = function, 0.0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


@contextmanager
def timed(owner: Any, name: str) -> Iterator[_Timed]:
    """`owner.name` timed for the duration of the block."""
    original = getattr(owner, name)
    own = name in vars(owner)  # a module's function; not a method, which the class holds
    wrapper = _Timed(original)
    setattr(owner, name, wrapper)
    try:
        yield wrapper
    finally:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)  # the class's method shows again


def minimum_costs(bodies: dict[str, bytes], repeats: int = REPEATS) -> dict[str, StackCost]:
    settings = Settings()
    knowledge = load_knowledge(settings.rules_dir)
    pipeline = build_pipeline(knowledge, settings)
    service = load_catalog(settings.hooks_dir, knowledge)[SERVICE]
    today = datetime.now(UTC).date()
    costs: dict[str, StackCost] = {}
    for case, payload in bodies.items():
        runs: list[dict[str, float]] = []
        for _ in range(repeats):
            started = time.perf_counter()
            request = HookRequest.model_validate(request_body.parse(payload))
            decoded = time.perf_counter()
            pool = ResourcePool(request.fhirServer and str(request.fhirServer))
            pool.add_all((request.prefetch or {}).values(), request.context.patientId)
            pool.by_type  # noqa: B018  # whose each resource is: sorted once, here
            pooled = time.perf_counter()
            with (
                timed(elements, "read") as reader,
                timed(pipeline.facts, "build") as facts_step,
                timed(pipeline.engine, "evaluate") as rules,
                timed(pipeline.cards, "build") as cards,
            ):
                decision = pipeline.decide(request, service, pool, today)
            decided = time.perf_counter()
            timed_parts = facts_step.seconds + rules.seconds + cards.seconds
            cards_response(decision.cards)
            answered = time.perf_counter()
            runs.append(
                {
                    "decode": decoded - started,
                    "pool": pooled - decoded,
                    "facts": facts_step.seconds - reader.seconds,
                    "validation": reader.seconds,
                    "rules": rules.seconds,
                    "findings": decided - pooled - timed_parts,
                    "cards": cards.seconds,
                    "serialise": answered - decided,
                    "validated": reader.calls,
                    "facts_count": len(decision.facts.facts),
                }
            )
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        steps = {
            key: median[key] * 1000
            for key in ("decode", "pool", "facts", "validation", "rules", "findings", "cards")
        } | {"serialise": median["serialise"] * 1000}
        costs[case] = StackCost(
            steps["validation"],
            int(median["validated"]),
            steps["rules"],
            int(median["facts_count"]),
            steps,
        )
    return costs


def main() -> None:
    bodies = {case.name: body(case.build()) for case in CASES}
    for case, cost in minimum_costs(bodies).items():
        print(
            f"{case:8s} validation {cost.validation_ms:6.2f} ms ({cost.validated} resources), "
            f"rules {cost.rules_ms:5.2f} ms ({cost.facts} facts): {cost.total_ms:6.2f} ms"
        )
        print(
            f"{'':8s} the whole call {cost.call_ms:6.2f} ms: "
            + ", ".join(f"{step} {ms:.2f}" for step, ms in cost.steps.items())
            + f"; own code beyond the fixed stack {cost.own_ms:.2f} ms"
        )


if __name__ == "__main__":
    main()
