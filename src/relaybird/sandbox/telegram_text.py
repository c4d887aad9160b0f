"""Message text and entities as the Telegram Bot API server treats them.

Telegram measures everything in UTF-16 code units: entity offsets and lengths, and (in this
sandbox) the 4096/1024 limits on text and captions. The real server counts the limits in
characters after entity parsing; UTF-16 code units agree with that for every character of the
Basic Multilingual Plane and over-count astral characters (most emoji) by one, which is the
stricter reading and therefore the safer one for a client under test.

What the server does to a text before storing it, and what this module reproduces:

* ``parse_mode`` HTML, MarkdownV2 and legacy Markdown are turned into plain text plus entities;
  syntax errors are reported with the server's wording ("Can't find end of Bold entity at byte
  offset 3"), byte offsets being UTF-8 offsets into the text as sent.
* Explicit ``entities`` keep only the formatting kinds a client may set (bold, text_link, ...);
  kinds the server detects itself (url, mention, hashtag, ...) are dropped and found again.
* Entities that run past the text are refused; whitespace-only entities are dropped.
* Leading and trailing spaces and newlines are trimmed and entities shifted accordingly.
* URLs, e-mail addresses, @mentions, #hashtags, $cashtags and /commands are detected in the
  parts of the text no other non-formatting entity covers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "EntityError",
    "FormattedText",
    "format_text",
    "utf16_len",
    "utf16_slice",
]

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024

# Kinds a client may set explicitly; everything else is detected by the server itself.
USER_ENTITY_TYPES = frozenset(
    {
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "blockquote",
        "expandable_blockquote",
        "code",
        "pre",
        "text_link",
        "text_mention",
        "custom_emoji",
    }
)
DETECTED_ENTITY_TYPES = frozenset(
    {"mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number"}
)
KNOWN_ENTITY_TYPES = USER_ENTITY_TYPES | DETECTED_ENTITY_TYPES | {"date_time"}
# Formatting that may overlap anything; other kinds may nest in blockquotes but never overlap.
SPLITTABLE_TYPES = frozenset({"bold", "italic", "underline", "strikethrough", "spoiler"})
BLOCKQUOTE_TYPES = frozenset({"blockquote", "expandable_blockquote"})
# Entities whose meaning lives in an argument, so they survive covering only whitespace.
HIDDEN_DATA_TYPES = frozenset({"text_link", "text_mention", "custom_emoji"})

_TYPE_PRIORITY = {
    "blockquote": 0,
    "expandable_blockquote": 0,
    "pre": 11,
    "code": 20,
    "text_link": 49,
    "text_mention": 49,
    "bold": 90,
    "italic": 91,
    "underline": 92,
    "strikethrough": 93,
    "spoiler": 94,
    "custom_emoji": 99,
}


class EntityError(Exception):
    """A text the server refuses; ``str()`` is the description after "Bad Request: "."""


@dataclass
class Entity:
    """One entity while a text is being processed; ``extra`` holds url/user/language/..."""

    type: str
    offset: int
    length: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"offset": self.offset, "length": self.length, "type": self.type}
        data.update(self.extra)
        return data


@dataclass
class FormattedText:
    """Plain text plus Bot API MessageEntity dicts, as stored and returned by the server."""

    text: str
    entities: list[dict[str, Any]]


# --------------------------------------------------------------------------- UTF-16 helpers


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of every Telegram offset and length."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _char_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def utf16_index(text: str, units: int) -> int:
    """Python index of the character that starts at ``units`` UTF-16 code units."""
    count = 0
    for index, ch in enumerate(text):
        if count >= units:
            return index
        count += _char_units(ch)
    return len(text)


def utf16_slice(text: str, offset: int, length: int) -> str:
    """The part of ``text`` that an entity with this offset and length covers."""
    start = utf16_index(text, offset)
    return text[start : utf16_index(text, offset + length)]


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogatepass"))


def _sort_entities(entities: list[Entity]) -> None:
    entities.sort(key=lambda e: (e.offset, -e.length, _TYPE_PRIORITY.get(e.type, 50)))


# --------------------------------------------------------------------------- links


_TLD_WORDS = """com net org io dev app me ru de uk fr info co social xyz eu us ca au jp cn in br it
    es nl pl se no fi dk ch at be cz pt gr tr ua kz by il nz za mx ar cl edu gov mil int biz name
    tv cc ly gl gg sh ai so to fm am is im tech site online news blog page link club one pro top
    zone space live life world today video art shop store cloud email photo host network"""
_TLDS = frozenset(_TLD_WORDS.split())
_SCHEMES = ("http", "https", "ftp", "tg", "ton", "tonsite")


def _valid_host(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    if len(labels) < 2 or not all(labels):
        return False
    if not all(re.fullmatch(r"[\w-]+", label) for label in labels):
        return False
    return re.fullmatch(r"[^\W\d_]{2,}|xn--[\w-]+", labels[-1]) is not None


def checked_link(url: str) -> str | None:
    """The URL as Telegram stores it in a text_link, or None when it is not a usable link.

    Telegram adds ``http://`` to a bare domain and a ``/`` to an empty path, so clients comparing
    links must expect ``https://example.com/`` back for ``https://example.com``.
    """
    url = url.strip()
    if not url or any(ch.isspace() for ch in url):
        return None
    if "://" not in url and not url.startswith(("tg:", "ton:")):
        url = "http://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        return None
    if scheme in ("tg", "ton", "tonsite"):
        return url
    try:
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return None
    if not _valid_host(host):
        return None
    if parts.path == "" and not parts.query and not parts.fragment:
        url += "/"
    elif parts.path == "":
        split_at = len(scheme) + 3 + len(parts.netloc)
        url = url[:split_at] + "/" + url[split_at:]
    return url


def link_user_id(url: str) -> int | None:
    """The user a ``tg://user?id=N`` link names (HTML/Markdown spelling of a text_mention)."""
    match = re.fullmatch(r"tg://user\?id=(\d{1,19})", url.strip(), flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- HTML


_HTML_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "s",
        "strike",
        "del",
        "u",
        "ins",
        "tg-spoiler",
        "tg-emoji",
        "span",
        "pre",
        "code",
        "blockquote",
    }
)
_HTML_SIMPLE = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "u": "underline",
    "ins": "underline",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}
