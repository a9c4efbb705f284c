"""Verification of the JWTs CDS clients send (CDS Hooks 2.0, "Trusting CDS Clients").

Framework-independent so that the FastAPI dependency, the CLI and the tests share one
implementation. Every rejection raises :class:`AuthError` whose ``reason`` is short and
safe to return to the caller: it never echoes the token or key material.

Trust model: ``iss`` must be on an allow-list; each trusted issuer has either a static
JWKS (inline or from a file, exchanged out of band) or a ``jwks_url``. A token's ``jku``
header is never used to discover keys: for a ``jwks_url`` issuer it must equal that URL,
and for a static issuer it is ignored because the pinned keys are authoritative.

Tokens are short-lived (RFC 8725 §3.10): CDS Hooks caps ``exp`` at five minutes ahead, so a
token is refused when ``exp`` is further ahead than that or ``iat`` is older, give or take the
clock skew. Every claim is checked against RFC 7519 as written (NumericDates are JSON numbers,
not numeric strings, which PyJWT would take), so that no claim value, however odd, gets
further than a 401.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import (
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidJTIError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_TOKEN_LIFETIME_SECONDS",
    "AuthError",
    "InMemoryReplayCache",
    "IssuerKeys",
    "JwtVerifier",
    "RemoteJwks",
    "ReplayCache",
    "StaticJwks",
    "TrustedIssuer",
    "VerificationKey",
    "VerifiedClient",
    "parse_trusted_issuers",
]

logger = logging.getLogger(__name__)

_EC_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
#: The spec forbids ``none`` and HMAC; only these asymmetric algorithms are accepted.
ALLOWED_ALGORITHMS = frozenset(_EC_CURVE_ALGORITHM.values()) | _RSA_ALGORITHMS

_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]
#: CDS Hooks 2.0: "exp" no more than five minutes ahead; "iat" no older than that either.
MAX_TOKEN_LIFETIME_SECONDS = 300
# NumericDates outside 1970..9999 are refused: no real clock is there, and bounded values
# cannot overflow a datetime or the replay store's 64-bit column.
_LATEST_NUMERIC_DATE = 253402300799  # 9999-12-31T23:59:59Z
_TIME_CLAIMS = ("exp", "iat", "nbf")
_MIN_RSA_KEY_BITS = 2048
# Bounds on attacker-controlled sizes: a CDS client token is well under 1 KiB.
_MAX_TOKEN_CHARS = 8192
_MAX_JTI_CHARS = 256
_MAX_TEXT_CLAIM_CHARS = 256
# Text claims that are stored (jti) or logged (tenant): no control characters (NUL cannot
# be stored in PostgreSQL) and no lone surrogates (they cannot be encoded as UTF-8).
_PLAIN_TEXT_RE = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]+")
_MAX_JWKS_BYTES = 256 * 1024
_JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# JWS compact serialisation; an empty signature is allowed so that alg "none" is
# reported as such rather than as a malformed token.
_COMPACT_JWS_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# Most specific first: InvalidSignatureError is a DecodeError, for instance.
_JWT_ERROR_REASONS: tuple[tuple[type[PyJWTError], str], ...] = (
    (InvalidSignatureError, "invalid signature"),
    (InvalidAudienceError, "audience mismatch"),
    (InvalidIssuerError, "issuer mismatch"),
    (InvalidAlgorithmError, "algorithm does not match key"),
    (InvalidJTIError, "invalid jti"),
    (InvalidSubjectError, "invalid sub"),
)

PublicKey = RSAPublicKey | EllipticCurvePublicKey


class AuthError(Exception):
    """A request is not authenticated; ``reason`` is safe to show to the client.

    ``credentials_present`` is False when no bearer token was sent at all, so that the
    ``WWW-Authenticate`` challenge can omit the error code as RFC 6750 §3.1 asks.
    """

    def __init__(self, reason: str, *, credentials_present: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.credentials_present = credentials_present

    @property
    def www_authenticate(self) -> str:
        """Value for the ``WWW-Authenticate`` header of the 401 response (RFC 6750 §3)."""
        if not self.credentials_present:
            return "Bearer"
        return f'Bearer error="invalid_token", error_description="{self.reason}"'


@dataclass(frozen=True)
class VerifiedClient:
    """The authenticated CDS client, as established by a verified token."""

    issuer: str
    subject: str | None
    tenant: str | None
    jti: str
    expires_at: int


@dataclass(frozen=True)
class VerificationKey:
    """A public key together with the algorithms it may verify.

    The algorithms come from the key (its type, curve and declared ``alg``), never from
    the token, which is what defeats algorithm-confusion attacks (RFC 8725 §2.1).
    """

    key: PublicKey
    algorithms: frozenset[str]


@dataclass(frozen=True)
class StaticJwks:
    """Keys exchanged out of band (inline or from a file), loaded once at start-up."""

    keys: Mapping[str, VerificationKey]


@dataclass(frozen=True)
class RemoteJwks:
    """Keys published by the issuer at a URL, fetched and cached at run time."""

    jwks_url: str


IssuerKeys = StaticJwks | RemoteJwks


@dataclass(frozen=True)
class TrustedIssuer:
    """One entry of the issuer allow-list: where its keys come from, and its relaxations.

    ``require_typ`` is False only for an EHR known to omit the ``typ`` header that CDS
    Hooks 2.0 requires; a ``typ`` it does send must still be ``JWT``.
    """

    keys: IssuerKeys
    require_typ: bool = True


class ReplayCache(Protocol):
    """Remembers token ids so that a captured token cannot be replayed."""

    def check_and_store(self, jti: str, issuer: str, expires_at: int) -> bool:
        """Record ``(issuer, jti)`` until ``expires_at``; False if it is already recorded."""
        ...


class InMemoryReplayCache:
    """Per-process replay cache; entries are dropped once they can no longer be replayed.

    Only sound with a single worker process: several workers need a shared store.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[tuple[str, str], int] = {}
        self._queue: list[tuple[int, tuple[str, str]]] = []

    def check_and_store(self, jti: str, issuer: str, expires_at: int) -> bool:
        """Atomically test and record ``(issuer, jti)``; False means a replay."""
        entry = (issuer, jti)
        with self._lock:
            self._evict(self._clock())
            if entry in self._expiry:
                return False
            self._expiry[entry] = expires_at
            heapq.heappush(self._queue, (expires_at, entry))
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _evict(self, now: float) -> None:
        """Drop expired entries; the heap keeps this proportional to what expires."""
        while self._queue and self._queue[0][0] <= now:
            _, entry = heapq.heappop(self._queue)
            del self._expiry[entry]


