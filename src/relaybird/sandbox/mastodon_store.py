"""The sandbox's data and the rules a real Mastodon server applies when it changes.

This module knows nothing about HTTP: handlers call it and turn `ApiError` into JSON error bodies.
What other parts must learn about (a new status, an edit, a deletion, a notification) is reported to
an `EventSink`, which the server implements by pushing streaming events.
"""

from __future__ import annotations

import io
import mimetypes
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import regex
from PIL import Image, ImageSequence, UnidentifiedImageError

from relaybird.sandbox import mastodon_text as text_rules

VISIBILITIES = ("public", "unlisted", "private", "direct")
IDEMPOTENCY_SECONDS = 3600.0
PREVIEW_PIXELS = 230_400
SUPPORTED_MIME_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/heic",
    "image/heif",
    "image/webp",
    "image/avif",
    "video/webm",
    "video/mp4",
    "video/quicktime",
    "video/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wave",
    "audio/vnd.wave",
    "audio/ogg",
    "audio/vorbis",
    "audio/mpeg",
    "audio/mp3",
    "audio/webm",
    "audio/flac",
    "audio/aac",
    "audio/m4a",
    "audio/x-m4a",
    "audio/mp4",
    "audio/3gpp",
    "video/x-ms-asf",
)
_LANGUAGE = regex.compile(r"\A[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?\Z")


class ApiError(Exception):
    """A refusal the API reports as `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found() -> ApiError:
    return ApiError(404, "Record not found")


def forbidden() -> ApiError:
    return ApiError(403, "This action is not allowed")


@dataclass
class Site:
    """Where the sandbox is reachable; filled in when the server starts listening."""

    domain: str
    base_url: str = ""

    def url(self, path: str) -> str:
        if not self.base_url:
            raise RuntimeError("the Mastodon sandbox has not been started yet")
        return self.base_url + path


@dataclass(frozen=True)
class Limits:
    max_characters: int = 500
    max_media_attachments: int = 4
    characters_reserved_per_url: int = text_rules.URL_PLACEHOLDER_LENGTH
    image_size_limit: int = 16 * 1024 * 1024
    video_size_limit: int = 99 * 1024 * 1024
    description_limit: int = 1500
    image_matrix_limit: int = 33_177_600
    video_matrix_limit: int = 8_294_400
    video_frame_rate_limit: int = 120


class SnowflakeIds:
    """Mastodon-style ids: milliseconds shifted left 16 bits plus a sequence, always increasing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        candidate = (int(time.time() * 1000) << 16) | secrets.randbelow(1 << 10)
        self._last = max(candidate, self._last + 1)
        return str(self._last)


@dataclass(eq=False)
class SandboxAccount:
    """An account of the sandbox; remote accounts (seen in mentions) have no token."""

    id: str
    username: str
    token: str
    site: Site = field(repr=False)
    display_name: str = ""
    domain: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def acct(self) -> str:
        return self.username if self.domain is None else f"{self.username}@{self.domain}"

    @property
    def url(self) -> str:
        if self.domain is not None:
            return f"https://{self.domain}/@{self.username}"
        return self.site.url(f"/@{self.username}")

    @property
    def uri(self) -> str:
        if self.domain is not None:
            return f"https://{self.domain}/users/{self.username}"
        return self.site.url(f"/users/{self.username}")

    @property
    def local(self) -> bool:
        return self.domain is None


@dataclass
class StoredMedia:
    id: str
    account_id: str
    data: bytes
    mime: str
    kind: str
    file_name: str
    description: str | None
    focus: tuple[float, float] | None
    width: int | None = None
    height: int | None = None
    preview: bytes | None = None
    preview_mime: str = ""
    preview_size: tuple[int, int] | None = None
    status_id: str | None = None
    ready: bool = False
    polls_before_ready: int = 0