_NAMED_REFS = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def _decode_html_ref(src: str, pos: int) -> tuple[str, int] | None:
    """Decode ``&...;`` at ``pos``; only the four named and numeric references are known."""
    if src.startswith("&#", pos):
        hexa = src.startswith("&#x", pos) or src.startswith("&#X", pos)
        start = pos + (3 if hexa else 2)
        end = start
        digits = "0123456789abcdefABCDEF" if hexa else "0123456789"
        while end < len(src) and src[end] in digits:
            end += 1
        if end == start or end - pos >= 10:
            return None
        code = int(src[start:end], 16 if hexa else 10)
        if code == 0 or code >= 0x10FFFF:
            return None
        char = chr(code)
    else:
        end = pos + 1
        while end < len(src) and src[end].isascii() and src[end].isalpha():
            end += 1
        name = src[pos + 1 : end]
        if name not in _NAMED_REFS:
            return None
        char = _NAMED_REFS[name]
    if end < len(src) and src[end] == ";":
        end += 1
    return char, end


@dataclass
class _OpenTag:
    name: str
    argument: str
    offset: int
    text_start: int
    expandable: bool = False


class _HtmlParser:
    """Telegram's HTML subset: a strict tag stack, attributes only where they mean something."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.out: list[str] = []
        self.units = 0
        self.entities: list[Entity] = []
        self.stack: list[_OpenTag] = []

    def fail(self, message: str) -> EntityError:
        return EntityError(message)

    def byte(self, index: int) -> int:
        return _byte_offset(self.src, index)

    def emit(self, text: str) -> None:
        self.out.append(text)
        self.units += utf16_len(text)

    def parse(self) -> tuple[str, list[Entity]]:
        src, i = self.src, 0
        while i < len(src):
            ch = src[i]
            if ch == "&":
                decoded = _decode_html_ref(src, i)
                if decoded is not None:
                    self.emit(decoded[0])
                    i = decoded[1]
                    continue
            if ch != "<":
                self.emit(ch)
                i += 1
                continue
            closing = i + 1 < len(src) and src[i + 1] == "/"
            i = self.end_tag(i) if closing else self.start_tag(i)
        if self.stack:
            raise self.fail(
                f'Can\'t find end tag corresponding to start tag "{self.stack[-1].name}"'
            )
        return "".join(self.out), self.entities

    def start_tag(self, begin: int) -> int:
        src, i = self.src, begin + 1
        while i < len(src) and not src[i].isspace() and src[i] != ">":
            i += 1
        if i >= len(src):
            raise self.fail(f"Unclosed start tag at byte offset {self.byte(begin)}")
        name = src[begin + 1 : i].lower()
        if name not in _HTML_TAGS:
            raise self.fail(f'Unsupported start tag "{name}" at byte offset {self.byte(begin)}')
        argument, expandable, i = self.attributes(name, begin, i)
        if name == "span" and argument != "spoiler":
            raise self.fail(
                f'Tag "span" must have class "tg-spoiler" at byte offset {self.byte(begin)}'
            )
        self.stack.append(_OpenTag(name, argument, self.units, len(self.out), expandable))
        return i + 1

    def attributes(self, name: str, begin: int, i: int) -> tuple[str, bool, int]:
        src = self.src
        argument, expandable = "", False
        while True:
            while i < len(src) and src[i].isspace():
                i += 1
            if i >= len(src):
                raise self.fail(f"Unclosed start tag at byte offset {self.byte(begin)}")
            if src[i] == ">":
                return argument, expandable, i
            attr_begin = i
            while i < len(src) and not src[i].isspace() and src[i] not in "=>":
                i += 1
            attr = src[attr_begin:i]
            if not attr:
                raise self.fail(
                    f'Empty attribute name in the tag "{name}" at byte offset {self.byte(begin)}'
                )
            while i < len(src) and src[i].isspace():
                i += 1
            if name == "blockquote" and attr.lower() == "expandable" and src[i : i + 1] != "=":
                expandable = True
                continue
            if i >= len(src) or src[i] != "=":
                raise self.fail(
                    "Expected equal sign in declaration of an attribute of the tag "
                    f'"{name}" at byte offset {self.byte(begin)}'
                )
            value, i = self.attribute_value(name, begin, i + 1)
            argument = self.tag_argument(name, attr, value, argument)

    def attribute_value(self, name: str, begin: int, i: int) -> tuple[str, int]:
        src = self.src
        while i < len(src) and src[i].isspace():
            i += 1
        if i >= len(src):
            raise self.fail(f'Unclosed start tag "{name}" at byte offset {self.byte(begin)}')
        if src[i] not in "'\"":
            token_begin = i
            while i < len(src) and (src[i].isalnum() or src[i] in ".-"):
                i += 1
            if i >= len(src) or not (src[i].isspace() or src[i] == ">"):
                raise self.fail(
                    f"Unexpected end of name token at byte offset {self.byte(token_begin)}"
                )
            return src[token_begin:i].lower(), i
        quote, i = src[i], i + 1
        value: list[str] = []
        while i < len(src) and src[i] != quote:
            if src[i] == "&":
                decoded = _decode_html_ref(src, i)
                if decoded is not None:
                    value.append(decoded[0])
                    i = decoded[1]
                    continue
            value.append(src[i])
            i += 1
        if i >= len(src):
            raise self.fail(f"Unclosed start tag at byte offset {self.byte(begin)}")
        return "".join(value), i + 1

    @staticmethod
    def tag_argument(name: str, attr: str, value: str, current: str) -> str:
        attr = attr.lower()
        if name == "a" and attr == "href":
            return value
        if name == "code" and attr == "class" and value.startswith("language-"):
            return value[len("language-") :]
        if name == "span" and attr == "class" and value.startswith("tg-"):
            return value[3:]
        if name == "tg-emoji" and attr == "emoji-id":
            return value
        return current

    def end_tag(self, begin: int) -> int:
        src, i = self.src, begin + 2
        if not self.stack:
            raise self.fail(f"Unexpected end tag at byte offset {self.byte(begin)}")
        while i < len(src) and not src[i].isspace() and src[i] != ">":
            i += 1
        end_name = src[begin + 2 : i].lower()
        while i < len(src) and src[i].isspace():
            i += 1
        if i >= len(src) or src[i] != ">":
            raise self.fail(f"Unclosed end tag at byte offset {self.byte(begin)}")
        tag = self.stack[-1]
        if end_name and end_name != tag.name:
            raise self.fail(
                f"Unmatched end tag at byte offset {self.byte(begin)}, "
                f'expected "</{tag.name}>", found "</{end_name}>"'
            )
        self.stack.pop()
        if self.units > tag.offset:
            self.close(tag)
        return i + 1

    def close(self, tag: _OpenTag) -> None:
        length = self.units - tag.offset
        if tag.name in _HTML_SIMPLE:
            self.entities.append(Entity(_HTML_SIMPLE[tag.name], tag.offset, length))
        elif tag.name == "tg-emoji":
            if not tag.argument.isdigit() or int(tag.argument) == 0:
                raise self.fail("Invalid custom emoji identifier specified")
            extra = {"custom_emoji_id": tag.argument}
            self.entities.append(Entity("custom_emoji", tag.offset, length, extra))
        elif tag.name == "a":
            url = tag.argument or "".join(self.out[tag.text_start :])
            self.add_link(url, tag.offset, length)
        elif tag.name == "blockquote":
            kind = "expandable_blockquote" if tag.expandable else "blockquote"
            self.entities.append(Entity(kind, tag.offset, length))
        else:
            self.close_code(tag, length)

    def add_link(self, url: str, offset: int, length: int) -> None:
        user_id = link_user_id(url)
        if user_id is not None:
            self.entities.append(Entity("text_mention", offset, length, {"user_id": user_id}))
            return
        checked = checked_link(url)
        if checked is not None:
            self.entities.append(Entity("text_link", offset, length, {"url": checked}))

    def close_code(self, tag: _OpenTag, length: int) -> None:
        last = self.entities[-1] if self.entities else None
        same_span = last is not None and (last.offset, last.length) == (tag.offset, length)
        if tag.name == "pre":
            if same_span and last is not None and last.type == "code" and last.extra:
                last.type = "pre"
            else:
                self.entities.append(Entity("pre", tag.offset, length))
        elif same_span and last is not None and last.type == "pre" and tag.argument:
            last.extra = {"language": tag.argument}
        else:
            extra = {"language": tag.argument} if tag.argument else {}
            self.entities.append(Entity("code", tag.offset, length, extra))


def parse_html(src: str) -> tuple[str, list[Entity]]:
    """Text and entities of an HTML-formatted message, or EntityError."""
    text, entities = _HtmlParser(src).parse()
    for entity in entities:
        if entity.type == "code":
            entity.extra = {}
    return text, entities


# --------------------------------------------------------------------------- MarkdownV2


_MDV2_RESERVED = "_*[]()~`>#+-=|{}.!\n"
_MDV2_NAMES = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "code": "Code",
    "pre": "Pre",
    "text_link": "TextUrl",
    "custom_emoji": "CustomEmoji",
    "blockquote": "BlockQuote",
    "expandable_blockquote": "BlockQuote",
}


@dataclass
class _MdOpen:
    type: str
    offset: int
    byte: int
    text_start: int
    language: str = ""


class _MarkdownV2Parser:
    """MarkdownV2 with the server's rule that every reserved character must be escaped."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.out: list[str] = []
        self.units = 0
        self.entities: list[Entity] = []
        self.stack: list[_MdOpen] = []
        self.quote: _MdOpen | None = None

    def emit(self, text: str) -> None:
        self.out.append(text)
        self.units += utf16_len(text)

    def reserved(self, ch: str) -> EntityError:
        return EntityError(
            f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
        )

    def unclosed(self, opened: _MdOpen) -> EntityError:
        name = _MDV2_NAMES[opened.type]
        if opened.type == "pre" and opened.language:
            name = "PreCode"
        return EntityError(f"Can't find end of {name} entity at byte offset {opened.byte}")

    def parse(self) -> tuple[str, list[Entity]]:
        src, i = self.src, 0
        if src.startswith(">") or src.startswith("**>"):
            i = self.open_quote(0)
        while i < len(src):
            i = self.step(i)
        self.close_quote()
        if self.stack:
            raise self.unclosed(self.stack[-1])
        return "".join(self.out), self.entities

    def step(self, i: int) -> int:
        src, ch = self.src, self.src[i]
        if ch == "\\" and i + 1 < len(src) and 0 < ord(src[i + 1]) <= 126:
            self.emit(src[i + 1])
            return i + 2
        in_code = bool(self.stack) and self.stack[-1].type in ("code", "pre")
        if ch not in ("`" if in_code else _MDV2_RESERVED):
            self.emit(ch)
            return i + 1
        if ch == "\n":
            return self.newline(i)
        if self.stack and self.closes(i):
            return self.close(i)
        return self.open(i)

    def newline(self, i: int) -> int:
        src = self.src
        continues = self.quote is not None and src.startswith(">", i + 1)
        if self.quote is not None and not continues and self.stack:
            raise self.unclosed(self.stack[-1])
        self.emit("\n")
        if continues:
            return i + 2
        self.close_quote()
        if src.startswith(">", i + 1) or src.startswith("**>", i + 1):
            return self.open_quote(i + 1)
        return i + 1

    def open_quote(self, i: int) -> int:
        expandable = self.src.startswith("**>", i)
        kind = "expandable_blockquote" if expandable else "blockquote"
        self.quote = _MdOpen(kind, self.units, _byte_offset(self.src, i), len(self.out))
        return i + (3 if expandable else 1)

    def close_quote(self) -> None:
        quote, self.quote = self.quote, None
        if quote is None:
            return
        if self.units > quote.offset:
            self.entities.append(Entity(quote.type, quote.offset, self.units - quote.offset))

    def closes(self, i: int) -> bool:
        src, kind = self.src, self.stack[-1].type
        nxt = src[i + 1 : i + 2]
        return {
            "bold": src[i] == "*",
            "italic": src[i] == "_" and nxt != "_",
            "underline": src.startswith("__", i),
            "strikethrough": src[i] == "~",
            "spoiler": src.startswith("||", i),
            "code": src[i] == "`",
            "pre": src.startswith("```", i),
            "text_link": src[i] == "]",
            "custom_emoji": src[i] == "]",
        }[kind]

    def open(self, i: int) -> int:
        src, ch = self.src, self.src[i]
        byte = _byte_offset(src, i)
        if (
            ch == "|"
            and src.startswith("||", i)
            and self.quote is not None
            and self.quote.type == "expandable_blockquote"
            and src[i + 2 : i + 3] in ("", "\n")
        ):
            self.close_quote()
            return i + 2
        simple = {"*": ("bold", 1), "~": ("strikethrough", 1), "[": ("text_link", 1)}
        if ch in simple:
            kind, width = simple[ch]
        elif ch == "_":
            kind, width = ("underline", 2) if src.startswith("__", i) else ("italic", 1)
        elif ch == "|" and src.startswith("||", i):
            kind, width = "spoiler", 2
        elif ch == "!" and src.startswith("![", i):
            kind, width = "custom_emoji", 2
        elif ch == "`":
            return self.open_code(i, byte)
        else:
            raise self.reserved(ch)
        self.stack.append(_MdOpen(kind, self.units, byte, len(self.out)))
        return i + width

    def open_code(self, i: int, byte: int) -> int:
        src = self.src
        if not src.startswith("```", i):
            self.stack.append(_MdOpen("code", self.units, byte, len(self.out)))
            return i + 1
        i += 3
        end = i
        while end < len(src) and not src[end].isspace() and src[end] != "`":
            end += 1
        language = ""
        if end != i and end < len(src) and src[end] != "`":
            language, i = src[i:end], end
        if src.startswith("\r\n", i) or src.startswith("\n\r", i):
            i += 2
        elif src[i : i + 1] in ("\n", "\r"):
            i += 1
        self.stack.append(_MdOpen("pre", self.units, byte, len(self.out), language))
        return i

    def close(self, i: int) -> int:
        opened = self.stack.pop()
        width = {"underline": 2, "spoiler": 2, "pre": 3}.get(opened.type, 1)
        i += width
        extra: dict[str, Any] = {}
        kind = opened.type
        if kind == "pre" and opened.language:
            extra = {"language": opened.language}
        elif kind in ("text_link", "custom_emoji"):
            target, i = self.link_target(i, opened)
            if kind == "custom_emoji":
                extra = {"custom_emoji_id": self.emoji_id(target)}
            else:
                user_id = link_user_id(target)
                checked = checked_link(target)
                if user_id is not None:
                    kind, extra = "text_mention", {"user_id": user_id}
                elif checked is None:
                    return i
                else:
                    extra = {"url": checked}
        if self.units > opened.offset:
            self.entities.append(Entity(kind, opened.offset, self.units - opened.offset, extra))
        return i

    def link_target(self, i: int, opened: _MdOpen) -> tuple[str, int]:
        src = self.src
        if src[i : i + 1] != "(":
            if opened.type == "custom_emoji":
                raise EntityError("Custom emoji entity must contain a tg://emoji URL")
            return "".join(self.out[opened.text_start :]), i
        i += 1
        begin = i
        target: list[str] = []
        while i < len(src) and src[i] != ")":
            if src[i] == "\\" and i + 1 < len(src) and 0 < ord(src[i + 1]) <= 126:
                target.append(src[i + 1])
                i += 2
                continue
            target.append(src[i])
            i += 1
        if i >= len(src):
            what = "a custom emoji URL" if opened.type == "custom_emoji" else "a URL"
            raise EntityError(f"Can't find end of {what} at byte offset {_byte_offset(src, begin)}")
        return "".join(target), i + 1

    @staticmethod
    def emoji_id(url: str) -> str:
        match = re.fullmatch(r"tg://emoji\?id=(\d+)", url)
        if match is None or int(match.group(1)) == 0:
            raise EntityError("Invalid custom emoji identifier specified")
        return match.group(1)


