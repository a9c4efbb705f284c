"""`twitch-cds feedback-report`: what clinicians did with each kind of card.

Per card topic (the finding in rules/findings.yaml): how many cards were issued, answered
(accepted or overridden), accepted and overridden, and the override reasons given. The share
overridden is stated against both denominators, side by side: of the cards issued (most cards
are never answered: an EHR sends no feedback for a card nobody clicked) and of the cards
answered. "1 of 1 answered" alone reads as if every card was overridden when 5 were issued. A
topic that is mostly overridden is noise to clinicians: the first place a knowledge author
should look. Free-text override comments are not shown (they may hold patient details); only
their number.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine, func, select

from cds.knowledge import Knowledge
from cds.store.storage import UNKNOWN_TOPIC, card_issued, feedback, head_revision, schema_revision


@dataclass
class TopicFeedback:
    topic: str
    title: str
    issued: int = 0
    accepted: int = 0
    overridden: int = 0
    comments: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        return self.accepted + self.overridden

    @property
    def overridden_of_issued(self) -> float | None:
        return self.overridden / self.issued if self.issued else None

    @property
    def overridden_of_answered(self) -> float | None:
        return self.overridden / self.answered if self.answered else None


class SchemaNotCurrent(Exception):
    """The database is not at this version's schema: the service migrates it at start."""


def collect(engine: Engine, knowledge: Knowledge) -> list[TopicFeedback]:
    """Feedback per topic, noisiest first (highest share of answered cards overridden, then
    most overridden)."""
    if schema_revision(engine) != head_revision():
        raise SchemaNotCurrent(
            "the database is not at the current schema; "
            "start the service once against it to migrate it"
        )
    texts = knowledge.findings.findings
    findings = knowledge.findings
    # Reasons of the service's own override-reason system; cards issued before it had its own
    # system carried the topic system.
    ours = {findings.override_reason_system, findings.topic_system, None}
    reason_names = {r.code: r.display for r in findings.override_reasons}
    topics: dict[str, TopicFeedback] = {}

    def topic(code: str) -> TopicFeedback:
        title = texts[code].title if code in texts else "(card not in rules/)"
        return topics.setdefault(code, TopicFeedback(code, title))

    topic_column = func.coalesce(card_issued.c.topic, UNKNOWN_TOPIC)
    with engine.connect() as connection:
        for code, issued in connection.execute(
            select(card_issued.c.topic, func.count()).group_by(card_issued.c.topic)
        ):
            topic(code).issued = issued
        rows = connection.execute(
            select(
                topic_column,
                feedback.c.outcome,
                feedback.c.override_reason_system,
                feedback.c.override_reason_code,
                func.count(feedback.c.override_comment),
                func.count(),
            )
            .select_from(
                feedback.outerjoin(card_issued, card_issued.c.card_uuid == feedback.c.card_uuid)
            )
            .group_by(
                topic_column,
                feedback.c.outcome,
                feedback.c.override_reason_system,
                feedback.c.override_reason_code,
            )
        )
        for code, outcome, system, reason, comments, count in rows:
            entry = topic(code)
            entry.comments += comments
            if outcome == "accepted":
                entry.accepted += count
            else:
                entry.overridden += count
                entry.reasons[_reason_name(system, reason, ours, reason_names)] += count
    return sorted(
        topics.values(),
        key=lambda t: (-(t.overridden_of_answered or 0), -t.overridden, t.topic),
    )


def _reason_name(
    system: str | None, code: str | None, ours: set[str | None], names: dict[str, str]
) -> str:
    if not code:
        return "(no reason given)"
    if system in ours and code in names:
        return names[code]
    return f"{code} ({system})" if system else code


def _share(part: int, whole: int) -> str:
    """'2/3 (67%)', or '-' when nothing to divide by."""
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "-"


def render_table(report: list[TopicFeedback]) -> str:
    if not report:
        return "No cards issued and no feedback received yet."
    lines = [
        f"{'topic':<28} {'issued':>6} {'answered':>8} {'accepted':>8} {'overridden':>10} "
        f"{'overridden/issued':>17} {'overridden/answered':>19}  override reasons"
    ]
    for entry in report:
        reasons = "; ".join(f"{name} ({count})" for name, count in entry.reasons.most_common())
        if entry.comments:
            reasons += f"{'; ' if reasons else ''}{entry.comments} with a comment"
        lines.append(
            f"{entry.topic:<28} {entry.issued:>6} {entry.answered:>8} {entry.accepted:>8} "
            f"{entry.overridden:>10} {_share(entry.overridden, entry.issued):>17} "
            f"{_share(entry.overridden, entry.answered):>19}  {reasons or '-'}"
        )
    lines += [
        "",
        "overridden/issued: of every card shown. overridden/answered: of the cards a clinician",
        "accepted or overrode (an unanswered card sends no feedback).",
    ]
    return "\n".join(lines)


def render_json(report: list[TopicFeedback]) -> str:
    return json.dumps(
        [
            {
                **asdict(entry),
                "reasons": dict(entry.reasons),
                "answered": entry.answered,
                "overridden_of_issued": entry.overridden_of_issued,
                "overridden_of_answered": entry.overridden_of_answered,
            }
            for entry in report
        ],
        indent=2,
    )
