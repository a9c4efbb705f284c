"""Unit tests of cds.web.auth: CDS client JWT verification ("Trusting CDS Clients").

Keys are generated here; JWKS URLs are served by a local HTTP server that counts
requests, so tests can assert that untrusted input causes no outbound fetch.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds.web.auth import (
    AuthError,
    InMemoryReplayCache,
    JwtVerifier,
    RemoteJwks,
    StaticJwks,
    TrustedIssuer,
    VerifiedClient,
    parse_trusted_issuers,
)
from tests.support.jwt_tokens import JwksServer
from tests.support.paths import SANDBOX

ISSUER = "https://ehr.example.org"
AUDIENCE = "https://cds.example.org/cds-services/twitch-patient-view"
EC_KID = "ec-1"
RSA_KID = "rsa-1"
FIXTURES = SANDBOX
DROP = object()  # claim/header value meaning "leave this out"


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


def make_token(
    key: Any,
    *,
    alg: str = "ES384",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """Sign a CDS-client-shaped token; keyword claims override or (with DROP) remove."""
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    header = {"typ": "JWT", "kid": EC_KID, **(headers or {})}
    payload = {k: v for k, v in payload.items() if v is not DROP}
    if header["typ"] is DROP:
        header["typ"] = None  # PyJWT adds typ "JWT" to a header without one, unless None
    header = {k: v for k, v in header.items() if v is not DROP}
    return jwt.encode(payload, key, algorithm=alg, headers=header)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_parts(header: dict[str, Any], **claims: Any) -> str:
    """Header and payload segments of a hand-built token (for algorithms PyJWT won't sign)."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "jti": "x", **claims}
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"


def bearer(token: str) -> str:
    return f"Bearer {token}"


class NoNetwork:
    """An httpx transport that records and refuses every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raise AssertionError(f"unexpected outbound request to {request.url}")


@pytest.fixture
def no_network() -> NoNetwork:
    return NoNetwork()


@pytest.fixture
def static_verifier(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey, no_network: NoNetwork
) -> JwtVerifier:
    jwks = {"keys": [ec_jwk(ec_key, EC_KID, alg="ES384", use="sig"), rsa_jwk(rsa_key, RSA_KID)]}
    return JwtVerifier(
        parse_trusted_issuers({ISSUER: {"jwks": jwks}}),
        InMemoryReplayCache(),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(no_network)),
    )


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def remote_verifier(url: str, **kwargs: Any) -> JwtVerifier:
    return JwtVerifier(
        parse_trusted_issuers({ISSUER: {"jwks_url": url}}),
        InMemoryReplayCache(),
        allow_insecure_jku=True,
        **kwargs,
    )


async def rejected(verifier: JwtVerifier, header: str | None) -> AuthError:
    with pytest.raises(AuthError) as info:
        await verifier.verify(header, AUDIENCE)
    return info.value


# --- accepted tokens ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_valid_es384_token_verifies(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    exp = int(time.time()) + 300
    token = make_token(ec_key, jti="jti-1", sub="client-42", tenant="hospital-a", exp=exp)

    client = await static_verifier.verify(bearer(token), AUDIENCE)

    assert client == VerifiedClient(
        issuer=ISSUER, subject="client-42", tenant="hospital-a", jti="jti-1", expires_at=exp
    )


@pytest.mark.asyncio
async def test_valid_rs384_token_verifies(
    static_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = make_token(rsa_key, alg="RS384", headers={"kid": RSA_KID})

    client = await static_verifier.verify(bearer(token), AUDIENCE)

    assert client.issuer == ISSUER
    assert client.subject is None and client.tenant is None


@pytest.mark.asyncio
async def test_one_element_audience_list_and_lowercase_scheme_accepted(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = make_token(ec_key, aud=[AUDIENCE])

    assert (await static_verifier.verify(f"bearer {token}", AUDIENCE)).issuer == ISSUER


@pytest.mark.asyncio
async def test_token_within_leeway_accepted(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    now = int(time.time())
    token = make_token(ec_key, exp=now - 30, iat=now + 30, nbf=now + 30)

    assert (await static_verifier.verify(bearer(token), AUDIENCE)).expires_at == now - 30


@pytest.mark.asyncio
async def test_captured_sandbox_token_shape_verifies_against_inline_jwks(
    ec_key: ec.EllipticCurvePrivateKey, no_network: NoNetwork
) -> None:
    """Same header and claims as the sandbox sends, signed with our own P-384 key.

    The sandbox's jku is not fetched: the inline JWKS is authoritative for the issuer.
    """
    captured = json.loads((FIXTURES / "jwt.decoded-example.json").read_text())
    sandbox_jwks = json.loads((FIXTURES / "sandbox-jwks.json").read_text())
    jwk_template = sandbox_jwks["keys"][0]
    header, claims = captured["header"], captured["payload"]
    now = int(time.time())
    claims = {**claims, "iat": now, "exp": now + 300}
    jwks = {"keys": [{**jwk_template, **ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)}]}
    verifier = JwtVerifier(
        parse_trusted_issuers(json.dumps({claims["iss"]: {"jwks": jwks}})),
        InMemoryReplayCache(),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(no_network)),
    )
    token = jwt.encode(claims, ec_key, algorithm=header["alg"], headers=header)

    client = await verifier.verify(bearer(token), claims["aud"])

    assert client == VerifiedClient(
        issuer="https://sandbox.cds-hooks.org",
        subject=None,
        tenant=None,
        jti=claims["jti"],
        expires_at=now + 300,
    )
    assert no_network.requests == []


# --- rejected tokens ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Token abc.def.ghi"])
async def test_missing_bearer_token(static_verifier: JwtVerifier, header: str | None) -> None:
    error = await rejected(static_verifier, header)

    assert error.reason == "missing bearer token"
    assert error.www_authenticate == "Bearer"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer not-a-jwt",
        "Bearer a.b",
        "Bearer a.b.c d",
        "Bearer eyJ!.eyJ.sig",
        "Bearer Zm9v.YmFy.YmF6",  # three base64url segments that are not JSON
        "Bearer " + "a" * 9000 + ".b.c",
    ],
)
async def test_malformed_token(static_verifier: JwtVerifier, header: str) -> None:
    error = await rejected(static_verifier, header)

    assert error.reason == "malformed token"
    assert error.www_authenticate == (
        'Bearer error="invalid_token", error_description="malformed token"'
    )


@pytest.mark.asyncio
async def test_expired_token(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    now = int(time.time())
    token = make_token(ec_key, iat=now - 900, exp=now - 120)

    error = await rejected(static_verifier, bearer(token))

    assert error.reason == "token expired"
    assert token not in str(error) and token not in error.www_authenticate


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["iat", "nbf"])
async def test_token_not_yet_valid(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey, claim: str
) -> None:
    future = int(time.time()) + 600
    token = make_token(ec_key, exp=future + 300, **{claim: future})

    assert (await rejected(static_verifier, bearer(token))).reason == "token not yet valid"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.example.org/cds-services/other",
        AUDIENCE + "/",
        [AUDIENCE, "https://attacker.example"],
        ["https://attacker.example"],
    ],
)
async def test_wrong_audience(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey, aud: Any
) -> None:
    token = make_token(ec_key, aud=aud)

    assert (await rejected(static_verifier, bearer(token))).reason == "audience mismatch"


@pytest.mark.asyncio
@pytest.mark.parametrize("iss", ["https://evil.example.org", ISSUER + "/", DROP])
async def test_unknown_issuer(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey, iss: Any
) -> None:
    token = make_token(ec_key, iss=iss)

    assert (await rejected(static_verifier, bearer(token))).reason == "unknown issuer"


@pytest.mark.asyncio
async def test_non_string_issuer_rejected_before_signature_check(
    static_verifier: JwtVerifier,
) -> None:
    token = unsigned_parts({"alg": "ES384", "typ": "JWT", "kid": EC_KID}, iss=42) + ".c2ln"

    assert (await rejected(static_verifier, bearer(token))).reason == "unknown issuer"


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["aud", "exp", "iat", "jti"])
async def test_missing_required_claim(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey, claim: str
) -> None:
    token = make_token(ec_key, **{claim: DROP})

    assert (await rejected(static_verifier, bearer(token))).reason == f"missing {claim}"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"jti": ""}, "invalid jti"),
        ({"jti": 7}, "invalid jti"),
        ({"tenant": ["a"]}, "invalid tenant"),
    ],
)
async def test_invalid_claim_types(
    static_verifier: JwtVerifier,
    ec_key: ec.EllipticCurvePrivateKey,
    claims: dict[str, Any],
    reason: str,
) -> None:
    token = make_token(ec_key, **claims)

    assert (await rejected(static_verifier, bearer(token))).reason == reason


@pytest.mark.asyncio
async def test_unknown_kid(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = make_token(ec_key, headers={"kid": "not-a-known-kid"})

    assert (await rejected(static_verifier, bearer(token))).reason == "unknown kid"


@pytest.mark.asyncio
async def test_bad_signature(static_verifier: JwtVerifier) -> None:
    impostor = ec.generate_private_key(ec.SECP384R1())
    token = make_token(impostor)

    assert (await rejected(static_verifier, bearer(token))).reason == "invalid signature"


@pytest.mark.asyncio
async def test_tampered_payload(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    header, _, signature = make_token(ec_key).split(".")
    forged_payload = unsigned_parts({}, tenant="someone-else").split(".")[1]

    error = await rejected(static_verifier, bearer(f"{header}.{forged_payload}.{signature}"))

    assert error.reason == "invalid signature"


@pytest.mark.asyncio
async def test_algorithm_must_match_key(
    static_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An RSA token claiming the EC key's kid must not be checked against the EC key."""
    token = make_token(rsa_key, alg="RS384", headers={"kid": EC_KID})

    error = await rejected(static_verifier, bearer(token))

    assert error.reason == "algorithm does not match key"


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None])
async def test_alg_none_rejected(static_verifier: JwtVerifier, alg: str | None) -> None:
    token = unsigned_parts({"alg": alg, "typ": "JWT", "kid": EC_KID}) + "."

    assert (await rejected(static_verifier, bearer(token))).reason == "algorithm not allowed"


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", [["ES384"], {"ES384": True}, 384])
async def test_non_string_alg_rejected(static_verifier: JwtVerifier, alg: Any) -> None:
    token = unsigned_parts({"alg": alg, "typ": "JWT", "kid": EC_KID}) + ".c2ln"

    assert (await rejected(static_verifier, bearer(token))).reason == "algorithm not allowed"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("alg", "digest"),
    [("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)],
)
async def test_hmac_signed_with_public_key_pem_rejected(
    ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
    no_network: NoNetwork,
    alg: str,
    digest: Any,
) -> None:
    """Algorithm confusion: an attacker HMACs with the published public key as secret."""
    verifier = JwtVerifier(
        parse_trusted_issuers({ISSUER: {"jwks": {"keys": [rsa_jwk(rsa_key, RSA_KID)]}}}),
        InMemoryReplayCache(),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(no_network)),
    )
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = unsigned_parts({"alg": alg, "typ": "JWT", "kid": RSA_KID})
    mac = hmac.new(public_pem, signing_input.encode(), digest).digest()

    error = await rejected(verifier, bearer(f"{signing_input}.{b64url(mac)}"))

    assert error.reason == "algorithm not allowed"


