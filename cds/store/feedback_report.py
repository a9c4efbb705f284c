"""`twitch-cds feedback-report`: what clinicians did with each kind of card.

Per card topic (the finding in rules/findings.yaml): how many cards were issued, accepted and
overridden, the override rate, and the override reasons given. A topic that is mostly
overridden is noise to clinicians: the first place a knowledge author should look. Free-text
override comments are not shown (they may hold patient details); only their number.
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
    def override_rate(self) -> float | None:
        answered = self.accepted + self.overridden
        return self.overridden / answered if answered else None


class SchemaNotCurrent(Exception):
    """The database is not at this version's schema: the service migrates it at start."""


def collect(engine: Engine, knowledge: Knowledge) -> list[TopicFeedback]:
    """Feedback per topic, noisiest first (highest override rate, then most overridden)."""
    if schema_revision(engine) != head_revision():
        raise SchemaNotCurrent(
            "the database is not at the current schema; "
            "start the service once against it to migrate it"
        )
    texts = knowledge.findings.findings
    reason_names = {r.code: r.display for r in knowledge.findings.override_reasons}
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
                feedback.c.override_reason_code,
                func.count(feedback.c.override_comment),
                func.count(),
            )
            .select_from(
                feedback.outerjoin(card_issued, card_issued.c.card_uuid == feedback.c.card_uuid)
            )
            .group_by(topic_column, feedback.c.outcome, feedback.c.override_reason_code)
        )
        for code, outcome, reason, comments, count in rows:
            entry = topic(code)
            entry.comments += comments
            if outcome == "accepted":
                entry.accepted += count
            else:
                entry.overridden += count
                entry.reasons[
                    reason_names.get(reason, reason) if reason else "(no reason given)"
                ] += count
    return sorted(topics.values(), key=lambda t: (-(t.override_rate or 0), -t.overridden, t.topic))


def render_table(report: list[TopicFeedback]) -> str:
    if not report:
        return "No cards issued and no feedback received yet."
    lines = [
        f"{'topic':<28} {'issued':>6} {'accepted':>8} {'overridden':>10} "
        f"{'override rate':>13}  override reasons"
    ]
    for entry in report:
        rate = f"{entry.override_rate:.0%}" if entry.override_rate is not None else "-"
        reasons = "; ".join(f"{name} ({count})" for name, count in entry.reasons.most_common())
        if entry.comments:
            reasons += f"{'; ' if reasons else ''}{entry.comments} with a comment"
        lines.append(
            f"{entry.topic:<28} {entry.issued:>6} {entry.accepted:>8} "
            f"{entry.overridden:>10} {rate:>13}  {reasons or '-'}"
        )
    return "\n".join(lines)


def render_json(report: list[TopicFeedback]) -> str:
    return json.dumps(
        [
            {**asdict(entry), "reasons": dict(entry.reasons), "override_rate": entry.override_rate}
            for entry in report
        ],
        indent=2,
    )
