"""Bluesky: posting through the atproto SDK with record keys chosen before the call.

A post's record key (a TID) is generated and stored before `createRecord`; a retry after a crash first
asks `getRecord` whether that key already landed, so a post is never created twice. The login session is
kept in the store and refreshed, because `createSession` is strictly rate-limited.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from atproto import AsyncClient, SessionEvent
from atproto_client.exceptions import (
    AtProtocolError,
    BadRequestError,
    NetworkError,
    RateLimitExceededError,
    RequestErrorBase,
    UnauthorizedError,
)

from relaybird import richtext
from relaybird.config import BlueskyAccount
from relaybird.media import MediaPolicy, image_size
from relaybird.model import LinkCard, Media, Post, TargetRef
from relaybird.networks.base import (
    Capabilities,
    EventSink,
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.networks.bluesky_format import (
    BLUESKY_MAX_GRAPHEMES,
    measure_bluesky,
    post_to_record_text,
)
from relaybird.store import Store

log = logging.getLogger(__name__)

POST_COLLECTION = "app.bsky.feed.post"
MAX_BLOB_BYTES = 1_000_000
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"

CAPABILITIES = Capabilities(
    max_text=BLUESKY_MAX_GRAPHEMES,
    measure=measure_bluesky,
    max_media=4,
    max_image_bytes=MAX_BLOB_BYTES,
    edits=False,
)


class TidClock:
    """Record keys as the AT Protocol wants them: 13 sortable base32 chars of time and a clock id.

    Keys from one clock strictly increase even within a microsecond, so two parts of a thread never
    collide.
    """

    def __init__(self) -> None:
        self.clock_id = random.getrandbits(10)
        self.last = 0

    def next(self) -> str:
        micros = max(time.time_ns() // 1000, self.last + 1)
        self.last = micros
        value = (micros << 10) | self.clock_id
        chars = []
        for _ in range(13):
            chars.append(TID_ALPHABET[value & 31])
            value >>= 5
        return "".join(reversed(chars))


#: What the SDK raises for a 200 whose body is not the JSON promised (an HTML page, a truncated
#: body, another shape): its model check, pydantic's JSON parser, or httpx reading the body.
UNREADABLE_ANSWER: tuple[type[Exception], ...] = (AtProtocolError, ValueError, httpx.HTTPError)


def unreadable(name: str, error: Exception) -> TemporaryError:
    """A temporary error for an answer that could not be read: a proxy or overloaded server."""
    return TemporaryError(f"{name}: unreadable answer from Bluesky ({type(error).__name__})")


def error_name(error: RequestErrorBase) -> str:
    content = error.response.content if error.response is not None else None
    name = getattr(content, "error", None) or (
        content.get("error") if isinstance(content, dict) else None
    )
    message = getattr(content, "message", None) or (
        content.get("message") if isinstance(content, dict) else None
    )
    return f"{name or 'error'}: {message or ''}".strip(": ")


#: How long to hold an account when a 429 says nothing about when to come back.
DEFAULT_RATE_LIMIT_WAIT = 60.0


def retry_at_of(error: RateLimitExceededError, now: float | None = None) -> float:
    """When the server lets us back in, as a Unix time.

    `Retry-After` (seconds from now) is the server's own word for this request; otherwise the
    window's `RateLimit-Reset`, when it is still ahead. A 429 that says neither waits a minute.
    """
    now = time.time() if now is None else now
    retry_after = error.retry_after
    if retry_after is not None:
        return now + float(retry_after)
    reset_at = error.reset_at
    if reset_at is not None and reset_at.timestamp() > now:
        return float(reset_at.timestamp())
    return now + DEFAULT_RATE_LIMIT_WAIT


def rate_limited(name: str, error: RateLimitExceededError) -> RateLimited:
    return RateLimited(f"{name}: rate limited ({error_name(error)})", retry_at_of(error))


class BlueskyNetwork:
    network = "bluesky"
    capabilities = CAPABILITIES

    def __init__(self, account: BlueskyAccount, store: Store) -> None:
        self.account = account
        self.name = account.name
        self.base_url = str(account.base_url).rstrip("/")
        self.handle = account.handle
        self._password = account.app_password.get_secret_value()
        self.store = store
        self.client = AsyncClient(base_url=f"{self.base_url}/xrpc")
        self.client.on_session_change(self._session_changed)
        self.tids = TidClock()
        self.did = ""

    async def _session_changed(self, event: SessionEvent, session: Any) -> None:
        if event in (SessionEvent.CREATE, SessionEvent.REFRESH):
            self.store.set_session(self.name, session.export())

    async def open(self) -> None:
        """Resume the stored session when it still works; log in with the password only otherwise."""
        saved = self.store.session(self.name)
        if saved:
            try:
                await self.client.login(session_string=saved, fetch_bsky_profile=False)
                await self.client.com.atproto.server.get_session()
                self.did = self.client._session.did if self.client._session else ""
                log.info("%s: resumed the stored Bluesky session", self.name)
                return
            except (AtProtocolError, ValueError) as error:
                log.info(
                    "%s: stored session no longer valid (%s); logging in",
                    self.name,
                    type(error).__name__,
                )
        try:
            session = await self.client.login(self.handle, self._password, fetch_bsky_profile=False)
        except UnauthorizedError as error:
            raise PermanentError(
                f"{self.name}: Bluesky refused the handle or app password"
            ) from error
        except RateLimitExceededError as error:
            raise TemporaryError(f"{self.name}: Bluesky login is rate limited") from error
        except BadRequestError as error:
            raise PermanentError(
                f"{self.name}: Bluesky refused the login ({error_name(error)})"
            ) from error
        except RequestErrorBase as error:
            raise TemporaryError(f"{self.name}: Bluesky login failed ({error})") from error
        except UNREADABLE_ANSWER as error:
            raise unreadable(self.name, error) from None
        del session
        self.did = self.client._session.did if self.client._session else ""

    async def close(self) -> None:
        return None

    def pds_url(self) -> str:
        """The account's own PDS (the SDK follows the DID document there after login)."""
        base = str(getattr(self.client, "_base_url", "") or "")
        return base.removesuffix("/xrpc").rstrip("/") or self.base_url

    async def listen(self, cursor: str | None, sink: EventSink) -> None:
        from relaybird.networks.bluesky_inbound import BlueskyListener

        pds_url = self.pds_url()
        # `media_hosts` (a list of host entries, see MediaPolicy) once the config has the key.
        extra_hosts = getattr(self.account, "media_hosts", None) or ()
        listener = BlueskyListener(
            self.name,
            self.client,
            self.did,
            self.handle,
            mode=self.account.stream,
            pds_url=pds_url,
            firehose_url=self.account.firehose_url,
            jetstream_url=self.account.jetstream_url,
            poll_interval=float(self.account.poll_interval),
            media_policy=MediaPolicy.of(pds_url, extra_hosts=extra_hosts),
        )
        await listener.run(cursor, sink)

    async def edit(self, ref: TargetRef, post: Post) -> TargetRef:
        raise PermanentError(f"{self.name}: Bluesky posts cannot be edited")

    async def delete(self, ref: TargetRef) -> None:
        rkey = ref.id.rsplit("/", 1)[-1]
        try:
            await self.client.com.atproto.repo.delete_record(
                {"repo": self.did, "collection": POST_COLLECTION, "rkey": rkey}
            )
        except RateLimitExceededError as error:
            raise rate_limited(self.name, error) from error
        except NetworkError as error:
            raise TemporaryError(f"{self.name}: network error ({type(error).__name__})") from error
        except RequestErrorBase as error:
            raise PermanentError(f"{self.name}: delete refused ({error_name(error)})") from error
        except UNREADABLE_ANSWER as error:
            raise unreadable(self.name, error) from None

    def new_key(self) -> str:
        return self.tids.next()

    async def publish(
        self, post: Post, reply_to: ReplyTarget | None, key: str, retrying: bool
    ) -> TargetRef:
        """Create the record under `key`; an answer that cannot be read is retried, and the retry
        first asks whether the key landed, so a post is never created twice."""
        post = richtext.clean_post(post)
        try:
            if retrying:
                existing = await self._existing(key)
                if existing is not None:
                    return existing
            record = await self._record(post, reply_to)
            response = await self.client.com.atproto.repo.create_record(
                {"repo": self.did, "collection": POST_COLLECTION, "rkey": key, "record": record}
            )
            return self._ref(response.uri, response.cid)
        except RateLimitExceededError as error:
            raise rate_limited(self.name, error) from error
        except UnauthorizedError as error:
            raise PermanentError(
                f"{self.name}: Bluesky refused our session ({error_name(error)})"
            ) from error
        except BadRequestError as error:
            raise PermanentError(
                f"{self.name}: Bluesky refused the post ({error_name(error)})"
            ) from error
        except NetworkError as error:
            raise TemporaryError(f"{self.name}: network error ({type(error).__name__})") from error
        except RequestErrorBase as error:
            raise TemporaryError(f"{self.name}: Bluesky answered {error}") from error
        except UNREADABLE_ANSWER as error:
            raise unreadable(self.name, error) from None

    def _ref(self, uri: str, cid: str) -> TargetRef:
        rkey = uri.rsplit("/", 1)[-1]
        url = f"https://bsky.app/profile/{self.handle}/post/{rkey}"
        return TargetRef(id=uri, url=url, cid=cid)

    async def _existing(self, rkey: str) -> TargetRef | None:
        try:
            found = await self.client.com.atproto.repo.get_record(
                {"repo": self.did, "collection": POST_COLLECTION, "rkey": rkey}
            )
        except BadRequestError:
            return None
        if found.cid is None:
            return None
        return self._ref(found.uri, found.cid)

    async def _record(self, post: Post, reply_to: ReplyTarget | None) -> dict[str, Any]:
        text, facets = post_to_record_text(post)
        record: dict[str, Any] = {
            "$type": POST_COLLECTION,
            "text": text,
            "createdAt": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        if facets:
            record["facets"] = facets
        if post.language:
            record["langs"] = [post.language]
        if reply_to is not None:
            record["reply"] = {
                "root": {"uri": reply_to.root.id, "cid": reply_to.root.cid},
                "parent": {"uri": reply_to.parent.id, "cid": reply_to.parent.cid},
            }
        if post.media:
            record["embed"] = {
                "$type": "app.bsky.embed.images",
                "images": [await self._image(item) for item in post.media],
            }
        elif post.card is not None:
            record["embed"] = await self._external(post.card)
        if post.sensitive or any(item.sensitive for item in post.media):
            record["labels"] = {
                "$type": "com.atproto.label.defs#selfLabels",
                "values": [{"val": "graphic-media"}],
            }
        return record

    async def _external(self, card: LinkCard) -> dict[str, Any]:
        """A link card: Bluesky shows no preview unless the post carries one itself."""
        external: dict[str, Any] = {
            "uri": card.url,
            "title": card.title,
            "description": card.description,
        }
        if card.thumb is not None and card.thumb.data is not None:
            external["thumb"] = await self._blob(card.thumb.data)
        return {"$type": "app.bsky.embed.external", "external": external}

    async def _blob(self, data: bytes) -> dict[str, Any]:
        uploaded = await self.client.com.atproto.repo.upload_blob(data)
        blob = uploaded.blob
        return {
            "$type": "blob",
            "ref": {"$link": str(blob.ref.link if hasattr(blob.ref, "link") else blob.cid)},
            "mimeType": blob.mime_type,
            "size": blob.size,
        }

    async def _image(self, item: Media) -> dict[str, Any]:
        assert item.data is not None
        image: dict[str, Any] = {"alt": item.alt, "image": await self._blob(item.data)}
        size = image_size(item.data)
        if size is not None:
            image["aspectRatio"] = {"width": size[0], "height": size[1]}
        return image
