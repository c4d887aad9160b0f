"""A local Bluesky PDS: the XRPC calls a crossposter makes, answered as the reference PDS answers.

The unmodified atproto SDK talks to it by base URL (`AsyncClient(base_url=sandbox.base_url)`; the
SDK appends `/xrpc`), logs in with `login(handle, password, fetch_bsky_profile=False)` and then
follows the DID document of the session to this server. Status codes, error names, record CIDs and
limits are those of the PDS pinned in `tests/pds` (the contract test runs the same calls against
both). Without an AppView, `app.bsky.*` queries answer 502 as they do on that PDS.

Every request goes through the switchable `faults` (429s with the PDS's RateLimit headers, 5xx,
delays, resets, broken JSON, answers held back after the write landed; matched by NSID and account)
and then through `interceptors` before its handler, so that a test can answer in its place without
touching the handlers. The faults also refuse, stall and cut firehose connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NamedTuple

from aiohttp import web

from relaybird.sandbox.bluesky_auth import (
    LimitStatus,
    RateLimit,
    RateLimiter,
    TokenClaims,
    TokenIssuer,
    XrpcError,
    internal_error,
    invalid_request,
    tightest,
)
from relaybird.sandbox.bluesky_firehose import BACKFILL_WINDOW, SUBSCRIBE_REPOS, Firehose
from relaybird.sandbox.bluesky_ipld import (
    Link,
    NotIpldError,
    TidClock,
    UnsafeIntegerError,
    blob_cid,
    encode_dag_cbor,
    find_blob_refs,
    ipld_to_json,
    json_to_ipld,
    record_cid,
)
from relaybird.sandbox.bluesky_lexicon import (
    IMAGE_MAX_SIZE,
    LexiconError,
    RecordType,
    check_format,
    describe,
    is_valid_handle,
    known_records,
    validate_record,
)
from relaybird.sandbox.bluesky_repo import Repo, RepoOp, SigningKey
from relaybird.sandbox.faults import ErrorShape, Faults, Target

logger = logging.getLogger(__name__)

JSON_BODY_LIMIT = 150 * 1024
BLOB_UPLOAD_LIMIT = 5 * 1024 * 1024
_DRAIN_LIMIT = 64 * 1024 * 1024
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 100

LOGIN_5MIN = RateLimit("createSession-5min", 30, 300)
LOGIN_DAY = RateLimit("createSession-day", 300, 86400)
GLOBAL_IP = RateLimit("global-ip", 3000, 300)
WRITE_HOUR = RateLimit("repo-write-hour", 5000, 3600)
WRITE_DAY = RateLimit("repo-write-day", 35000, 86400)
UPLOAD_DAY = RateLimit("uploadBlob-day", 1000, 86400)
CREATE_POINTS, UPDATE_POINTS, DELETE_POINTS = 3, 2, 1
# The error names the XRPC spec gives each status, which clients and the SDK report.
_XRPC_ERRORS = {
    400: "InvalidRequest",
    401: "AuthenticationRequired",
    403: "Forbidden",
    404: "XRPCNotSupported",
    413: "PayloadTooLarge",
    429: "RateLimitExceeded",
    500: "InternalServerError",
    501: "MethodNotImplemented",
    502: "UpstreamFailure",
    503: "NotEnoughResources",
    504: "UpstreamTimeout",
}

Interceptor = Callable[[web.Request, str], Awaitable[web.StreamResponse | None]]
"""Called with each request and its NSID before the handler; a response returned answers instead."""


@dataclass(frozen=True)
class SandboxAccount:
    did: str
    handle: str
    password: str


@dataclass(frozen=True)
class SandboxRecord:
    """A record as `getRecord` shows it: `value` in JSON form (`$link`, `$bytes`)."""

    uri: str
    cid: str
    rkey: str
    value: dict[str, Any]


class LoggedRequest(NamedTuple):
    nsid: str
    status: int


@dataclass
class _StoredRecord:
    collection: str
    rkey: str
    cid: str
    value: dict[str, Any]
    seq: int


@dataclass
class _StoredBlob:
    data: bytes
    mime: str
    permanent: bool = False


@dataclass
class _Account:
    did: str
    handle: str
    password: str
    email: str | None
    repo: Repo
    records: dict[tuple[str, str], _StoredRecord] = field(default_factory=dict)
    blobs: dict[str, _StoredBlob] = field(default_factory=dict)


@dataclass
class _Call:
    """One request in flight: what the handlers need, and the rate-limit states it consumed."""

    request: web.Request
    nsid: str
    limits: list[LimitStatus] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.request.remote or ""


@dataclass(frozen=True)
class _PreparedWrite:
    rkey: str
    value: dict[str, Any]
    cid: str
    validation: str | None


def _json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        content_type="application/json",
        charset="utf-8",
    )


def _error_response(error: XrpcError) -> web.Response:
    response = _json_response({"error": error.error, "message": error.message}, error.status)
    response.headers.update(error.headers)
    return response


def sniff_mime(data: bytes) -> str | None:
    """The type the content itself declares; the PDS prefers it to the request's Content-Type."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"\x1aE\xdf\xa3":
        return "video/webm"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        brands = {b"avif": "image/avif", b"heic": "image/heic", b"heix": "image/heic"}
        if brand == b"qt  ":
            return "video/quicktime"
        return brands.get(brand, "video/mp4")
    return None


