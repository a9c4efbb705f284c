"""CDS client JWTs through HTTP (CDS Hooks 2.0 "Trusting CDS Clients"), with TWITCH_CDS_AUTH=jwt.

The verifier's own matrix is in test_auth_unit.py; here every case goes through the app as an
EHR reaches it: the dependency on discovery, service calls and feedback, the audience built
from the URL called (or TWITCH_CDS_PUBLIC_BASE_URL), the database replay cache, the 401
OperationOutcome with its WWW-Authenticate challenge, CORS, and the issuer settings.
Keys are generated per test module; `jwks_url` issuers are served over https by a local
server whose self-signed certificate the service trusts through SSL_CERT_FILE, so the
production configuration path is exercised without any test-only switch.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import cds.web.auth
from cds.settings import PROJECT_ROOT
from tests.conftest import SERVICE_OS, SERVICE_PV, SERVICE_SIGN, LiveServer
from tests.support.cards import cards_by_code
from tests.support.cli import run
from tests.support.fhir import hook_request, lab, twitch
from tests.support.jwt_tokens import (
    DROP,
    SANDBOX_ISSUER,
    SANDBOX_JKU,
    JwksServer,
    TokenFactory,
    bearer,
    key_material,
    new_ec_key,
    public_jwk,
    self_signed_certificate,
)
from tests.support.paths import SANDBOX

BASE = "http://testserver"  # what TestClient sends as scheme and Host
FEEDBACK = {
    "feedback": [
        {
            "card": "0b0e7a1e-4b8d-4c1c-9d1e-4f5a6b7c8d9e",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-26T10:00:00Z",
        }
    ]
}


@pytest.fixture(scope="module")
def tokens() -> TokenFactory:
    return TokenFactory()


@pytest.fixture
def make_jwt_client(make_client: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """An app with TWITCH_CDS_AUTH=jwt whose public base URL is the one TestClient calls."""

    def make(**overrides: Any) -> TestClient:
        return make_client(**{"auth": "jwt", "public_base_url": BASE, **overrides})

    return make


@pytest.fixture
def jwt_client(make_jwt_client: Callable[..., TestClient], tokens: TokenFactory) -> TestClient:
    return make_jwt_client(trusted_issuers=tokens.trusted_issuers())


# --- the three authenticated endpoints ----------------------------------------------------


def discovery(
    client: TestClient, headers: dict[str, str], path: str = "/cds-services"
) -> httpx.Response:
    return client.get(path, headers=headers)


def service_call(
    client: TestClient, headers: dict[str, str], path: str = f"/cds-services/{SERVICE_PV}"
) -> httpx.Response:
    return client.post(
        path, json=hook_request(twitch(), lab("19123-9", 1.4, "mg/dL")), headers=headers
    )


def feedback(
    client: TestClient, headers: dict[str, str], path: str = f"/cds-services/{SERVICE_PV}/feedback"
) -> httpx.Response:
    return client.post(path, json=FEEDBACK, headers=headers)


ENDPOINTS = {
    "discovery": (discovery, "/cds-services"),
    "service": (service_call, f"/cds-services/{SERVICE_PV}"),
    "feedback": (feedback, f"/cds-services/{SERVICE_PV}/feedback"),
}


def assert_unauthorized(
    response: httpx.Response, reason: str | None, secrets: list[str] = ()
) -> None:
    """401 + WWW-Authenticate (RFC 6750) + an OperationOutcome that leaks nothing."""
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["code"] == "login"
    if reason is None:  # no credentials at all: a bare challenge, no error code
        assert challenge == "Bearer"
    else:
        assert issue["diagnostics"] == reason
        assert challenge == f'Bearer error="invalid_token", error_description="{reason}"'
    text = response.text + challenge
    for secret in secrets:
        assert secret not in text
    assert "BEGIN" not in text and '"kty"' not in text


def secrets_of(tokens: TokenFactory, token: str | None = None) -> list[str]:
    """What must never be echoed: key numbers and every segment of the presented token."""
    return key_material(tokens.jwks) + [part for part in (token or "").split(".") if len(part) >= 8]


# --- accepted tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_valid_token_for_the_exact_url_is_accepted(
    jwt_client: TestClient, tokens: TokenFactory, alg: str, endpoint: str
) -> None:
    call, path = ENDPOINTS[endpoint]
    response = call(jwt_client, bearer(tokens.token(BASE + path, alg=alg)))
    assert response.status_code == 200, response.text


def test_authenticated_service_call_answers_with_cards(
    jwt_client: TestClient, tokens: TokenFactory
) -> None:
    path = f"/cds-services/{SERVICE_PV}"
    response = service_call(jwt_client, bearer(tokens.token(BASE + path)))
    assert "hypomagnesemia" in cards_by_code(response.json())


def test_every_service_id_has_its_own_audience(
    jwt_client: TestClient, tokens: TokenFactory
) -> None:
    for service in (SERVICE_PV, SERVICE_OS, SERVICE_SIGN):
        path = f"/cds-services/{service}/feedback"
        assert feedback(jwt_client, bearer(tokens.token(BASE + path)), path).status_code == 200
    other = f"{BASE}/cds-services/{SERVICE_SIGN}/feedback"
    assert_unauthorized(feedback(jwt_client, bearer(tokens.token(other))), "audience mismatch")


def test_query_string_is_not_part_of_the_audience(
    jwt_client: TestClient, tokens: TokenFactory
) -> None:
    response = discovery(
        jwt_client, bearer(tokens.token(f"{BASE}/cds-services")), "/cds-services?patient=p1"
    )
    assert response.status_code == 200


def test_one_element_audience_array_is_accepted(
    jwt_client: TestClient, tokens: TokenFactory
) -> None:
    response = discovery(jwt_client, bearer(tokens.token([f"{BASE}/cds-services"])))
    assert response.status_code == 200


# --- rejected tokens --------------------------------------------------------------------------

SERVICE_URL = f"{BASE}/cds-services/{SERVICE_PV}"


def now() -> int:
    return int(time.time())


REJECTIONS: dict[str, tuple[Callable[[TokenFactory], str], str]] = {
    "expired": (lambda t: t.token(SERVICE_URL, iat=now() - 900, exp=now() - 300), "token expired"),
    "expired RS384": (
        lambda t: t.token(SERVICE_URL, alg="RS384", iat=now() - 900, exp=now() - 300),
        "token expired",
    ),
    "issued in the future": (
        lambda t: t.token(SERVICE_URL, iat=now() + 600, exp=now() + 900),
        "token not yet valid",
    ),
    "nbf in the future": (
        lambda t: t.token(SERVICE_URL, nbf=now() + 600, exp=now() + 900),
        "token not yet valid",
    ),
    "discovery url on the service": (
        lambda t: t.token(f"{BASE}/cds-services"),
        "audience mismatch",
    ),
    "feedback url on the service": (
        lambda t: t.token(SERVICE_URL + "/feedback"),
        "audience mismatch",
    ),
    "https instead of http": (
        lambda t: t.token(SERVICE_URL.replace("http:", "https:")),
        "audience mismatch",
    ),
    "two audiences": (
        lambda t: t.token([SERVICE_URL, "https://attacker.example"]),
        "audience mismatch",
    ),
    "wrong iss": (lambda t: t.token(SERVICE_URL, iss="https://evil.example.org"), "unknown issuer"),
    "no iss": (lambda t: t.token(SERVICE_URL, iss=DROP), "unknown issuer"),
    "unknown kid": (lambda t: t.token(SERVICE_URL, headers={"kid": "not-ours"}), "unknown kid"),
    "no kid": (lambda t: t.token(SERVICE_URL, headers={"kid": DROP}), "missing kid"),
    "bad signature": (lambda t: t.token(SERVICE_URL, key=new_ec_key()), "invalid signature"),
    "tampered payload": (lambda t: _tampered(t), "invalid signature"),
    "RS384 token naming the EC key": (
        lambda t: t.token(SERVICE_URL, alg="RS384", headers={"kid": t.ec_kid}),
        "algorithm does not match key",
    ),
    "alg none": (lambda t: t.alg_none(SERVICE_URL), "algorithm not allowed"),
    "HS256 keyed with the public key": (
        lambda t: t.hs256_with_public_key(SERVICE_URL),
        "algorithm not allowed",
    ),
    "no jti": (lambda t: t.token(SERVICE_URL, jti=DROP), "missing jti"),
    "no exp": (lambda t: t.token(SERVICE_URL, exp=DROP), "missing exp"),
    "typ not JWT": (lambda t: t.token(SERVICE_URL, headers={"typ": "at+jwt"}), "typ must be JWT"),
    "no typ": (lambda t: t.token(SERVICE_URL, headers={"typ": DROP}), "missing typ"),
    # Lifetime: CDS Hooks allows exp at most five minutes ahead (plus the 60 s skew).
    "exp ten years ahead": (
        lambda t: t.token(SERVICE_URL, exp=now() + 10 * 365 * 86400),
        "exp too far ahead",
    ),
    "exp seven minutes ahead": (
        lambda t: t.token(SERVICE_URL, exp=now() + 420),
        "exp too far ahead",
    ),
    "iat a year old": (
        lambda t: t.token(SERVICE_URL, iat=now() - 365 * 86400, exp=now() + 60),
        "token too old",
    ),
    "exp 10^20 (was a 500 from the replay store)": (
        lambda t: t.token(SERVICE_URL, exp=10**20),
        "exp out of range",
    ),
    "exp a numeric string": (
        lambda t: t.token(SERVICE_URL, exp=str(now() + 300)),
        "exp must be a number",
    ),
    "iat a numeric string": (
        lambda t: t.token(SERVICE_URL, iat=str(now())),
        "iat must be a number",
    ),
    "nbf a numeric string": (
        lambda t: t.token(SERVICE_URL, nbf=str(now())),
        "nbf must be a number",
    ),
    "exp true": (lambda t: t.token(SERVICE_URL, exp=True), "exp must be a number"),
    "negative iat": (lambda t: t.token(SERVICE_URL, iat=-1), "iat out of range"),
    "jti with NUL": (lambda t: t.token(SERVICE_URL, jti="a\x00b"), "invalid jti"),
    "tenant with a lone surrogate": (
        lambda t: t.token(SERVICE_URL, tenant="\ud800"),
        "invalid tenant",
    ),
    "not a JWT": (lambda t: "not-a-jwt", "malformed token"),
    "three junk segments": (lambda t: "Zm9v.YmFy.YmF6", "malformed token"),
    "oversized": (lambda t: "a" * 9000 + ".b.c", "malformed token"),
}


def _tampered(tokens: TokenFactory) -> str:
    header, _, signature = tokens.token(SERVICE_URL).split(".")
    forged = tokens.unsigned(SERVICE_URL, {}, tenant="someone-else").split(".")[1]
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejected_token_is_401_operation_outcome(
    jwt_client: TestClient, tokens: TokenFactory, case: str
) -> None:
    make, reason = REJECTIONS[case]
    token = make(tokens)
    response = service_call(jwt_client, bearer(token))
    assert_unauthorized(response, reason, secrets_of(tokens, token))


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Basic dTpw"}],
    ids=["absent", "empty", "basic"],
)
def test_missing_bearer_token_is_a_bare_challenge(
    jwt_client: TestClient, endpoint: str, headers: dict[str, str]
) -> None:
    call, _ = ENDPOINTS[endpoint]
    assert_unauthorized(call(jwt_client, headers), None)


def test_replayed_jti_is_refused_on_second_use(
    jwt_client: TestClient, tokens: TokenFactory
) -> None:
    token = tokens.token(SERVICE_URL)
    assert service_call(jwt_client, bearer(token)).status_code == 200
    assert_unauthorized(
        service_call(jwt_client, bearer(token)), "token replayed", secrets_of(tokens, token)
    )
    # A fresh signature over the same jti is the same nonce, hence also a replay.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert_unauthorized(
        service_call(jwt_client, bearer(tokens.token(SERVICE_URL, jti=jti))), "token replayed"
    )


def test_authentication_comes_before_any_other_answer(
    jwt_client: TestClient, tokens: TokenFactory
) -> None:
    """Without a valid token nothing is revealed: not which services exist, nor the schema."""
    assert_unauthorized(jwt_client.post("/cds-services/nope", json=hook_request(twitch())), None)
    assert_unauthorized(jwt_client.post(f"/cds-services/{SERVICE_PV}", json={"hook": 1}), None)
    token = tokens.token(f"{BASE}/cds-services/nope")
    assert_unauthorized(
        jwt_client.post(f"/cds-services/{SERVICE_PV}", json={}, headers=bearer(token)),
        "audience mismatch",
    )


@pytest.mark.parametrize("endpoint", ["service", "feedback"])
def test_a_malformed_body_is_not_parsed_before_the_token_is_verified(
    jwt_client: TestClient, tokens: TokenFactory, endpoint: str
) -> None:
    """Unauthenticated, a body that is not JSON gets the 401, not the parser's 400."""
    path = ENDPOINTS[endpoint][1]

    def post(authorization: dict[str, str]) -> httpx.Response:
        return jwt_client.post(
            path,
            content=b'{"hook": "patient-view", oops',
            headers={"Content-Type": "application/json", **authorization},
        )

    assert_unauthorized(post({}), None)
    assert_unauthorized(post(bearer(TokenFactory().token(BASE + path))), "invalid signature")
    # Once the client is known, the body is read and its fault named.
    response = post(bearer(tokens.token(BASE + path)))
    assert response.status_code == 400 and "JSON" in response.text