def parse_markdown_v2(src: str) -> tuple[str, list[Entity]]:
    """Text and entities of a MarkdownV2-formatted message, or EntityError."""
    return _MarkdownV2Parser(src).parse()


# --------------------------------------------------------------------------- legacy Markdown


def parse_markdown(src: str) -> tuple[str, list[Entity]]:
    """The legacy ``Markdown`` mode: *bold*, _italic_, `code`, ```pre```, [text](url)."""
    out: list[str] = []
    units = 0
    entities: list[Entity] = []
    i = 0
    while i < len(src):
        ch = src[i]
        if ch == "\\" and src[i + 1 : i + 2] in ("_", "*", "`", "["):
            out.append(src[i + 1])
            units += 1
            i += 2
            continue
        if ch not in "_*`[":
            out.append(ch)
            units += _char_units(ch)
            i += 1
            continue
        begin, i = i, i + 1
        end_char = "]" if ch == "[" else ch
        is_pre, language = False, ""
        if ch == "`" and src.startswith("``", i):
            is_pre, i = True, i + 2
            end = i
            while end < len(src) and not src[end].isspace() and src[end] != "`":
                end += 1
            if end != i and end < len(src) and src[end] != "`":
                language, i = src[i:end], end
            if src[i : i + 1] in ("\n", "\r"):
                i += 2 if src[i + 1 : i + 2] in ("\n", "\r") and src[i] != src[i + 1] else 1
        start_units = units
        while i < len(src) and (src[i] != end_char or (is_pre and not src.startswith("```", i))):
            out.append(src[i])
            units += _char_units(src[i])
            i += 1
        if i >= len(src):
            raise EntityError(
                f"Can't find end of the entity starting at byte offset {_byte_offset(src, begin)}"
            )
        length = units - start_units
        if ch == "[":
            url = src[begin + 1 : i]
            if src[i + 1 : i + 2] == "(":
                close = src.find(")", i + 2)
                close = len(src) if close < 0 else close
                url = src[i + 2 : close]
                i = close
            user_id, checked = link_user_id(url), checked_link(url)
            if length and user_id is not None:
                entities.append(Entity("text_mention", start_units, length, {"user_id": user_id}))
            elif length and checked is not None:
                entities.append(Entity("text_link", start_units, length, {"url": checked}))
        elif length:
            kind = {"_": "italic", "*": "bold"}.get(ch, "pre" if is_pre else "code")
            extra = {"language": language} if language else {}
            entities.append(Entity(kind, start_units, length, extra))
        i += 3 if is_pre else 1
    return "".join(out), entities