def parse_trusted_issuers(raw: str | Mapping[str, Any]) -> dict[str, TrustedIssuer]:
    """Parse the ``TWITCH_CDS_TRUSTED_ISSUERS`` setting (JSON text or already decoded).

    Static JWKS are read and validated here so that a bad key file stops the service at
    start-up instead of failing every request. Raises ValueError naming the problem.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"trusted issuers: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError("trusted issuers: expected a non-empty JSON object keyed by 'iss'")
    return {_issuer_name(issuer): _parse_issuer(issuer, entry) for issuer, entry in raw.items()}


def _issuer_name(issuer: Any) -> str:
    if not isinstance(issuer, str) or not issuer:
        raise ValueError("trusted issuers: every key must be a non-empty 'iss' string")
    return issuer


def _parse_issuer(issuer: str, entry: Any) -> TrustedIssuer:
    """Turn one issuer's entry into its key source (exactly one) and its ``require_typ``."""
    where = f"trusted issuers: {issuer!r}"
    sources = ("jwks_url", "jwks_file", "jwks")
    expected = f"{where}: expected an object with exactly one of {', '.join(sources)}"
    if not isinstance(entry, Mapping):
        raise ValueError(expected)
    given = [kind for kind in sources if kind in entry]
    if len(given) != 1 or any(name not in (*sources, "require_typ") for name in entry):
        raise ValueError(f"{expected}, and optionally require_typ")
    require_typ = entry.get("require_typ", True)
    if not isinstance(require_typ, bool):
        raise ValueError(f"{where}: require_typ must be true or false")
    return TrustedIssuer(_key_source(given[0], entry[given[0]], where), require_typ)


def _key_source(kind: str, value: Any, where: str) -> IssuerKeys:
    if kind == "jwks_url":
        return RemoteJwks(_parse_url(value, where))
    if kind == "jwks_file":
        return StaticJwks(_read_jwks_file(value, where))
    return StaticJwks(_load_jwks(value, f"{where} jwks"))


def _parse_url(value: Any, where: str) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if (
        not isinstance(value, str)
        or parts is None
        or parts.scheme not in ("https", "http")
        or not parts.hostname
    ):
        raise ValueError(f"{where}: jwks_url must be an absolute https URL")
    return value