@dataclass(frozen=True)
class StatusVersion:
    """One revision of a status, for `/history`."""

    text: str
    spoiler_text: str
    sensitive: bool
    content: str
    media_ids: tuple[str, ...]
    created_at: datetime


@dataclass
class StoredStatus:
    id: str
    account_id: str
    text: str
    spoiler_text: str
    sensitive: bool
    visibility: str
    language: str | None
    content: str
    created_at: datetime
    in_reply_to_id: str | None = None
    in_reply_to_account_id: str | None = None
    media_ids: list[str] = field(default_factory=list)
    mention_ids: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    reblog_of_id: str | None = None
    edited_at: datetime | None = None
    deleted: bool = False
    versions: list[StatusVersion] = field(default_factory=list)


@dataclass
class StoredNotification:
    id: str
    account_id: str
    from_account_id: str
    type: str
    status_id: str | None
    created_at: datetime


@dataclass
class StatusInput:
    """What a client sent to create or edit a status."""

    text: str = ""
    spoiler_text: str = ""
    sensitive: bool | None = None
    visibility: str | None = None
    language: str | None = None
    in_reply_to_id: str | None = None
    media_ids: list[str] | None = None
    media_attributes: list[dict[str, object]] = field(default_factory=list)


@dataclass
class Page:
    """A page of a newest-first listing, and whether more may follow (for the `Link` header)."""

    items: list[str]
    full: bool


class EventSink(Protocol):
    def status_created(self, status: StoredStatus) -> None: ...
    def status_edited(self, status: StoredStatus) -> None: ...
    def status_deleted(self, status: StoredStatus, audience: set[str]) -> None: ...
    def notified(self, notification: StoredNotification) -> None: ...


def paginate(
    ids_newest_first: list[str],
    *,
    max_id: str | None,
    since_id: str | None,
    min_id: str | None,
    limit: int,
) -> Page:
    """Mastodon's id-cursor pagination; `min_id` pages forward from the oldest side."""
    ids = [item for item in ids_newest_first if _within(item, max_id, since_id, min_id)]
    chosen = sorted(ids, key=int)[:limit][::-1] if min_id is not None else ids[:limit]
    return Page(chosen, len(chosen) == limit)


def _within(item: str, max_id: str | None, since_id: str | None, min_id: str | None) -> bool:
    value = int(item)
    if max_id is not None and value >= int(max_id):
        return False
    if since_id is not None and value <= int(since_id):
        return False
    return not (min_id is not None and value <= int(min_id))


def _now() -> datetime:
    return datetime.now(UTC)


def media_kind(mime: str, data: bytes) -> str:
    if mime == "image/gif" and _is_animated(data):
        return "gifv"
    major = mime.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "unknown"


