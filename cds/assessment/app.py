"""The assessment app's routes under /app/: SMART launch, callback, the form, the submit.

EHR launch: the EHR opens `/app/launch?iss=<fhir base>&launch=<id>`; standalone launch:
`/app/launch?iss=<fhir base>`. The FHIR base must be one the service may call
(TWITCH_CDS_FHIR_ALLOWED_BASES). A server that publishes a SMART configuration gets the
authorization code flow with PKCE (authlib), `state` checked on return; an open server
without one (the demo's) is used without a token, its launch resolved at
`{iss}/_services/smart/Launch/{id}`. The access token lives only in the encrypted session
cookie and in the one request that writes the answers; neither it nor the answers are logged.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from authlib.integrations.base_client.errors import OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from cds.assessment.answers import InvalidResponse, transaction
from cds.assessment.session import COOKIE, SESSION_SECONDS, SessionCipher
from cds.assessment.smart import (
    WRITTEN_TYPES,
    LaunchError,
    can_write,
    discover,
    new_verifier,
    oauth_client,
    scope_for,
)
from cds.knowledge import Assessment
from cds.logs import log

PAGE_DIR = Path(__file__).parent / "page"
router = APIRouter(prefix="/app")


@dataclass(frozen=True)
class AssessmentApp:
    """What the app's routes share, built once at start-up."""

    assessment: Assessment
    http: httpx.AsyncClient
    cipher: SessionCipher
    client_id: str
    allowed_bases: tuple[str, ...]
    frame_ancestors: str
    public_base_url: str | None

    def base_url(self, request: Request) -> str:
        return (self.public_base_url or str(request.base_url)).rstrip("/")


def _app(request: Request) -> AssessmentApp:
    built: AssessmentApp = request.app.state.assessment_app
    return built