def _did_for(handle: str) -> str:
    digest = hashlib.sha256(handle.encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    number = int.from_bytes(digest[:15], "big")
    return "did:plc:" + "".join(alphabet[(number >> (5 * i)) & 31] for i in range(24))


class BlueskySandbox:
    """An in-memory PDS on 127.0.0.1 for tests and `relaybird demo`.

    `clock` drives token expiry and rate-limit windows, so a test can move time forward;
    `access_ttl`/`refresh_ttl` default to the PDS's 2 hours and 90 days. `rate_limits=False`
    turns off the limits (login 30 per 5 minutes per identifier, writes 5,000 points an hour).
    `image_max_size` is the images-embed blob limit the PDS enforces when a post is written.

    Every write is also sequenced on `firehose` and streamed at
    `com.atproto.sync.subscribeRepos`; `firehose_backfill` is how old (in `clock` seconds) an
    event may be and still be replayed from a cursor.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        access_ttl: float = 2 * 3600,
        refresh_ttl: float = 90 * 86400,
        refresh_grace: float = 2 * 3600,
        rate_limits: bool = True,
        image_max_size: int = IMAGE_MAX_SIZE,
        blob_upload_limit: int = BLOB_UPLOAD_LIMIT,
        handle_domains: tuple[str, ...] = (".test",),
        pds_endpoint: str | None = None,
        firehose_backfill: float = BACKFILL_WINDOW,
    ) -> None:
        self._clock = clock
        self._tokens = TokenIssuer(
            clock=clock,
            access_ttl=access_ttl,
            refresh_ttl=refresh_ttl,
            refresh_grace=refresh_grace,
        )
        self._limiter = RateLimiter(clock)
        self._rate_limits = rate_limits
        self._record_types: dict[str, RecordType] = known_records(image_max_size)
        self._blob_upload_limit = blob_upload_limit
        self._handle_domains = handle_domains
        # Where session DID documents send clients; None means this server's own base URL.
        self.pds_endpoint = pds_endpoint
        self._tids = TidClock(clock)
        self.faults = Faults()
        self._fault_shape = ErrorShape(self._fault_error, b'{"uri":"at://did:plc:')
        self.firehose = Firehose(clock, backfill_window=firehose_backfill, faults=self.faults)
        self._seq = 0
        self._accounts: dict[str, _Account] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.requests_log: list[LoggedRequest] = []
        self.interceptors: list[Interceptor] = []
        self._endpoints: dict[str, tuple[str, Callable[[_Call], Awaitable[web.StreamResponse]]]] = {
            "com.atproto.server.describeServer": ("GET", self._describe_server),
            "com.atproto.server.createSession": ("POST", self._create_session),
            "com.atproto.server.refreshSession": ("POST", self._refresh_session),
            "com.atproto.server.getSession": ("GET", self._get_session),
            "com.atproto.server.deleteSession": ("POST", self._delete_session),
            "com.atproto.identity.resolveHandle": ("GET", self._resolve_handle),
            "com.atproto.repo.describeRepo": ("GET", self._describe_repo),
            "com.atproto.repo.createRecord": ("POST", self._create_record),
            "com.atproto.repo.putRecord": ("POST", self._put_record),
            "com.atproto.repo.deleteRecord": ("POST", self._delete_record),
            "com.atproto.repo.getRecord": ("GET", self._get_record),
            "com.atproto.repo.listRecords": ("GET", self._list_records),
            "com.atproto.repo.uploadBlob": ("POST", self._upload_blob),
            "com.atproto.sync.getBlob": ("GET", self._get_blob),
        }

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0 = a free port) and return the base URL."""
        app = web.Application(client_max_size=self._blob_upload_limit + 1024 * 1024)
        app.router.add_route("*", "/xrpc/_health", self._health)
        app.router.add_route("*", "/xrpc/{nsid}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown_host}:{bound_port}"
        self._tokens.audience = f"did:web:{host}%3A{bound_port}"
        self.faults.bind(asyncio.get_running_loop())
        return self.base_url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self.faults.release()
        self.firehose.drop_connections()
        if runner is not None:
            await runner.cleanup()

    # --- inspection for tests -------------------------------------------------------------------

    def create_account(
        self, handle: str, password: str, *, email: str | None = None
    ) -> SandboxAccount:
        """Add an account; its DID is derived from the handle, so it is the same on every run.

        Like the PDS's createAccount, this sequences `#identity`, `#account`, the empty repo's
        first `#commit` and a `#sync` on the firehose.
        """
        handle = handle.lower()
        if not is_valid_handle(handle):
            raise ValueError(f"not a valid handle: {handle!r}")
        if any(account.handle == handle for account in self._accounts.values()):
            raise ValueError(f"handle already taken: {handle!r}")
        did = _did_for(handle)
        account = _Account(did, handle, password, email, Repo(did, SigningKey(did)))
        self._accounts[did] = account
        first = account.repo.apply({}, [], self._tids.next())
        self.firehose.identity(did, handle)
        self.firehose.account(did, active=True)
        self.firehose.commit(did, first)
        self.firehose.sync(did, first)
        return SandboxAccount(did, handle, password)

    def records(self, did: str, collection: str = "app.bsky.feed.post") -> list[SandboxRecord]:
        """The live records of a collection, oldest first (an update keeps its place)."""
        account = self._account_by_did(did)
        stored = sorted(
            (item for item in account.records.values() if item.collection == collection),
            key=lambda item: item.seq,
        )
        return [self._public_record(account, item) for item in stored]

    def blob(self, did: str, cid: str) -> bytes:
        """The bytes of an uploaded blob (referenced or not); KeyError if there is none."""
        account = self._account_by_did(did)
        if cid not in account.blobs:
            raise KeyError(f"no blob {cid} in {did}")
        return account.blobs[cid].data

    def _account_by_did(self, did: str) -> _Account:
        if did not in self._accounts:
            raise KeyError(f"no account {did} in the sandbox")
        return self._accounts[did]

    def _public_record(self, account: _Account, item: _StoredRecord) -> SandboxRecord:
        value: dict[str, Any] = ipld_to_json(item.value)
        uri = f"at://{account.did}/{item.collection}/{item.rkey}"
        return SandboxRecord(uri, item.cid, item.rkey, value)

    # --- dispatch -------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return _json_response({})

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        call = _Call(request, request.match_info["nsid"])
        if call.nsid == SUBSCRIBE_REPOS and _is_websocket(request):
            return await self._subscribe(call)
        handled = False

        async def proceed() -> web.StreamResponse:
            nonlocal handled
            handled = True
            return await self._respond(call)

        target = Target(call.nsid, self._account_names(request))
        response = await self.faults.serve(request, target, proceed, self._fault_shape)
        if not handled:
            self.requests_log.append(LoggedRequest(call.nsid, response.status))
        return response

    def _account_names(self, request: web.Request) -> tuple[str, ...]:
        """Whose session a request carries (access or refresh token), for faults aimed at one."""
        header = request.headers.get("Authorization")
        for refresh in (False, True):
            try:
                did = self._tokens.verify(header, refresh=refresh).did
            except XrpcError:
                continue
            account = self._accounts.get(did)
            return (did, account.handle) if account is not None else (did,)
        return ()

    def _fault_error(self, status: int, retry_after: float) -> web.Response:
        """A fault's refusal as the PDS words it; a 429 carries its RateLimit headers."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        messages = {429: "Rate Limit Exceeded"}
        name = _XRPC_ERRORS.get(status, "InternalServerError" if status >= 500 else phrase)
        headers: dict[str, str] = {}
        if status == 429:
            reset = math.ceil(self._clock() + retry_after)
            headers = {
                "RateLimit-Limit": str(GLOBAL_IP.points),
                "RateLimit-Reset": str(reset),
                "RateLimit-Remaining": "0",
                "RateLimit-Policy": f"{GLOBAL_IP.points};w={GLOBAL_IP.duration}",
            }
        return _error_response(XrpcError(status, name, messages.get(status, phrase), headers))

    async def _respond(self, call: _Call) -> web.StreamResponse:
        try:
            response = await self._answer(call)
        except XrpcError as error:
            response = _error_response(error)
        except Exception:
            logger.exception("sandbox handler for %s failed", call.nsid)
            response = _error_response(internal_error())
        shown = tightest(call.limits)
        if shown is not None:
            response.headers.update(shown.headers())
        self.requests_log.append(LoggedRequest(call.nsid, response.status))
        return response

    async def _answer(self, call: _Call) -> web.StreamResponse:
        for interceptor in self.interceptors:
            early = await interceptor(call.request, call.nsid)
            if early is not None:
                return early
        endpoint = self._endpoints.get(call.nsid)
        if endpoint is None or call.request.method != endpoint[0]:
            return await self._not_served(call)
        self._consume(call, GLOBAL_IP, call.ip)
        return await endpoint[1](call)

    async def _subscribe(self, call: _Call) -> web.StreamResponse:
        """The firehose: faults and interceptors may still answer (a refused upgrade) first."""
        refused = self.faults.refused_stream()
        if refused is not None:
            status = refused.status or 503
            response = self._fault_error(status, 1.0)
            self.requests_log.append(LoggedRequest(call.nsid, status))
            return response
        for interceptor in self.interceptors:
            early = await interceptor(call.request, call.nsid)
            if early is not None:
                self.requests_log.append(LoggedRequest(call.nsid, early.status))
                return early
        self.requests_log.append(LoggedRequest(call.nsid, 101))
        return await self.firehose.serve(call.request)

    async def _not_served(self, call: _Call) -> web.StreamResponse:
        """The PDS hands unknown methods to its AppView, which this sandbox (like dev-env) lacks."""
        self._tokens.verify(call.request.headers.get("Authorization"), refresh=False)
        raise XrpcError(502, "UpstreamFailure", "Upstream service unreachable")

    def _consume(self, call: _Call, limit: RateLimit, key: str, points: int = 1) -> None:
        if not self._rate_limits:
            return
        status = self._limiter.consume(limit, key, points)
        call.limits.append(status)
        if status.exceeded:
            raise XrpcError(429, "RateLimitExceeded", "Rate Limit Exceeded")

    # --- input ----------------------------------------------------------------------------------

    async def _read_body(self, request: web.Request, limit: int, error: str) -> bytes:
        """Read at most `limit` bytes; past it, drain the rest (so the client reads our 413)."""
        too_large = XrpcError(413, error, "request entity too large")
        if request.content_length is not None and request.content_length > limit:
            await self._drain(request)
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                await self._drain(request)
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _drain(self, request: web.Request) -> None:
        drained = 0
        async for chunk in request.content.iter_chunked(65536):
            drained += len(chunk)
            if drained > _DRAIN_LIMIT:
                return

    async def _json_body(self, call: _Call) -> dict[str, Any]:
        """A JSON procedure input, in the data model (links, bytes), checked as the PDS does."""
        content_type = call.request.headers.get("Content-Type")
        raw = await self._read_body(call.request, JSON_BODY_LIMIT, "PayloadTooLargeError")
        if not content_type:
            raise invalid_request("Request encoding (Content-Type) required but not provided")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise invalid_request(f"Wrong request encoding (Content-Type): {content_type}")
        try:
            parsed = json.loads(raw or b"{}", parse_constant=_refuse_constant)
        except ValueError as error:
            raise XrpcError(400, "SyntaxError", str(error)) from None
        try:
            body = json_to_ipld(parsed)
        except NotIpldError as error:
            raise invalid_request(str(error)) from None
        except UnsafeIntegerError:
            raise internal_error() from None
        if not isinstance(body, dict):
            raise invalid_request(f"Expected object value type (got {describe(body)}) at $")
        return body

    # --- auth and accounts ----------------------------------------------------------------------

    def _auth(self, call: _Call, *, refresh: bool = False) -> TokenClaims:
        return self._tokens.verify(call.request.headers.get("Authorization"), refresh=refresh)

    def _find(self, identifier: str) -> _Account | None:
        if identifier.startswith("did:"):
            return self._accounts.get(identifier)
        lowered = identifier.lower()
        for account in self._accounts.values():
            if account.handle == lowered:
                return account
        return None

    def _writable(self, repo: str, claims: TokenClaims) -> _Account:
        account = self._find(repo)
        if account is None:
            raise XrpcError(403, "AccountNotFound", "Account not found")
        if account.did != claims.did:
            raise XrpcError(401, "AuthenticationRequired", "Authentication Required")
        return account

    def _did_doc(self, account: _Account) -> dict[str, Any]:
        return {
            "@context": [
                "https://www.w3.org/ns/did/v1",
                "https://w3id.org/security/suites/secp256k1-2019/v1",
            ],
            "id": account.did,
            "alsoKnownAs": [f"at://{account.handle}"],
            "verificationMethod": [
                {
                    "id": "#atproto",
                    "type": "EcdsaSecp256k1VerificationKey2019",
                    "controller": account.did,
                    "publicKeyMultibase": account.repo.key.multibase,
                }
            ],
            "service": [
                {
                    "id": "#atproto_pds",
                    "type": "AtprotoPersonalDataServer",
                    "serviceEndpoint": self.pds_endpoint or self.base_url,
                }
            ],
        }

    def _session_body(self, account: _Account) -> dict[str, Any]:
        body: dict[str, Any] = {"did": account.did, "didDoc": self._did_doc(account)}
        body["handle"] = account.handle
        if account.email is not None:
            body["email"] = account.email
        body["emailConfirmed"] = False
        body["active"] = True
        return body

    # --- com.atproto.server ---------------------------------------------------------------------

    async def _describe_server(self, call: _Call) -> web.StreamResponse:
        return _json_response(
            {
                "did": self._tokens.audience,
                "availableUserDomains": list(self._handle_domains),
                "inviteCodeRequired": False,
                "links": {},
                "contact": {},
            }
        )

    async def _create_session(self, call: _Call) -> web.StreamResponse:
        body = await self._json_body(call)
        identifier = _body_str(body, "identifier")
        password = _body_str(body, "password")
        # The PDS counts every attempt, failed ones too, per identifier as typed and client IP.
        key = f"{identifier}-{call.ip}"
        self._consume(call, LOGIN_DAY, key)
        self._consume(call, LOGIN_5MIN, key)
        account = self._login_account(identifier)
        if account is None or account.password != password:
            raise XrpcError(401, "AuthenticationRequired", "Invalid identifier or password")
        tokens = self._tokens.create(account.did)
        return _json_response(
            {"accessJwt": tokens.access_jwt, "refreshJwt": tokens.refresh_jwt}
            | self._session_body(account)
        )

    def _login_account(self, identifier: str) -> _Account | None:
        if "@" in identifier:
            lowered = identifier.lower()
            return next(
                (a for a in self._accounts.values() if (a.email or "").lower() == lowered), None
            )
        return self._find(identifier)

    async def _refresh_session(self, call: _Call) -> web.StreamResponse:
        claims = self._auth(call, refresh=True)
        tokens = self._tokens.rotate(claims)
        account = self._account_by_did(claims.did)
        return _json_response(
            {"accessJwt": tokens.access_jwt, "refreshJwt": tokens.refresh_jwt}
            | self._session_body(account)
        )

    async def _get_session(self, call: _Call) -> web.StreamResponse:
        claims = self._auth(call)
        return _json_response(self._session_body(self._account_by_did(claims.did)))

    async def _delete_session(self, call: _Call) -> web.StreamResponse:
        self._tokens.revoke(self._auth(call, refresh=True))
        return web.Response(status=200)

    # --- identity and repo queries --------------------------------------------------------------

    async def _resolve_handle(self, call: _Call) -> web.StreamResponse:
        handle = _query_str(call, "handle", "handle")
        account = self._find(handle)
        if account is None:
            raise invalid_request("Unable to resolve handle")
        return _json_response({"did": account.did})

    async def _describe_repo(self, call: _Call) -> web.StreamResponse:
        repo = _query_str(call, "repo", "at-identifier")
        account = self._find(repo)
        if account is None:
            raise invalid_request(f"Could not find repo for DID: {repo}", "RepoNotFound")
        collections = sorted({collection for collection, _ in account.records})
        return _json_response(
            {
                "handle": account.handle,
                "did": account.did,
                "didDoc": self._did_doc(account),
                "collections": collections,
                "handleIsCorrect": True,
            }
        )

    async def _get_record(self, call: _Call) -> web.StreamResponse:
        repo = _query_str(call, "repo", "at-identifier")
        collection = _query_str(call, "collection", "nsid")
        rkey = _query_str(call, "rkey", "record-key")
        cid = _query_optional(call, "cid", "cid")
        account = self._find(repo)
        if account is None:
            # A repo hosted elsewhere is asked of the AppView, which is not there.
            raise XrpcError(502, "UpstreamFailure", "Upstream service unreachable")
        stored = account.records.get((collection, rkey))
        if stored is None or (cid is not None and stored.cid != cid):
            raise invalid_request(
                f"Could not locate record: at://{account.did}/{collection}/{rkey}",
                "RecordNotFound",
            )
        record = self._public_record(account, stored)
        return _json_response({"uri": record.uri, "cid": record.cid, "value": record.value})

    async def _list_records(self, call: _Call) -> web.StreamResponse:
        repo = _query_str(call, "repo", "at-identifier")
        collection = _query_str(call, "collection", "nsid")
        limit = _query_int(call, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
        cursor = _query_optional(call, "cursor", None)
        reverse = _query_bool(call, "reverse")
        account = self._find(repo)
        if account is None:
            raise invalid_request(f"Could not find repo: {repo}")
        keys = sorted(
            (rkey for coll, rkey in account.records if coll == collection), reverse=not reverse
        )
        if cursor is not None:
            keys = [key for key in keys if (key > cursor if reverse else key < cursor)]
        page = [
            self._public_record(account, account.records[(collection, key)]) for key in keys[:limit]
        ]
        body: dict[str, Any] = {
            "records": [{"uri": r.uri, "cid": r.cid, "value": r.value} for r in page]
        }
        if page:
            body["cursor"] = page[-1].rkey
        return _json_response(body)

    # --- repo writes ----------------------------------------------------------------------------

    def _prepare(
        self, collection: str, rkey: str | None, record: dict[str, Any], validate: bool | None
    ) -> _PreparedWrite:
        """$type, record key and lexicon checks, in the PDS's order, and the record's CID."""
        if "$type" not in record:
            record = {**record, "$type": collection}
        elif record["$type"] != collection:
            raise invalid_request(
                f"Invalid $type: expected {collection}, got {_plain(record['$type'])}"
            )
        key = rkey or self._tids.next()
        validation: str | None = None
        if validate is not False:
            record_type = self._record_types.get(collection)
            if record_type is None:
                if validate is True:
                    raise invalid_request(f"Unknown lexicon type: {collection}")
                validation = "unknown"
            else:
                try:
                    validate_record(record_type, collection, key, record)
                except LexiconError as error:
                    raise invalid_request(str(error)) from None
                validation = "valid"
        return _PreparedWrite(key, record, record_cid(record), validation)

    def _attach_blobs(self, account: _Account, record: dict[str, Any]) -> None:
        """Every blob a record names must be this account's; its first use fixes type and size."""
        refs = find_blob_refs(record)
        for ref in refs:
            link: Link = ref["ref"]
            stored = account.blobs.get(link.cid)
            if stored is None:
                raise invalid_request(f"Could not find blob: {link.cid}", "BlobNotFound")
            if stored.permanent:
                continue
            if ref.get("mimeType") != stored.mime:
                raise invalid_request(
                    "Referenced Mimetype does not match stored blob. "
                    f"Expected: {stored.mime}, Got: {_plain(ref.get('mimeType'))}",
                    "InvalidMimeType",
                )
            if ref.get("size") != len(stored.data):
                raise invalid_request(
                    "Referenced Size does not match stored blob. "
                    f"Expected: {len(stored.data)}, Got: {_plain(ref.get('size'))}",
                    "InvalidSize",
                )
        for ref in refs:
            account.blobs[ref["ref"].cid].permanent = True

    def _commit(self, account: _Account, op: RepoOp) -> dict[str, str]:
        """Sign the repo's new state after one write, put it on the firehose, and name it."""
        items = {f"{c}/{rkey}": stored.cid for (c, rkey), stored in account.records.items()}
        commit = account.repo.apply(items, [op], self._tids.next())
        self.firehose.commit(account.did, commit)
        return {"cid": commit.cid, "rev": commit.rev}

    def _store(
        self, account: _Account, collection: str, prepared: _PreparedWrite, seq: int | None
    ) -> None:
        if seq is None:
            self._seq += 1
            seq = self._seq
        account.records[(collection, prepared.rkey)] = _StoredRecord(
            collection, prepared.rkey, prepared.cid, prepared.value, seq
        )

    def _write_answer(
        self,
        account: _Account,
        collection: str,
        prepared: _PreparedWrite,
        commit: dict[str, str] | None,
    ) -> web.Response:
        body: dict[str, Any] = {
            "uri": f"at://{account.did}/{collection}/{prepared.rkey}",
            "cid": prepared.cid,
        }
        if commit is not None:
            body["commit"] = commit
        if prepared.validation is not None:
            body["validationStatus"] = prepared.validation
        return _json_response(body)

    def _limit_writes(self, call: _Call, did: str, points: int) -> None:
        self._consume(call, WRITE_DAY, did, points)
        self._consume(call, WRITE_HOUR, did, points)

    async def _create_record(self, call: _Call) -> web.StreamResponse:
        claims = self._auth(call)
        body = await self._json_body(call)
        repo = _body_str(body, "repo", "at-identifier")
        collection = _body_str(body, "collection", "nsid")
        rkey = _body_str_optional(body, "rkey", "record-key")
        validate = _body_bool(body, "validate")
        record = _body_object(body, "record")
        self._limit_writes(call, claims.did, CREATE_POINTS)
        account = self._writable(repo, claims)
        prepared = self._prepare(collection, rkey, record, validate)
        if (collection, prepared.rkey) in account.records:
            # The reference PDS fails this way on a key already taken; the contract test checks it.
            raise internal_error()
        self._attach_blobs(account, prepared.value)
        self._store(account, collection, prepared, None)
        commit = self._commit(account, _write_op(collection, prepared, None))
        return self._write_answer(account, collection, prepared, commit)

    async def _put_record(self, call: _Call) -> web.StreamResponse:
        claims = self._auth(call)
        body = await self._json_body(call)
        repo = _body_str(body, "repo", "at-identifier")
        collection = _body_str(body, "collection", "nsid")
        rkey = _body_str(body, "rkey", "record-key")
        validate = _body_bool(body, "validate")
        record = _body_object(body, "record")
        swap = _body_swap(body)
        self._limit_writes(call, claims.did, UPDATE_POINTS)
        account = self._writable(repo, claims)
        current = account.records.get((collection, rkey))
        prepared = self._prepare(collection, rkey, record, validate)
        if current is not None and current.cid == prepared.cid:
            return self._write_answer(account, collection, prepared, None)
        if swap is not _ABSENT and swap != (current.cid if current else None):
            raise invalid_request(
                f"Record was at {current.cid if current else 'null'}", "InvalidSwap"
            )
        self._attach_blobs(account, prepared.value)
        self._store(account, collection, prepared, current.seq if current else None)
        op = _write_op(collection, prepared, current.cid if current else None)
        commit = self._commit(account, op)
        return self._write_answer(account, collection, prepared, commit)

    async def _delete_record(self, call: _Call) -> web.StreamResponse:
        claims = self._auth(call)
        body = await self._json_body(call)
        repo = _body_str(body, "repo", "at-identifier")
        collection = _body_str(body, "collection", "nsid")
        rkey = _body_str(body, "rkey", "record-key")
        swap = _body_swap(body)
        self._limit_writes(call, claims.did, DELETE_POINTS)
        account = self._writable(repo, claims)
        current = account.records.get((collection, rkey))
        if current is None:
            return _json_response({})
        if swap is not _ABSENT and swap is not None and swap != current.cid:
            raise invalid_request(f"Record was at {current.cid}", "InvalidSwap")
        del account.records[(collection, rkey)]
        op = RepoOp("delete", f"{collection}/{rkey}", None, current.cid)
        return _json_response({"commit": self._commit(account, op)})

    # --- blobs ----------------------------------------------------------------------------------

    async def _upload_blob(self, call: _Call) -> web.StreamResponse:
        claims = self._auth(call)
        content_type = call.request.headers.get("Content-Type")
        data = await self._read_body(call.request, self._blob_upload_limit, "PayloadTooLarge")
        if not content_type:
            raise invalid_request("Request encoding (Content-Type) required but not provided")
        self._consume(call, UPLOAD_DAY, call.ip)
        account = self._account_by_did(claims.did)
        mime = sniff_mime(data) or content_type.split(";")[0].strip()
        cid = blob_cid(data)
        stored = account.blobs.get(cid)
        if stored is None:
            account.blobs[cid] = _StoredBlob(data, mime)
        elif not stored.permanent:
            stored.mime = mime
        blob = {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": len(data)}
        return _json_response({"blob": blob})

    async def _get_blob(self, call: _Call) -> web.StreamResponse:
        did = _query_str(call, "did", "did")
        cid = _query_str(call, "cid", "cid")
        account = self._accounts.get(did)
        if account is None:
            raise invalid_request(f"Could not find repo for DID: {did}", "RepoNotFound")
        stored = account.blobs.get(cid)
        if stored is None or not stored.permanent:
            raise invalid_request("Blob not found")
        return web.Response(
            body=stored.data,
            headers={
                "Content-Type": stored.mime,
                "X-Content-Type-Options": "nosniff",
                "Content-Disposition": f'attachment; filename="{cid}"',
                "Content-Security-Policy": "default-src 'none'; sandbox",
            },
        )


# --- input checks with the PDS's messages ------------------------------------------------------


class _Absent:
    """Marks a key left out, where an explicit null means something else (`swapRecord`)."""


_ABSENT = _Absent()
_FORMAT_NAMES = {
    "at-identifier": "AT identifier",
    "nsid": "NSID",
    "record-key": "record key",
    "did": "DID",
    "cid": "CID string",
    "handle": "handle",
}


def _is_websocket(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def _write_op(collection: str, prepared: _PreparedWrite, previous: str | None) -> RepoOp:
    """A create (or, over an existing record, an update) with the record block the CAR needs."""
    return RepoOp(
        "create" if previous is None else "update",
        f"{collection}/{prepared.rkey}",
        prepared.cid,
        previous,
        encode_dag_cbor(prepared.value),
    )


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(ipld_to_json(value))


def _body_str_optional(body: dict[str, Any], key: str, fmt: str | None = None) -> str | None:
    if key not in body:
        return None
    value = body[key]
    if not isinstance(value, str):
        raise invalid_request(f"Expected string value type (got {describe(value)}) at $.{key}")
    if fmt is not None and not check_format(value, fmt):
        raise invalid_request(f"Invalid {_FORMAT_NAMES[fmt]} (got {describe(value)}) at $.{key}")
    return value


def _body_str(body: dict[str, Any], key: str, fmt: str | None = None) -> str:
    value = _body_str_optional(body, key, fmt)
    if value is None:
        raise invalid_request(f'Missing required key "{key}" at $')
    return value


def _body_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid_request(f"Expected boolean value type (got {describe(value)}) at $.{key}")
    return value


def _body_object(body: dict[str, Any], key: str) -> dict[str, Any]:
    if key not in body:
        raise invalid_request(f'Missing required key "{key}" at $')
    value = body[key]
    if not isinstance(value, dict):
        raise invalid_request(f"Expected object value type (got {describe(value)}) at $.{key}")
    return value


def _body_swap(body: dict[str, Any]) -> str | _Absent | None:
    if "swapRecord" not in body:
        return _ABSENT
    if body["swapRecord"] is None:
        return None
    return _body_str(body, "swapRecord", "cid")


def _query_optional(call: _Call, key: str, fmt: str | None) -> str | None:
    """A query parameter; the PDS answers a malformed one with a bare 500."""
    value = call.request.query.get(key)
    if value is not None and fmt is not None and not check_format(value, fmt):
        raise internal_error()
    return value


def _query_str(call: _Call, key: str, fmt: str | None) -> str:
    value = _query_optional(call, key, fmt)
    if value is None:
        raise internal_error()
    return value


def _query_int(call: _Call, key: str, default: int, low: int, high: int) -> int:
    raw = call.request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise internal_error() from None
    if not low <= value <= high:
        raise internal_error()
    return value


def _query_bool(call: _Call, key: str) -> bool:
    raw = call.request.query.get(key)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise internal_error()
    return raw == "true"
