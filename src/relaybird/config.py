"""The TOML configuration: loading, `${VAR}` expansion, validation and the messages users see.

The file is a public contract, so every mistake a user can make is reported as a `ConfigError` that
names the file, the key path (``routes[0].to[1]``) and what to do, one problem per line, and never
shows a secret. Pydantic does the validation; this module only translates its findings into words
and adds the checks that span several tables (routes naming accounts).

New settings are added as fields on the models below: unknown-key suggestions, key paths, examples
in "missing" messages and type errors all follow from the models without further code.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import string
import tomllib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from relaybird.ratelimit import Limits, Rate

NETWORKS = ("bluesky", "mastodon", "telegram")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
TEMPLATE_PLACEHOLDERS = ("text", "permalink", "author", "handle", "network")
MIN_POLL_INTERVAL = 5
MAX_POLL_TIMEOUT = 50
DEFAULT_JETSTREAM_URL = "wss://jetstream2.us-east.bsky.network/subscribe"
EXAMPLE_FIREHOSE_URL = "wss://bsky.network/xrpc"

# Keys whose values are treated as secrets when redacting messages, whatever table they sit in:
# a misspelt `acces_token` still holds a token.
_SECRET_KEY = re.compile(r"token|password|passwd|secret|api_?key|credential", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOML_POSITION = re.compile(
    r"^(?P<msg>.*?)\s*\((?:at line (?P<line>\d+), column (?P<col>\d+)|"
    r"at end of document)\)$",
    re.DOTALL,
)
_MALFORMED_REFERENCE = (
    "has a malformed ${...}: write ${NAME} with a variable name of letters, digits and _,"
    " or $${ for a literal ${"
)
_MIN_REDACTED_LENGTH = 4
_MIN_REDACTED_ENV_LENGTH = 8


# --------------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: `where` is a key path or a line/column, empty for the file."""

    where: str
    message: str

    def render(self, file: str) -> str:
        return f"{file}: {self.where}: {self.message}" if self.where else f"{file}: {self.message}"


class ConfigError(Exception):
    """A configuration the user must fix; `str()` is the complete message, one problem per line."""

    def __init__(self, path: Path | str, problems: Iterable[Problem]) -> None:
        self.path = Path(path)
        self.problems = tuple(problems)
        super().__init__("\n".join(problem.render(str(path)) for problem in self.problems))

    def __str__(self) -> str:
        return str(self.args[0])