def _read_jwks_file(path: Any, where: str) -> dict[str, VerificationKey]:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: jwks_file must be a file path")
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{where}: cannot read jwks_file {path!r} ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{where}: jwks_file {path!r} is not valid JSON") from None
    return _load_jwks(document, f"{where} jwks_file {path!r}")


def _load_jwks(document: Any, source: str) -> dict[str, VerificationKey]:
    """Index a JWKS by ``kid``, keeping only keys that can verify client tokens.

    Unusable entries (encryption or symmetric keys, weak RSA, no ``kid``) are skipped
    rather than rejected, because issuers often publish mixed key sets.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError(f"{source}: a JWKS must be an object with a 'keys' array")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
        if not isinstance(kid, str) or not kid:
            continue
        key = _verification_key(jwk)
        if key is None:
            continue
        if kid in keys:
            raise ValueError(f"{source}: duplicate kid {kid!r}")
        keys[kid] = key
    if not keys:
        raise ValueError(
            f"{source}: no usable signing key (public EC P-256/P-384/P-521 or RSA >= "
            f"{_MIN_RSA_KEY_BITS} bits, with a kid)"
        )
    return keys


def _verification_key(jwk: Mapping[str, Any]) -> VerificationKey | None:
    """Build a verification key from a public JWK, or None if it must not be used."""
    if jwk.get("use", "sig") != "sig" or "d" in jwk:
        return None
    algorithms = _key_algorithms(jwk)
    if not algorithms:
        return None
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=min(algorithms)).key
    except PyJWTError:
        return None
    if isinstance(key, RSAPublicKey) and key.key_size < _MIN_RSA_KEY_BITS:
        return None
    return VerificationKey(key=key, algorithms=algorithms)


def _key_algorithms(jwk: Mapping[str, Any]) -> frozenset[str]:
    """Algorithms the key may verify: its family, narrowed to its ``alg`` if declared."""
    kty, crv, declared = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "EC" and isinstance(crv, str) and crv in _EC_CURVE_ALGORITHM:
        algorithms = frozenset({_EC_CURVE_ALGORITHM[crv]})
    elif kty == "RSA":
        algorithms = _RSA_ALGORITHMS
    else:
        return frozenset()
    if declared is None:
        return algorithms
    # Fetched JWKS are untrusted input: a non-string alg must not raise TypeError.
    return algorithms & {declared} if isinstance(declared, str) else frozenset()


class _JwksFetchError(Exception):
    """A JWKS URL could not be fetched or did not hold a usable key set."""


class _RemoteKeySet:
    """Cached keys of one ``jwks_url`` issuer, refreshed on TTL expiry or an unknown kid.

    All fetch attempts, successful or not, are spaced ``min_refetch_seconds`` apart, so
    tokens with made-up kids cannot make the service hammer the issuer. When a refresh
    fails the previous keys stay in use, so a brief JWKS outage does not lock clients out.
    """

    def __init__(
        self,
        url: str,
        fetch: Callable[[str], Awaitable[dict[str, VerificationKey]]],
        ttl_seconds: float,
        min_refetch_seconds: float,
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._min_refetch = min_refetch_seconds
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> VerificationKey:
        if not self._has_fresh(kid):
            await self._refresh(kid)
        key = self._keys.get(kid)
        if key is None:
            raise AuthError("unknown kid" if self._keys else "issuer keys unavailable")
        return key

    def _has_fresh(self, kid: str) -> bool:
        return kid in self._keys and time.monotonic() - self._fetched_at < self._ttl

    async def _refresh(self, kid: str) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._has_fresh(kid) or now - self._attempted_at < self._min_refetch:
                return
            self._attempted_at = now
            try:
                self._keys = await self._fetch(self._url)
            except _JwksFetchError as exc:
                logger.warning("JWKS refresh from %s failed: %s", self._url, exc)
                return
            self._fetched_at = now


class JwtVerifier:
    """Verifies ``Authorization: Bearer <JWT>`` headers from trusted CDS clients.

    ``leeway_seconds`` is the clock skew allowed on ``exp``, ``iat`` and ``nbf``;
    ``jwks_min_refetch_seconds`` bounds how often a ``jwks_url`` is fetched per issuer;
    ``allow_insecure_jku`` permits http JWKS URLs and exists for tests only.
    """

    def __init__(
        self,
        issuers: Mapping[str, TrustedIssuer],
        replay_cache: ReplayCache,
        *,
        leeway_seconds: int = 60,
        jwks_ttl_seconds: float = 300,
        http_client: httpx.AsyncClient | None = None,
        allow_insecure_jku: bool = False,
        jwks_min_refetch_seconds: float = 10.0,
    ) -> None:
        if leeway_seconds < 0 or jwks_ttl_seconds <= 0 or jwks_min_refetch_seconds < 0:
            raise ValueError("leeway and refetch interval must be >= 0, JWKS TTL > 0")
        self._issuers = dict(issuers)
        self._replay_cache = replay_cache
        self._leeway = leeway_seconds
        self._http_client = http_client
        self._remote = {
            issuer: _RemoteKeySet(
                _checked_fetch_url(trusted.keys.jwks_url, allow_insecure_jku),
                self._fetch_jwks,
                jwks_ttl_seconds,
                jwks_min_refetch_seconds,
            )
            for issuer, trusted in self._issuers.items()
            if isinstance(trusted.keys, RemoteJwks)
        }

    @property
    def issuers_without_typ(self) -> list[str]:
        """Issuers whose tokens may omit ``typ``, so that the start-up log can name them."""
        return sorted(name for name, trusted in self._issuers.items() if not trusted.require_typ)

    async def verify(self, authorization_header: str | None, audience: str) -> VerifiedClient:
        """Authenticate a request whose JWT ``aud`` must be exactly ``audience``.

        Checks are ordered so that nothing attacker-chosen triggers work before it is
        known to be acceptable: algorithm and header first, then the issuer allow-list (and
        its ``typ`` rule), then key lookup, signature and claims, and the replay check last
        so that a rejected token does not consume its ``jti``.
        """
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        kid = _check_header(header)
        issuer = self._trusted_issuer(token)
        _check_typ(header, self._issuers[issuer].require_typ)
        self._check_jku(header, issuer)
        key = await self._key(issuer, kid)
        claims = self._decode(token, key, issuer, audience)
        client = _client_from_claims(claims, issuer, time.time(), self._leeway)
        # Tokens are accepted until exp + leeway, so they must be remembered that long.
        if not self._replay_cache.check_and_store(
            client.jti, client.issuer, client.expires_at + self._leeway
        ):
            raise AuthError("token replayed")
        return client

    def _trusted_issuer(self, token: str) -> str:
        """Read ``iss`` before verification, only to choose the keys to verify with."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except PyJWTError:
            raise AuthError("malformed token") from None
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self._issuers:
            raise AuthError("unknown issuer")
        return issuer

    def _check_jku(self, header: Mapping[str, Any], issuer: str) -> None:
        """Refuse a ``jku`` other than the issuer's configured URL; it is never fetched."""
        keys = self._issuers[issuer].keys
        if "jku" in header and isinstance(keys, RemoteJwks) and header["jku"] != keys.jwks_url:
            raise AuthError("jku not trusted")

    async def _key(self, issuer: str, kid: str) -> VerificationKey:
        keys = self._issuers[issuer].keys
        if isinstance(keys, RemoteJwks):
            return await self._remote[issuer].get(kid)
        key = keys.keys.get(kid)
        if key is None:
            raise AuthError("unknown kid")
        return key

    def _decode(
        self, token: str, key: VerificationKey, issuer: str, audience: str
    ) -> dict[str, Any]:
        """Signature, ``iss``, ``aud`` and presence of the required claims, by PyJWT.

        The time claims are checked by `_check_times` instead: PyJWT passes them through
        ``int()``, which takes numeric strings and booleans that RFC 7519 does not allow.
        """
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=sorted(key.algorithms),
                audience=audience,
                issuer=issuer,
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except MissingRequiredClaimError as exc:
            raise AuthError(f"missing {exc.claim}") from None
        except PyJWTError as exc:
            raise AuthError(_jwt_error_reason(exc)) from None
        # PyJWT accepts any list containing the audience; the spec allows one element only.
        if isinstance(claims["aud"], list) and len(claims["aud"]) != 1:
            raise AuthError("audience mismatch")
        return claims

    async def _fetch_jwks(self, url: str) -> dict[str, VerificationKey]:
        if self._http_client is not None:
            return await _download_jwks(self._http_client, url)
        async with httpx.AsyncClient() as client:
            return await _download_jwks(client, url)


