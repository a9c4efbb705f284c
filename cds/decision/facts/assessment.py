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
    for obs in observations:
        if text(obs.get("status")) not in FINAL_OBSERVATION or not patient_reported(obs):
            continue
        found = {
            topic
            for coding in codings(obs.get("code"))
            if (key := vocabulary.key_of(coding)) is not None
            and (topic := topics.get(key)) is not None
        }
        when = observation_time(obs) if found else None
        if when is None or when.day < window.since or window.in_future(when):
            continue
        answered |= found
        latest = when.day if latest is None else max(latest, when.day)
    if latest is not None:
        facts.assessment = AssessmentOnFile(latest, frozenset(answered))