class _CrossCheckFailed(ValueError):
    """Carries the problems found across tables out of a pydantic validator, keys paths intact."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p.where}: {p.message}" for p in problems))


def _fail(message: str) -> PydanticCustomError:
    # Custom errors keep our wording verbatim; braces would be read as a template, so none are used.
    return PydanticCustomError("relaybird", message)


# --------------------------------------------------------------------------------------------------
# Value checks shared by the models


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise _fail("account names may only use letters, digits, '_' and '-'; rename the table")
    return value


def _check_base_url(value: str) -> str:
    """Accept only absolute http(s) URLs and drop a trailing slash, so callers can append paths."""
    hint = "must be an http:// or https:// URL such as https://social.example"
    if any(ch.isspace() for ch in value):
        raise _fail(f"{hint} (it contains spaces)")
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise _fail(hint) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(hint)
    if parts.query or parts.fragment:
        raise _fail(f"{hint}, without ?query or #fragment")
    if parts.username is not None or parts.password is not None:
        raise _fail(f"{hint}, without user:password@ (credentials go in their own keys)")
    return value.rstrip("/")


def _check_listen(value: str) -> str:
    if value and parse_listen(value) is None:
        raise _fail(
            "must be host:port such as 127.0.0.1:9810 ([::1]:9810 for IPv6), "
            'or "" to turn the health endpoint off'
        )
    return value


def parse_listen(value: str) -> tuple[str, int] | None:
    """Split ``host:port`` (``[v6]:port``); None when the text is not such an address."""
    match = re.fullmatch(r"\[(?P<host>[0-9A-Fa-f:.]+)\]:(?P<port>\d{1,5})", value) or re.fullmatch(
        r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>\d{1,5})", value
    )
    if match is None or int(match["port"]) > 65535:
        return None
    return match["host"], int(match["port"])


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _check_handle(value: str) -> str:
    """A Bluesky handle (a domain name) or a DID; a leading @ is forgiven because apps show one."""
    handle = value.strip().removeprefix("@")
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    if re.fullmatch(rf"(?:{label}\.)+{label}", handle) or re.fullmatch(r"did:[a-z]+:\S+", handle):
        return handle
    raise _fail("must be a Bluesky handle such as news.example.org (or a did:plc:... DID)")


def _check_chat(value: object) -> object:
    """Numeric ids may come from `${VAR}` as text, so digits become an int here."""
    hint = "must be a channel or group @username, or a numeric chat id such as -1001234567890"
    if isinstance(value, bool):
        raise _fail(f"expected text or a number, got a boolean; the chat {hint}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise _fail(f"expected text or a number, got {_toml_type(value)}; the chat {hint}")
    chat = value.strip()
    if re.fullmatch(r"-?\d+", chat):
        return int(chat)
    if re.fullmatch(r"@[A-Za-z0-9_]+", chat):
        return chat
    raise _fail(f"{hint} (usernames start with @)")


def _ws_url_check(example: str, optional: bool = False) -> AfterValidator:
    """A WebSocket address the adapter subscribes to; it adds its own query, so none is allowed."""
    hint = f"must be a ws:// or wss:// URL such as {example}" + (
        ', or "" for the default' if optional else ""
    )

    def check(value: str) -> str:
        if optional and not value:
            return value
        try:
            parts = urlsplit(value)
            _ = parts.port
        except ValueError:
            raise _fail(hint) from None
        if any(ch.isspace() for ch in value) or parts.scheme not in ("ws", "wss"):
            raise _fail(hint)
        if not parts.hostname:
            raise _fail(hint)
        if (
            parts.query
            or parts.fragment
            or parts.username is not None
            or parts.password is not None
        ):
            raise _fail(f"{hint}; leave out ?query, #fragment and user:password@")
        return value.rstrip("/")

    return AfterValidator(check)


def _check_poll_interval(value: int) -> int:
    if value < MIN_POLL_INTERVAL:
        raise _fail(
            f"must be at least {MIN_POLL_INTERVAL} seconds; polling more often only spends the"
            " account's rate limit"
        )
    return value


def _check_poll_timeout(value: int) -> int:
    if not 1 <= value <= MAX_POLL_TIMEOUT:
        raise _fail(
            f"must be between 1 and {MAX_POLL_TIMEOUT} seconds (Telegram holds a getUpdates call"
            f" open for at most {MAX_POLL_TIMEOUT})"
        )
    return value


def _check_kind(value: object) -> object:
    """Kinds are written in lower case, whichever way the user wrote them."""
    return _lower(value)


def _check_notifications_interval(value: int) -> int:
    if value < 1:
        raise _fail("must be a whole number of seconds, at least 1")
    return value


def _check_per_hour(value: int) -> int:
    if value < 1:
        raise _fail("must be a whole number of at least 1 (requests one person may make per hour)")
    return value


def _check_allow_entry(value: str) -> str:
    """Allowlist entries are read by `commands.classify_entry`; a mistake is reported here."""
    from relaybird.commands import classify_entry

    try:
        classify_entry(value)
    except ValueError as error:
        raise _fail(
            f"{error}; write a handle (user@host, name.bsky.social), a DID (did:plc:...) or a"
            " Telegram user id (digits)"
        ) from None
    return value.strip()


_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_MEDIA_HOST = re.compile(
    rf"(?P<wild>\*\.)?(?P<host>(?:{_HOST_LABEL}\.)*{_HOST_LABEL}|\[[0-9a-f:.]+\])\.?"
    r"(?::(?P<port>\d{1,5}))?"
)


def _check_media_host(value: str) -> str:
    """One entry of the media allowlist, in the form `MediaPolicy` matches hosts against.

    A URL, a path or a wildcard with a port would never match anything, so they are refused here
    rather than silently leaving the media as links.
    """
    hint = (
        'must be a host name such as "files.example.social", "*.cdn.example" for its subdomains,'
        ' or "media.example:8443" for another port'
    )
    entry = value.strip().rstrip(".").lower()
    if "://" in entry or "/" in entry:
        raise _fail(f"{hint}; write the host alone, without scheme or path")
    match = _MEDIA_HOST.fullmatch(entry)
    if match is None:
        raise _fail(hint)
    port = match["port"]
    if port is not None and not 0 < int(port) <= 65535:
        raise _fail(f"{hint}; the port must be 1 to 65535")
    if match["wild"] and match["host"].startswith("["):
        raise _fail(f"{hint}; a *. entry takes a host name, not an IP address")
    if match["wild"] and port is not None:
        raise _fail(f"{hint}; a *. entry covers the usual ports only, so it takes no port")
    wild = match["wild"] or ""
    if port is None or port in ("80", "443"):
        return wild + match["host"]
    return f"{match['host']}:{port}"


def _check_tag(value: str) -> str:
    """Tags compare case-insensitively and without '#', whichever way the user wrote them."""
    tag = value.strip().removeprefix("#")
    if not tag or any(ch.isspace() or ch == "#" for ch in tag):
        raise _fail('must be one hashtag such as "nobridge" (with or without #), without spaces')
    return tag.casefold()


def _check_language(value: str) -> str:
    language = value.strip().lower()
    if not re.fullmatch(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*", language):
        raise _fail(
            'must be a language code such as "en" or "pt-br", or "und" for posts that carry no'
            " language"
        )
    return language


def _check_regex(value: str) -> str:
    if value:
        try:
            re.compile(value)
        except re.error as error:
            where = f" at position {error.pos}" if error.pos is not None else ""
            raise _fail(
                f"is not a valid regular expression: {error.msg}{where}; it is a Python `re`"
                " pattern (escape special characters with a backslash)"
            ) from None
    return value


def _check_template(value: str) -> str:
    """Only the documented placeholders, written plainly: a typo must not reach a post verbatim
    and a format spec such as {text:.10} would cut text behind the splitter's back."""
    valid = ", ".join(f"{{{name}}}" for name in TEMPLATE_PLACEHOLDERS)
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError:
        raise _fail("has an unmatched { or }; write {{ and }} for literal braces") from None
    names: set[str] = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_PLACEHOLDERS:
            raise _fail(
                f"unknown placeholder {_quote('{' + name + '}')}"
                + _did_you_mean("{" + name + "}", [f"{{{n}}}" for n in TEMPLATE_PLACEHOLDERS])
                + f"; valid placeholders: {valid}; write {{{{ and }}}} for literal braces"
            )
        if spec or conversion:
            raise _fail(f"write placeholders plainly, as {{{name}}}, without ! or : after the name")
        names.add(name)
    if "text" not in names:
        raise _fail(
            f"must contain {{text}}, where the post's text goes; valid placeholders: {valid}"
        )
    return value


