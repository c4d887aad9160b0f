"""The JSON entities of the Mastodon API, built from the sandbox's records.

Shapes follow the Mastodon OpenAPI component schemas (Status, Account, CredentialAccount,
MediaAttachment, Notification, Instance, ...). Fields that depend on who is asking (`favourited`,
`reblogged`, `pinned`, ...) appear only for an authenticated viewer, as on a real server.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from relaybird.sandbox.mastodon_store import (
    SUPPORTED_MIME_TYPES,
    SandboxAccount,
    SandboxStore,
    StatusVersion,
    StoredMedia,
    StoredNotification,
    StoredStatus,
)

Json = dict[str, Any]
MASTODON_VERSION = "4.5.0"
MASTODON_API_VERSION = 6
APPLICATION_NAME = "relaybird sandbox"
DEFAULT_AVATAR = "/avatars/original/missing.png"
DEFAULT_HEADER = "/headers/original/missing.png"
THUMBNAIL = "/packs/media/images/preview.png"
STATIC_IMAGES = (DEFAULT_AVATAR, DEFAULT_HEADER, THUMBNAIL)


def timestamp(moment: datetime) -> str:
    """Mastodon's timestamps: UTC with milliseconds, `2019-11-23T19:44:00.124Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Entities:
    """Serializes records for one sandbox (its URLs, limits and relations)."""

    def __init__(self, store: SandboxStore, title: str = "Mastodon sandbox") -> None:
        self.store = store
        self.site = store.site
        self.title = title
        self.cards: dict[str, Json] = {}
        #: Seconds after a status is created before its card is there (see `register_card`).
        self.card_delays: dict[str, float] = {}

    def card_for(self, text: str, created_at: datetime | None = None) -> Json | None:
        """The preview card of the first link the server has fetched one for, as Mastodon shows it:
        only once the fetch after the status's creation is done."""
        age = (datetime.now(UTC) - created_at).total_seconds() if created_at else math.inf
        for url, card in self.cards.items():
            if url in text:
                return card if age >= self.card_delays.get(url, 0.0) else None
        return None

    # accounts

    def account(self, account: SandboxAccount) -> Json:
        statuses = self.store.live_statuses_of(account.id)
        last = max((s.created_at for s in statuses), default=None)
        created = account.created_at.replace(hour=0, minute=0, second=0, microsecond=0)
        return {
            "id": account.id,
            "username": account.username,
            "acct": account.acct,
            "display_name": account.display_name,
            "locked": False,
            "bot": False,
            "discoverable": True,
            "indexable": False,
            "group": False,
            "created_at": timestamp(created),
            "note": "",
            "url": account.url,
            "uri": account.uri,
            "avatar": self.site.url(DEFAULT_AVATAR),
            "avatar_static": self.site.url(DEFAULT_AVATAR),
            "avatar_description": "",
            "header": self.site.url(DEFAULT_HEADER),
            "header_static": self.site.url(DEFAULT_HEADER),
            "header_description": "",
            "followers_count": len(self.store.followers_of(account.id)),
            "following_count": len(self.store.following_of(account.id)),
            "statuses_count": len(statuses),
            "last_status_at": last.strftime("%Y-%m-%d") if last else None,
            "hide_collections": False,
            "noindex": False,
            "emojis": [],
            "roles": [],
            "fields": [],
        }

    def credential_account(self, account: SandboxAccount) -> Json:
        entity = self.account(account)
        entity["source"] = {
            "privacy": "public",
            "sensitive": False,
            "language": None,
            "note": "",
            "fields": [],
            "follow_requests_count": 0,
            "hide_collections": False,
            "discoverable": True,
            "indexable": False,
            "attribution_domains": [],
            "quote_policy": "public",
        }
        entity["role"] = {
            "id": "-99",
            "name": "",
            "permissions": "0",
            "color": "",
            "highlighted": False,
        }
        return entity

    def relationship(self, viewer: SandboxAccount, other: SandboxAccount) -> Json:
        return {
            "id": other.id,
            "following": (viewer.id, other.id) in self.store.follows,
            "showing_reblogs": True,
            "notifying": False,
            "languages": None,
            "followed_by": (other.id, viewer.id) in self.store.follows,
            "blocking": False,
            "blocked_by": False,
            "muting": False,
            "muting_notifications": False,
            "requested": False,
            "requested_by": False,
            "domain_blocking": False,
            "endorsed": False,
            "note": "",
        }

    # statuses

    def status(
        self, status: StoredStatus, viewer: SandboxAccount | None, *, with_source: bool = False
    ) -> Json:
        author = self.store.accounts[status.account_id]
        original = self.store.statuses[status.reblog_of_id] if status.reblog_of_id else None
        entity: Json = {
            "id": status.id,
            "created_at": timestamp(status.created_at),
            "in_reply_to_id": status.in_reply_to_id,
            "in_reply_to_account_id": status.in_reply_to_account_id,
            "sensitive": status.sensitive,
            "spoiler_text": status.spoiler_text,
            "visibility": status.visibility,
            "language": status.language,
            "uri": self._status_uri(author, status),
            "url": self._status_url(author, status),
            "replies_count": self.store.count_replies(status.id),
            "reblogs_count": self.store.count_reblogs(status.id),
            "favourites_count": 0,
            "quotes_count": 0,
            "edited_at": timestamp(status.edited_at) if status.edited_at else None,
            "content": status.content,
            "reblog": self.status(original, viewer) if original else None,
            "application": None if original else {"name": APPLICATION_NAME, "website": None},
            "account": self.account(author),
            "media_attachments": [self.media(self.store.media[i]) for i in status.media_ids],
            "mentions": [self._mention(self.store.accounts[i]) for i in status.mention_ids],
            "tags": [{"name": t, "url": self.site.url(f"/tags/{t}")} for t in status.tags],
            "emojis": [],
            "quote": None,
            "quote_approval": self._quote_approval(status),
            "card": None
            if original or status.media_ids
            else self.card_for(status.text, status.created_at),
            "poll": None,
        }
        if viewer is not None:
            entity.update(self._viewer_flags(status, viewer))
        if with_source:
            entity["text"] = status.text
        return entity

    def _viewer_flags(self, status: StoredStatus, viewer: SandboxAccount) -> Json:
        flags: Json = {
            "favourited": False,
            "reblogged": self.store.reblog_by(viewer.id, status.id) is not None,
            "muted": False,
            "bookmarked": False,
            "filtered": [],
        }
        pinnable = status.reblog_of_id is None and status.visibility != "direct"
        if status.account_id == viewer.id and pinnable:
            flags["pinned"] = False
        return flags

    def _quote_approval(self, status: StoredStatus) -> Json:
        public = status.visibility in ("public", "unlisted") and status.reblog_of_id is None
        return {
            "automatic": ["public"] if public else [],
            "manual": [],
            "current_user": "automatic" if public else "denied",
        }

    def _status_uri(self, author: SandboxAccount, status: StoredStatus) -> str:
        path = f"/users/{author.username}/statuses/{status.id}"
        return self.site.url(path + ("/activity" if status.reblog_of_id else ""))

    def _status_url(self, author: SandboxAccount, status: StoredStatus) -> str:
        if status.reblog_of_id:
            return self._status_uri(author, status)
        return self.site.url(f"/@{author.username}/{status.id}")

    def _mention(self, account: SandboxAccount) -> Json:
        return {
            "id": account.id,
            "username": account.username,
            "url": account.url,
            "acct": account.acct,
        }

    def source(self, status: StoredStatus) -> Json:
        return {"id": status.id, "text": status.text, "spoiler_text": status.spoiler_text}

    def history(self, status: StoredStatus) -> list[Json]:
        author = self.account(self.store.accounts[status.account_id])
        return [self._version(version, author) for version in status.versions]

    def _version(self, version: StatusVersion, author: Json) -> Json:
        return {
            "content": version.content,
            "spoiler_text": version.spoiler_text,
            "sensitive": version.sensitive,
            "created_at": timestamp(version.created_at),
            "account": author,
            "poll": None,
            "media_attachments": [
                self.media(self.store.media[i]) for i in version.media_ids if i in self.store.media
            ],
            "emojis": [],
        }

    # media

    def media_path(self, item: StoredMedia, style: str) -> str:
        return f"/system/media_attachments/files/{item.id}/{style}/{item.file_name}"

    def media(self, item: StoredMedia) -> Json:
        meta: Json | None = None
        if item.ready:
            meta = {}
            if item.width and item.height:
                meta["original"] = _dimensions(item.width, item.height)
            if item.preview_size:
                meta["small"] = _dimensions(*item.preview_size)
            if item.focus is not None:
                meta["focus"] = {"x": item.focus[0], "y": item.focus[1]}
        elif item.focus is not None:
            meta = {"focus": {"x": item.focus[0], "y": item.focus[1]}}
        return {
            "id": item.id,
            "type": item.kind,
            "url": self.site.url(self.media_path(item, "original")) if item.ready else None,
            "preview_url": (
                self.site.url(self.media_path(item, "small"))
                if item.ready and item.preview is not None
                else None
            ),
            "remote_url": None,
            "preview_remote_url": None,
            "text_url": None,
            "meta": meta,
            "description": item.description,
            "blurhash": None,
        }

    # notifications

    def notification(self, notification: StoredNotification, viewer: SandboxAccount) -> Json:
        status = self.store.statuses.get(notification.status_id or "")
        return {
            "id": notification.id,
            "type": notification.type,
            "group_key": f"ungrouped-{notification.id}",
            "created_at": timestamp(notification.created_at),
            "account": self.account(self.store.accounts[notification.from_account_id]),
            "status": self.status(status, viewer) if status is not None else None,
        }

    # instance

    def _configuration_limits(self) -> Json:
        limits = self.store.limits
        return {
            "statuses": {
                "max_characters": limits.max_characters,
                "max_media_attachments": limits.max_media_attachments,
                "characters_reserved_per_url": limits.characters_reserved_per_url,
            },
            "media_attachments": {
                "supported_mime_types": list(SUPPORTED_MIME_TYPES),
                "description_limit": limits.description_limit,
                "image_size_limit": limits.image_size_limit,
                "image_matrix_limit": limits.image_matrix_limit,
                "video_size_limit": limits.video_size_limit,
                "video_frame_rate_limit": limits.video_frame_rate_limit,
                "video_matrix_limit": limits.video_matrix_limit,
            },
            "polls": {
                "max_options": 4,
                "max_characters_per_option": 50,
                "min_expiration": 300,
                "max_expiration": 2629746,
            },
        }

    def streaming_url(self) -> str:
        return "ws" + self.site.url("").removeprefix("http")

    def instance_v1(self) -> Json:
        configuration = self._configuration_limits()
        configuration["accounts"] = {"max_featured_tags": 10}
        local = [a for a in self.store.accounts.values() if a.local]
        return {
            "uri": self.site.domain,
            "title": self.title,
            "short_description": "A local stand-in for a Mastodon server.",
            "description": "",
            "email": f"admin@{self.site.domain}",
            "version": MASTODON_VERSION,
            "urls": {"streaming_api": self.streaming_url()},
            "stats": {
                "user_count": len(local),
                "status_count": sum(1 for s in self.store.statuses.values() if not s.deleted),
                "domain_count": len({a.domain for a in self.store.accounts.values() if a.domain}),
            },
            "thumbnail": self.site.url(THUMBNAIL),
            "languages": ["en"],
            "registrations": False,
            "approval_required": False,
            "invites_enabled": False,
            "configuration": configuration,
            "contact_account": None,
            "rules": [],
        }

    def instance_v2(self) -> Json:
        configuration = self._configuration_limits()
        configuration.update(
            {
                "urls": {
                    "streaming": self.streaming_url(),
                    "status": None,
                    "about": self.site.url("/about"),
                    "privacy_policy": self.site.url("/privacy-policy"),
                    "terms_of_service": None,
                },
                "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
                "translation": {"enabled": False},
                "limited_federation": False,
                "timelines_access": {
                    "live_feeds": {"local": "public", "remote": "public"},
                    "hashtag_feeds": {"local": "public", "remote": "public"},
                    "trending_link_feeds": {"local": "public", "remote": "public"},
                },
            }
        )
        active = sum(1 for a in self.store.accounts.values() if a.local)
        return {
            "domain": self.site.domain,
            "title": self.title,
            "version": MASTODON_VERSION,
            "source_url": "https://github.com/mastodon/mastodon",
            "description": "A local stand-in for a Mastodon server.",
            "usage": {"users": {"active_month": active}},
            "thumbnail": {"url": self.site.url(THUMBNAIL), "blurhash": None, "versions": None},
            "icon": [],
            "languages": ["en"],
            "configuration": configuration,
            "registrations": {
                "enabled": False,
                "approval_required": False,
                "reason_required": False,
                "message": None,
                "min_age": None,
                "url": None,
            },
            "api_versions": {"mastodon": MASTODON_API_VERSION},
            "contact": {"email": f"admin@{self.site.domain}", "account": None},
            "rules": [],
        }


def _dimensions(width: int, height: int) -> Json:
    return {
        "width": width,
        "height": height,
        "size": f"{width}x{height}",
        "aspect": width / height,
    }
