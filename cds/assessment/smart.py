"""SMART App Launch 2.0 for the assessment app: where to authorize, what to ask, what was
granted. The OAuth client itself is authlib's (authorization code with PKCE S256)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.deprecate import AuthlibDeprecationWarning

with warnings.catch_warnings():
    # authlib >= 1.7 warns at import that it will move from httpx to the httpx2 fork; this
    # service uses httpx, and the warning would land in every worker's log as a non-JSON line.
    # (authlib.deprecate installs an "always" filter of its own when first imported: it is
    # imported above, so this filter goes in front of it.)
    warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

# What the app needs: to write the response and its Observations for the patient in context.
# SMART v2 scopes with their v1 equivalents, so that v1-only servers grant them too.
WRITE_SCOPES = (
    "patient/QuestionnaireResponse.cu",
    "patient/Observation.cu",
    "patient/QuestionnaireResponse.write",
    "patient/Observation.write",
)
EHR_LAUNCH_SCOPE = "launch"
STANDALONE_SCOPE = "launch/patient"
WRITTEN_TYPES = ("QuestionnaireResponse", "Observation")


class LaunchError(Exception):
    """A launch that cannot go on; the message is shown to the user (no secrets in it)."""


@dataclass(frozen=True)
class SmartEndpoints:
    authorize: str
    token: str


def scope_for(ehr_launch: bool) -> str:
    return " ".join((EHR_LAUNCH_SCOPE if ehr_launch else STANDALONE_SCOPE, *WRITE_SCOPES))


def can_write(granted: str, resource_type: str) -> bool:
    """Whether the granted scopes allow creating `resource_type` for the patient (v2 `c` or
    `cu`/`cruds`, v1 `write` or `*`, on the type or on `*`)."""
    for scope in granted.split():
        context, _, rest = scope.partition("/")
        kind, _, permission = rest.partition(".")
        if context not in ("patient", "user") or kind not in (resource_type, "*"):
            continue
        if permission in ("write", "*") or ("c" in permission and permission.isalpha()):
            return True
    return False


async def discover(client: httpx.AsyncClient, iss: str) -> SmartEndpoints | None:
    """The server's SMART configuration (`.well-known/smart-configuration`), or None when it
    publishes none: an open server (no authorization), such as the demo's."""
    try:
        answer = await client.get(
            iss.rstrip("/") + "/.well-known/smart-configuration",
            headers={"Accept": "application/json"},
        )
    except httpx.HTTPError as error:
        raise LaunchError(
            f"the FHIR server could not be reached ({type(error).__name__})"
        ) from None
    if answer.status_code == 404:
        return None
    try:
        config: Any = answer.json() if answer.is_success else None
        return SmartEndpoints(config["authorization_endpoint"], config["token_endpoint"])
    except (ValueError, KeyError, TypeError):
        raise LaunchError("the FHIR server's SMART configuration is unreadable") from None


def oauth_client(client_id: str, redirect_uri: str, scope: str) -> AsyncOAuth2Client:
    """authlib's OAuth 2 client as a public SMART client: PKCE S256, no client secret."""
    return AsyncOAuth2Client(
        client_id,
        redirect_uri=redirect_uri,
        scope=scope,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
        timeout=10.0,
    )


def new_verifier() -> str:
    """A PKCE code verifier (RFC 7636: 43-128 characters)."""
    verifier: str = generate_token(64)
    return verifier