def _check_rate(value: float) -> float:
    if not 0 < value < float("inf"):
        raise _fail("must be a number above 0 (how many per hour or per minute, as named)")
    return value


def _check_burst(value: int) -> int:
    if value < 1:
        raise _fail("must be a whole number of at least 1 (how many may go back to back)")
    return value


def _check_days(value: int) -> int:
    if value < 0:
        raise _fail("must be a whole number of days, 0 or more (0 keeps everything)")
    return value


AccountName = Annotated[str, AfterValidator(_check_name)]
NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
BaseUrl = Annotated[str, AfterValidator(_check_base_url)]
Secret = Annotated[SecretStr, Field(min_length=1)]
Tag = Annotated[str, AfterValidator(_check_tag)]
Language = Annotated[str, AfterValidator(_check_language)]
Pattern = Annotated[str, AfterValidator(_check_regex)]
PerPeriod = Annotated[float, AfterValidator(_check_rate)]
Burst = Annotated[int, AfterValidator(_check_burst)]
Days = Annotated[int, AfterValidator(_check_days)]


# --------------------------------------------------------------------------------------------------
# Models


class Section(BaseModel):
    """Every table of the file: unknown keys are errors, TOML types are taken as they are."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, validate_by_name=True, validate_by_alias=True
    )

    # Fields filled in by the loader rather than written in the file, with the reason shown to a
    # user who writes one anyway.
    internal_keys: ClassVar[Mapping[str, str]] = {}


class GlobalSettings(Section):
    state: NonBlank = Field(default="relaybird.sqlite3", examples=["relaybird.sqlite3"])
    listen: Annotated[str, AfterValidator(_check_listen)] = Field(
        default="127.0.0.1:9810", examples=["127.0.0.1:9810"]
    )
    log_level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = (
        Field(default="info", examples=["info"])
    )
    log_format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = Field(
        default="text", examples=["text"]
    )

    retention_days: Days = Field(default=90, examples=[90])
    mapping_retention_days: Days = Field(default=0, examples=[0])

    @field_validator("mapping_retention_days")
    @classmethod
    def _mappings_outlive_deliveries(cls, value: int, info: ValidationInfo) -> int:
        """A mapping's delivery and parts are kept as long as the mapping: it cannot go first."""
        retention = info.data.get("retention_days")
        if value and isinstance(retention, int) and (retention == 0 or value < retention):
            raise _fail(
                "must be 0 (keep mappings for good) or at least retention_days: a copy must stay"
                " known for as long as its delivery is kept"
            )
        return value

    def retention_seconds(self) -> tuple[float | None, float | None]:
        """(finished deliveries and seen events, mappings) as ages in seconds; None keeps them."""
        day = 86400.0
        return (
            self.retention_days * day if self.retention_days else None,
            self.mapping_retention_days * day if self.mapping_retention_days else None,
        )

    def listen_address(self) -> tuple[str, int] | None:
        """Where the health endpoint binds, or None when `listen` is empty (endpoint disabled)."""
        return parse_listen(self.listen) if self.listen else None


class RateLimit(Section):
    """How fast relaybird lets itself call a network as this account; each network's table below
    holds defaults under that network's documented limits (burst + rate x window < limit)."""

    #: Each attachment is a message of its own on this network, so it counts as a post too.
    media_are_posts: ClassVar[bool] = False

    posts_per_hour: PerPeriod
    post_burst: Burst
    uploads_per_hour: PerPeriod
    upload_burst: Burst
    deletes_per_hour: PerPeriod
    delete_burst: Burst
    calls_per_minute: PerPeriod
    call_burst: Burst

    def limits(self) -> Limits:
        return Limits(
            posts=Rate.per_hour(self.posts_per_hour, self.post_burst),
            uploads=Rate.per_hour(self.uploads_per_hour, self.upload_burst),
            deletes=Rate.per_hour(self.deletes_per_hour, self.delete_burst),
            calls=Rate.per_minute(self.calls_per_minute, self.call_burst),
            media_are_posts=self.media_are_posts,
        )


class MastodonRateLimit(RateLimit):
    """300 statuses / 3 h, 30 media uploads and 30 deletes / 30 min, 300 calls / 5 min."""

    posts_per_hour: PerPeriod = Field(default=80.0, examples=[80])
    post_burst: Burst = Field(default=30, examples=[30])
    uploads_per_hour: PerPeriod = Field(default=40.0, examples=[40])
    upload_burst: Burst = Field(default=8, examples=[8])
    deletes_per_hour: PerPeriod = Field(default=40.0, examples=[40])
    delete_burst: Burst = Field(default=8, examples=[8])
    calls_per_minute: PerPeriod = Field(default=40.0, examples=[40])
    call_burst: Burst = Field(default=40, examples=[40])


