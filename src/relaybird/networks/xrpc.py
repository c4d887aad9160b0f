"""A small XRPC client on aiohttp: the few AT Protocol calls relaybird makes, as plain JSON.

The atproto SDK builds a typed model for every answer and carries about a thousand lexicon models
in memory; relaybird reads a handful of fields, so it talks XRPC itself: `GET /xrpc/<nsid>` for a
query, `POST /xrpc/<nsid>` for a procedure, `Authorization: Bearer <accessJwt>`.

Every failure comes out as one of the errors the workers understand (`relaybird.networks.base`),
decided here once for all callers:

- 429: `RateLimited`, until `Retry-After` or the window's `RateLimit-Reset` (Unix seconds);
- 5xx, 408/409/413, an answer that is not the JSON promised, a transport failure: `Unavailable`
  (a TemporaryError);
- an expired access token (the PDS answers 400 `ExpiredToken`, other servers 401): the session is
  refreshed once with the refresh token, handed to `on_session` to be kept, and the call repeated;
- any other 4xx: `Refused` (a PermanentError), with the server's error name and message.

Tokens and the password never appear in an error or a log line: messages carry the method's NSID,
the status and the server's error name and message, shortened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from relaybird.networks.base import PermanentError, RateLimited, TemporaryError
from relaybird.ratelimit import DEFAULT_HOLD_SECONDS, retry_after_seconds

log = logging.getLogger(__name__)

#: How long a call may wait for a connection and between reads, as the SDK's HTTP client did.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=5.0)
#: Statuses below 500 that say "try again" rather than "this request is wrong".
RETRYABLE_4XX = frozenset({408, 409, 413})
#: Error names of an access token that a refresh can replace.
EXPIRED = frozenset({"ExpiredToken"})
#: Server text quoted in an error is cut to this many characters.
MAX_QUOTED = 160
#: The separator of the session string, the format the atproto SDK stored (and still reads).
SESSION_SEPARATOR = ":::"

Params = Mapping[str, str | int | bool | Sequence[str] | None]


class Unavailable(TemporaryError):
    """The server could not answer now (5xx, timeout, unreadable answer): worth retrying."""

    def __init__(self, message: str, status: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class Refused(PermanentError):
    """A 4xx answer: the request, or our credentials, must change before it can succeed."""

    def __init__(self, message: str, status: int, error: str, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.detail = detail

    @property
    def reason(self) -> str:
        """`ErrorName: message`, the server's own words, fit for a dead letter."""
        return f"{self.error}: {self.detail}".strip(": ") or f"HTTP {self.status}"


def _quoted(text: object) -> str:
    """Server text for a message: one line, no markup worth showing, bounded."""
    if not isinstance(text, str):
        return ""
    line = " ".join(text.split())
    if "<" in line:
        return ""
    return line if len(line) <= MAX_QUOTED else f"{line[:MAX_QUOTED]}..."


def retry_at_of(headers: Mapping[str, str], now: float | None = None) -> float:
    """When the server lets us back in, as a Unix time.

    `Retry-After` (seconds, or an HTTP date) is the server's own word for this request; otherwise
    the window's `RateLimit-Reset`, when it is still ahead. A 429 that says neither waits a minute.
    `headers` are the answer's, with lower-case names.
    """
    now = time.time() if now is None else now
    retry_after = retry_after_seconds(headers.get("retry-after"), now)
    if retry_after is not None:
        return now + retry_after
    reset = headers.get("ratelimit-reset")
    try:
        reset_at = float(int(reset)) if reset is not None else None
    except ValueError:
        reset_at = None
    if reset_at is not None and reset_at > now:
        return reset_at
    return now + DEFAULT_HOLD_SECONDS


def pds_endpoint(did_doc: object) -> str:
    """The `#atproto_pds` service of a DID document, or "" when it names none usable."""
    if not isinstance(did_doc, dict):
        return ""
    did = did_doc.get("id")
    services = did_doc.get("service")
    if not isinstance(services, list):
        return ""
    for service in services:
        if not isinstance(service, dict):
            continue
        if service.get("id") not in ("#atproto_pds", f"{did}#atproto_pds"):
            continue
        if service.get("type") != "AtprotoPersonalDataServer":
            continue
        endpoint = service.get("serviceEndpoint")
        if isinstance(endpoint, str):
            parts = urlsplit(endpoint)
            if parts.scheme in ("http", "https") and parts.hostname:
                return endpoint.rstrip("/")
    return ""