def security_headers(frame_ancestors: str) -> dict[str, str]:
    """Served with every /app/ answer: embeddable only by the EHR origins the setting names;
    no referrer (the callback URL carries the authorization code); never cached."""
    return {
        "Content-Security-Policy": (
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            f"base-uri 'none'; form-action 'self'; frame-ancestors {frame_ancestors}"
        ),
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def _page(app: AssessmentApp, title: str, message: str, status: int) -> HTMLResponse:
    """A short page that says what went wrong (launch errors are the user's to read)."""
    body = (PAGE_DIR / "message.html").read_text(encoding="utf-8")
    html = body.replace("{{title}}", _escape(title)).replace("{{message}}", _escape(message))
    return HTMLResponse(html, status, headers=security_headers(app.frame_ancestors))


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _with_session(
    response: Response, app: AssessmentApp, request: Request, data: dict[str, Any]
) -> Response:
    """Set the sealed session cookie. Inside an EHR iframe the cookie is third-party: it needs
    SameSite=None, which browsers accept only with Secure (https)."""
    secure = app.base_url(request).startswith("https://")
    response.set_cookie(
        COOKIE,
        app.cipher.seal(data),
        # A browser-session cookie (no Max-Age): it goes when the browser closes; the
        # sealed contents expire after SESSION_SECONDS whatever the browser keeps.
        path="/app",
        httponly=True,
        secure=secure,
        samesite="none" if secure else "lax",
    )
    return response


def _allowed(app: AssessmentApp, iss: str) -> bool:
    return any(
        iss == base or iss.startswith(base.rstrip("/") + "/") or iss.startswith(base + ":")
        for base in app.allowed_bases
    )


@router.get("/launch", include_in_schema=False)
async def launch(request: Request, iss: str = "", launch: str = "", patient: str = "") -> Response:
    app = _app(request)
    if not iss or not _allowed(app, iss):
        return _page(
            app, "Cannot launch", "This FHIR server is not one this service may use (iss).", 400
        )
    try:
        endpoints = await discover(app.http, iss)
        if endpoints is None:
            context = await _open_server_context(app, iss, launch, patient)
            session = {
                "iss": iss.rstrip("/"),
                "patient": context,
                "csrf": secrets.token_urlsafe(24),
            }
            log.info("assessment launch", mode="open-server", ehr_launch=bool(launch))
            return _with_session(RedirectResponse("/app/", 303), app, request, session)
    except LaunchError as error:
        return _page(app, "Cannot launch", str(error), 502)
    state, verifier = secrets.token_urlsafe(24), new_verifier()
    client = oauth_client(
        app.client_id, f"{app.base_url(request)}/app/callback", scope_for(bool(launch))
    )
    extra = {"aud": iss, **({"launch": launch} if launch else {})}
    url, _ = client.create_authorization_url(
        endpoints.authorize, state=state, code_verifier=verifier, **extra
    )
    pending = {
        "pending": {
            "state": state,
            "verifier": verifier,
            "iss": iss.rstrip("/"),
            "token_url": endpoints.token,
            "ehr_launch": bool(launch),
        }
    }
    log.info("assessment launch", mode="smart", ehr_launch=bool(launch))
    return _with_session(RedirectResponse(url, 303), app, request, pending)


async def _open_server_context(app: AssessmentApp, iss: str, launch: str, patient: str) -> str:
    """The patient of a launch on an open server (no SMART configuration): from the launch
    the server registered (as the CDS Hooks sandbox registers one), else the `patient` given."""
    if launch:
        try:
            answer = await app.http.get(
                f"{iss.rstrip('/')}/_services/smart/Launch/{quote(launch, safe='')}"
            )
            found: Any = answer.json() if answer.is_success else {}
        except (httpx.HTTPError, ValueError):
            found = {}
        parameters = found.get("parameters") if isinstance(found, dict) else None
        patient = parameters.get("patient", "") if isinstance(parameters, dict) else ""
        if not isinstance(patient, str) or not patient:
            raise LaunchError("the FHIR server does not know this launch")
    if not patient:
        raise LaunchError("no patient: launch from the EHR, or name the patient")
    return patient


@router.get("/callback", include_in_schema=False)
async def callback(request: Request, code: str = "", state: str = "", error: str = "") -> Response:
    app = _app(request)
    session = app.cipher.open(request.cookies.get(COOKIE)) or {}
    pending = session.get("pending")
    if not isinstance(pending, dict):
        return _page(
            app,
            "Cannot sign in",
            "The launch has expired or was not started here: launch the app again.",
            400,
        )
    if not secrets.compare_digest(state.encode(), str(pending["state"]).encode()):
        log.info("assessment callback refused", reason="state")
        return _page(
            app,
            "Cannot sign in",
            "The answer from the EHR does not match this launch (state): launch the app again.",
            400,
        )
    if error or not code:
        log.info("assessment callback refused", reason="authorization", error=error[:40])
        return _page(
            app, "Not authorized", f"The EHR did not authorize the app ({error or 'no code'}).", 403
        )
    client = oauth_client(
        app.client_id, f"{app.base_url(request)}/app/callback", scope_for(pending["ehr_launch"])
    )
    try:
        token: Any = await client.fetch_token(
            pending["token_url"], code=code, code_verifier=pending["verifier"]
        )
    except OAuthError as refused:
        log.info("assessment callback refused", reason="token", error=refused.error)
        return _page(
            app,
            "Not authorized",
            f"The EHR refused the sign-in ({refused.error}): launch the app again.",
            403,
        )
    except httpx.HTTPError as failed:
        return _page(
            app,
            "Cannot sign in",
            f"The EHR's authorization server could not be reached ({type(failed).__name__}).",
            502,
        )
    granted = str(token.get("scope", ""))
    missing = [t for t in WRITTEN_TYPES if not can_write(granted, t)]
    patient = token.get("patient")
    if missing or not isinstance(patient, str) or not patient:
        log.info("assessment callback refused", reason="scope", missing=missing)
        return _page(
            app,
            "Not authorized",
            "The EHR did not allow the app to save the answers"
            + (f" ({', '.join(missing)} not granted)" if missing else " (no patient in context)")
            + ".",
            403,
        )
    expires = int(time.time()) + min(
        int(token.get("expires_in") or SESSION_SECONDS), SESSION_SECONDS
    )
    active = {
        "iss": pending["iss"],
        "patient": patient,
        "token": token["access_token"],
        "expires": expires,
        "csrf": secrets.token_urlsafe(24),
    }
    log.info("assessment authorized")
    return _with_session(RedirectResponse("/app/", 303), app, request, active)


@router.get("/", include_in_schema=False)
async def page(request: Request) -> Response:
    app = _app(request)
    session = app.cipher.open(request.cookies.get(COOKIE)) or {}
    if "patient" not in session:
        return _page(
            app,
            "Twitching assessment",
            "Open this assessment from the patient's chart in the EHR.",
            401,
        )
    html = (
        (PAGE_DIR / "index.html")
        .read_text(encoding="utf-8")
        .replace("{{csrf}}", _escape(session["csrf"]))
    )
    return HTMLResponse(html, headers=security_headers(app.frame_ancestors))


@router.get("/questionnaire.json", include_in_schema=False)
async def questionnaire(request: Request) -> Response:
    return JSONResponse(_app(request).assessment.questionnaire, media_type="application/fhir+json")


@router.post("/submit", include_in_schema=False)
async def submit(request: Request) -> Response:
    """Write the response and its Observations in one transaction, or nothing."""
    app = _app(request)
    session = app.cipher.open(request.cookies.get(COOKIE)) or {}
    headers = security_headers(app.frame_ancestors)
    if "patient" not in session or not secrets.compare_digest(
        request.headers.get("x-csrf-token", "").encode(), str(session.get("csrf", "")).encode()
    ):
        return JSONResponse(
            {"error": "The session has expired: open the assessment again from the EHR."},
            401,
            headers=headers,
        )
    if session.get("token") and int(session.get("expires", 0)) < time.time():
        return JSONResponse(
            {"error": "The EHR sign-in has expired: open the assessment again."},
            401,
            headers=headers,
        )
    try:
        body = json.loads(await request.body())
        bundle = transaction(app.assessment, body, session["patient"])
    except (ValueError, InvalidResponse) as invalid:
        return JSONResponse(
            {"error": f"The answers could not be read: {invalid}"}, 400, headers=headers
        )
    auth = {"Authorization": f"Bearer {session['token']}"} if session.get("token") else {}
    try:
        answer = await app.http.post(
            session["iss"] + "/",  # a transaction is POST [base]
            json=bundle,
            headers={
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
                **auth,
            },
        )
    except httpx.HTTPError as failed:
        log.info("assessment write failed", reason=type(failed).__name__)
        return JSONResponse(
            {"error": "The EHR's FHIR server could not be reached: nothing was saved. Try again."},
            502,
            headers=headers,
        )
    if not answer.is_success:
        log.info("assessment write refused", status=answer.status_code)
        refused = f"HTTP {answer.status_code}{_diagnostics(answer)}"
        return JSONResponse(
            {"error": f"The EHR refused to save the answers ({refused}): nothing was saved."},
            502,
            headers=headers,
        )
    written = len(bundle["entry"])
    log.info("assessment written", resources=written)
    return JSONResponse({"written": written}, headers=headers)


def _diagnostics(answer: httpx.Response) -> str:
    """The first issue of the server's OperationOutcome, if it sent one (no patient data)."""
    try:
        issues = answer.json().get("issue", [])
        text = issues[0].get("diagnostics") or issues[0]["details"]["text"]
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return ""
    return f": {str(text)[:200]}"