def _checked_fetch_url(url: str, allow_insecure: bool) -> str:
    if urlsplit(url).scheme != "https" and not allow_insecure:
        raise ValueError(f"jwks_url must use https: {url}")
    return url


async def _download_jwks(client: httpx.AsyncClient, url: str) -> dict[str, VerificationKey]:
    """GET a JWKS with a timeout, no redirects and a size cap, and index its keys."""
    try:
        async with client.stream(
            "GET",
            url,
            headers={"Accept": "application/json"},
            timeout=_JWKS_FETCH_TIMEOUT_SECONDS,
            follow_redirects=False,
        ) as response:
            if response.status_code != httpx.codes.OK:
                raise _JwksFetchError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise _JwksFetchError("response too large")
    except httpx.HTTPError as exc:
        raise _JwksFetchError(type(exc).__name__) from None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise _JwksFetchError("response is not JSON") from None
    try:
        return _load_jwks(document, "JWKS")
    except ValueError as exc:
        raise _JwksFetchError(str(exc)) from None


def _bearer_token(authorization_header: str | None) -> str:
    """Extract the token from ``Bearer <token>`` (scheme case-insensitive, RFC 7235)."""
    scheme, _, token = (authorization_header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("missing bearer token", credentials_present=False)
    token = token.strip()
    if len(token) > _MAX_TOKEN_CHARS or not _COMPACT_JWS_RE.fullmatch(token):
        raise AuthError("malformed token")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except PyJWTError:
        raise AuthError("malformed token") from None


def _check_header(header: Mapping[str, Any]) -> str:
    """Validate ``alg``/``kid``/``typ`` before any key lookup; return the ``kid``.

    ``none`` and HMAC are refused here, explicitly, so that e.g. an HS256 token "signed"
    with a published public key never reaches key selection.
    """
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise AuthError("algorithm not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthError("missing kid")
    return kid


def _check_typ(header: Mapping[str, Any], required: bool) -> None:
    """CDS Hooks 2.0 requires ``typ`` ``JWT`` (case-insensitive, RFC 7515 §4.1.9); an issuer
    configured with ``require_typ: false`` may leave it out, but not send another value."""
    if "typ" not in header:
        if required:
            raise AuthError("missing typ")
        return
    typ = header["typ"]
    if not isinstance(typ, str) or typ.upper() != "JWT":
        raise AuthError("typ must be JWT")


def _jwt_error_reason(exc: PyJWTError) -> str:
    for error_type, reason in _JWT_ERROR_REASONS:
        if isinstance(exc, error_type):
            return reason
    return "invalid token"


def _client_from_claims(
    claims: Mapping[str, Any], issuer: str, now: float, leeway: int
) -> VerifiedClient:
    expires_at = _check_times(claims, now, leeway)
    optional = {
        name: _plain_text(claims[name], name, _MAX_TEXT_CLAIM_CHARS)
        for name in ("sub", "tenant")
        if name in claims
    }
    return VerifiedClient(
        issuer=issuer,
        subject=optional.get("sub"),
        tenant=optional.get("tenant"),
        jti=_plain_text(claims["jti"], "jti", _MAX_JTI_CHARS),
        expires_at=expires_at,
    )


def _plain_text(value: Any, name: str, max_chars: int) -> str:
    """A text claim that is stored or logged: bounded, printable, encodable."""
    if not isinstance(value, str) or len(value) > max_chars or not _PLAIN_TEXT_RE.fullmatch(value):
        raise AuthError(f"invalid {name}")
    return value


def _check_times(claims: Mapping[str, Any], now: float, leeway: int) -> int:
    """Check ``exp``, ``iat`` and ``nbf`` against ``now``, give or take ``leeway`` seconds,
    and return ``exp``.

    A token lives at most `MAX_TOKEN_LIFETIME_SECONDS`: ``exp`` may not be further ahead,
    nor ``iat`` further back. ``now`` is passed in, so the checks read no clock.
    """
    times = {name: _numeric_date(claims, name) for name in _TIME_CLAIMS if name in claims}
    exp, iat = times["exp"], times["iat"]
    if exp <= now - leeway:
        raise AuthError("token expired")
    if iat > now + leeway or times.get("nbf", 0) > now + leeway:
        raise AuthError("token not yet valid")
    if exp > now + MAX_TOKEN_LIFETIME_SECONDS + leeway:
        raise AuthError("exp too far ahead")
    if iat < now - MAX_TOKEN_LIFETIME_SECONDS - leeway:
        raise AuthError("token too old")
    return int(exp)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    """A NumericDate (RFC 7519 §2): a JSON number, here between 1970 and 9999.

    ``bool`` is refused although Python counts it as an ``int``; the range check also
    refuses NaN and infinities, which Python's JSON parser accepts.
    """
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"{name} must be a number")
    if not 0 <= value <= _LATEST_NUMERIC_DATE:
        raise AuthError(f"{name} out of range")
    return value