def test_only_what_the_headers_show_is_answered_before_authentication(
    jwt_client: TestClient,
) -> None:
    """As the integration guide says: 413 and 415 come from the headers alone, no body read."""
    path = ENDPOINTS["service"][1]
    not_json = jwt_client.post(path, content=b"{}", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 415
    too_large = jwt_client.post(
        path,
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": str(10**9)},
    )
    assert too_large.status_code == 413


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_two_authorization_headers_are_refused(
    jwt_client: TestClient, tokens: TokenFactory, endpoint: str
) -> None:
    call, path = ENDPOINTS[endpoint]
    first, second = tokens.token(BASE + path), tokens.token(BASE + path)
    for pair in ((first, second), (first, first), (first, "not-a-jwt")):
        headers = httpx.Headers([("Authorization", f"Bearer {token}") for token in pair])
        response = call(jwt_client, headers)
        assert_unauthorized(response, "more than one Authorization header")
    # Neither token was consumed by the refused request.
    assert call(jwt_client, bearer(first)).status_code == 200


def test_issuer_configured_with_require_typ_false_may_omit_typ(
    make_jwt_client: Callable[..., TestClient], tokens: TokenFactory
) -> None:
    other = TokenFactory(issuer="https://other-ehr.example.org")
    client = make_jwt_client(
        trusted_issuers={
            tokens.issuer: {"jwks": tokens.jwks, "require_typ": False},
            **other.trusted_issuers(),
        }
    )
    no_typ = {"typ": DROP}
    assert (
        service_call(client, bearer(tokens.token(SERVICE_URL, headers=no_typ))).status_code == 200
    )
    assert_unauthorized(
        service_call(client, bearer(tokens.token(SERVICE_URL, headers={"typ": "JOSE"}))),
        "typ must be JWT",
    )
    assert_unauthorized(
        service_call(client, bearer(other.token(SERVICE_URL, headers=no_typ))), "missing typ"
    )


def test_health_check_needs_no_token(jwt_client: TestClient) -> None:
    assert jwt_client.get("/healthz").status_code == 200


# --- CORS ---------------------------------------------------------------------------------


def test_cors_preflight_needs_no_token(jwt_client: TestClient) -> None:
    preflights = json.loads((SANDBOX / "cors-preflights.json").read_text())
    for preflight in preflights:
        response = jwt_client.options(preflight["path"], headers=preflight["headers"])
        assert response.status_code == 200, preflight["path"]
        assert response.headers["access-control-allow-origin"] == "*"
        assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_401_carries_cors_headers_so_a_browser_client_can_read_it(jwt_client: TestClient) -> None:
    response = jwt_client.get("/cds-services", headers={"Origin": "http://127.0.0.1:8080"})
    assert_unauthorized(response, None)
    assert response.headers["access-control-allow-origin"] == "*"


# --- TWITCH_CDS_PUBLIC_BASE_URL -------------------------------------------------------------


@pytest.mark.parametrize("base", ["https://cds.example.org", "https://cds.example.org/"])
def test_public_base_url_is_the_audience(
    make_client: Callable[..., TestClient], tokens: TokenFactory, base: str
) -> None:
    client = make_client(auth="jwt", trusted_issuers=tokens.trusted_issuers(), public_base_url=base)
    public = f"https://cds.example.org/cds-services/{SERVICE_PV}"
    assert service_call(client, bearer(tokens.token(public))).status_code == 200
    assert feedback(client, bearer(tokens.token(public + "/feedback"))).status_code == 200
    # Behind a proxy the URL the service sees is not the one the client called.
    assert_unauthorized(
        service_call(client, bearer(tokens.token(SERVICE_URL))), "audience mismatch"
    )


OTHER_VENDOR = "other-vendor.example"


def test_a_forged_host_header_does_not_choose_the_audience(
    jwt_client: TestClient, tokens: TokenFactory
) -> None:
    """A token minted for another vendor's service, replayed here with that vendor's Host."""
    theirs = tokens.token(f"http://{OTHER_VENDOR}/cds-services/{SERVICE_PV}")
    response = service_call(jwt_client, {**bearer(theirs), "Host": OTHER_VENDOR})
    assert_unauthorized(response, "audience mismatch")


def test_jwt_mode_refuses_to_start_without_a_public_base_url(
    make_client: Callable[..., TestClient], tokens: TokenFactory
) -> None:
    for unset in ({}, {"public_base_url": ""}):
        with pytest.raises(ValueError, match="TWITCH_CDS_PUBLIC_BASE_URL"):
            make_client(auth="jwt", trusted_issuers=tokens.trusted_issuers(), **unset)
    # Without JWT verification there is no audience, hence nothing to refuse.
    assert make_client(auth="none").get("/cds-services").status_code == 200


@pytest.mark.parametrize(
    "base", ["cds.example.org", "/cds", "ftp://cds.example.org", "https://cds.example.org/?x=1"]
)
def test_public_base_url_must_be_an_absolute_http_url(
    make_settings: Callable[..., Any], base: str
) -> None:
    with pytest.raises(ValidationError, match="absolute http"):
        make_settings(public_base_url=base)


def test_development_setting_takes_the_audience_from_the_host_header(
    make_client: Callable[..., TestClient], tokens: TokenFactory
) -> None:
    """What TWITCH_CDS_DEV_AUDIENCE_FROM_HOST leaves open, hence for development only."""
    client = make_client(
        auth="jwt", trusted_issuers=tokens.trusted_issuers(), dev_audience_from_host=True
    )
    theirs = tokens.token(f"http://{OTHER_VENDOR}/cds-services/{SERVICE_PV}")
    assert service_call(client, {**bearer(theirs), "Host": OTHER_VENDOR}).status_code == 200
    assert service_call(client, bearer(tokens.token(SERVICE_URL))).status_code == 200


def test_real_server_logs_each_relaxation_as_a_warning_at_start(
    start_server: Callable[..., LiveServer], tokens: TokenFactory
) -> None:
    relaxed = {tokens.issuer: {"jwks": tokens.jwks, "require_typ": False}}
    server = start_server(
        TWITCH_CDS_AUTH="jwt",
        TWITCH_CDS_PUBLIC_BASE_URL="",
        TWITCH_CDS_DEV_AUDIENCE_FROM_HOST="true",
        TWITCH_CDS_TRUSTED_ISSUERS=json.dumps(relaxed),
    )
    records = [
        json.loads(line) for line in server.log_path.read_text().splitlines() if line[:1] == "{"
    ]
    warnings = [r for r in records if r.get("level") == "warning"]
    assert any("Host header" in r["event"] for r in warnings), warnings
    assert [r["issuer"] for r in warnings if "typ" in r["event"]] == [tokens.issuer]


def test_serve_refuses_jwt_mode_without_a_public_base_url(
    tokens: TokenFactory, tmp_path: Path
) -> None:
    """`twitch-cds serve` says why in one line and exits, before it touches the database."""
    database = tmp_path / "never-created.sqlite3"
    status, _, stderr = run(
        "serve",
        "--port",
        "9",  # never bound: the command stops before
        env={
            "TWITCH_CDS_AUTH": "jwt",
            "TWITCH_CDS_PUBLIC_BASE_URL": "",
            "TWITCH_CDS_DATABASE_URL": f"sqlite:///{database}",
            "TWITCH_CDS_TRUSTED_ISSUERS": json.dumps(tokens.trusted_issuers()),
        },
    )
    assert status == 1
    assert stderr.startswith("twitch-cds serve: TWITCH_CDS_AUTH=jwt needs TWITCH_CDS_PUBLIC_")
    assert "Traceback" not in stderr and not database.exists()


def test_the_integration_guides_example_token_is_accepted_as_documented(
    make_jwt_client: Callable[..., TestClient], tokens: TokenFactory
) -> None:
    """The decoded example of docs/integration-guide.md §3, signed now with this issuer's key
    (its times moved to now, its lifetime kept), passes; so the guide cannot drift from the
    rules it states."""
    guide = (PROJECT_ROOT / "docs" / "integration-guide.md").read_text()
    example = guide[guide.index("An example, decoded") :]
    blocks = [json.loads(block.split("```", 1)[0]) for block in example.split("```json")[1:3]]
    header, claims = blocks
    assert header == {"alg": "ES384", "typ": "JWT", "kid": header["kid"]}
    public = urlsplit(claims["aud"])
    client = make_jwt_client(
        trusted_issuers={claims["iss"]: {"jwks": tokens.jwks}},
        public_base_url=f"{public.scheme}://{public.netloc}",
    )
    lifetime = claims["exp"] - claims["iat"]
    assert lifetime == 300
    iat = int(time.time())
    token = jwt.encode(
        {**claims, "iat": iat, "exp": iat + lifetime},
        tokens.ec_key,
        algorithm=header["alg"],
        headers={**header, "kid": tokens.ec_kid},
    )
    assert service_call(client, bearer(token), public.path).status_code == 200


# --- issuers configured with jwks_file / jwks_url -----------------------------------------


def test_sandbox_shaped_token_verifies_with_jwks_file(
    make_jwt_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """The sandbox's header and claims (ES384, kid, jku), signed with our own P-384 key.

    The issuer's keys come from a file, so the token's jku (the sandbox URL) is not used.
    """
    captured = json.loads((SANDBOX / "jwt.decoded-example.json").read_text())
    header, claims = captured["header"], captured["payload"]
    assert (claims["iss"], header["jku"], header["alg"]) == (SANDBOX_ISSUER, SANDBOX_JKU, "ES384")
    key = new_ec_key()
    jwks_file = tmp_path / "sandbox-jwks.json"
    jwks_file.write_text(
        json.dumps({"keys": [public_jwk(key, header["kid"], use="sig", alg="ES384")]})
    )
    client = make_jwt_client(trusted_issuers={SANDBOX_ISSUER: {"jwks_file": str(jwks_file)}})
    now = int(time.time())
    token = jwt.encode(
        {**claims, "aud": SERVICE_URL, "iat": now, "exp": now + 300},
        key,
        algorithm="ES384",
        headers=header,
    )
    assert service_call(client, bearer(token)).status_code == 200
    impostor = jwt.encode(
        {**claims, "aud": SERVICE_URL, "iat": now, "exp": now + 300, "jti": "other"},
        new_ec_key(),
        algorithm="ES384",
        headers=header,
    )
    assert_unauthorized(service_call(client, bearer(impostor)), "invalid signature")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_jwks(
    tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], JwksServer]]:
    """Local https JWKS servers, trusted by the service through SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    servers: list[JwksServer] = []

    def start() -> JwksServer:
        servers.append(JwksServer(tls=tls_files))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


class ShiftedClock:
    """Stands in for the `time` module inside cds.web.auth, so a test can let time pass."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset


def test_jku_not_on_the_allow_list_is_refused_without_any_fetch(
    make_jwt_client: Callable[..., TestClient],
    tokens: TokenFactory,
    https_jwks: Callable[[], JwksServer],
) -> None:
    issuer_server, attacker = https_jwks(), https_jwks()
    issuer_server.documents["/jwks.json"] = tokens.jwks
    attacker.documents["/jwks.json"] = tokens.jwks
    client = make_jwt_client(
        trusted_issuers={tokens.issuer: {"jwks_url": issuer_server.url("/jwks.json")}}
    )
    for jku in (attacker.url("/jwks.json"), issuer_server.url("/other.json"), SANDBOX_JKU):
        token = tokens.token(SERVICE_URL, headers={"jku": jku})
        assert_unauthorized(
            service_call(client, bearer(token)), "jku not trusted", secrets_of(tokens, token)
        )
    assert issuer_server.total_hits == 0 and attacker.total_hits == 0


def test_jwks_url_issuer_keys_are_fetched_cached_and_rotated(
    make_jwt_client: Callable[..., TestClient],
    tokens: TokenFactory,
    https_jwks: Callable[[], JwksServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = https_jwks()
    url = server.url("/jwks.json")
    server.documents["/jwks.json"] = tokens.jwks
    client = make_jwt_client(trusted_issuers={tokens.issuer: {"jwks_url": url}})
    clock = ShiftedClock()
    monkeypatch.setattr(cds.web.auth, "time", clock)

    for alg in ("ES384", "RS384", "ES384"):  # jku equal to the configured URL is fine
        token = tokens.token(SERVICE_URL, alg=alg, headers={"jku": url})
        assert service_call(client, bearer(token)).status_code == 200
    assert server.hits["/jwks.json"] == 1  # cached

    # The issuer rotates: the old key is retired, a new kid is published.
    rotated = new_ec_key()
    server.documents["/jwks.json"] = {"keys": [public_jwk(rotated, "ec-2", alg="ES384")]}
    clock.offset += 11  # past the verifier's 10 s spacing of JWKS fetches
    token = tokens.token(SERVICE_URL, key=rotated, headers={"kid": "ec-2"})
    assert service_call(client, bearer(token)).status_code == 200
    assert server.hits["/jwks.json"] == 2  # the unknown kid triggered one refresh

    assert_unauthorized(service_call(client, bearer(tokens.token(SERVICE_URL))), "unknown kid")
    for n in range(5):  # made-up kids cannot make the service hammer the issuer
        token = tokens.token(SERVICE_URL, headers={"kid": f"made-up-{n}"})
        assert_unauthorized(service_call(client, bearer(token)), "unknown kid")
    assert server.hits["/jwks.json"] == 2


def test_unreachable_jwks_url_is_401_not_500(
    make_jwt_client: Callable[..., TestClient],
    tokens: TokenFactory,
    https_jwks: Callable[[], JwksServer],
) -> None:
    server = https_jwks()
    client = make_jwt_client(
        trusted_issuers={tokens.issuer: {"jwks_url": server.url("/missing.json")}}
    )
    assert_unauthorized(
        service_call(client, bearer(tokens.token(SERVICE_URL))), "issuer keys unavailable"
    )


# --- a real server --------------------------------------------------------------------------


def test_real_server_verifies_tokens_and_refuses_replays(
    start_server: Callable[..., LiveServer], tokens: TokenFactory
) -> None:
    server = start_server(
        TWITCH_CDS_AUTH="jwt", TWITCH_CDS_TRUSTED_ISSUERS=json.dumps(tokens.trusted_issuers())
    )
    base = server.base_url
    token = tokens.token(f"{base}/cds-services", alg="RS384")
    assert httpx.get(f"{base}/cds-services", headers=bearer(token)).status_code == 200
    assert_unauthorized(
        httpx.get(f"{base}/cds-services", headers=bearer(token)),
        "token replayed",
        secrets_of(tokens, token),
    )
    assert_unauthorized(httpx.get(f"{base}/cds-services"), None)

    url = f"{base}/cds-services/{SERVICE_PV}"
    request = hook_request(twitch(), lab("19123-9", 1.4, "mg/dL"))
    response = httpx.post(url, json=request, headers=bearer(tokens.token(url)), timeout=10)
    assert "hypomagnesemia" in cards_by_code(response.json())
    assert_unauthorized(
        httpx.post(url, json=request, headers=bearer(tokens.token(f"{base}/cds-services"))),
        "audience mismatch",
    )
    response = httpx.post(
        f"{url}/feedback", json=FEEDBACK, headers=bearer(tokens.token(f"{url}/feedback"))
    )
    assert response.status_code == 200


def raw_exchange(base_url: str, request: bytes) -> bytes:
    """Send `request` as is and read the answer until the server closes or has sent it all:
    what a client that announces a body and never sends it gets back."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as connection:
        connection.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer_length(answer):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def answer_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(answer) + 1


def test_real_server_answers_401_without_reading_the_body(
    start_server: Callable[..., LiveServer], tokens: TokenFactory
) -> None:
    """The request announces 100 kB and sends none: an answer proves no byte was waited for.

    Also checks that uvicorn hands both Authorization headers of a request to the service.
    """
    server = start_server(
        TWITCH_CDS_AUTH="jwt", TWITCH_CDS_TRUSTED_ISSUERS=json.dumps(tokens.trusted_issuers())
    )
    host = urlsplit(server.base_url).netloc
    for path in (f"/cds-services/{SERVICE_PV}", f"/cds-services/{SERVICE_PV}/feedback"):
        token = tokens.token(server.base_url + path)
        for authorization, reason in (
            ([], None),
            (["Bearer not-a-jwt"], "malformed token"),
            ([f"Bearer {token}", f"Bearer {token}"], "more than one Authorization header"),
        ):
            head = [
                f"POST {path} HTTP/1.1",
                f"Host: {host}",
                "Content-Type: application/json",
                "Content-Length: 100000",
                *(f"Authorization: {value}" for value in authorization),
            ]
            answer = raw_exchange(server.base_url, ("\r\n".join(head) + "\r\n\r\n").encode())
            status_line, _, _ = answer.partition(b"\r\n")
            assert status_line.startswith(b"HTTP/1.1 401"), answer[:300]
            body = json.loads(answer.partition(b"\r\n\r\n")[2])
            if reason is not None:
                assert body["issue"][0]["diagnostics"] == reason
