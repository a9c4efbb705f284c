"""The patient's assessment on file -> `Facts.assessment` (when, which topics).

The answers themselves become facts where every other Observation does (`problems`: a
positive score or a "yes" coded as a value set concept), labelled patient-reported there.
This family only says whether a recent assessment is on file and what it asked about: the
cards then drop the app's link and stop asking about the answered topics.
"""

from __future__ import annotations

from cds.decision.facts.record import (
    FINAL_OBSERVATION,
    AssessmentOnFile,
    Facts,
    Resource,
    Window,
    codings,
    observation_time,
    patient_reported,
    text,
)
from cds.decision.facts.vocabulary import Vocabulary


def read_assessment(
    vocabulary: Vocabulary, observations: list[Resource], window: Window, facts: Facts
) -> None:
    """Patient-reported answers to the Questionnaire's questions within the lookback."""
    topics = vocabulary.assessment_topics
    latest = None
    answered: set[str] = set()
    reported: dict[str, None] = {}
    for obs in observations:
        if text(obs.get("status")) not in FINAL_OBSERVATION or not patient_reported(obs):
            continue
        keys = [key for c in codings(obs.get("code")) if (key := vocabulary.key_of(c)) in topics]
        when = observation_time(obs) if keys else None
        if when is None or when.day < window.since or window.in_future(when):
            continue
        answered |= {topics[key] for key in keys}
        latest = when.day if latest is None else max(latest, when.day)
        if obs.get("valueBoolean") is True:
            reported.update(
                dict.fromkeys(
                    vocabulary.assessment_unread[k]
                    for k in keys
                    if k in vocabulary.assessment_unread
                )
            )
    if latest is not None:
        facts.assessment = AssessmentOnFile(latest, frozenset(answered), tuple(reported))
