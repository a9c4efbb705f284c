"""CDS client JWTs for HTTP tests: generated ES384/RS384 keys, a JWKS, and token builders.

Everything is generated at run time; no key material is checked in. `TokenFactory.token`
signs a token shaped like the ones CDS clients (and the CDS Hooks sandbox) send; keyword
claims override the defaults, and `DROP` removes a claim or header field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://ehr.example.org"
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
DROP = object()  # claim/header value meaning "leave this out"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kid: str, **extra: Any
) -> dict[str, Any]:
    """The public half of `key` as a JWK with `kid` (and `use`/`alg` if given)."""
    algorithm = ECAlgorithm if isinstance(key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


def public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_material(jwks: dict[str, Any]) -> list[str]:
    """Every public-key number in a JWKS: none of them may appear in an error answer."""
    return [jwk[name] for jwk in jwks["keys"] for name in ("n", "x", "y") if name in jwk]


@dataclass
class TokenFactory:
    """One issuer with an ES384 and an RS384 key, and the JWKS that publishes both."""

    issuer: str = ISSUER
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=new_ec_key)
    rsa_key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    ec_kid: str = "ec-1"
    rsa_kid: str = "rsa-1"

    @property
    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                public_jwk(self.ec_key, self.ec_kid, use="sig", alg="ES384"),
                public_jwk(self.rsa_key, self.rsa_kid, use="sig", alg="RS384"),
            ]
        }

    def trusted_issuers(self) -> dict[str, Any]:
        """The `TWITCH_CDS_TRUSTED_ISSUERS` value trusting this issuer's inline JWKS."""
        return {self.issuer: {"jwks": self.jwks}}

    def claims(self, aud: Any, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": aud,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            **overrides,
        }
        return {k: v for k, v in payload.items() if v is not DROP}

    def token(
        self,
        aud: Any,
        *,
        alg: str = "ES384",
        key: Any = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed token for `aud`; ES384 with the EC key unless `alg`/`key` say otherwise."""
        rsa_alg = alg.startswith(("RS", "PS"))
        if key is None:
            key = self.rsa_key if rsa_alg else self.ec_key
        header = {"typ": "JWT", "kid": self.rsa_kid if rsa_alg else self.ec_kid, **(headers or {})}
        if header["typ"] is DROP:
            header["typ"] = None  # PyJWT adds typ "JWT" to a header without one, unless None
        header = {k: v for k, v in header.items() if v is not DROP}
        return jwt.encode(self.claims(aud, **claims), key, algorithm=alg, headers=header)

    def unsigned(self, aud: Any, header: dict[str, Any], **claims: Any) -> str:
        """Header and payload segments of a hand-built token, for algorithms PyJWT won't use."""
        return (
            f"{b64url(json.dumps(header).encode())}."
            f"{b64url(json.dumps(self.claims(aud, **claims)).encode())}"
        )

    def alg_none(self, aud: Any) -> str:
        return self.unsigned(aud, {"alg": "none", "typ": "JWT", "kid": self.ec_kid}) + "."

    def hs256_with_public_key(self, aud: Any) -> str:
        """Algorithm confusion: HMAC-SHA256 keyed with the published RSA public key."""
        signing_input = self.unsigned(aud, {"alg": "HS256", "typ": "JWT", "kid": self.rsa_kid})
        mac = hmac.new(public_pem(self.rsa_key), signing_input.encode(), hashlib.sha256)
        return f"{signing_input}.{b64url(mac.digest())}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- a local JWKS endpoint ------------------------------------------------------------


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key: (cert.pem, key.pem).

    Pointing `SSL_CERT_FILE` at the certificate makes httpx (hence the service) trust it, so
    a `jwks_url` issuer can be tested over https exactly as configured in production.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twitch-cds test JWKS")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "jwks-cert.pem", directory / "jwks-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class JwksServer:
    """A local HTTP(S) server publishing JWKS documents by path and counting every request."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.documents: dict[str, Any] = {}  # JSON-able value, or raw bytes served as-is
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                document = server.documents.get(self.path)
                body = document if isinstance(document, bytes) else json.dumps(document).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output quiet."""

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self.base_url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
