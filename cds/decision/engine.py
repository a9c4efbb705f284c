"""The durable-rules engine, wrapped once behind `RulesEngine.evaluate(ruleset, facts)`.

Why the wrapper looks the way it does (measured; see docs/engineering-notes.md):
- durable-rules keeps a fixed table of 1,024 sessions: every evaluation runs in its own
  session id and deletes it afterwards, also on error, so nothing is left behind.
- A fact that no rule handles makes the whole batch fail (and corrupted the heap after
  `delete_state`): every ruleset gets a catch-all rule. Its first member matches every fact,
  which is all "handled" asks; its second waits for a fact no builder makes, so it never fires.
  A catch-all that fired would run one Python action per fact: 0.31 against 0.06 ms for 21
  facts (measured 2026-12-06; 20,000 evaluations, 1,024-session table, flat RSS).
- `delete_state` aborts the process (SIGABRT) for a session in which no action ever ran, so
  every evaluation also asserts one session fact, whose rule runs a no-op action once.
- Joins over several facts only fire reliably for asserted facts, not posted events.
- The library's own Host starts a background thread that runs pending actions of any session;
  here actions must run in the evaluating thread so that each request collects exactly its own
  findings, so that dispatcher is not started.
- Session ids come from a counter: `uuid4()` reads os.urandom on every call, which releases
  the GIL and costs a thread switch under load; a counter is unique within the engine, which
  is all a session id needs.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from durable import engine as durable_engine

from cds.knowledge import Knowledge, Rule

# Fact kinds of the wrapper's own; no fact builder (cds/decision/facts/) makes them.
NEVER = "twitch-cds/never"
SESSION = "twitch-cds/session"
CATCH_ALL = {"all": [{"m": {"$ex": {"kind": 1}}}, {"never": {"kind": NEVER}}]}
SESSION_OPENED = {"all": [{"session": {"kind": SESSION}}]}


@dataclass(frozen=True)
class Finding:
    """One rule firing: which finding, how severe, the evidence references it cites, the
    rule's tags (rules/ruleset.yaml) and which cited evidence is the diagnosis."""

    code: str
    indicator: str
    evidence: tuple[str, ...]
    rule: str
    tags: frozenset[str] = frozenset()
    diagnosis: str | None = None


class _CallerThreadHost(durable_engine.Host):  # type: ignore[misc]  # durable has no types
    """A durable-rules host without the background dispatcher thread (see module doc)."""

    def _run(self) -> None:
        return None


class RulesEngine:
    """Thread-safe: each evaluation uses a fresh session id and its own findings list."""

    def __init__(self, knowledge: Knowledge) -> None:
        self._host = _CallerThreadHost()
        self._suffix = uuid.uuid4().hex[:8]
        self._collected: dict[str, list[Finding]] = {}
        self._lock = threading.Lock()
        self._sessions = itertools.count(1)
        self._names: dict[str, str] = {}
        definitions: dict[str, dict[str, Any]] = {}
        for ruleset, rules in knowledge.rulesets.items():
            name = f"{ruleset}-{self._suffix}"
            self._names[ruleset] = name
            definition = {
                rule_name: {"all": rule.all, "run": self._action(rule_name, rule)}
                for rule_name, rule in rules.items()
            }
            definition["catch-all"] = {**CATCH_ALL, "run": _never_runs}
            definition["session-opened"] = {**SESSION_OPENED, "run": _session_opened}
            definitions[name] = definition
        self._host.register_rulesets(definitions)

    def _action(self, rule_name: str, rule: Rule) -> Callable[[Any], None]:
        outcome = rule.then

        def emit(c: Any) -> None:
            finding = outcome.finding
            if finding.startswith("$"):
                alias, attribute = finding[1:].split(".", 1)
                finding = getattr(c, alias)[attribute]
            evidence = tuple(
                ref for alias in outcome.cite if (ref := getattr(c, alias)["evidence"]) is not None
            )
            diagnosis = getattr(c, outcome.diagnosis)["evidence"] if outcome.diagnosis else None
            with self._lock:
                self._collected.setdefault(c.s.sid, []).append(
                    Finding(
                        finding,
                        outcome.indicator,
                        evidence,
                        rule_name,
                        frozenset(outcome.tags),
                        diagnosis,
                    )
                )

        return emit

    def evaluate(self, ruleset: str, facts: list[dict[str, Any]]) -> list[Finding]:
        """Run `facts` through `ruleset` and return every finding the rules emitted."""
        if not facts:
            return []
        sid = str(next(self._sessions))
        name = self._names[ruleset]
        batch = [
            {**fact, "sid": sid, "id": str(index)}
            for index, fact in enumerate([*facts, {"kind": SESSION}])
        ]
        try:
            self._host.assert_facts(name, batch)
        finally:
            self._host.delete_state(name, sid)
            with self._lock:
                findings = self._collected.pop(sid, [])
        return findings


def _session_opened(c: Any) -> None:
    """The session rule's action: it runs once per evaluation, so that `delete_state` has a
    session with an action behind it (see module doc)."""


def _never_runs(c: Any) -> None:
    """The catch-all rule's action, which durable-rules requires and never runs (its rule
    waits for a fact of kind NEVER)."""
