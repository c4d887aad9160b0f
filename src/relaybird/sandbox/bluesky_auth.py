"""Sessions and rate limits of the Bluesky sandbox, answering as the reference PDS does.

Tokens are HS256 JWTs shaped like the PDS's (`typ` at+jwt / refresh+jwt, scopes
`com.atproto.access` / `com.atproto.refresh`), so that the atproto SDK reads their expiry and
refreshes on its own schedule. Refresh tokens rotate: the used one keeps answering with the same
successor for a grace period, then counts as revoked. The rate limiter is a fixed window per key,
like the PDS's in-memory limiter, and reports the tightest limit in `RateLimit-*` headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relaybird.sandbox.bluesky_lexicon import is_valid_did

ACCESS_SCOPE = "com.atproto.access"
REFRESH_SCOPE = "com.atproto.refresh"
ACCESS_TYP = "at+jwt"
REFRESH_TYP = "refresh+jwt"


class XrpcError(Exception):
    """An XRPC error answer: HTTP status, error name and message, and optional headers."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}


def invalid_request(message: str, error: str = "InvalidRequest") -> XrpcError:
    return XrpcError(400, error, message)


def internal_error() -> XrpcError:
    """What the PDS answers for bugs and for some malformed queries: a bare 500."""
    return XrpcError(500, "InternalServerError", "Internal Server Error")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    did: str
    jti: str | None
    expires_at: int


@dataclass
class _RefreshState:
    did: str
    expires_at: int
    successor: str | None = None
    grace_until: float = 0.0


@dataclass(frozen=True)
class SessionTokens:
    access_jwt: str
    refresh_jwt: str


