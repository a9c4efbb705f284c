"""The app's session: an encrypted, short-lived, HttpOnly cookie.

Why a cookie and not server memory: `twitch-cds serve --workers N` runs several processes, and
the launch, the callback and the submit may reach different ones. Why encrypted (Fernet, from
`cryptography`): the session holds the EHR's access token, which must never be readable by the
browser, logged or kept beyond the session; the cookie dies with the browser session and the
token with its `exp` (at most SESSION_SECONDS).
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

COOKIE = "twitch_cds_assessment"
SESSION_SECONDS = 3600


class SessionCipher:
    """Seals and opens session cookies with one key (TWITCH_CDS_APP_SESSION_KEY or a key
    made at start-up, which then holds for one process only)."""

    def __init__(self, key: str | None) -> None:
        self._fernet = Fernet(key.encode() if key else Fernet.generate_key())

    def seal(self, data: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(data).encode()).decode()

    def open(self, cookie: str | None) -> dict[str, Any] | None:
        """The session, or None if missing, forged, from another key or older than an hour."""
        if not cookie:
            return None
        try:
            opened: Any = json.loads(self._fernet.decrypt(cookie.encode(), ttl=SESSION_SECONDS))
        except (InvalidToken, ValueError):
            return None
        return opened if isinstance(opened, dict) else None