class BlueskyRateLimit(RateLimit):
    """Writes cost points (create 3, delete 1): 5,000 / hour and 35,000 / day; 3,000 calls / 5 min."""

    posts_per_hour: PerPeriod = Field(default=350.0, examples=[350])
    post_burst: Burst = Field(default=1000, examples=[1000])
    uploads_per_hour: PerPeriod = Field(default=35.0, examples=[35])
    upload_burst: Burst = Field(default=40, examples=[40])
    deletes_per_hour: PerPeriod = Field(default=200.0, examples=[200])
    delete_burst: Burst = Field(default=50, examples=[50])
    calls_per_minute: PerPeriod = Field(default=300.0, examples=[300])
    call_burst: Burst = Field(default=300, examples=[300])


class TelegramRateLimit(RateLimit):
    """About 1 message / s per chat and 20 / min per group; each photo of an album is a message."""

    media_are_posts: ClassVar[bool] = True

    posts_per_hour: PerPeriod = Field(default=600.0, examples=[600])
    post_burst: Burst = Field(default=8, examples=[8])
    uploads_per_hour: PerPeriod = Field(default=600.0, examples=[600])
    upload_burst: Burst = Field(default=10, examples=[10])
    deletes_per_hour: PerPeriod = Field(default=600.0, examples=[600])
    delete_burst: Burst = Field(default=8, examples=[8])
    calls_per_minute: PerPeriod = Field(default=60.0, examples=[60])
    call_burst: Burst = Field(default=3, examples=[3])


#: Where media may also be fetched from (see `MediaPolicy`); last among each account's keys.
MediaHosts = list[Annotated[str, AfterValidator(_check_media_host)]]


class AccountBase(Section):
    internal_keys: ClassVar[Mapping[str, str]] = {
        "name": "an account is named by its table key, as in [accounts.NAME]; remove this key",
    }

    name: str
    network: str
    base_url: BaseUrl

    def identity(self) -> str:
        """Who posts, in the network's own terms, for summaries; never a secret."""
        return ""


class MastodonAccount(AccountBase):
    network: Literal["mastodon"]
    base_url: BaseUrl = Field(examples=["https://mastodon.example"])
    access_token: Secret = Field(examples=["${MASTODON_TOKEN}"])
    rate_limit: MastodonRateLimit = MastodonRateLimit()
    media_hosts: MediaHosts = Field(
        default_factory=list, examples=[["files.example.social", "*.cdn.example"]]
    )


class BlueskyAccount(AccountBase):
    network: Literal["bluesky"]
    base_url: BaseUrl = Field(default="https://bsky.social", examples=["https://bsky.social"])
    handle: Annotated[str, AfterValidator(_check_handle)] = Field(examples=["news.example.org"])
    app_password: Secret = Field(examples=["${BSKY_APP_PASSWORD}"])
    stream: Annotated[Literal["jetstream", "firehose", "poll"], BeforeValidator(_lower)] = Field(
        default="jetstream", examples=["jetstream"]
    )
    jetstream_url: Annotated[str, _ws_url_check(DEFAULT_JETSTREAM_URL)] = Field(
        default=DEFAULT_JETSTREAM_URL, examples=[DEFAULT_JETSTREAM_URL]
    )
    firehose_url: Annotated[str, _ws_url_check(EXAMPLE_FIREHOSE_URL, optional=True)] = Field(
        default="", examples=[EXAMPLE_FIREHOSE_URL]
    )
    poll_interval: Annotated[int, AfterValidator(_check_poll_interval)] = Field(
        default=60, examples=[60]
    )
    notifications_poll_interval: Annotated[int, AfterValidator(_check_notifications_interval)] = (
        Field(default=30, examples=[30])
    )
    rate_limit: BlueskyRateLimit = BlueskyRateLimit()
    media_hosts: MediaHosts = Field(
        default_factory=list, examples=[["files.example.social", "*.cdn.example"]]
    )

    def identity(self) -> str:
        return self.handle


class TelegramAccount(AccountBase):
    network: Literal["telegram"]
    base_url: BaseUrl = Field(
        default="https://api.telegram.org", examples=["https://api.telegram.org"]
    )
    bot_token: Secret = Field(examples=["${TELEGRAM_BOT_TOKEN}"])
    chat: Annotated[str | int, BeforeValidator(_check_chat)] = Field(examples=["@news_channel"])
    poll_timeout: Annotated[int, AfterValidator(_check_poll_timeout)] = Field(
        default=30, examples=[30]
    )
    rate_limit: TelegramRateLimit = TelegramRateLimit()
    media_hosts: MediaHosts = Field(
        default_factory=list, examples=[["files.example.social", "*.cdn.example"]]
    )

    def identity(self) -> str:
        return str(self.chat)


AccountSettings = Annotated[
    MastodonAccount | BlueskyAccount | TelegramAccount, Field(discriminator="network")
]


KindName = Literal["post", "reply", "repost", "edit", "delete", "mention"]
VisibilityLevel = Literal["public", "unlisted", "private", "direct"]


def _default_kinds() -> list[KindName]:
    return ["post", "reply", "edit", "delete"]


def _default_visibility() -> list[VisibilityLevel]:
    # Followers-only and direct posts leave their network only when a route lists them.
    return ["public", "unlisted"]