def _is_animated(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return sum(1 for _ in ImageSequence.Iterator(image)) > 1
    except (UnidentifiedImageError, OSError):
        return False


class SandboxStore:
    """Accounts, statuses, media, notifications and follows, with Mastodon's validation rules."""

    def __init__(
        self,
        site: Site,
        limits: Limits,
        events: EventSink,
        *,
        media_polls_before_ready: int = 0,
        defer_image_processing: bool = True,
    ) -> None:
        self.site = site
        self.limits = limits
        self.events = events
        self.ids = SnowflakeIds()
        self.accounts: dict[str, SandboxAccount] = {}
        self.statuses: dict[str, StoredStatus] = {}
        self.media: dict[str, StoredMedia] = {}
        self.notifications: dict[str, StoredNotification] = {}
        self.follows: set[tuple[str, str]] = set()
        self.media_polls_before_ready = media_polls_before_ready
        self.defer_image_processing = defer_image_processing
        self._idempotency: dict[tuple[str, str], tuple[str, float]] = {}

    # accounts

    def create_account(self, username: str, display_name: str = "") -> SandboxAccount:
        if not regex.fullmatch(r"[a-z0-9_]+", username, regex.IGNORECASE):
            raise ValueError(f"invalid Mastodon username {username!r}: use letters, digits, _")
        if self.local_account(username) is not None:
            raise ValueError(f"the sandbox already has an account named {username!r}")
        account = SandboxAccount(
            id=self.ids.next(),
            username=username,
            token=secrets.token_urlsafe(32),
            site=self.site,
            display_name=display_name,
        )
        self.accounts[account.id] = account
        return account

    def local_account(self, username: str) -> SandboxAccount | None:
        wanted = username.lower()
        for account in self.accounts.values():
            if account.local and account.username.lower() == wanted:
                return account
        return None

    def remote_account(self, username: str, domain: str) -> SandboxAccount:
        """The record of a remote account; a real server would find it through WebFinger."""
        for account in self.accounts.values():
            if (
                account.domain is not None
                and account.domain.lower() == domain.lower()
                and account.username.lower() == username.lower()
            ):
                return account
        account = SandboxAccount(
            id=self.ids.next(), username=username, token="", site=self.site, domain=domain
        )
        self.accounts[account.id] = account
        return account

    def account_by_token(self, token: str) -> SandboxAccount | None:
        if not token:
            return None
        for account in self.accounts.values():
            if account.token and secrets.compare_digest(account.token, token):
                return account
        return None

    def account(self, account_id: str) -> SandboxAccount:
        found = self.accounts.get(account_id)
        if found is None:
            raise not_found()
        return found

    def lookup(self, acct: str) -> SandboxAccount:
        username, _, domain = acct.lstrip("@").partition("@")
        if not domain or domain.lower() == self.site.domain.lower():
            found = self.local_account(username)
        else:
            found = next(
                (
                    account
                    for account in self.accounts.values()
                    if account.domain is not None
                    and account.acct.lower() == f"{username}@{domain}".lower()
                ),
                None,
            )
        if found is None:
            raise not_found()
        return found

    def follow(self, follower_id: str, followed_id: str) -> None:
        self.account(followed_id)
        if follower_id != followed_id:
            self.follows.add((follower_id, followed_id))

    def unfollow(self, follower_id: str, followed_id: str) -> None:
        self.follows.discard((follower_id, followed_id))

    def followers_of(self, account_id: str) -> set[str]:
        return {follower for follower, followed in self.follows if followed == account_id}

    def following_of(self, account_id: str) -> set[str]:
        return {followed for follower, followed in self.follows if follower == account_id}

    def live_statuses_of(self, account_id: str) -> list[StoredStatus]:
        return [
            status
            for status in self.statuses.values()
            if status.account_id == account_id and not status.deleted
        ]

    # visibility

    def status(self, status_id: str, viewer: SandboxAccount | None) -> StoredStatus:
        found = self.statuses.get(status_id)
        if found is None or found.deleted or not self.can_see(found, viewer):
            raise not_found()
        return found

    def can_see(self, status: StoredStatus, viewer: SandboxAccount | None) -> bool:
        if status.visibility in ("public", "unlisted"):
            return True
        if viewer is None:
            return False
        if viewer.id == status.account_id or viewer.id in status.mention_ids:
            return True
        return status.visibility == "private" and (viewer.id, status.account_id) in self.follows

    def audience(self, status: StoredStatus) -> set[str]:
        """Whose home timeline (and so whose `user` stream) a status reaches."""
        reached = {status.account_id}
        if status.visibility == "direct":
            return reached | {i for i in status.mention_ids if self.accounts[i].local}
        return reached | self.followers_of(status.account_id)

    # statuses

    def create_status(
        self, author: SandboxAccount, given: StatusInput, idempotency_key: str | None
    ) -> StoredStatus:
        if idempotency_key and (earlier := self._remembered(author, idempotency_key)) is not None:
            return earlier
        parent = self._reply_parent(author, given.in_reply_to_id)
        media = self._attachable_media(author, given.media_ids or [], None)
        self._validate_text(given, has_media=bool(media))
        visibility = self._visibility(given.visibility, default="public")
        content, mention_ids, tags = self._render(given.text)
        now = _now()
        status = StoredStatus(
            id=self.ids.next(),
            account_id=author.id,
            text=given.text,
            spoiler_text=given.spoiler_text,
            sensitive=bool(given.sensitive) or bool(given.spoiler_text.strip()),
            visibility=visibility,
            language=self._language(given.language),
            content=content,
            created_at=now,
            in_reply_to_id=parent.id if parent else None,
            in_reply_to_account_id=parent.account_id if parent else None,
            media_ids=[item.id for item in media],
            mention_ids=mention_ids,
            tags=tags,
        )
        status.versions.append(self._version(status, now))
        for item in media:
            item.status_id = status.id
        self.statuses[status.id] = status
        if idempotency_key:
            self._idempotency[(author.id, idempotency_key)] = (
                status.id,
                time.monotonic() + IDEMPOTENCY_SECONDS,
            )
        self.events.status_created(status)
        for mentioned in mention_ids:
            if mentioned != author.id and self.accounts[mentioned].local:
                self._notify(mentioned, author.id, "mention", status.id)
        return status

    def edit_status(
        self, editor: SandboxAccount, status_id: str, given: StatusInput
    ) -> StoredStatus:
        status = self.status(status_id, editor)
        if status.account_id != editor.id or status.reblog_of_id is not None:
            raise forbidden()
        media_ids = status.media_ids
        if given.media_ids is not None:
            media_ids = [m.id for m in self._attachable_media(editor, given.media_ids, status.id)]
        self._apply_media_attributes(editor, given.media_attributes)
        self._validate_text(given, has_media=bool(media_ids))
        for media_id in status.media_ids:
            if media_id not in media_ids:
                self.media[media_id].status_id = None
        for media_id in media_ids:
            self.media[media_id].status_id = status.id
        status.content, status.mention_ids, status.tags = self._render(given.text)
        status.text = given.text
        status.spoiler_text = given.spoiler_text
        if given.sensitive is not None:
            status.sensitive = given.sensitive
        status.sensitive = status.sensitive or bool(given.spoiler_text.strip())
        if given.language:
            status.language = self._language(given.language)
        status.media_ids = list(media_ids)
        status.edited_at = _now()
        status.versions.append(self._version(status, status.edited_at))
        self.events.status_edited(status)
        return status

    def delete_status(self, actor: SandboxAccount, status_id: str) -> StoredStatus:
        status = self.status(status_id, actor)
        if status.account_id != actor.id:
            raise forbidden()
        self._remove(status)
        for reblog in list(self.statuses.values()):
            if reblog.reblog_of_id == status.id and not reblog.deleted:
                self._remove(reblog)
        return status

    def _remove(self, status: StoredStatus) -> None:
        audience = self.audience(status)
        status.deleted = True
        for notification_id, notification in list(self.notifications.items()):
            if notification.status_id == status.id:
                del self.notifications[notification_id]
        self.events.status_deleted(status, audience)

    def reblog(
        self, booster: SandboxAccount, status_id: str, visibility: str | None
    ) -> StoredStatus:
        original = self.status(status_id, booster)
        if original.reblog_of_id is not None:
            original = self.status(original.reblog_of_id, booster)
        own = original.account_id == booster.id
        if original.visibility == "direct" or (original.visibility == "private" and not own):
            raise forbidden()
        existing = self.reblog_by(booster.id, original.id)
        if existing is not None:
            return existing
        chosen = self._visibility(visibility, default=original.visibility)
        if VISIBILITIES.index(chosen) < VISIBILITIES.index(original.visibility):
            chosen = original.visibility
        reblog = StoredStatus(
            id=self.ids.next(),
            account_id=booster.id,
            text="",
            spoiler_text="",
            sensitive=False,
            visibility=chosen,
            language=None,
            content="",
            created_at=_now(),
            reblog_of_id=original.id,
        )
        self.statuses[reblog.id] = reblog
        self.events.status_created(reblog)
        if not own and self.accounts[original.account_id].local:
            self._notify(original.account_id, booster.id, "reblog", original.id)
        return reblog

    def unreblog(self, booster: SandboxAccount, status_id: str) -> StoredStatus:
        original = self.status(status_id, booster)
        existing = self.reblog_by(booster.id, original.id)
        if existing is not None:
            self._remove(existing)
        return original

    def reblog_by(self, account_id: str, status_id: str) -> StoredStatus | None:
        for status in self.statuses.values():
            if (
                status.reblog_of_id == status_id
                and status.account_id == account_id
                and not status.deleted
            ):
                return status
        return None

    def count_replies(self, status_id: str) -> int:
        return sum(
            1 for s in self.statuses.values() if s.in_reply_to_id == status_id and not s.deleted
        )

    def count_reblogs(self, status_id: str) -> int:
        return sum(
            1 for s in self.statuses.values() if s.reblog_of_id == status_id and not s.deleted
        )

    def _remembered(self, author: SandboxAccount, key: str) -> StoredStatus | None:
        remembered = self._idempotency.get((author.id, key))
        if remembered is None or remembered[1] < time.monotonic():
            return None
        status = self.statuses.get(remembered[0])
        return None if status is None or status.deleted else status

    def _reply_parent(
        self, author: SandboxAccount, in_reply_to_id: str | None
    ) -> StoredStatus | None:
        if not in_reply_to_id:
            return None
        return self.status(in_reply_to_id, author)

    def _validate_text(self, given: StatusInput, *, has_media: bool) -> None:
        if not given.text.strip() and not has_media:
            raise ApiError(422, "Validation failed: Text can't be blank")
        if text_rules.countable_length(given.text, given.spoiler_text) > self.limits.max_characters:
            raise ApiError(
                422,
                f"Validation failed: Text character limit of {self.limits.max_characters} exceeded",
            )

    def _visibility(self, given: str | None, *, default: str) -> str:
        if not given:
            return default
        if given not in VISIBILITIES:
            raise ApiError(422, f"'{given}' is not a valid visibility")
        return given

    def _language(self, given: str | None) -> str:
        if given and _LANGUAGE.match(given):
            return given
        return "en"

    def _render(self, text: str) -> tuple[str, list[str], list[str]]:
        def resolve(entity: text_rules.Entity) -> text_rules.MentionTarget | None:
            domain = entity.domain
            if domain is None or domain.lower() == self.site.domain.lower():
                found = self.local_account(entity.username)
            else:
                found = self.remote_account(entity.username, domain)
            if found is None:
                return None
            return text_rules.MentionTarget(found.url, found.username, found.acct, found.domain)

        content, targets, hashtags = text_rules.render_html(
            text, resolve, lambda name: self.site.url(f"/tags/{name}")
        )
        by_url = {account.url: account.id for account in self.accounts.values()}
        mention_ids = [by_url[target.url] for target in targets]
        tags = list(dict.fromkeys(tag.lower() for tag in hashtags))
        return content, mention_ids, tags

    def _version(self, status: StoredStatus, at: datetime) -> StatusVersion:
        return StatusVersion(
            text=status.text,
            spoiler_text=status.spoiler_text,
            sensitive=status.sensitive,
            content=status.content,
            media_ids=tuple(status.media_ids),
            created_at=at,
        )

    # media

    def _attachable_media(
        self, owner: SandboxAccount, media_ids: list[str], status_id: str | None
    ) -> list[StoredMedia]:
        """The media a status may carry, refused exactly as `PostStatusService` refuses them."""
        if len(media_ids) > self.limits.max_media_attachments:
            raise ApiError(
                422, f"Cannot attach more than {self.limits.max_media_attachments} files"
            )
        found = []
        missing = []
        for media_id in media_ids:
            item = self.media.get(str(media_id))
            usable = (
                item is not None
                and item.account_id == owner.id
                and item.status_id in (None, status_id)
            )
            if item is None or not usable:
                missing.append(str(media_id))
            else:
                found.append(item)
        if missing:
            raise ApiError(
                422, f"Media {', '.join(missing)} not found or already attached to another post"
            )
        if len(found) > 1 and any(item.kind in ("video", "gifv", "audio") for item in found):
            raise ApiError(422, "Cannot attach a video to a post that already contains images")
        if any(not item.ready for item in found):
            raise ApiError(
                422, "Cannot attach files that have not finished processing. Try again in a moment!"
            )
        return found

    def _apply_media_attributes(
        self, owner: SandboxAccount, attributes: list[dict[str, object]]
    ) -> None:
        for attribute in attributes:
            item = self.media.get(str(attribute.get("id")))
            if item is None or item.account_id != owner.id:
                continue
            if isinstance(attribute.get("description"), str):
                item.description = str(attribute["description"])
            if isinstance(attribute.get("focus"), str):
                item.focus = parse_focus(str(attribute["focus"]))

    def upload_media(
        self,
        owner: SandboxAccount,
        data: bytes,
        declared_mime: str,
        description: str | None,
        focus: str | None,
    ) -> StoredMedia:
        mime, image = self._identify(data, declared_mime)
        kind = media_kind(mime, data)
        limit = self.limits.image_size_limit if kind == "image" else self.limits.video_size_limit
        if len(data) > limit:
            raise ApiError(
                422, f"Validation failed: File file size must be less than {_megabytes(limit)}"
            )
        if description is not None and len(description) > self.limits.description_limit:
            raise ApiError(
                422,
                "Validation failed: Description is too long (maximum is "
                f"{self.limits.description_limit} characters)",
            )
        extension = mimetypes.guess_extension(mime) or ".bin"
        item = StoredMedia(
            id=self.ids.next(),
            account_id=owner.id,
            data=data,
            mime=mime,
            kind=kind,
            file_name=secrets.token_hex(8) + extension,
            description=description or None,
            focus=parse_focus(focus) if focus else None,
        )
        if image is not None:
            self._describe_image(item, image)
        deferred = kind != "image" or self.defer_image_processing
        item.ready = not deferred
        item.polls_before_ready = self.media_polls_before_ready
        self.media[item.id] = item
        return item

    def poll_media(self, owner: SandboxAccount, media_id: str) -> StoredMedia:
        """`GET /api/v1/media/:id`: processing finishes after the configured number of polls."""
        item = self.own_media(owner, media_id)
        if not item.ready:
            if item.polls_before_ready > 0:
                item.polls_before_ready -= 1
            else:
                item.ready = True
        return item

    def own_media(self, owner: SandboxAccount, media_id: str) -> StoredMedia:
        item = self.media.get(media_id)
        if item is None or item.account_id != owner.id:
            raise not_found()
        return item

    def update_media(
        self, owner: SandboxAccount, media_id: str, description: str | None, focus: str | None
    ) -> StoredMedia:
        item = self.own_media(owner, media_id)
        if item.status_id is not None:
            raise not_found()
        if description is not None:
            if len(description) > self.limits.description_limit:
                raise ApiError(
                    422,
                    "Validation failed: Description is too long (maximum is "
                    f"{self.limits.description_limit} characters)",
                )
            item.description = description or None
        if focus:
            item.focus = parse_focus(focus)
        return item

    def _identify(self, data: bytes, declared_mime: str) -> tuple[str, Image.Image | None]:
        """The real type of an upload: Pillow for images, the declared type otherwise."""
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError):
            image = None
        if image is not None and image.format:
            mime = Image.MIME.get(image.format, declared_mime)
        elif declared_mime.startswith("image/"):
            raise ApiError(
                422,
                "Validation failed: File has contents that are not what they are reported to be",
            )
        else:
            mime = declared_mime
        if mime not in SUPPORTED_MIME_TYPES:
            raise ApiError(422, "Validation failed: File content type is invalid")
        return mime, image

    def _describe_image(self, item: StoredMedia, image: Image.Image) -> None:
        item.width, item.height = image.size
        scale = min(1.0, (PREVIEW_PIXELS / max(1, item.width * item.height)) ** 0.5)
        size = (max(1, round(item.width * scale)), max(1, round(item.height * scale)))
        preview = image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
        preview = preview.resize(size)
        buffer = io.BytesIO()
        preview_format = "JPEG" if item.mime == "image/jpeg" else "PNG"
        preview.save(buffer, format=preview_format)
        item.preview = buffer.getvalue()
        item.preview_mime = "image/jpeg" if preview_format == "JPEG" else "image/png"
        item.preview_size = size

    # notifications

    def _notify(self, account_id: str, from_id: str, kind: str, status_id: str | None) -> None:
        notification = StoredNotification(
            id=self.ids.next(),
            account_id=account_id,
            from_account_id=from_id,
            type=kind,
            status_id=status_id,
            created_at=_now(),
        )
        self.notifications[notification.id] = notification
        self.events.notified(notification)

    def notifications_of(self, account_id: str) -> list[StoredNotification]:
        found = [n for n in self.notifications.values() if n.account_id == account_id]
        return sorted(found, key=lambda n: int(n.id), reverse=True)

    # timelines

    def account_timeline(
        self,
        account_id: str,
        viewer: SandboxAccount | None,
        *,
        exclude_replies: bool,
        exclude_reblogs: bool,
        only_media: bool,
    ) -> list[StoredStatus]:
        """An account's statuses, newest first; replies to oneself survive `exclude_replies`."""
        chosen = []
        for status in self.live_statuses_of(account_id):
            if not self.can_see(status, viewer):
                continue
            if exclude_reblogs and status.reblog_of_id is not None:
                continue
            if (
                exclude_replies
                and status.in_reply_to_id is not None
                and status.in_reply_to_account_id != account_id
            ):
                continue
            if only_media and not status.media_ids:
                continue
            chosen.append(status)
        return sorted(chosen, key=lambda s: int(s.id), reverse=True)

    def home_timeline(self, viewer: SandboxAccount) -> list[StoredStatus]:
        chosen = [
            status
            for status in self.statuses.values()
            if not status.deleted and viewer.id in self.audience(status)
        ]
        return sorted(chosen, key=lambda s: int(s.id), reverse=True)

    def context(
        self, status: StoredStatus, viewer: SandboxAccount | None
    ) -> tuple[list[StoredStatus], list[StoredStatus]]:
        ancestors: list[StoredStatus] = []
        parent_id = status.in_reply_to_id
        while parent_id is not None:
            parent = self.statuses.get(parent_id)
            if parent is None or parent.deleted or not self.can_see(parent, viewer):
                break
            ancestors.insert(0, parent)
            parent_id = parent.in_reply_to_id
        descendants: list[StoredStatus] = []
        frontier = [status.id]
        while frontier:
            current = frontier.pop(0)
            children = sorted(
                (
                    s
                    for s in self.statuses.values()
                    if s.in_reply_to_id == current and not s.deleted and self.can_see(s, viewer)
                ),
                key=lambda s: int(s.id),
            )
            descendants.extend(children)
            frontier.extend(child.id for child in children)
        return ancestors, descendants


def parse_focus(value: str) -> tuple[float, float] | None:
    """`"x,y"` with both in [-1, 1], as clients send the focal point."""
    try:
        x_text, y_text = value.split(",", 1)
        x, y = float(x_text), float(y_text)
    except ValueError:
        return None
    return max(-1.0, min(1.0, x)), max(-1.0, min(1.0, y))


def _megabytes(size: int) -> str:
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{size} Bytes"