@dataclass(frozen=True)
class Session:
    """A login: who we are, the two tokens, and the PDS that holds the account.

    Kept in the store as the SDK's session string (`handle:::did:::access:::refresh:::pds`), so a
    session saved before this client existed is resumed as it is, and the other way round.
    """

    handle: str
    did: str
    access_jwt: str = field(repr=False)
    refresh_jwt: str = field(repr=False)
    pds_url: str = ""

    def export(self) -> str:
        fields = (self.handle, self.did, self.access_jwt, self.refresh_jwt, self.pds_url)
        return SESSION_SEPARATOR.join(fields)

    @classmethod
    def parse(cls, text: str) -> Session | None:
        """The stored session, or None for anything that is not a session string."""
        fields = text.split(SESSION_SEPARATOR)
        if len(fields) == 4:
            fields.append("")
        if len(fields) != 5 or not all(fields[:4]) or not fields[1].startswith("did:"):
            return None
        handle, did, access, refresh, pds_url = fields
        return cls(handle, did, access, refresh, pds_url.removesuffix("/xrpc").rstrip("/"))

    @classmethod
    def of_answer(cls, answer: Mapping[str, Any], fallback_url: str) -> Session:
        """The session that createSession or refreshSession answered; raises `Unavailable` when
        the answer lacks the tokens."""
        values = [answer.get(key) for key in ("handle", "did", "accessJwt", "refreshJwt")]
        if not all(isinstance(value, str) and value for value in values):
            raise Unavailable("the session answer from Bluesky could not be read")
        handle, did, access, refresh = (str(value) for value in values)
        pds_url = pds_endpoint(answer.get("didDoc")) or fallback_url
        return cls(handle, did, access, refresh, pds_url)