class Route(Section):
    name: NonBlank = Field(examples=["mirror"])
    sources: list[str] = Field(
        validation_alias="from", serialization_alias="from", min_length=1, examples=[["news_masto"]]
    )
    targets: list[str] = Field(
        validation_alias="to",
        serialization_alias="to",
        min_length=1,
        examples=[["news_bsky", "news_tg"]],
    )
    kinds: list[Annotated[KindName, BeforeValidator(_check_kind)]] = Field(
        default_factory=_default_kinds,
        min_length=1,
        examples=[["post", "reply", "edit", "delete"]],
    )
    visibility: list[Annotated[VisibilityLevel, BeforeValidator(_lower)]] = Field(
        default_factory=_default_visibility,
        min_length=1,
        examples=[["public", "unlisted"]],
    )
    include_tags: list[Tag] = Field(default_factory=list, examples=[["news"]])
    exclude_tags: list[Tag] = Field(default_factory=lambda: ["nobridge"], examples=[["nobridge"]])
    include_regex: Pattern = Field(default="", examples=["(?i)release"])
    exclude_regex: Pattern = Field(default="", examples=["(?i)^rt "])
    languages: list[Language] = Field(default_factory=list, examples=[["en", "und"]])
    skip_replies_to_others: bool = Field(default=True, examples=[True])
    skip_reposts: bool = Field(default=True, examples=[True])
    template: Annotated[str, AfterValidator(_check_template)] = Field(
        default="{text}", examples=["{text}"]
    )
    overflow: Annotated[Literal["thread", "truncate"], BeforeValidator(_lower)] = Field(
        default="thread", examples=["thread"]
    )
    numbering: bool = Field(default=False, examples=[False])
    on_edit: Annotated[Literal["ignore", "repost"], BeforeValidator(_lower)] = Field(
        default="ignore", examples=["ignore"]
    )
    on_delete: Annotated[Literal["delete", "ignore"], BeforeValidator(_lower)] = Field(
        default="delete", examples=["delete"]
    )
    unmapped_parent: Annotated[Literal["skip", "standalone"], BeforeValidator(_lower)] = Field(
        default="skip", examples=["skip"]
    )
    chain: bool = Field(default=False, examples=[False])
    reply_back: bool = Field(default=False, examples=[False])

    def routes_mentions(self) -> bool:
        return "mention" in self.kinds

    def mirrors_reposts(self) -> bool:
        """Reposts need both switches, so that neither alone lets them out by surprise."""
        return "repost" in self.kinds and not self.skip_reposts


class CommandSettings(Section):
    """A bot people mention to have a post crossposted (`@relaybird crosspost bluesky`)."""

    name: NonBlank = Field(examples=["crosspost"])
    bot: str = Field(examples=["news_masto"])
    trigger: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\w+$")] = Field(
        default="crosspost", examples=["crosspost"]
    )
    route: str = Field(examples=["mirror"])
    allow: list[Annotated[str, AfterValidator(_check_allow_entry)]] = Field(
        min_length=1, examples=[["editor@mastodon.example", "did:plc:abc123", "123456789"]]
    )
    refusal: Annotated[Literal["reply", "silent"], BeforeValidator(_lower)] = Field(
        default="reply", examples=["reply"]
    )
    per_person_per_hour: Annotated[int, AfterValidator(_check_per_hour)] = Field(
        default=10, examples=[10]
    )


class Config(Section):
    internal_keys: ClassVar[Mapping[str, str]] = {
        "path": "the location of the file itself is not a setting; remove this key",
    }

    path: Path
    relaybird: GlobalSettings = GlobalSettings()
    accounts: dict[AccountName, AccountSettings] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    commands: list[CommandSettings] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _name_accounts(cls, data: Any) -> Any:
        """Accounts are named by their table keys; copy each key into the account it names."""
        if isinstance(data, dict) and isinstance(data.get("accounts"), dict):
            accounts = {
                key: ({"name": key, **value} if isinstance(value, dict) else value)
                for key, value in data["accounts"].items()
            }
            data = {**data, "accounts": accounts}
        return data

    @model_validator(mode="after")
    def _check_across_tables(self) -> Self:
        problems = cross_check(self)
        if problems:
            raise _CrossCheckFailed(problems)
        return self

    def secret_values(self) -> set[str]:
        """Every password and token the accounts hold, so that logs can mask them."""
        return {
            value.get_secret_value()
            for account in self.accounts.values()
            for value in vars(account).values()
            if isinstance(value, SecretStr) and value.get_secret_value()
        }

    def state_path(self) -> Path:
        """The SQLite file; a relative `state` is relative to the config file, not to the cwd."""
        state = Path(self.relaybird.state).expanduser()
        return state if state.is_absolute() else self.path.absolute().parent / state


# --------------------------------------------------------------------------------------------------
# Checks across tables


