"""Each network seen from a test: how a person posts there, and what a copy there looks like.

The end-to-end matrix drives every ordered pair of networks through these, so that one scenario is
written once and checked the same way at every target server.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from atproto import Client
from bs4 import BeautifulSoup
from harness import LoopThread
from mastodon import Mastodon
from PIL import Image
from realpds import RealPds

from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.telegram import TelegramSandbox


def small_png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (64, 48), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Link:
    shown: str
    target: str


@dataclass
class Copy:
    """One post as the target server stored it, in a shape every scenario can assert on."""

    id: str
    text: str
    links: list[Link] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    reply_to: str | None = None
    alts: list[str] = field(default_factory=list)
    spoiler_text: str = ""
    spoiler_ranges: list[str] = field(default_factory=list)


class Side(Protocol):
    network: str
    name: str
    limit: int

    def account_toml(self) -> str: ...

    def env(self) -> dict[str, str]: ...

    def post(
        self,
        text: str,
        *,
        reply_to: str | None = None,
        images: list[tuple[bytes, str]] | None = None,
        cw: str = "",
        link: str = "",
        tag: str = "",
    ) -> str: ...

    def mention_text(self) -> tuple[str, str]: ...

    def edit(self, post_id: str, text: str) -> None: ...

    def delete(self, post_id: str) -> None: ...

    def copies(self) -> list[Copy]: ...


class MastodonSide:
    network = "mastodon"
    limit = 500

    def __init__(
        self, loop: LoopThread, sandbox: MastodonSandbox, name: str, username: str
    ) -> None:
        self.loop, self.sandbox, self.name = loop, sandbox, name
        self.account = loop.call(sandbox.create_account, username)
        self.username = username
        self.client = Mastodon(
            api_base_url=sandbox.base_url,
            access_token=self.account.token,
            version_check_mode="none",
        )

    def account_toml(self) -> str:
        return (
            f'[accounts.{self.name}]\nnetwork = "mastodon"\nbase_url = "{self.sandbox.base_url}"\n'
            f'access_token = "${{{self.name.upper()}_TOKEN}}"\n'
        )

    def env(self) -> dict[str, str]:
        return {f"{self.name.upper()}_TOKEN": self.account.token}

    def mention_text(self) -> tuple[str, str]:
        return "@friend@other.example", "friend"

    def post(
        self,
        text: str,
        *,
        reply_to: str | None = None,
        images: list[tuple[bytes, str]] | None = None,
        cw: str = "",
        link: str = "",
        tag: str = "",
    ) -> str:
        media_ids = [
            self.client.media_post(data, mime_type="image/png", description=alt, synchronous=True)[
                "id"
            ]
            for data, alt in images or []
        ]
        status = self.client.status_post(
            text, in_reply_to_id=reply_to, media_ids=media_ids or None, spoiler_text=cw or None
        )
        return str(status["id"])

    def edit(self, post_id: str, text: str) -> None:
        self.client.status_update(post_id, text)

    def delete(self, post_id: str) -> None:
        self.client.status_delete(post_id)

    def copies(self) -> list[Copy]:
        found = []
        for status in self.loop.call(self.sandbox.statuses_of, self.username):
            soup = BeautifulSoup(status["content"], "html.parser")
            links = [
                Link(a.get_text(), str(a["href"]))
                for a in soup.find_all("a")
                if "hashtag" not in (a.get("class") or [])
            ]
            found.append(
                Copy(
                    id=str(status["id"]),
                    text=self.loop.call(self.sandbox.source_text, status["id"]),
                    links=links,
                    tags=[t["name"].lower() for t in status["tags"]],
                    reply_to=status["in_reply_to_id"],
                    alts=[m["description"] or "" for m in status["media_attachments"]],
                    spoiler_text=status["spoiler_text"],
                )
            )
        return found


def utf8_slice(text: str, start: int, end: int) -> str:
    return text.encode()[start:end].decode()


class BlueskySide:
    network = "bluesky"
    limit = 300

    def __init__(self, pds: RealPds, name: str, prefix: str, stream: str = "firehose") -> None:
        self.pds, self.name, self.stream = pds, name, stream
        self.did, self.handle, self.password = pds.create_account(prefix)
        self.client = Client(base_url=pds.url)
        self.client.login(self.handle, self.password, fetch_bsky_profile=False)
        friend_did, friend_handle, _ = pds.create_account("friend")
        self.friend = (friend_did, friend_handle)

    def account_toml(self) -> str:
        return (
            f'[accounts.{self.name}]\nnetwork = "bluesky"\nbase_url = "{self.pds.url}"\n'
            f'handle = "{self.handle}"\napp_password = "${{{self.name.upper()}_PASSWORD}}"\n'
            f'stream = "{self.stream}"\n'
        )

    def env(self) -> dict[str, str]:
        return {f"{self.name.upper()}_PASSWORD": self.password}

    def mention_text(self) -> tuple[str, str]:
        return f"@{self.friend[1]}", self.friend[1]

    def _facets(self, text: str, link: str, tag: str) -> list[dict[str, Any]]:
        facets = []
        data = text.encode()

        def span(part: str) -> dict[str, int]:
            start = data.index(part.encode())
            return {"byteStart": start, "byteEnd": start + len(part.encode())}

        if link:
            facets.append(
                {
                    "index": span(link),
                    "features": [{"$type": "app.bsky.richtext.facet#link", "uri": link}],
                }
            )
        if tag:
            facets.append(
                {
                    "index": span(f"#{tag}"),
                    "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": tag}],
                }
            )
        mention = f"@{self.friend[1]}"
        if mention in text:
            facets.append(
                {
                    "index": span(mention),
                    "features": [
                        {"$type": "app.bsky.richtext.facet#mention", "did": self.friend[0]}
                    ],
                }
            )
        return facets

    def _record(self, post_id: str) -> Any:
        rkey = post_id.rsplit("/", 1)[-1]
        return self.client.com.atproto.repo.get_record(
            {"repo": self.did, "collection": "app.bsky.feed.post", "rkey": rkey}
        )

    def post(
        self,
        text: str,
        *,
        reply_to: str | None = None,
        images: list[tuple[bytes, str]] | None = None,
        cw: str = "",
        link: str = "",
        tag: str = "",
    ) -> str:
        if cw:
            text = f"CW: {cw}\n\n{text}"
        record: dict[str, Any] = {
            "$type": "app.bsky.feed.post",
            "text": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "facets": self._facets(text, link, tag),
        }
        if reply_to:
            parent = self._record(reply_to)
            root = parent.value.reply.root if parent.value.reply else parent
            record["reply"] = {
                "root": {"uri": root.uri, "cid": root.cid},
                "parent": {"uri": parent.uri, "cid": parent.cid},
            }
        if images:
            blobs = [self.client.upload_blob(data).blob for data, _ in images]
            record["embed"] = {
                "$type": "app.bsky.embed.images",
                "images": [
                    {"alt": alt, "image": blob.model_dump(by_alias=True)}
                    for blob, (_, alt) in zip(blobs, images, strict=True)
                ],
            }
        created = self.client.com.atproto.repo.create_record(
            {"repo": self.did, "collection": "app.bsky.feed.post", "record": record}
        )
        return str(created.uri)

    def edit(self, post_id: str, text: str) -> None:
        current = self._record(post_id)
        record = current.value.model_dump(by_alias=True, exclude_none=True)
        record["text"] = text
        record["facets"] = []
        self.client.com.atproto.repo.put_record(
            {
                "repo": self.did,
                "collection": "app.bsky.feed.post",
                "rkey": post_id.rsplit("/", 1)[-1],
                "record": record,
            }
        )

    def delete(self, post_id: str) -> None:
        self.client.com.atproto.repo.delete_record(
            {
                "repo": self.did,
                "collection": "app.bsky.feed.post",
                "rkey": post_id.rsplit("/", 1)[-1],
            }
        )

    def copies(self) -> list[Copy]:
        answer = self.client.com.atproto.repo.list_records(
            {"repo": self.did, "collection": "app.bsky.feed.post", "limit": 100}
        )
        found = []
        for record in sorted(answer.records, key=lambda r: r.uri.rsplit("/", 1)[-1]):
            value = record.value
            links, tags = [], []
            for facet in value.facets or []:
                shown = utf8_slice(value.text, facet.index.byte_start, facet.index.byte_end)
                for feature in facet.features:
                    if hasattr(feature, "uri"):
                        links.append(Link(shown, feature.uri))
                    elif hasattr(feature, "did"):
                        links.append(Link(shown, feature.did))
                    elif hasattr(feature, "tag"):
                        tags.append(feature.tag.lower())
            embed = value.embed
            alts = (
                [image.alt for image in embed.images]
                if embed is not None and hasattr(embed, "images")
                else []
            )
            found.append(
                Copy(
                    id=record.uri,
                    text=value.text,
                    links=links,
                    tags=tags,
                    reply_to=value.reply.parent.uri if value.reply else None,
                    alts=alts,
                )
            )
        return found


def utf16_slice(text: str, offset: int, length: int) -> str:
    return text.encode("utf-16-le")[offset * 2 : (offset + length) * 2].decode("utf-16-le")


class TelegramSide:
    network = "telegram"
    limit = 4096

    def __init__(self, loop: LoopThread, sandbox: TelegramSandbox, name: str, channel: str) -> None:
        self.loop, self.sandbox, self.name = loop, sandbox, name
        self.bot = loop.call(sandbox.create_bot, f"{name}_bot")
        self.channel = f"@{channel}"
        self.chat = loop.call(sandbox.create_channel, channel, channel.title(), [self.bot.id])
        self._groups = 0

    def account_toml(self) -> str:
        return (
            f'[accounts.{self.name}]\nnetwork = "telegram"\nbase_url = "{self.sandbox.root_url}"\n'
            f'bot_token = "${{{self.name.upper()}_TOKEN}}"\nchat = "{self.channel}"\npoll_timeout = 1\n'
        )

    def env(self) -> dict[str, str]:
        return {f"{self.name.upper()}_TOKEN": self.bot.token}

    def mention_text(self) -> tuple[str, str]:
        return "@friend_user", "friend_user"

    def post(
        self,
        text: str,
        *,
        reply_to: str | None = None,
        images: list[tuple[bytes, str]] | None = None,
        cw: str = "",
        link: str = "",
        tag: str = "",
    ) -> str:
        entities: list[dict[str, Any]] = []
        if cw:
            body = text
            text = f"CW: {cw}\n\n{body}"
            start = len(f"CW: {cw}\n\n".encode("utf-16-le")) // 2
            entities.append(
                {"type": "spoiler", "offset": start, "length": len(body.encode("utf-16-le")) // 2}
            )
        reply = int(reply_to.rsplit(":", 1)[1]) if reply_to else None
        if images and len(images) > 1:
            self._groups += 1
            group = f"album{self._groups}"
            first = None
            for index, (data, _) in enumerate(images):
                message = self.loop.call(
                    lambda d=data, i=index: self.sandbox.post_as_user(
                        self.channel,
                        None,
                        photo=d,
                        caption=text if i == 0 else "",
                        media_group_id=group,
                        reply_to=reply,
                    )
                )
                first = first or message
            assert first is not None
            return f"{first['chat']['id']}:{first['message_id']}"
        if images:
            message = self.loop.call(
                lambda: self.sandbox.post_as_user(
                    self.channel, None, photo=images[0][0], caption=text, reply_to=reply
                )
            )
        else:
            message = self.loop.call(
                lambda: self.sandbox.post_as_user(
                    self.channel, None, text, entities=entities or None, reply_to=reply
                )
            )
        return f"{message['chat']['id']}:{message['message_id']}"

    def edit(self, post_id: str, text: str) -> None:
        self.loop.call(
            self.sandbox.edit_as_user, self.channel, int(post_id.rsplit(":", 1)[1]), text
        )

    def delete(self, post_id: str) -> None:
        self.loop.call(self.sandbox.delete_as_user, self.channel, int(post_id.rsplit(":", 1)[1]))

    def copies(self) -> list[Copy]:
        found: list[Copy] = []
        albums: dict[str, Copy] = {}
        for message in self.loop.call(self.sandbox.messages_in, self.channel):
            text = message.get("text") or message.get("caption") or ""
            entities = message.get("entities") or message.get("caption_entities") or []
            links, tags, spoilers = [], [], []
            for entity in entities:
                shown = utf16_slice(text, entity["offset"], entity["length"])
                if entity["type"] == "text_link":
                    links.append(Link(shown, entity["url"]))
                elif entity["type"] == "url":
                    links.append(Link(shown, shown))
                elif entity["type"] == "mention":
                    links.append(Link(shown, f"https://t.me/{shown.lstrip('@')}"))
                elif entity["type"] == "hashtag":
                    tags.append(shown.lstrip("#").lower())
                elif entity["type"] == "spoiler":
                    spoilers.append(shown)
            group = message.get("media_group_id")
            if group and group in albums:
                albums[group].alts.append("")
                if text:
                    albums[group].text = text
                continue
            copy = Copy(
                id=f"{message['chat']['id']}:{message['message_id']}",
                text=text,
                links=links,
                tags=tags,
                reply_to=(
                    f"{message['chat']['id']}:{message['reply_to_message']['message_id']}"
                    if message.get("reply_to_message")
                    else None
                ),
                alts=[""] if message.get("photo") else [],
                spoiler_ranges=spoilers,
            )
            if group:
                albums[group] = copy
            found.append(copy)
        return found
