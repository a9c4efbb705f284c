"""CDS Hooks 2.0 wire models: the request an EHR sends, the cards we answer, the feedback.

Pydantic models at the HTTP edge. Responses are serialised with `exclude_none` because the
spec forbids null or empty values (only `"cards": []` may be empty).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

NonEmpty = Field(min_length=1, max_length=512)


class _Wire(BaseModel):
    """Unknown fields (e.g. `extension`) are accepted and ignored, as the spec requires."""

    model_config = ConfigDict(extra="allow")


class FhirAuthorization(_Wire):
    access_token: str = Field(min_length=1, repr=False)
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


class HookContext(_Wire):
    patientId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    userId: str | None = None
    encounterId: str | None = None
    selections: list[str] | None = None
    # Parsed leniently on purpose: the sandbox's draft orders are not valid FHIR.
    draftOrders: dict[str, Any] | None = None

    @field_validator("patientId")
    @classmethod
    def _not_a_dot_segment(cls, value: str) -> str:
        """'.' and '..' match the FHIR id syntax, but in `Patient/{{context.patientId}}` they
        are URL dot segments: the fetch would go to the FHIR base or to all Patients."""
        if value in (".", ".."):
            raise ValueError("patientId must be a FHIR resource id")
        return value


class HookRequest(_Wire):
    hook: str = NonEmpty
    hookInstance: UUID
    fhirServer: AnyHttpUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: dict[str, Any] | None = None


class Coding(BaseModel):
    system: str
    code: str
    display: str | None = None


class Source(BaseModel):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Action(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None


class Suggestion(BaseModel):
    label: str
    uuid: str
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"
    # Only on `smart` links (cds-resp-3): passed to the app at launch, opaque to the EHR.
    appContext: str | None = None


class Card(BaseModel):
    uuid: str
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None


class CardsResponse(BaseModel):
    cards: list[Card]


class ServiceDescription(BaseModel):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]


class DiscoveryResponse(BaseModel):
    services: list[ServiceDescription]


class AcceptedSuggestion(_Wire):
    id: str = NonEmpty


class OverrideReasonCoding(_Wire):
    code: str = NonEmpty
    system: str = NonEmpty
    display: str | None = None


class OverrideReason(_Wire):
    reason: OverrideReasonCoding | None = None
    userComment: str | None = Field(default=None, max_length=4000)


class FeedbackEntry(_Wire):
    card: str = NonEmpty
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime

    @model_validator(mode="after")
    def _accepted_names_suggestions(self) -> FeedbackEntry:
        """cds-fb-2: accepted feedback says which suggestions were taken."""
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("accepted feedback requires acceptedSuggestions")
        return self

    @field_validator("outcomeTimestamp", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        """RFC 3339 is text: a bare number (which pydantic reads as Unix time) is refused."""
        if not isinstance(value, str):
            raise ValueError("outcomeTimestamp must be an RFC 3339 date-time string")
        return value

    @field_validator("outcomeTimestamp")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        """The spec requires an RFC 3339 UTC timestamp; a naive one is ambiguous."""
        if value.tzinfo is None:
            raise ValueError("outcomeTimestamp must carry a time zone (RFC 3339)")
        return value


class FeedbackRequest(_Wire):
    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=1000)