def cross_check(config: Config) -> list[Problem]:
    """What no single table can know: routes must name existing accounts, names must be unique."""
    problems = [
        Problem(f"accounts.{key}.name", "does not match the account's table key")
        for key, account in config.accounts.items()
        if account.name != key
    ]
    if not config.accounts:
        problems.append(
            Problem(
                "accounts",
                "no accounts are defined; add at least one "
                "[accounts.NAME] table (see config.example.toml)",
            )
        )
    if not config.routes:
        problems.append(
            Problem(
                "routes",
                "no routes are defined; add a [[routes]] table with "
                "name, from and to (see config.example.toml)",
            )
        )
    seen_names: dict[str, int] = {}
    for index, route in enumerate(config.routes):
        problems.extend(_check_route(config, index, route))
        if route.name in seen_names:
            problems.append(
                Problem(
                    f"routes[{index}].name",
                    f"route name {_quote(route.name)} is already used by "
                    f"routes[{seen_names[route.name]}]; give each route its own name",
                )
            )
        seen_names.setdefault(route.name, index)
    problems.extend(_check_commands(config))
    return problems


def _check_commands(config: Config) -> Iterator[Problem]:
    """A command names an existing bot account and route; one bot answers one command."""
    routes = {route.name: route for route in config.routes}
    bots: dict[str, int] = {}
    for index, command in enumerate(config.commands):
        where = f"commands[{index}]"
        if config.accounts and command.bot not in config.accounts:
            yield Problem(f"{where}.bot", _unknown_account(command.bot, config.accounts))
        elif command.bot in bots:
            yield Problem(
                f"{where}.bot",
                f"{_quote(command.bot)} already answers commands[{bots[command.bot]}]; give each"
                " bot one command",
            )
        bots.setdefault(command.bot, index)
        route = routes.get(command.route)
        if route is None:
            known = ", ".join(sorted(routes)) or "none"
            yield Problem(
                f"{where}.route",
                f"no route is named {_quote(command.route)}; known routes: {known}"
                + _did_you_mean(command.route, routes),
            )
        elif route.routes_mentions():
            yield Problem(
                f"{where}.route",
                f"route {_quote(route.name)} relays mentions; name a route whose `to` lists the"
                " accounts to crosspost to",
            )


def _check_route(config: Config, index: int, route: Route) -> Iterator[Problem]:
    for key, names in (("from", route.sources), ("to", route.targets)):
        seen: set[str] = set()
        for position, name in enumerate(names):
            where = f"routes[{index}].{key}[{position}]"
            if config.accounts and name not in config.accounts:
                yield Problem(where, _unknown_account(name, config.accounts))
            elif name in seen:
                yield Problem(where, f"{_quote(name)} is listed twice; remove the duplicate")
            elif key == "to" and name in route.sources:
                yield Problem(
                    where,
                    f"{_quote(name)} is also in this route's from; a route cannot "
                    "post back into the account it reads, remove it from one side",
                )
            seen.add(name)
    yield from _check_repost_switches(index, route)
    yield from _check_mention_route(index, route)


def _check_mention_route(index: int, route: Route) -> Iterator[Problem]:
    """A route relays either mentions (as notices) or posts (as copies): the two read differently."""
    if route.routes_mentions() and len(route.kinds) > 1:
        yield Problem(
            f"routes[{index}].kinds",
            'lists "mention" with other kinds; a mention route relays notifications only, so'
            ' write kinds = ["mention"] and put the other kinds in a route of their own',
        )
    if route.reply_back and not route.routes_mentions():
        yield Problem(
            f"routes[{index}].reply_back",
            'only applies to routes with kinds = ["mention"]; remove it',
        )


def _check_repost_switches(index: int, route: Route) -> Iterator[Problem]:
    """Reposts take two switches; one without the other is a setting that silently does nothing."""
    if "repost" in route.kinds and route.skip_reposts:
        yield Problem(
            f"routes[{index}].kinds",
            'lists "repost" but skip_reposts is true, so reposts would still be skipped; add'
            ' skip_reposts = false to mirror them, or remove "repost"',
        )
    elif not route.skip_reposts and "repost" not in route.kinds:
        yield Problem(
            f"routes[{index}].skip_reposts",
            'is false but kinds does not list "repost", so no repost would be mirrored; add'
            ' "repost" to kinds, or remove skip_reposts',
        )