class XrpcClient:
    """One account's XRPC connection: an aiohttp session, its login, and the error mapping.

    `base_url` is where the account logs in; after a login whose DID document names another PDS,
    calls go there, as the SDK did. `on_session` is called with every new or refreshed session so
    that it can be kept; `relogin` logs in afresh when the refresh token itself is refused (it
    too expires, or was revoked). The aiohttp session is opened on first use, inside the loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        label: str = "bluesky",
        session: Session | None = None,
        on_session: Callable[[Session], None] | None = None,
        relogin: Callable[[], Awaitable[Session]] | None = None,
    ) -> None:
        self.base_url = base_url.removesuffix("/xrpc").rstrip("/")
        self.label = label
        self.session = session
        self.on_session = on_session
        self.relogin = relogin
        self._http: aiohttp.ClientSession | None = None
        self._refreshing = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<XrpcClient {self.label} {self.url}>"

    @property
    def url(self) -> str:
        """Where calls go: the session's PDS, or the base URL before a login."""
        if self.session is not None and self.session.pds_url:
            return self.session.pds_url
        return self.base_url

    @property
    def did(self) -> str:
        return self.session.did if self.session is not None else ""

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- sessions ---------------------------------------------------------------------------------

    async def login(self, identifier: str, password: str) -> Session:
        """`createSession`; the new session is kept and handed to `on_session`."""
        answer = await self._call(
            "POST",
            "com.atproto.server.createSession",
            body={"identifier": identifier, "password": password},
            auth=None,
        )
        return self._adopt(Session.of_answer(answer, self.base_url))

    def resume(self, session: Session) -> None:
        """Use a stored session; the caller checks it with `getSession`."""
        if not session.pds_url:
            session = replace(session, pds_url=self.base_url)
        self.session = session

    async def refresh(self) -> Session:
        """`refreshSession` with the refresh token; the refresh token rotates, so the new pair is
        kept and handed to `on_session` at once."""
        current = self.session
        if current is None:
            raise Refused(f"{self.label}: not logged in to Bluesky", 401, "AuthRequired", "")
        answer = await self._call(
            "POST", "com.atproto.server.refreshSession", auth=current.refresh_jwt
        )
        return self._adopt(Session.of_answer(answer, current.pds_url or self.base_url))

    def _adopt(self, session: Session) -> Session:
        self.session = session
        if self.on_session is not None:
            self.on_session(session)
        return session

    async def _refresh_after(self, used: str) -> None:
        """Refresh once for all the calls that found the access token `used` expired."""
        async with self._refreshing:
            if self.session is not None and self.session.access_jwt != used:
                return
            log.info("%s: Bluesky access token expired; refreshing the session", self.label)
            try:
                await self.refresh()
            except Refused as error:
                if self.relogin is None:
                    raise
                log.info(
                    "%s: Bluesky refused the refresh (%s); logging in again",
                    self.label,
                    error.error,
                )
                await self.relogin()

    # --- calls ------------------------------------------------------------------------------------

    async def query(self, nsid: str, params: Params | None = None) -> dict[str, Any]:
        """A GET of `nsid` with the session's access token; the answer's JSON object."""
        return await self._authorized("GET", nsid, params=params)

    async def procedure(
        self,
        nsid: str,
        body: Mapping[str, Any] | bytes | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """A POST of `nsid`: a JSON body, or raw bytes sent as `content_type`."""
        return await self._authorized("POST", nsid, body=body, content_type=content_type)

    async def _authorized(
        self,
        method: str,
        nsid: str,
        *,
        params: Params | None = None,
        body: Mapping[str, Any] | bytes | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        token = self.session.access_jwt if self.session is not None else None
        try:
            return await self._call(
                method, nsid, params=params, body=body, content_type=content_type, auth=token
            )
        except Refused as error:
            if token is None or error.error not in EXPIRED or error.status not in (400, 401):
                raise
        await self._refresh_after(token)
        token = self.session.access_jwt if self.session is not None else None
        return await self._call(
            method, nsid, params=params, body=body, content_type=content_type, auth=token
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._http

    async def _call(
        self,
        method: str,
        nsid: str,
        *,
        params: Params | None = None,
        body: Mapping[str, Any] | bytes | None = None,
        content_type: str = "application/json",
        auth: str | None,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if auth is not None:
            headers["Authorization"] = f"Bearer {auth}"
        data: bytes | None = None
        if isinstance(body, bytes):
            data = body
            headers["Content-Type"] = content_type
        elif body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        try:
            async with self._client().request(
                method,
                f"{self.url}/xrpc/{nsid}",
                params=_query(params),
                data=data,
                headers=headers,
            ) as response:
                raw = await response.read()
                status = response.status
                answer_headers = {key.lower(): value for key, value in response.headers.items()}
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise Unavailable(
                f"{self.label}: {nsid}: network error ({type(error).__name__})"
            ) from None
        if 200 <= status < 300:
            return self._answer(nsid, raw)
        raise self._failure(nsid, status, raw, answer_headers)

    def _answer(self, nsid: str, raw: bytes) -> dict[str, Any]:
        """The JSON object of a success; an empty body is an empty object (deletes on old PDSs)."""
        if not raw.strip():
            return {}
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise Unavailable(f"{self.label}: {nsid}: unreadable answer from Bluesky")
        return answer

    def _failure(self, nsid: str, status: int, raw: bytes, headers: Mapping[str, str]) -> Exception:
        try:
            content = json.loads(raw) if raw else None
        except ValueError:
            content = None
        content = content if isinstance(content, dict) else {}
        error, detail = _quoted(content.get("error")), _quoted(content.get("message"))
        said = f"{error}: {detail}".strip(": ")
        shown = f"{status} {said}" if said else str(status)
        if status == 429:
            return RateLimited(
                f"{self.label}: {nsid}: rate limited ({said or 'no reason given'})",
                retry_at_of(headers),
            )
        if status >= 500 or status in RETRYABLE_4XX or status < 400:
            return Unavailable(f"{self.label}: {nsid}: Bluesky answered {shown}", status, error)
        return Refused(f"{self.label}: {nsid}: Bluesky refused ({shown})", status, error, detail)


def _query(params: Params | None) -> list[tuple[str, str]] | None:
    """Query parameters as XRPC wants them: lists repeated, booleans as true/false."""
    if not params:
        return None
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        elif isinstance(value, str | int):
            pairs.append((key, str(value)))
        else:
            pairs.extend((key, str(item)) for item in value)
    return pairs
