"""Runtime configuration, read once from `TWITCH_CDS_*` environment variables (and `.env`).

Every setting an operator may need to change lives here, so that the README's settings table,
the contract and the code agree on one list.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Where the assessment app (cds/assessment, served under /app/) is launched from a card.
APP_LAUNCH_PATH = "/app/launch"


def app_launch_url(base_url: str) -> str:
    """The assessment app's SMART launch URL on a base URL ('https://cds.example.org')."""
    return base_url.rstrip("/") + APP_LAUNCH_PATH


class Settings(BaseSettings):
    """Settings of one service process."""

    model_config = SettingsConfigDict(env_prefix="TWITCH_CDS_", env_file=".env", extra="ignore")

    auth: Literal["jwt", "none"] = "jwt"
    database_url: str = "sqlite:///twitch-cds.sqlite3"
    lookback_days: int = Field(default=365, ge=1)
    trusted_issuers: dict[str, Any] = Field(default_factory=dict)
    # The URL EHRs call, of which each token's `aud` must be the exact endpoint. Required with
    # JWT auth: the request's own Host header is the client's to choose.
    public_base_url: str | None = None
    # Development only: without a public base URL, take the audience from the Host header.
    dev_audience_from_host: bool = False
    fhir_allowed_bases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "http://127.0.0.1",
            "http://localhost",
            "https://127.0.0.1",
            "https://localhost",
        ]
    )
    fhir_timeout_seconds: float = Field(default=2.0, gt=0)
    fhir_max_pages: int = Field(default=10, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # Request bodies one worker holds at once: past it, a request waits before its body is
    # read (TCP holds the rest back), so a burst of large records cannot exhaust memory.
    body_budget_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Clock skew allowed between the EHR and this service on a token's exp, iat and nbf.
    jwt_leeway_seconds: int = Field(default=60, ge=0)
    jwks_cache_seconds: int = Field(default=300, ge=1)
    rules_dir: Path = PROJECT_ROOT / "rules"
    hooks_dir: Path = PROJECT_ROOT / "hooks"
    log_level: str = "INFO"
    # Exposure (docs/operating.md, "Kubernetes"). Set, `twitch-cds serve` answers /metrics on
    # this port only (for Prometheus alone to reach), no longer on the service port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # /docs, /redoc and /openapi.json: handy for integrators, but they describe the API to
    # anyone who can reach the port, token or not; the production overlay turns them off.
    api_docs: bool = True
    # The assessment app (/app/, docs/integration-guide.md "SMART app registration"): its
    # OAuth client id as registered with the EHR; the origins that may frame it (CSP
    # frame-ancestors, e.g. "https://ehr.example.org"); the key of its encrypted session
    # cookie (a Fernet key; unset, each process makes its own, so set it with --workers > 1);
    # where LHC-Forms was copied at image build (app/, `npm ci`).
    app_client_id: str = "twitch-cds-assessment"
    app_frame_ancestors: str = "'self'"
    app_session_key: str | None = Field(default=None, repr=False)
    app_assets_dir: Path = PROJECT_ROOT / "app" / "node_modules" / "lforms" / "dist" / "lforms"

    def check_audience(self) -> None:
        """Raise ValueError if JWT mode has no trustworthy audience: the request's own Host
        header is the client's to choose, so only an explicit development setting may use it.
        Called when the service starts rather than as a validator, so that the CLI's other
        commands need no public URL."""
        if self.auth == "jwt" and not self.public_base_url and not self.dev_audience_from_host:
            raise ValueError(
                "TWITCH_CDS_AUTH=jwt needs TWITCH_CDS_PUBLIC_BASE_URL, the URL EHRs call: every "
                "token's aud must name it (TWITCH_CDS_DEV_AUDIENCE_FROM_HOST=true trusts the "
                "Host header instead, for development only)"
            )

    @field_validator("public_base_url")
    @classmethod
    def _absolute_base_url(cls, value: str | None) -> str | None:
        """The base of every audience: an absolute http(s) URL, no query or fragment.
        Empty is the same as unset, as an empty environment variable usually means."""
        if not value:
            return None
        parts = urlsplit(value)
        if (
            parts.scheme not in ("https", "http")
            or not parts.hostname
            or parts.query
            or parts.fragment
        ):
            raise ValueError("must be an absolute http(s) URL without query or fragment")
        return value

    @field_validator("fhir_allowed_bases", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """Accept the comma-separated form the contract documents for list settings."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings` and pass them to `create_app`."""
    return Settings()