def _unknown_account(name: str, accounts: Mapping[str, object]) -> str:
    shown = _quote(name) if NAME_PATTERN.fullmatch(name) else "this name"
    message = f"no account is named {shown}; known accounts: {', '.join(sorted(accounts))}"
    return message + _did_you_mean(name, accounts) + "; fix the name or add [accounts.NAME]"


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the file; any mistake a user can make raises `ConfigError`."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    data = _parse(path, _read(path))
    expansion = _Expansion(environ)
    data = expansion.expand(data, ())
    problems = list(expansion.problems) + _reserved_keys(data)
    data = _without_reserved_keys(data)
    config: Config | None = None
    try:
        config = Config.model_validate({**data, "path": path.absolute()}, by_name=False)
    except ValidationError as error:
        expanded_where = {problem.where for problem in expansion.problems}
        problems += [
            problem
            for problem in _translate(error)
            if not _under_any(problem.where, expanded_where)
        ]
    if problems or config is None:
        secrets = _secret_values(data) | expansion.substituted
        unique = dict.fromkeys(_redact(problem, secrets) for problem in problems)
        raise ConfigError(path, unique)
    return config


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            path,
            [
                Problem(
                    "",
                    "file not found; create it (start from "
                    "config.example.toml) or give the right path",
                )
            ],
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            path, [Problem("", "is a directory; give the path of the TOML file")]
        ) from None
    except PermissionError:
        raise ConfigError(
            path,
            [
                Problem(
                    "", "cannot be read: permission denied; let the user running relaybird read it"
                )
            ],
        ) from None
    except OSError as error:
        raise ConfigError(path, [Problem("", f"cannot be read: {error.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            path, [Problem(f"line {line}", "is not UTF-8 text; save the file as UTF-8")]
        ) from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = _TOML_POSITION.match(str(error))
        detail = match["msg"] if match else str(error)
        where = (
            f"line {match['line']}, column {match['col']}"
            if match and match["line"]
            else "end of file"
        )
        message = f"TOML syntax error: {detail[:1].lower()}{detail[1:]}; {_syntax_hint(detail)}"
        raise ConfigError(path, [Problem(where, message)]) from None


def _syntax_hint(detail: str) -> str:
    """tomllib's own words are terse; the commonest slips get a concrete fix."""
    detail = detail.lower()
    if "twice" in detail or "overwrite" in detail or "duplicate" in detail:
        return "each table and key may appear only once: merge or rename them"
    if "invalid value" in detail:
        return "text values need quotes, arrays are written [...]"
    return "fix it there (see config.example.toml for the layout)"


class _Expansion:
    """Replaces `${VAR}` in every string value; `$${` stands for a literal `${`.

    Unset variables are collected rather than raised so that all of them are reported at once; the
    substituted values are remembered so that they can be kept out of every message.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[Problem] = []
        self.substituted: set[str] = set()

    def expand(self, value: Any, loc: tuple[str | int, ...]) -> Any:
        if isinstance(value, str):
            return self._expand_text(value, loc)
        if isinstance(value, dict):
            return {key: self.expand(item, (*loc, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.expand(item, (*loc, index)) for index, item in enumerate(value)]
        return value

    def _expand_text(self, text: str, loc: tuple[str | int, ...]) -> str:
        return _ENV_REFERENCE.sub(lambda match: self._replace(match, loc), text)

    def _problem(self, loc: tuple[str | int, ...], message: str) -> str:
        self.problems.append(Problem(format_path(loc), message))
        return ""

    def _replace(self, match: re.Match[str], loc: tuple[str | int, ...]) -> str:
        if match[0] == "$${":
            return "${"
        body = match["body"]
        if match["close"] is None or not _ENV_NAME.fullmatch(body):
            return self._problem(loc, _MALFORMED_REFERENCE)
        if body not in self.environ:
            return self._problem(
                loc,
                f"environment variable {body} is not set; set it before starting relaybird"
                " (or write $${ for a literal ${)",
            )
        value = self.environ[body]
        secret_key = bool(loc) and bool(_SECRET_KEY.search(str(loc[-1])))
        if len(value) >= (_MIN_REDACTED_LENGTH if secret_key else _MIN_REDACTED_ENV_LENGTH):
            self.substituted.add(value)
        return value


def _reserved_keys(data: Mapping[str, Any]) -> list[Problem]:
    """Keys the loader fills in itself; written in the file they would silently win or clash."""
    problems = [Problem(key, reason) for key, reason in Config.internal_keys.items() if key in data]
    accounts = data.get("accounts")
    if isinstance(accounts, dict):
        problems += [
            Problem(format_path(("accounts", name, key)), reason)
            for name, table in accounts.items()
            if isinstance(table, dict)
            for key, reason in AccountBase.internal_keys.items()
            if key in table
        ]
    return problems


def _without_reserved_keys(data: dict[str, Any]) -> dict[str, Any]:
    data = {key: value for key, value in data.items() if key not in Config.internal_keys}
    if isinstance(data.get("accounts"), dict):
        data["accounts"] = {
            name: (
                {k: v for k, v in table.items() if k not in AccountBase.internal_keys}
                if isinstance(table, dict)
                else table
            )
            for name, table in data["accounts"].items()
        }
    return data


def _under_any(where: str, prefixes: set[str]) -> bool:
    """Whether a problem sits at or below a key already reported (an unset variable's key)."""
    return any(where == p or where.startswith((p + ".", p + "[")) for p in prefixes)


def _secret_values(value: Any, secret: bool = False) -> set[str]:
    if isinstance(value, dict):
        return set().union(
            *(
                _secret_values(item, secret or bool(_SECRET_KEY.search(str(key))))
                for key, item in value.items()
            )
        )
    if isinstance(value, list):
        return set().union(*(_secret_values(item, secret) for item in value))
    text = str(value)
    return {text} if secret and len(text) >= _MIN_REDACTED_LENGTH else set()


def _redact(problem: Problem, secrets: set[str]) -> Problem:
    """A last guard: messages are written not to echo values, but a secret must never get out."""
    where, message = problem.where, problem.message
    for secret in sorted(secrets, key=len, reverse=True):
        where, message = where.replace(secret, "***"), message.replace(secret, "***")
    return Problem(where, message)


# --------------------------------------------------------------------------------------------------
# Translating pydantic errors into plain words


def _translate(error: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    # Unknown keys first: a misspelt key is usually why a required one is reported missing.
    details = sorted(error.errors(include_url=False), key=lambda d: d["type"] != "extra_forbidden")
    for detail in details:
        failure = detail.get("ctx", {}).get("error")
        if isinstance(failure, _CrossCheckFailed):
            problems.extend(failure.problems)
            continue
        spot = _walk(detail["loc"])
        if detail["type"] in ("union_tag_invalid", "union_tag_not_found"):
            spot.shown.append("network")
        problems.append(Problem(format_path(spot.shown), _describe_error(detail, spot)))
    return problems


def _describe_error(detail: ErrorDetails, spot: _Spot) -> str:
    kind, value = detail["type"], detail.get("input")
    key = str(spot.shown[-1]) if spot.shown else ""
    if kind == "relaybird":
        return detail["msg"]
    if kind == "extra_forbidden":
        return _unknown_key(key, _keys_of(_walk(detail["loc"][:-1]).node))
    if kind == "missing":
        return f"required key {key} is missing; add it" + spot.example(", e.g. ")
    if kind == "union_tag_not_found":
        return f"required key network is missing; add network = one of: {', '.join(NETWORKS)}"
    if kind == "union_tag_invalid":
        tag = str(detail.get("ctx", {}).get("tag", ""))
        return f"unknown network; valid networks: {', '.join(NETWORKS)}" + _did_you_mean(
            tag, NETWORKS
        )
    if kind == "literal_error":
        choices = [str(choice) for choice in _literal_choices(spot.node)]
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be one of: {', '.join(choices)}{hint}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty" + spot.example("; e.g. ")
    return _type_mismatch(kind, value, detail["msg"], spot)


_EXPECTED = {
    "string_type": "text in quotes",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "list_type": "an array [...]",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "float_type": "a number",
}


def _type_mismatch(kind: str, value: object, fallback: str, spot: _Spot) -> str:
    expected = _EXPECTED.get(kind)
    if expected is None:
        return fallback[:1].lower() + fallback[1:]
    message = f"expected {expected}, got {_toml_type(value)}"
    if spot.shown == ["routes"]:
        return message + "; write each route as a [[routes]] table (double brackets)"
    if expected == "a table" and all(isinstance(part, str) for part in spot.shown):
        return message + f"; write it as a [{format_path(spot.shown)}] table"
    return message + spot.example("; e.g. ")


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key}; did you mean {close[0]}?"
    listing = f"valid keys here: {', '.join(valid)}" if valid else "remove it"
    return f"unknown key {key}; {listing}"


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {_quote(close[0])}?)" if close else ""


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {str: "text", int: "an integer", float: "a number", list: "an array", dict: "a table"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), "a date/time")


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(item) for item in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def format_path(parts: Iterable[str | int]) -> str:
    """Key path as a user would write it: ``routes[0].to[1]``, ``accounts."odd name".handle``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if NAME_PATTERN.fullmatch(part) else _quote(part)
            text += f".{key}" if text else key
    return text


@dataclass
class _Spot:
    """Where a pydantic error location points: the path users see, the type expected there, and
    the model field last entered on the way (its TOML key and example feed the hints)."""

    shown: list[str | int]
    node: Any
    key: str = ""
    field: FieldInfo | None = None

    def example(self, lead: str) -> str:
        if self.field is None or not self.field.examples:
            return ""
        return f"{lead}{self.key} = {_toml_literal(self.field.examples[0])}"


def _walk(loc: tuple[str | int, ...]) -> _Spot:
    """Follow a location from `Config` down the annotations; union tags and dict-key markers that
    pydantic adds to locations are dropped from the path shown."""
    spot = _Spot(shown=[], node=Config)
    for part in loc:
        if part == "[key]":
            continue
        node = _strip_annotated(spot.node)
        field = _field_of(node, part)
        if field is not None:
            spot.node, spot.key, spot.field = field.annotation, str(part), field
            spot.shown.append(part)
            continue
        spot.node, hidden = _step_into_container(node, part)
        if not hidden:
            spot.shown.append(part)
    return spot


def _field_of(node: Any, part: str | int) -> FieldInfo | None:
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return None
    return next(
        (field for name, field in node.model_fields.items() if _toml_key(name, field) == part), None
    )


def _step_into_container(node: Any, part: str | int) -> tuple[Any, bool]:
    origin, args = typing.get_origin(node), typing.get_args(node)
    if origin is dict:
        return args[1], False
    if origin is list:
        return args[0], False
    if origin in (typing.Union, types.UnionType):
        for member in args:
            if _is_model(member) and part in _literal_choices(member.model_fields["network"]):
                return member, True
    return None, False


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _strip_annotated(node: Any) -> Any:
    while typing.get_origin(node) is Annotated:
        node = typing.get_args(node)[0]
    return node


def _toml_key(name: str, field: FieldInfo) -> str:
    return field.validation_alias if isinstance(field.validation_alias, str) else name


def _keys_of(node: Any) -> list[str]:
    node = _strip_annotated(node)
    if not (isinstance(node, type) and issubclass(node, Section)):
        return []
    return [
        _toml_key(name, field)
        for name, field in node.model_fields.items()
        if name not in node.internal_keys
    ]


def _literal_choices(node: Any) -> tuple[Any, ...]:
    annotation = _strip_annotated(getattr(node, "annotation", node))
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def route_settings(route: Route) -> str:
    """The options a route sets away from their defaults, as TOML, so `check` shows what differs."""
    changed = route.model_dump(exclude_defaults=True, exclude={"name", "sources", "targets"})
    return ", ".join(f"{key} = {_toml_literal(value)}" for key, value in changed.items())