@pytest.mark.asyncio
@pytest.mark.parametrize("kid", [DROP, ""])
async def test_missing_kid(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey, kid: Any
) -> None:
    token = make_token(ec_key, headers={"kid": kid})

    assert (await rejected(static_verifier, bearer(token))).reason == "missing kid"


@pytest.mark.asyncio
async def test_non_string_kid_is_malformed(static_verifier: JwtVerifier) -> None:
    token = unsigned_parts({"alg": "ES384", "typ": "JWT", "kid": 12}) + ".c2ln"

    assert (await rejected(static_verifier, bearer(token))).reason == "malformed token"


@pytest.mark.asyncio
async def test_typ_other_than_jwt_rejected(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = make_token(ec_key, headers={"typ": "at+jwt"})

    assert (await rejected(static_verifier, bearer(token))).reason == "typ must be JWT"


@pytest.mark.asyncio
@pytest.mark.parametrize("typ", ["JWT", "jwt", "Jwt"])
async def test_typ_jwt_in_any_case_accepted(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey, typ: str
) -> None:
    token = make_token(ec_key, headers={"typ": typ})

    assert (await static_verifier.verify(bearer(token), AUDIENCE)).issuer == ISSUER


@pytest.mark.asyncio
async def test_missing_typ_rejected(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = make_token(ec_key, headers={"typ": DROP})

    assert (await rejected(static_verifier, bearer(token))).reason == "missing typ"


@pytest.mark.asyncio
async def test_issuer_with_require_typ_false_may_omit_typ_but_not_send_another(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    other = "https://other-ehr.example.org"
    jwks = {"keys": [ec_jwk(ec_key, EC_KID, alg="ES384")]}
    verifier = JwtVerifier(
        parse_trusted_issuers(
            {ISSUER: {"jwks": jwks, "require_typ": False}, other: {"jwks": jwks}}
        ),
        InMemoryReplayCache(),
    )
    assert verifier.issuers_without_typ == [ISSUER]

    no_typ = make_token(ec_key, headers={"typ": DROP})
    assert (await verifier.verify(bearer(no_typ), AUDIENCE)).issuer == ISSUER
    wrong_typ = make_token(ec_key, headers={"typ": "at+jwt"})
    assert (await rejected(verifier, bearer(wrong_typ))).reason == "typ must be JWT"
    # The relaxation is the one issuer's, not every issuer's.
    other_no_typ = make_token(ec_key, iss=other, headers={"typ": DROP})
    assert (await rejected(verifier, bearer(other_no_typ))).reason == "missing typ"


# --- lifetime and time claims -----------------------------------------------------------

MINUTE = 60
YEAR = 365 * 24 * 3600


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("offsets", "reason"),
    [
        ({"exp": 10 * YEAR}, "exp too far ahead"),
        ({"exp": 300 + 60 + 30}, "exp too far ahead"),  # past five minutes and the skew
        ({"iat": -YEAR, "exp": 60}, "token too old"),
        ({"iat": -(300 + 60 + 30), "exp": 60}, "token too old"),
        ({"iat": 2 * MINUTE, "exp": 4 * MINUTE}, "token not yet valid"),
        ({"nbf": 2 * MINUTE, "exp": 4 * MINUTE}, "token not yet valid"),
        ({"exp": -2 * MINUTE, "iat": -4 * MINUTE}, "token expired"),
    ],
    ids=[
        "exp ten years ahead",
        "exp six and a half minutes ahead",
        "iat a year old",
        "iat six and a half minutes old",
        "iat in the future",
        "nbf in the future",
        "expired beyond the skew",
    ],
)
async def test_lifetime_is_limited(
    static_verifier: JwtVerifier,
    ec_key: ec.EllipticCurvePrivateKey,
    offsets: dict[str, int],
    reason: str,
) -> None:
    now = int(time.time())
    token = make_token(ec_key, **{claim: now + offset for claim, offset in offsets.items()})

    assert (await rejected(static_verifier, bearer(token))).reason == reason


@pytest.mark.asyncio
async def test_the_longest_lifetime_and_the_skew_are_accepted(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """Five minutes ahead plus most of the 60 s skew, issued just under six minutes ago."""
    now = int(time.time())
    token = make_token(ec_key, exp=now + 300 + 50, iat=now - 300 - 50, nbf=now + 50)

    assert (await static_verifier.verify(bearer(token), AUDIENCE)).expires_at == now + 350


@pytest.mark.asyncio
async def test_skew_setting_is_the_only_tolerance(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks = {"keys": [ec_jwk(ec_key, EC_KID, alg="ES384")]}
    verifier = JwtVerifier(
        parse_trusted_issuers({ISSUER: {"jwks": jwks}}), InMemoryReplayCache(), leeway_seconds=0
    )
    now = int(time.time())

    late = make_token(ec_key, exp=now + 320)
    assert (await rejected(verifier, bearer(late))).reason == "exp too far ahead"
    early = make_token(ec_key, iat=now + 20)
    assert (await rejected(verifier, bearer(early))).reason == "token not yet valid"
    assert (await verifier.verify(bearer(make_token(ec_key, exp=now + 290)), AUDIENCE)).jti


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{now}", "must be a number"),  # a numeric string: PyJWT's int() would take it
        (True, "must be a number"),
        (None, "must be a number"),
        ([0], "must be a number"),
        ({"t": 0}, "must be a number"),
        (10**20, "out of range"),
        (10**400, "out of range"),
        (-1, "out of range"),
        (1e308, "out of range"),
    ],
)
async def test_time_claims_must_be_numbers_in_range(
    static_verifier: JwtVerifier,
    ec_key: ec.EllipticCurvePrivateKey,
    claim: str,
    value: Any,
    reason: str,
) -> None:
    if value == "{now}":
        value = str(int(time.time()))
    token = make_token(ec_key, **{claim: value})

    error = await rejected(static_verifier, bearer(token))

    if value is None and claim != "nbf":  # PyJWT's `require` takes null for absent
        assert error.reason == f"missing {claim}"
    else:
        assert error.reason == f"{claim} {reason}"


@pytest.mark.asyncio
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_time_claims_are_out_of_range(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey, constant: str
) -> None:
    """Python's JSON parser reads these non-standard literals; RFC 8259 has no such numbers."""
    header = {"alg": "ES384", "typ": "JWT", "kid": EC_KID}
    now = int(time.time())
    claims = f'"iss":"{ISSUER}","aud":"{AUDIENCE}","iat":{now},"jti":"{uuid.uuid4()}"'
    payload = f'{{{claims},"exp":{constant}}}'
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload.encode())}"
    algorithm = jwt.get_algorithm_by_name("ES384")
    signature = algorithm.sign(signing_input.encode(), ec_key)

    token = f"{signing_input}.{b64url(signature)}"

    assert (await rejected(static_verifier, bearer(token))).reason == "exp out of range"


