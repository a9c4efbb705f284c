"""The cards each bench case must produce: a committed snapshot, compared in full.

Why a full snapshot, and why it stays honest while card texts change:
- A performance change must not change any card, not even a word or a date. So the check
  compares everything a clinician sees (summary, detail, indicator, source, suggestions and
  their actions, links, order) with what the code gave before the change.
- Only what is the same on every run is normalised: dates become day offsets from the day of
  the call ("{today-14d}", since the bodies' dates move with the calendar) and uuids are
  dropped (derived from hookInstance; the suggestion's position stays compared), and the
  service's own loopback address (a new port each run, in the assessment app's launch link)
  becomes "{service}".
- When cards change on purpose (rules/, cds/decision/cards.py, the reading of the record), the
  snapshot is regenerated deliberately with `python bench/load.py --update-expected` and
  the change is reviewed in the diff of bench/expected-cards.json next to the change that
  caused it. A performance commit should leave that file untouched.
- When card content and performance change at the same time (a merge), the snapshot is
  generated from the code without the performance change (for example a `git archive` of the
  other branch with this bench/ copied in, run from that directory), and the optimised code
  must then serve exactly that file.
"""

from __future__ import annotations

import difflib
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).resolve().parent / "expected-cards.json"
UPDATE_COMMAND = ".venv/bin/python bench/load.py --update-expected"
_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
_SERVICE = re.compile(r"http://127\.0\.0\.1:\d+")


def _offset(match: re.Match[str], today: date) -> str:
    try:
        days = (date.fromisoformat(match[1]) - today).days
    except ValueError:
        return match[0]
    return f"{{today{days:+d}d}}" if days else "{today}"


def _normalise(value: Any, today: date) -> Any:
    if isinstance(value, dict):
        return {key: _normalise(item, today) for key, item in value.items() if key != "uuid"}
    if isinstance(value, list):
        return [_normalise(item, today) for item in value]
    if isinstance(value, str):
        return _DATE.sub(lambda match: _offset(match, today), _SERVICE.sub("{service}", value))
    return value


def projection(response: dict[str, Any], today: date | None = None) -> list[dict[str, Any]]:
    """The cards of one response as compared: everything but uuids, dates as day offsets,
    the service's address as "{service}"."""
    return _normalise(response["cards"], today or datetime.now(UTC).date())


def load() -> dict[str, list[dict[str, Any]]]:
    if not SNAPSHOT.exists():
        return {}
    return json.loads(SNAPSHOT.read_text())["cases"]


def save(cases: dict[str, list[dict[str, Any]]]) -> None:
    document = {
        "about": "Cards of each bench case (bench/expected.py); regenerate on purpose "
        f"only: {UPDATE_COMMAND}",
        "cases": cases,
    }
    SNAPSHOT.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")


def differences(
    case: str, expected: list[dict[str, Any]] | None, served: list[dict[str, Any]]
) -> str:
    """'' when the served cards are the expected ones, else a short unified diff."""
    if expected == served:
        return ""
    if expected is None:
        return f"{case}: no expected cards in {SNAPSHOT.name}; create them with {UPDATE_COMMAND}"
    diff = difflib.unified_diff(
        json.dumps(expected, indent=1, ensure_ascii=False).splitlines(),
        json.dumps(served, indent=1, ensure_ascii=False).splitlines(),
        f"expected ({SNAPSHOT.name})",
        "served",
        lineterm="",
        n=1,
    )
    lines = list(diff)
    shown = "\n".join(lines[:40]) + (
        f"\n... {len(lines) - 40} more lines" if len(lines) > 40 else ""
    )
    return (
        f"{case}: the cards differ from {SNAPSHOT.name}. A performance change must not "
        f"change cards; if they changed on purpose, regenerate with {UPDATE_COMMAND} and "
        f"review the diff.\n{shown}"
    )
