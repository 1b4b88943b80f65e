"""The bearer token of the project's HTTP endpoints (the dashboard and `ingest http`).

A request is let in when it presents the configured token as
`Authorization: Bearer <token>` or `?token=<token>`, or carries the session
cookie the dashboard sets after one of those (an HMAC of the token, so the
cookie is not the token itself and changing the token logs everyone out).
Comparisons are constant-time (digests compared with hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
import hmac

from pipeline.errors import ConfigError

COOKIE = "cdr_dashboard"
MIN_TOKEN_LENGTH = 16
_SESSION_CONTEXT = b"cdr-pipeline dashboard session v1"


def check_token(token: str | None) -> str:
    """The token to require; ConfigError when none is configured or it is
    too short to resist guessing."""
    if not token:
        raise ConfigError(
            "dashboard token is not configured: set CDR_DASHBOARD_TOKEN (or [dashboard] token "
            "in the configuration file); the dashboard refuses to start without one"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"dashboard token is too short ({len(token)} characters): use at least "
            f'{MIN_TOKEN_LENGTH}, e.g. the output of `python -c "import secrets; '
            'print(secrets.token_urlsafe(24))"`'
        )
    if not token.isprintable() or token != token.strip():
        raise ConfigError("dashboard token must be printable and without surrounding spaces")
    return token


class TokenGate:
    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(check_token(token).encode()).digest()
        self.session = hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def token_ok(self, presented: str | None) -> bool:
        if not presented:
            return False
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, self._digest)

    def session_ok(self, cookie: str | None) -> bool:
        if not cookie:
            return False
        return hmac.compare_digest(
            hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).digest(),
            hashlib.sha256(self.session.encode()).digest(),
        )


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