@pytest.mark.asyncio
async def test_fractional_numeric_dates_are_accepted(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """RFC 7519 §2: a NumericDate may be a non-integer."""
    now = time.time()
    token = make_token(ec_key, iat=now - 0.5, exp=now + 299.5, nbf=now - 0.25)

    assert (await static_verifier.verify(bearer(token), AUDIENCE)).expires_at == int(now + 299.5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"jti": "a\x00b"}, "invalid jti"),
        ({"jti": "\ud800"}, "invalid jti"),
        ({"jti": "x" * 257}, "invalid jti"),
        ({"tenant": "hospital\x00"}, "invalid tenant"),
        ({"tenant": "t" * 257}, "invalid tenant"),
        ({"sub": "\udfff"}, "invalid sub"),
    ],
    ids=["jti NUL", "jti lone surrogate", "jti too long", "tenant NUL", "tenant long", "sub"],
)
async def test_text_claims_that_cannot_be_stored_or_logged_are_refused(
    static_verifier: JwtVerifier,
    ec_key: ec.EllipticCurvePrivateKey,
    claims: dict[str, Any],
    reason: str,
) -> None:
    token = make_token(ec_key, **claims)

    assert (await rejected(static_verifier, bearer(token))).reason == reason


@pytest.mark.asyncio
async def test_replayed_jti_rejected(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = make_token(ec_key)
    await static_verifier.verify(bearer(token), AUDIENCE)

    assert (await rejected(static_verifier, bearer(token))).reason == "token replayed"
    # A new token with the same jti is a replay too.
    again = make_token(ec_key, jti=jwt.decode(token, options={"verify_signature": False})["jti"])
    assert (await rejected(static_verifier, bearer(again))).reason == "token replayed"


@pytest.mark.asyncio
async def test_replay_within_leeway_after_exp_rejected(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """A token past exp but inside the leeway is still accepted, so still remembered."""
    token = make_token(ec_key, exp=int(time.time()) - 30)
    await static_verifier.verify(bearer(token), AUDIENCE)

    assert (await rejected(static_verifier, bearer(token))).reason == "token replayed"


@pytest.mark.asyncio
async def test_rejected_token_does_not_consume_its_jti(
    static_verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    await rejected(static_verifier, bearer(make_token(ec_key, jti="j", aud="https://other")))

    assert (await static_verifier.verify(bearer(make_token(ec_key, jti="j")), AUDIENCE)).jti == "j"


# --- jwks_url issuers ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_jwks_url_keys_are_fetched_once_and_cached(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.documents["/jwks.json"] = {"keys": [ec_jwk(ec_key, EC_KID)]}
    url = jwks_server.url("/jwks.json")
    verifier = remote_verifier(url)

    for _ in range(3):
        await verifier.verify(bearer(make_token(ec_key, headers={"jku": url})), AUDIENCE)

    assert jwks_server.hits["/jwks.json"] == 1


@pytest.mark.asyncio
async def test_jku_not_on_allow_list_is_never_fetched(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.documents["/jwks.json"] = {"keys": [ec_jwk(ec_key, EC_KID)]}
    jwks_server.documents["/attacker.json"] = {"keys": [ec_jwk(ec_key, EC_KID)]}
    verifier = remote_verifier(jwks_server.url("/jwks.json"))
    token = make_token(ec_key, headers={"jku": jwks_server.url("/attacker.json")})

    error = await rejected(verifier, bearer(token))

    assert error.reason == "jku not trusted"
    assert sum(jwks_server.hits.values()) == 0


@pytest.mark.asyncio
async def test_key_rotation_via_jwks_url_refetch(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.documents["/jwks.json"] = {"keys": [ec_jwk(ec_key, EC_KID)]}
    verifier = remote_verifier(jwks_server.url("/jwks.json"), jwks_min_refetch_seconds=0)
    await verifier.verify(bearer(make_token(ec_key)), AUDIENCE)
    rotated = ec.generate_private_key(ec.SECP384R1())
    jwks_server.documents["/jwks.json"] = {"keys": [ec_jwk(rotated, "ec-2")]}

    client = await verifier.verify(bearer(make_token(rotated, headers={"kid": "ec-2"})), AUDIENCE)

    assert client.issuer == ISSUER
    assert jwks_server.hits["/jwks.json"] == 2


@pytest.mark.asyncio
async def test_unknown_kid_refetch_is_rate_limited(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.documents["/jwks.json"] = {"keys": [ec_jwk(ec_key, EC_KID)]}
    verifier = remote_verifier(jwks_server.url("/jwks.json"))  # default: 10 s between fetches
    await verifier.verify(bearer(make_token(ec_key)), AUDIENCE)

    for n in range(20):
        token = make_token(ec_key, headers={"kid": f"made-up-{n}"})
        assert (await rejected(verifier, bearer(token))).reason == "unknown kid"

    assert jwks_server.hits["/jwks.json"] == 1


@pytest.mark.asyncio
async def test_unreachable_jwks_url(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = remote_verifier(jwks_server.url("/missing.json"))

    error = await rejected(verifier, bearer(make_token(ec_key)))

    assert error.reason == "issuer keys unavailable"
    assert jwks_server.hits["/missing.json"] == 1


@pytest.mark.asyncio
async def test_stale_keys_kept_when_refresh_fails(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.documents["/jwks.json"] = {"keys": [ec_jwk(ec_key, EC_KID)]}
    verifier = remote_verifier(
        jwks_server.url("/jwks.json"), jwks_ttl_seconds=0.2, jwks_min_refetch_seconds=0
    )
    await verifier.verify(bearer(make_token(ec_key)), AUDIENCE)
    del jwks_server.documents["/jwks.json"]
    await asyncio.sleep(0.3)  # let the 0.2 s TTL lapse

    assert (await verifier.verify(bearer(make_token(ec_key)), AUDIENCE)).issuer == ISSUER
    assert jwks_server.hits["/jwks.json"] == 2


@pytest.mark.asyncio
async def test_concurrent_requests_share_one_jwks_fetch(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.documents["/jwks.json"] = {"keys": [ec_jwk(ec_key, EC_KID)]}
    verifier = remote_verifier(jwks_server.url("/jwks.json"), jwks_min_refetch_seconds=0)
    headers = [bearer(make_token(ec_key)) for _ in range(10)]

    clients = await asyncio.gather(*(verifier.verify(h, AUDIENCE) for h in headers))

    assert len({client.jti for client in clients}) == 10
    assert jwks_server.hits["/jwks.json"] == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting: RecursionError in json
        {"keys": [{"kty": "EC", "crv": ["P-384"], "kid": "k"}]},
        {"keys": [{"kty": "RSA", "kid": "k", "alg": ["RS256"], "n": 1, "e": 1}]},
        {"keys": [{"kty": "oct", "kid": EC_KID, "k": "c2VjcmV0"}]},
        {"keys": "all of them"},
    ],
)
async def test_hostile_jwks_response_means_keys_unavailable(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey, body: Any
) -> None:
    jwks_server.documents["/jwks.json"] = body
    verifier = remote_verifier(jwks_server.url("/jwks.json"))

    error = await rejected(verifier, bearer(make_token(ec_key)))

    assert error.reason == "issuer keys unavailable"


@pytest.mark.asyncio
async def test_oversized_jwks_response_refused(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    valid = json.dumps({"keys": [ec_jwk(ec_key, EC_KID)]}).encode()
    jwks_server.documents["/jwks.json"] = valid + b" " * 300_000
    verifier = remote_verifier(jwks_server.url("/jwks.json"))

    error = await rejected(verifier, bearer(make_token(ec_key)))

    assert error.reason == "issuer keys unavailable"


def test_http_jwks_url_refused_unless_insecure_allowed() -> None:
    issuers = parse_trusted_issuers({ISSUER: {"jwks_url": "http://ehr.example.org/jwks"}})

    with pytest.raises(ValueError, match="https"):
        JwtVerifier(issuers, InMemoryReplayCache())


# --- replay cache -------------------------------------------------------------------


def test_replay_cache_evicts_expired_entries() -> None:
    now = [1000.0]
    cache = InMemoryReplayCache(clock=lambda: now[0])

    assert cache.check_and_store("a", ISSUER, 1010)
    assert cache.check_and_store("a", "https://other.example", 1010)  # per issuer
    assert not cache.check_and_store("a", ISSUER, 1010)
    now[0] = 1010.0

    assert cache.check_and_store("b", ISSUER, 1020)
    assert len(cache) == 1
    assert cache.check_and_store("a", ISSUER, 1030)


def test_replay_cache_is_thread_safe() -> None:
    cache = InMemoryReplayCache()
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def attempt() -> None:
        barrier.wait()
        results.append(cache.check_and_store("same", ISSUER, int(time.time()) + 60))

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 15 + [True]


# --- parse_trusted_issuers ----------------------------------------------------------


def test_parse_inline_jwks(ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks = {"keys": [ec_jwk(ec_key, EC_KID), rsa_jwk(rsa_key, RSA_KID, alg="RS384")]}

    issuers = parse_trusted_issuers(json.dumps({ISSUER: {"jwks": jwks}}))

    keys = issuers[ISSUER].keys
    assert isinstance(keys, StaticJwks)
    assert keys.keys[EC_KID].algorithms == {"ES384"}
    assert keys.keys[RSA_KID].algorithms == {"RS384"}


def test_parse_jwks_file(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [ec_jwk(ec_key, EC_KID)]}))

    issuers = parse_trusted_issuers({ISSUER: {"jwks_file": str(path)}})

    keys = issuers[ISSUER].keys
    assert isinstance(keys, StaticJwks)
    assert set(keys.keys) == {EC_KID}


def test_parse_jwks_url() -> None:
    url = "https://ehr.example.org/.well-known/jwks.json"

    assert parse_trusted_issuers({ISSUER: {"jwks_url": url}}) == {
        ISSUER: TrustedIssuer(RemoteJwks(url), require_typ=True)
    }
    relaxed = parse_trusted_issuers({ISSUER: {"jwks_url": url, "require_typ": False}})
    assert relaxed == {ISSUER: TrustedIssuer(RemoteJwks(url), require_typ=False)}


def test_parse_sandbox_jwks_fixture() -> None:
    issuers = parse_trusted_issuers(
        {"https://sandbox.cds-hooks.org": {"jwks_file": str(FIXTURES / "sandbox-jwks.json")}}
    )

    keys = issuers["https://sandbox.cds-hooks.org"].keys
    assert isinstance(keys, StaticJwks)
    assert keys.keys["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"].algorithms == {"ES384"}


def test_parse_skips_unusable_keys(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwks = {
        "keys": [
            ec_jwk(ec_key, EC_KID),
            rsa_jwk(rsa_key, "enc", use="enc"),
            rsa_jwk(small_rsa, "weak"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            ec_jwk(ec_key, "wrong-alg", alg="ES256"),
            ec_jwk(ec_key, ""),
            {k: v for k, v in ec_jwk(ec_key, "no-kid").items() if k != "kid"},
        ]
    }

    keys = parse_trusted_issuers({ISSUER: {"jwks": jwks}})[ISSUER].keys

    assert isinstance(keys, StaticJwks)
    assert set(keys.keys) == {EC_KID}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "non-empty JSON object"),
        ({}, "non-empty JSON object"),
        ({"": {"jwks_url": "https://x.example/jwks"}}, "non-empty 'iss'"),
        ({ISSUER: "https://x.example/jwks"}, "exactly one of"),
        ({ISSUER: {}}, "exactly one of"),
        ({ISSUER: {"jwks_uri": "https://x.example/jwks"}}, "exactly one of"),
        ({ISSUER: {"jwks_url": "https://x.example/jwks", "jwks": {"keys": []}}}, "exactly one of"),
        ({ISSUER: {"require_typ": False}}, "exactly one of"),
        ({ISSUER: {"jwks_url": "https://x.example/jwks", "typ": "JWT"}}, "exactly one of"),
        ({ISSUER: {"jwks_url": "https://x.example/jwks", "require_typ": "no"}}, "true or false"),
        ({ISSUER: {"jwks_url": "ftp://x.example/jwks"}}, "absolute https URL"),
        ({ISSUER: {"jwks_url": "/relative/jwks"}}, "absolute https URL"),
        ({ISSUER: {"jwks_file": "/nonexistent/jwks.json"}}, "cannot read jwks_file"),
        ({ISSUER: {"jwks": {"keys": "nope"}}}, "'keys' array"),
        ({ISSUER: {"jwks": [{"kty": "EC"}]}}, "'keys' array"),
        ({ISSUER: {"jwks": {"keys": []}}}, "no usable signing key"),
        (
            {ISSUER: {"jwks": {"keys": [{"kty": "EC", "kid": "k", "crv": "P-384"}]}}},
            "no usable signing key",
        ),
    ],
)
def test_parse_bad_configs(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trusted_issuers(raw)


def test_parse_rejects_bad_jwks_file_and_duplicate_kids(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_trusted_issuers({ISSUER: {"jwks_file": str(bad)}})

    duplicate = {"keys": [ec_jwk(ec_key, EC_KID), ec_jwk(ec_key, EC_KID)]}
    with pytest.raises(ValueError, match="duplicate kid"):
        parse_trusted_issuers({ISSUER: {"jwks": duplicate}})


def test_parse_rejects_private_keys_in_config(ec_key: ec.EllipticCurvePrivateKey) -> None:
    private_jwk = {**ECAlgorithm.to_jwk(ec_key, as_dict=True), "kid": EC_KID}

    with pytest.raises(ValueError, match="no usable signing key") as info:
        parse_trusted_issuers({ISSUER: {"jwks": {"keys": [private_jwk]}}})

    assert private_jwk["d"] not in str(info.value)
