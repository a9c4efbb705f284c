"""No claim value can cause a 500 (issue 21): tokens signed with a trusted key, whose claims
are arbitrary JSON values, get a 200 or a 401 and nothing else.

Hypothesis replaces or adds claims of an otherwise valid token (and at times its `typ`) with
huge and negative numbers, NaN and infinities, numeric strings, lists, objects, Unicode with
NUL characters and lone surrogates, and very long values. The token is signed with the
issuer's real key, so every value reaches the claim checks, the replay store and the logs.
It runs against both replay stores, SQLite and a real PostgreSQL (which, unlike SQLite,
refuses NUL in text and overflows a BIGINT with an error). Derandomized with a fixed number
of examples, so that a failure reproduces on every run.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import jwt
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SERVICE_PV
from tests.support.fhir import hook_request, lab, twitch
from tests.support.jwt_tokens import DROP, TokenFactory, bearer

BASE = "http://testserver"
FEEDBACK = {
    "feedback": [
        {
            "card": "0b0e7a1e-4b8d-4c1c-9d1e-4f5a6b7c8d9e",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "5c2d6e1f-0a9b-4c8d-8e7f-6a5b4c3d2e1f"}],
            "outcomeTimestamp": "2026-11-26T10:00:00Z",
        }
    ]
}
CALLS: dict[str, tuple[str, str, Any]] = {
    "discovery": ("GET", "/cds-services", None),
    "service": (
        "POST",
        f"/cds-services/{SERVICE_PV}",
        hook_request(twitch(), lab("19123-9", 1.4, "mg/dL")),
    ),
    "feedback": ("POST", f"/cds-services/{SERVICE_PV}/feedback", FEEDBACK),
}
CLAIMS = ["iss", "aud", "exp", "iat", "nbf", "jti", "sub", "tenant"]
MAX_AHEAD = 300 + 60  # five minutes, plus the default clock skew

any_character = st.characters(exclude_categories=())  # NUL and lone surrogates included
numbers = st.one_of(
    st.integers(),
    st.sampled_from([-1, 0, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**20, 10**400, -(10**20)]),
    st.floats(),  # NaN and infinities too: Python's JSON writes and reads them
    # Around now, where the lifetime limits are.
    st.integers(-2 * MAX_AHEAD, 2 * MAX_AHEAD).map(lambda offset: int(time.time()) + offset),
)
texts = st.one_of(
    st.text(any_character, max_size=40),
    st.integers(0, 9000).map(lambda n: "x" * n),  # long values, up to past the token limit
    numbers.filter(lambda n: not isinstance(n, float) or math.isfinite(n)).map(str),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "JWT", "jwt", BASE]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
overrides = st.dictionaries(
    st.one_of(st.sampled_from(CLAIMS), st.text(any_character, max_size=10)),
    st.one_of(st.just(DROP), json_values),
    max_size=4,
)
typs = st.one_of(st.just("JWT"), st.just(DROP), json_values)


def signed_token(tokens: TokenFactory, aud: str, overrides: dict[str, Any], typ: Any) -> str:
    """A valid token for `aud` with `overrides` applied, signed with the issuer's EC key.

    Signed as raw JWS because `jwt.encode` itself refuses some claim values (a non-string
    `iss`), which a hostile client's own encoder would not."""
    valid = tokens.claims(aud)
    claims = {name: value for name, value in {**valid, **overrides}.items() if value is not DROP}
    header = {"kid": tokens.ec_kid, "typ": None if typ is DROP else typ}
    return jwt.PyJWS().encode(
        json.dumps(claims).encode(), tokens.ec_key, algorithm="ES384", headers=header
    )


def accepted_claims_are_sound(claims: dict[str, Any], typ: Any, now: float) -> bool:
    """What any accepted token must satisfy, whatever else it carries (RFC 7519, CDS Hooks)."""
    times = [claims.get(name) for name in ("exp", "iat", "nbf") if name in claims]
    return (
        isinstance(typ, str)
        and typ.upper() == "JWT"
        and all(isinstance(t, int | float) and not isinstance(t, bool) for t in times)
        and claims["exp"] <= now + MAX_AHEAD + 1
        and claims["iat"] >= now - MAX_AHEAD - 1
        and isinstance(claims["jti"], str)
    )


def test_no_claim_value_gets_more_than_a_401(
    make_client: Callable[..., TestClient], db_url: str
) -> None:
    tokens = TokenFactory()
    client = make_client(
        auth="jwt",
        public_base_url=BASE,
        database_url=db_url,
        trusted_issuers=tokens.trusted_issuers(),
    )
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=150,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(call=st.sampled_from(sorted(CALLS)), claims=overrides, typ=typs)
    def check(call: str, claims: dict[str, Any], typ: Any) -> None:
        method, path, body = CALLS[call]
        token = signed_token(tokens, BASE + path, claims, typ)
        response = client.request(method, path, json=body, headers=bearer(token))
        statuses[response.status_code] += 1
        assert response.status_code in (200, 401), response.text
        if response.status_code == 401:
            assert response.json()["resourceType"] == "OperationOutcome"
        else:
            signed = jwt.decode(token, options={"verify_signature": False})
            assert accepted_claims_are_sound(signed, typ, time.time()), signed

    check()
    # Both answers occurred: the examples reached acceptance as well as every refusal.
    assert statuses[200] > 0 and statuses[401] > 0, statuses