# --------------------------------------------------------------------------- explicit entities


def _field_type(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def entities_from_json(raw: Any) -> list[Entity]:
    """Entities a client sent as JSON, checked the way the server reads MessageEntity."""
    if not isinstance(raw, list):
        raise EntityError("can't parse entities JSON object")
    entities = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise EntityError("can't parse MessageEntity: expected an Object")
        for name, kind in (("type", str), ("offset", int), ("length", int)):
            if name not in item:
                raise EntityError(f"can't parse MessageEntity: Can't find field \"{name}\"")
            if not _field_type(item[name], kind):
                expected = "String" if kind is str else "Number"
                raise EntityError(
                    f'can\'t parse MessageEntity: Field "{name}" must be of type {expected}'
                )
        kind_name = item["type"]
        if kind_name not in KNOWN_ENTITY_TYPES:
            raise EntityError("can't parse MessageEntity: Unsupported type specified")
        entities.append(Entity(kind_name, item["offset"], item["length"], _extra(item)))
    return entities


def _extra(item: Mapping[str, Any]) -> dict[str, Any]:
    kind = item["type"]
    if kind == "text_link":
        url = item.get("url")
        if not isinstance(url, str):
            raise EntityError("can't parse MessageEntity: Can't find field \"url\"")
        checked = checked_link(url)
        if checked is None:
            raise EntityError(f"Entity URL '{url}' is invalid: Wrong HTTP URL")
        return {"url": checked}
    if kind == "text_mention":
        user = item.get("user")
        if not isinstance(user, Mapping) or not _field_type(user.get("id"), int):
            raise EntityError("can't parse MessageEntity: Can't find field \"user\"")
        return {"user_id": user["id"]}
    if kind == "pre" and isinstance(item.get("language"), str) and item["language"]:
        return {"language": item["language"]}
    if kind == "custom_emoji":
        emoji_id = str(item.get("custom_emoji_id", ""))
        if not emoji_id.isdigit() or int(emoji_id) == 0:
            raise EntityError("Invalid custom emoji identifier specified")
        return {"custom_emoji_id": emoji_id}
    return {}


# --------------------------------------------------------------------------- normalisation


def _check_ranges(text: str, entities: list[Entity]) -> None:
    total = utf16_len(text)
    for entity in entities:
        if entity.offset < 0 or entity.offset > 1_000_000:
            raise EntityError(f"Receive an entity with incorrect offset {entity.offset}")
        if entity.length < 0 or entity.length > 1_000_000:
            raise EntityError(f"Receive an entity with incorrect length {entity.length}")
    for entity in sorted(entities, key=lambda e: (e.offset, -e.length)):
        if entity.length == 0:
            continue
        if entity.offset >= total:
            raise EntityError(
                f"Entity begins after the end of the text at UTF-16 offset {entity.offset}"
            )
        if entity.end > total:
            raise EntityError(
                f"Entity beginning at UTF-16 offset {entity.offset} ends after the end of the "
                f"text at UTF-16 offset {entity.end}"
            )


def _units_table(text: str) -> list[str]:
    """One entry per UTF-16 code unit: the character there, or '' for a low surrogate slot."""
    table: list[str] = []
    for ch in text:
        table.append(ch)
        if ord(ch) > 0xFFFF:
            table.append("")
    return table


def _drop_overlapping(entities: list[Entity]) -> list[Entity]:
    """Continuous entities may nest only inside blockquotes; later overlapping ones go."""
    _sort_entities(entities)
    kept: list[Entity] = []
    continuous_end = -1
    quote_end = -1
    for entity in entities:
        if entity.type in SPLITTABLE_TYPES:
            kept.append(entity)
        elif entity.type in BLOCKQUOTE_TYPES:
            if entity.offset >= quote_end and (
                entity.offset >= continuous_end or entity.end <= continuous_end
            ):
                kept.append(entity)
                quote_end = entity.end
        elif entity.offset >= continuous_end and (
            entity.offset >= quote_end or entity.end <= quote_end
        ):
            kept.append(entity)
            continuous_end = entity.end
    return _merge_splittable(kept)


def _merge_splittable(entities: list[Entity]) -> list[Entity]:
    merged: list[Entity] = []
    last_of_type: dict[str, Entity] = {}
    for entity in entities:
        previous = last_of_type.get(entity.type)
        if (
            entity.type in SPLITTABLE_TYPES
            and previous is not None
            and entity.offset <= previous.end
        ):
            previous.length = max(previous.end, entity.end) - previous.offset
            continue
        merged.append(entity)
        last_of_type[entity.type] = entity
    return merged


def _trim_entity_whitespace(units: list[str], entities: list[Entity]) -> list[Entity]:
    kept = []
    for entity in entities:
        if entity.type not in HIDDEN_DATA_TYPES:
            while entity.length > 0 and units[entity.offset] in (" ", "\n"):
                entity.offset += 1
                entity.length -= 1
            covered = units[entity.offset : entity.end]
            if all(ch in (" ", "\n", "") for ch in covered):
                continue
        if entity.length > 0:
            kept.append(entity)
    return kept


def _trim(text: str, entities: list[Entity]) -> str:
    """Strip leading/trailing spaces and newlines as the server does, shifting entities."""
    units = _units_table(text)
    end = len(units)
    while end > 0 and units[end - 1] in (" ", "\n"):
        end -= 1
    start = 0
    first_entity = min((e.offset for e in entities), default=end)
    while start < min(end, first_entity) and units[start] in (" ", "\n"):
        start += 1
    for entity in entities:
        entity.length = max(0, min(entity.end, end) - entity.offset)
        entity.offset -= start
    entities[:] = [e for e in entities if e.length > 0]
    return text[utf16_index(text, start) : utf16_index(text, end)]


# --------------------------------------------------------------------------- detection


_WORD = r"[^\W_]|_"
_MENTION_RE = re.compile(r"(?<![\w])@[A-Za-z0-9_]{2,32}(?![\w])")
_HASHTAG_RE = re.compile(r"(?<![\w\u200c#])#[\w\u200c]{1,256}(?![\w\u200c]*#)")
_CASHTAG_RE = re.compile(r"(?<![\w$])\$(?:1INCH|[A-Z]{1,8})(?![\w$])")
_COMMAND_RE = re.compile(r"(?<![\w/<>])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>])")
_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[\w-]+\.)+[^\W\d_]{2,}(?![\w@])")
_URL_RE = re.compile(
    r"(?<![\w@./-])(?:(?P<scheme>https?|ftp|tg|ton)://)?"
    r"(?P<host>(?:[\w-]+\.)+[\w-]+|\d{1,3}(?:\.\d{1,3}){3})"
    r"(?::\d{1,5})?(?P<rest>[/?#][^\s<>\"]*)?",
    flags=re.IGNORECASE,
)
_TRAILING_PUNCT = ".,:;!?'\""


