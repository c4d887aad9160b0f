"""Bluesky: posting over XRPC with record keys chosen before the call.

A post's record key (a TID) is generated and stored before `createRecord`; a retry after a crash first
asks `getRecord` whether that key already landed, so a post is never created twice. The login session is
kept in the store and refreshed, because `createSession` is strictly rate-limited.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from relaybird import richtext
from relaybird.config import BlueskyAccount
from relaybird.media import MediaPolicy, image_size
from relaybird.model import LinkCard, Media, Post, TargetRef
from relaybird.networks.base import (
    Capabilities,
    DeliveryError,
    EventSink,
    MentionSink,
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.networks.bluesky_format import (
    BLUESKY_MAX_GRAPHEMES,
    PayloadError,
    measure_bluesky,
    post_to_record_text,
    profile_url,
    record_to_post,
    split_at_uri,
)
from relaybird.networks.xrpc import Refused, Session, Unavailable, XrpcClient
from relaybird.richtext import as_dict, as_text
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


def unreadable(name: str, nsid: str) -> TemporaryError:
    """A temporary error for an answer that could not be read: a proxy or overloaded server."""
    return Unavailable(f"{name}: {nsid}: unreadable answer from Bluesky")


def _text(answer: dict[str, Any], key: str) -> str | None:
    value = answer.get(key)
    return value if isinstance(value, str) and value else None


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
        self.client = XrpcClient(
            self.base_url, label=self.name, on_session=self._session_changed, relogin=self._login
        )
        self.tids = TidClock()
        self.did = ""

    def _session_changed(self, session: Session) -> None:
        self.store.set_session(self.name, session.export())

    async def open(self) -> None:
        """Resume the stored session when it still works; log in with the password only otherwise.

        A stored session is checked with `getSession` (which refreshes it when its access token
        has expired); one that cannot be read, or that the server no longer accepts, costs a login.
        """
        saved = self.store.session(self.name)
        session = Session.parse(saved) if saved else None
        if saved and session is None:
            log.info("%s: stored session unreadable; logging in", self.name)
        if session is not None:
            self.client.resume(session)
            try:
                await self.client.query("com.atproto.server.getSession")
            except (Refused, Unavailable, RateLimited) as error:
                log.info(
                    "%s: stored session no longer valid (%s); logging in",
                    self.name,
                    type(error).__name__,
                )
            else:
                self.did = self.client.did
                log.info("%s: resumed the stored Bluesky session", self.name)
                return
        await self._login()
        self.did = self.client.did

    async def _login(self) -> Session:
        """`createSession` with the app password, its refusals in words an operator can act on."""
        try:
            return await self.client.login(self.handle, self._password)
        except RateLimited as error:
            raise TemporaryError(f"{self.name}: Bluesky login is rate limited") from error
        except Refused as error:
            if error.status in (401, 403):
                raise PermanentError(
                    f"{self.name}: Bluesky refused the handle or app password"
                ) from error
            if error.status == 400:
                raise PermanentError(
                    f"{self.name}: Bluesky refused the login ({error.reason})"
                ) from error
            raise TemporaryError(f"{self.name}: Bluesky login failed ({error.reason})") from error
        except Unavailable as error:
            raise TemporaryError(f"{self.name}: Bluesky login failed ({error})") from error

    async def close(self) -> None:
        await self.client.close()

    def pds_url(self) -> str:
        """The account's own PDS (the session's DID document names it after login)."""
        return self.client.url or self.base_url

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

    # --- reading ----------------------------------------------------------------------------------

    async def get_record(self, repo: str, collection: str, rkey: str) -> dict[str, Any]:
        """`getRecord` of any repo: `{uri, cid, value}` as the server answers it."""
        return await self.client.query(
            "com.atproto.repo.getRecord", {"repo": repo, "collection": collection, "rkey": rkey}
        )

    async def get_profile(self, actor: str) -> dict[str, Any]:
        """`app.bsky.actor.getProfile`, which the PDS proxies to its AppView."""
        return await self.client.query("app.bsky.actor.getProfile", {"actor": actor})

    # --- other people's posts ---------------------------------------------------------------------

    def mention_names(self) -> list[str]:
        return [name for name in (self.handle, self.did) if name]

    async def reply_target(self, post_id: str) -> ReplyTarget:
        """A Bluesky reply names its parent and its thread's root, each by uri and cid."""
        try:
            found = await self.get_record(*split_at_uri(post_id))
        except RateLimited:
            raise
        except DeliveryError as error:
            raise TemporaryError(
                f"{self.name}: cannot read {post_id}: {type(error).__name__}"
            ) from error
        parent = TargetRef(id=as_text(found.get("uri")) or post_id, cid=as_text(found.get("cid")))
        reply = as_dict(as_dict(found.get("value")).get("reply"))
        root = as_dict(reply.get("root"))
        if not as_text(root.get("uri")):
            return ReplyTarget(parent=parent, root=parent)
        return ReplyTarget(
            parent=parent,
            root=TargetRef(id=as_text(root.get("uri")), cid=as_text(root.get("cid"))),
        )

    async def fetch_post(self, post_id: str) -> Post | None:
        """Someone's post with its author's profile. Its media live on their PDS, which is not
        among the hosts media are fetched from: the permalink stays the way to them."""
        try:
            repo, collection, rkey = split_at_uri(post_id)
            found = await self.get_record(repo, collection, rkey)
            record = found.get("value")
            if not isinstance(record, dict):
                raise PayloadError(f"{post_id} has no record")
            handle, name = await self._profile_names(repo)
            post = record_to_post(post_id, as_text(found.get("cid")), record, handle)
        except (DeliveryError, PayloadError) as error:
            log.warning("%s: cannot read %s (%s)", self.name, post_id, error)
            return None
        if post.author is not None:
            author = replace(post.author, id=repo, display_name=name, url=profile_url(handle))
            post = replace(post, author=author)
        return replace(post, media=[], card=replace(post.card, thumb=None) if post.card else None)

    async def _profile_names(self, actor: str) -> tuple[str, str]:
        """The handle and display name to show for `actor`; its DID when the AppView is away."""
        try:
            profile = await self.get_profile(actor)
        except DeliveryError:
            return actor, ""
        return as_text(profile.get("handle")) or actor, as_text(profile.get("displayName"))

    async def listen_mentions(self, cursor: str | None, sink: MentionSink) -> None:
        from relaybird.networks.bluesky_notifications import BlueskyNotifications

        listener = BlueskyNotifications(
            self.name,
            self.client,
            self.did,
            self.handle,
            poll_interval=float(self.account.notifications_poll_interval),
            pds_url=self.pds_url(),
        )
        await listener.run(cursor, sink)

    # --- writing ----------------------------------------------------------------------------------

    async def edit(self, ref: TargetRef, post: Post) -> TargetRef:
        raise PermanentError(f"{self.name}: Bluesky posts cannot be edited")

    async def delete(self, ref: TargetRef) -> None:
        rkey = ref.id.rsplit("/", 1)[-1]
        try:
            await self.client.procedure(
                "com.atproto.repo.deleteRecord",
                {"repo": self.did, "collection": POST_COLLECTION, "rkey": rkey},
            )
        except Refused as error:
            raise PermanentError(f"{self.name}: delete refused ({error.reason})") from error

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
            answer = await self.client.procedure(
                "com.atproto.repo.createRecord",
                {"repo": self.did, "collection": POST_COLLECTION, "rkey": key, "record": record},
            )
        except Refused as error:
            if error.status in (401, 403):
                raise PermanentError(
                    f"{self.name}: Bluesky refused our session ({error.reason})"
                ) from error
            raise PermanentError(
                f"{self.name}: Bluesky refused the post ({error.reason})"
            ) from error
        uri, cid = _text(answer, "uri"), _text(answer, "cid")
        if uri is None or cid is None:
            raise unreadable(self.name, "com.atproto.repo.createRecord")
        return self._ref(uri, cid)

    def _ref(self, uri: str, cid: str) -> TargetRef:
        rkey = uri.rsplit("/", 1)[-1]
        url = f"https://bsky.app/profile/{self.handle}/post/{rkey}"
        return TargetRef(id=uri, url=url, cid=cid)

    async def _existing(self, rkey: str) -> TargetRef | None:
        try:
            found = await self.get_record(self.did, POST_COLLECTION, rkey)
        except Refused as error:
            if error.status == 400:
                return None
            raise
        uri, cid = _text(found, "uri"), _text(found, "cid")
        if uri is None or cid is None:
            return None
        return self._ref(uri, cid)

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
            external["thumb"] = await self._blob(card.thumb.data, card.thumb.mime)
        return {"$type": "app.bsky.embed.external", "external": external}

    async def _blob(self, data: bytes, mime: str = "") -> dict[str, Any]:
        """Upload one blob; the PDS reads its type from the bytes, the header is a hint."""
        nsid = "com.atproto.repo.uploadBlob"
        answer = await self.client.procedure(nsid, data, content_type=mime or "*/*")
        blob = answer.get("blob")
        if not isinstance(blob, dict):
            raise unreadable(self.name, nsid)
        ref = blob.get("ref")
        link = ref.get("$link") if isinstance(ref, dict) else blob.get("cid")
        mime_type, size = blob.get("mimeType"), blob.get("size")
        if not isinstance(link, str) or not isinstance(mime_type, str) or not isinstance(size, int):
            raise unreadable(self.name, nsid)
        return {"$type": "blob", "ref": {"$link": link}, "mimeType": mime_type, "size": size}

    async def _image(self, item: Media) -> dict[str, Any]:
        assert item.data is not None
        image: dict[str, Any] = {"alt": item.alt, "image": await self._blob(item.data, item.mime)}
        size = image_size(item.data)
        if size is not None:
            image["aspectRatio"] = {"width": size[0], "height": size[1]}
        return image