class TokenIssuer:
    """Mints and checks session tokens, with the PDS's error name for each kind of failure."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        access_ttl: float,
        refresh_ttl: float,
        refresh_grace: float,
    ) -> None:
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl
        self._refresh_grace = refresh_grace
        self._refresh: dict[str, _RefreshState] = {}
        self.audience = "did:web:localhost"

    def _sign(self, header: dict[str, str], payload: dict[str, Any]) -> str:
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(payload, separators=(",", ":")).encode())
        )
        signature = hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def _access_token(self, did: str, now: int) -> str:
        payload = {
            "scope": ACCESS_SCOPE,
            "aud": self.audience,
            "sub": did,
            "iat": now,
            "exp": now + math.ceil(self._access_ttl),
        }
        return self._sign({"typ": ACCESS_TYP, "alg": "HS256"}, payload)

    def _refresh_token(self, did: str, jti: str, now: int, expires_at: int) -> str:
        payload = {
            "scope": REFRESH_SCOPE,
            "aud": self.audience,
            "sub": did,
            "jti": jti,
            "iat": now,
            "exp": expires_at,
        }
        return self._sign({"typ": REFRESH_TYP, "alg": "HS256"}, payload)

    def create(self, did: str) -> SessionTokens:
        """A new session, as after a login."""
        now = int(self._clock())
        jti = secrets.token_urlsafe(32)
        expires_at = now + math.ceil(self._refresh_ttl)
        self._refresh[jti] = _RefreshState(did, expires_at)
        return SessionTokens(
            self._access_token(did, now), self._refresh_token(did, jti, now, expires_at)
        )

    def rotate(self, claims: TokenClaims) -> SessionTokens:
        """Trade a refresh token for new ones; a reused one gets the same successor for a while."""
        now = self._clock()
        state = self._refresh.get(claims.jti or "")
        if state is None:
            raise XrpcError(400, "ExpiredToken", "Token has been revoked")
        if state.successor is None:
            state.successor = secrets.token_urlsafe(32)
            state.grace_until = min(now + self._refresh_grace, state.expires_at)
            self._refresh[state.successor] = _RefreshState(
                state.did, int(now) + math.ceil(self._refresh_ttl)
            )
        elif now >= state.grace_until:
            del self._refresh[claims.jti or ""]
            raise XrpcError(400, "ExpiredToken", "Token has been revoked")
        successor = self._refresh.get(state.successor)
        if successor is None:
            raise XrpcError(400, "ExpiredToken", "Token has been revoked")
        issued = int(now)
        return SessionTokens(
            self._access_token(state.did, issued),
            self._refresh_token(state.did, state.successor, issued, successor.expires_at),
        )

    def revoke(self, claims: TokenClaims) -> None:
        self._refresh.pop(claims.jti or "", None)

    def verify(self, authorization: str | None, *, refresh: bool) -> TokenClaims:
        """Check an Authorization header in the order the PDS does, raising its errors."""
        if not authorization:
            raise XrpcError(401, "AuthMissing", "Authentication Required")
        if not authorization.startswith("Bearer"):
            raise invalid_request("Unexpected authorization type", "InvalidToken")
        token = authorization[len("Bearer") :].strip()
        if not token:
            raise invalid_request("Malformed authorization header", "InvalidToken")
        header, payload = self._decode(token)
        exp = payload.get("exp")
        if not isinstance(exp, int) or exp <= self._clock():
            raise invalid_request("Token has expired", "ExpiredToken")
        if header.get("typ") != (REFRESH_TYP if refresh else ACCESS_TYP):
            raise invalid_request("Invalid token type", "InvalidToken")
        sub = payload.get("sub")
        if not isinstance(sub, str) or not is_valid_did(sub):
            raise invalid_request("Malformed token", "InvalidToken")
        if payload.get("scope") != (REFRESH_SCOPE if refresh else ACCESS_SCOPE):
            raise invalid_request("Bad token scope", "InvalidToken")
        jti = payload.get("jti")
        return TokenClaims(sub, jti if isinstance(jti, str) else None, exp)

    def _decode(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        unverifiable = invalid_request("Token could not be verified", "InvalidToken")
        parts = token.split(".")
        if len(parts) != 3:
            raise unverifiable
        expected = hmac.new(
            self._secret, f"{parts[0]}.{parts[1]}".encode("ascii", "replace"), hashlib.sha256
        ).digest()
        try:
            valid = hmac.compare_digest(expected, _b64url_decode(parts[2]))
            header = json.loads(_b64url_decode(parts[0]))
            payload = json.loads(_b64url_decode(parts[1]))
        except ValueError:
            raise unverifiable from None
        if not valid or not isinstance(header, dict) or not isinstance(payload, dict):
            raise unverifiable
        return header, payload


@dataclass(frozen=True)
class RateLimit:
    """`points` per `duration` seconds, counted per key."""

    name: str
    points: int
    duration: int


@dataclass
class _Window:
    start: float
    consumed: int


@dataclass(frozen=True)
class LimitStatus:
    limit: RateLimit
    remaining: int
    reset_at: int
    exceeded: bool

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit.points),
            "RateLimit-Reset": str(self.reset_at),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Policy": f"{self.limit.points};w={self.limit.duration}",
        }


class RateLimiter:
    """Fixed windows that open at the first request of a key, as the PDS's memory limiter."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def consume(self, limit: RateLimit, key: str, points: int = 1) -> LimitStatus:
        now = self._clock()
        window = self._windows.get((limit.name, key))
        if window is None or now >= window.start + limit.duration:
            window = _Window(now, 0)
            self._windows[(limit.name, key)] = window
        window.consumed += points
        return LimitStatus(
            limit,
            max(limit.points - window.consumed, 0),
            math.floor(window.start + limit.duration),
            window.consumed > limit.points,
        )


def tightest(statuses: list[LimitStatus]) -> LimitStatus | None:
    """The status whose headers the PDS shows: an exceeded one, else the fewest points left."""
    for status in statuses:
        if status.exceeded:
            return status
    return min(statuses, key=lambda status: status.remaining, default=None)