def _strip_url_tail(url: str) -> str:
    while url and (
        url[-1] in _TRAILING_PUNCT or (url[-1] == ")" and url.count("(") < url.count(")"))
    ):
        url = url[:-1]
    return url


def _find_urls(text: str) -> Iterable[tuple[int, int, str]]:
    for match in _EMAIL_RE.finditer(text):
        yield match.start(), match.end(), "email"
    for match in _URL_RE.finditer(text):
        host = match.group("host").lower()
        tld = host.rsplit(".", 1)[-1]
        if match.group("scheme") is None and tld not in _TLDS and not host[0].isdigit():
            continue
        if not _valid_host(host):
            continue
        url = _strip_url_tail(match.group(0))
        yield match.start(), match.start() + len(url), "url"


def _detect(text: str) -> list[Entity]:
    """Entities the server finds by itself, as Python index ranges turned into UTF-16."""
    found: list[tuple[int, int, str]] = []
    found += [(m.start(), m.end(), "mention") for m in _MENTION_RE.finditer(text)]
    found += [
        (m.start(), m.end(), "hashtag")
        for m in _HASHTAG_RE.finditer(text)
        if any(ch.isalpha() for ch in m.group(0))
    ]
    found += [(m.start(), m.end(), "cashtag") for m in _CASHTAG_RE.finditer(text)]
    found += [(m.start(), m.end(), "bot_command") for m in _COMMAND_RE.finditer(text)]
    found += list(_find_urls(text))
    found.sort(key=lambda item: (item[0], -(item[1] - item[0])))
    result: list[Entity] = []
    taken_until = -1
    for start, end, kind in found:
        if start < taken_until:
            continue
        offset = utf16_len(text[:start])
        result.append(Entity(kind, offset, utf16_len(text[start:end])))
        taken_until = end
    return result


