"""A small SMART-on-FHIR EHR for tests: a real OAuth 2 authorization server built from
authlib's server components (authorization code grant, PKCE required, public client) in front
of the Medplum FHIR test server, served by uvicorn on a free port.

What it does, as an EHR does: publishes `/fhir/.well-known/smart-configuration`; registers
EHR launches (`launch` id -> patient); at `/authorize` the signed-in clinician consents at
once, granting the requested scopes minus those the test refuses; `/token` answers with the
access token, the granted scope and the patient in context; `/fhir/...` passes requests to the
FHIR server only with a token it issued, and refuses a write the token's scopes do not allow.
The clock of authorization codes can be moved on (`expire_codes`) to test an expired code.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import httpx
import uvicorn
from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cds.assessment.smart import can_write

CODE_SECONDS = 60


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"  # a public client: PKCE, no secret

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    patient: str
    code_challenge: str | None
    code_challenge_method: str | None
    issued: float
    ehr: SmartEhr

    def is_expired(self) -> bool:
        return self.ehr.now() > self.issued + CODE_SECONDS

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class User:
    id: str = "practitioner-1"

    def get_user_id(self) -> str:
        return self.id


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        uri: str,
        headers: dict[str, str],
        data: dict[str, str],
        query: dict[str, str],
    ):
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(data)
        self._args, self._form = query, data

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["none"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        ehr: SmartEhr = self.server.ehr
        launch = request.args.get("launch")
        ehr.codes[code] = Code(
            code,
            request.client.client_id,
            request.payload.redirect_uri,
            ehr.granted(request.payload.scope),
            ehr.launches.get(launch, ehr.standalone_patient),
            request.payload.data.get("code_challenge"),
            request.payload.data.get("code_challenge_method"),
            ehr.now(),
            ehr,
        )

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        """A code of this client still within its lifetime (authlib leaves expiry to us)."""
        found = self.server.ehr.codes.get(code)
        if found is None or found.client_id != client.client_id or found.is_expired():
            return None
        return found

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.server.ehr.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> User:
        return User()


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, ehr: SmartEhr) -> None:
        super().__init__()
        self.ehr = ehr
        self.register_token_generator(
            "default", BearerTokenGenerator(lambda *a, **k: secrets.token_urlsafe(32))
        )
        self.register_grant(AuthorizationCodeGrant, [CodeChallenge(required=True)])

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request  # already made from the Starlette request (SmartEhr._request)

    def query_client(self, client_id: str) -> Client | None:
        client = self.ehr.client
        return client if client.client_id == client_id else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        code: Code = request.authorization_code
        token["patient"] = code.patient  # SMART: the patient in context, beside the token
        self.ehr.tokens[token["access_token"]] = (token["scope"], code.patient)

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        heads = dict(headers)
        if isinstance(body, dict):
            return JSONResponse(
                body,
                status,
                headers={k: v for k, v in heads.items() if k.lower() != "content-type"},
            )
        return Response(body or "", status, headers=heads)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class SmartEhr:
    """The EHR: start with `with SmartEhr(fhir_base, redirect_uri) as ehr:`."""

    fhir_base: str
    redirect_uri: str
    client_id: str = "twitch-cds-assessment"
    standalone_patient: str = "p1"
    refused_scopes: set[str] = field(default_factory=set)
    launches: dict[str, str] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    clock_offset: float = 0.0
    base_url: str = ""

    def __post_init__(self) -> None:
        self.client = Client(self.client_id, self.redirect_uri)
        self.server = _Server(self)
        self.http = httpx.Client(timeout=10)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def expire_codes(self) -> None:
        self.clock_offset += CODE_SECONDS + 1

    def granted(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s not in self.refused_scopes)

    def launch(self, patient: str) -> str:
        launch_id = secrets.token_urlsafe(8)
        self.launches[launch_id] = patient
        return launch_id

    @property
    def iss(self) -> str:
        return f"{self.base_url}/fhir"

    # -- HTTP ------------------------------------------------------------------------------
    async def _request(self, request: Request) -> _Request:
        # A token request is form-encoded (RFC 6749 §4.1.3).
        form = dict(parse_qsl((await request.body()).decode())) if request.method == "POST" else {}
        return _Request(
            request.method,
            str(request.url),
            dict(request.headers),
            {**dict(request.query_params), **form},
            dict(request.query_params),
        )

    async def smart_configuration(self, request: Request) -> Response:
        return JSONResponse(
            {
                "authorization_endpoint": f"{self.base_url}/authorize",
                "token_endpoint": f"{self.base_url}/token",
                "code_challenge_methods_supported": ["S256"],
                "capabilities": [
                    "launch-ehr",
                    "launch-standalone",
                    "client-public",
                    "context-ehr-patient",
                    "permission-v1",
                    "permission-v2",
                ],
            }
        )

    async def authorize(self, request: Request) -> Response:
        oauth_request = await self._request(request)
        if oauth_request.args.get("aud") != self.iss:
            return JSONResponse({"error": "invalid_request", "error_description": "aud"}, 400)
        grant = self.server.get_consent_grant(oauth_request, end_user=User())
        return self.server.create_authorization_response(
            oauth_request, grant_user=User(), grant=grant
        )

    async def token(self, request: Request) -> Response:
        return self.server.create_token_response(await self._request(request))

    async def fhir(self, request: Request) -> Response:
        """The FHIR API behind the token: a write needs a token whose scopes allow it."""
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return JSONResponse(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "login"}],
                },
                401,
            )
        scope, _ = self.tokens[token]
        body = await request.body()
        if request.method == "POST":
            bundle = json.loads(body)
            types = {e["resource"]["resourceType"] for e in bundle.get("entry", [])}
            refused = [t for t in types if not can_write(scope, t)]
            if refused:
                return JSONResponse(
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {
                                "severity": "error",
                                "code": "forbidden",
                                "diagnostics": "token does not allow writing "
                                + ", ".join(sorted(refused)),
                            }
                        ],
                    },
                    403,
                )
        path = request.url.path.removeprefix("/fhir")
        answer = self.http.request(
            request.method,
            self.fhir_base + path,
            params=dict(request.query_params),
            content=body,
            headers={"content-type": request.headers.get("content-type", "application/fhir+json")},
        )
        return Response(answer.content, answer.status_code, media_type="application/fhir+json")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/fhir/.well-known/smart-configuration", self.smart_configuration),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/fhir/{path:path}", self.fhir, methods=["GET", "POST"]),
                Route("/fhir", self.fhir, methods=["GET", "POST"]),
            ]
        )

    def __enter__(self) -> SmartEhr:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._uvicorn.started:
            if time.time() > deadline:
                raise RuntimeError("the SMART test EHR did not start")
            time.sleep(0.02)
        port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=5)
        self.http.close()