def _merge_detected(entities: list[Entity], detected: list[Entity]) -> list[Entity]:
    blockers = [e for e in entities if e.type not in SPLITTABLE_TYPES]
    for new in detected:
        clash = False
        for old in blockers:
            inside_quote = (
                old.type in BLOCKQUOTE_TYPES and old.offset <= new.offset and new.end <= old.end
            )
            if not inside_quote and new.offset < old.end and old.offset < new.end:
                clash = True
                break
        if not clash:
            entities.append(new)
    _sort_entities(entities)
    return entities


# --------------------------------------------------------------------------- entry point


def format_text(
    raw_text: str,
    *,
    parse_mode: str | None,
    entities: Any,
    user_lookup: Callable[[int], dict[str, Any] | None],
) -> FormattedText:
    """What the server stores for a text or caption sent with ``parse_mode`` or ``entities``.

    Raises EntityError with the server's description (without the "Bad Request: " prefix). A
    text that ends up empty is returned empty; callers decide whether that is an error, since an
    empty caption is fine and an empty message is not.
    """
    mode = (parse_mode or "").strip().lower()
    parsed: list[Entity]
    if mode in ("html", "markdownv2", "markdown"):
        parser = {"html": parse_html, "markdownv2": parse_markdown_v2, "markdown": parse_markdown}
        try:
            text, parsed = parser[mode](raw_text)
        except EntityError as exc:
            raise EntityError(f"can't parse entities: {exc}") from None
    elif mode:
        raise EntityError("unsupported parse_mode")
    else:
        text = raw_text
        parsed = entities_from_json(entities) if entities is not None else []
        parsed = [e for e in parsed if e.type in USER_ENTITY_TYPES]
        _check_ranges(text, parsed)
    parsed = [e for e in parsed if e.length > 0]
    parsed = _drop_overlapping(parsed)
    parsed = _trim_entity_whitespace(_units_table(text), parsed)
    text = _trim(text, parsed)
    parsed = _merge_detected(parsed, _detect(text))
    return FormattedText(text, [_entity_json(e, user_lookup) for e in parsed])


def _entity_json(
    entity: Entity, user_lookup: Callable[[int], dict[str, Any] | None]
) -> dict[str, Any]:
    if entity.type != "text_mention":
        return entity.to_json()
    user_id = entity.extra["user_id"]
    user = user_lookup(user_id)
    if user is None:
        raise EntityError("user not found")
    return {"offset": entity.offset, "length": entity.length, "type": "text_mention", "user": user}
