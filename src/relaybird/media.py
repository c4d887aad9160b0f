"""Fetching media from a source network, and fitting images under a target's byte limit.

A medium named in a post is fetched only from the source network's own hosts (`MediaPolicy`), with
a size cap checked before and while reading and time limits on connecting, on each read and on the
whole; what arrives is identified by its bytes, not by what the server or the post claims, so that
an error page served as `image/png` is never posted as a picture. Anything that fails these checks
stays a link to the original (a `Media` without data), which the copy then points to.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

import aiohttp
from PIL import Image, ImageOps, UnidentifiedImageError

from relaybird.model import Media

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
_CHUNK = 65536
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class MediaError(Exception):
    """A media file could not be fetched or made to fit; the post carries a link instead."""


# --------------------------------------------------------------------------------------------------
# where media may come from


def _host_port(url: str) -> tuple[str, int | None] | None:
    """The lower-cased host of an http(s) URL and its port when not the scheme's usual one."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if not host or scheme not in _DEFAULT_PORTS or "@" in parts.netloc:
        return None
    host = host.rstrip(".").lower()
    return (f"[{host}]" if ":" in host else host), (
        None if port in (None, _DEFAULT_PORTS[scheme]) else port
    )


def host_entry(url: str) -> str | None:
    """The allowlist entry of a URL's host: `host` on its scheme's usual port, else `host:port`."""
    found = _host_port(url)
    if found is None:
        return None
    host, port = found
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True)
class MediaPolicy:
    """Which hosts a source's media may be fetched from, and how big and slow they may be.

    `hosts` holds entries as `host_entry` writes them: `media.example` (ports 80 and 443 only),
    `media.example:8443`, or `*.media.example` for any subdomain of it (usual ports). The policy
    of an account is its own server (base URL, PDS, Bot API file host), the hosts that server
    names as its own media host, and what the operator lists; nothing else, so that a post cannot
    make relaybird fetch from an arbitrary address (an internal service, a tracker) with its own
    network access. Only http and https URLs without credentials in them are fetched.
    """

    hosts: frozenset[str]
    max_bytes: int = MAX_DOWNLOAD_BYTES
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 120.0
    max_redirects: int = 3

    @classmethod
    def of(cls, *urls: str, extra_hosts: Iterable[str] = ()) -> MediaPolicy:
        """A policy allowing the hosts of `urls` and the `extra_hosts` entries (from config)."""
        entries = {entry for entry in map(host_entry, urls) if entry}
        entries.update(entry.strip().rstrip(".").lower() for entry in extra_hosts if entry.strip())
        return cls(frozenset(entries))

    def with_hosts(self, *urls: str) -> MediaPolicy:
        """The policy with the hosts of `urls` added (a media host the server announced)."""
        entries = {entry for entry in map(host_entry, urls) if entry}
        return replace(self, hosts=self.hosts | entries)

    def allows(self, url: str) -> bool:
        found = _host_port(url)
        if found is None:
            return False
        host, port = found
        if (host if port is None else f"{host}:{port}") in self.hosts:
            return True
        return port is None and any(
            allowed.startswith("*.") and host.endswith(allowed[1:]) for allowed in self.hosts
        )


def describe(url: str) -> str:
    """A URL as logs may show it: host and path, without query (which may carry a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "an unreadable URL"
    path = parts.path if len(parts.path) <= 80 else parts.path[:77] + "..."
    return f"{parts.hostname or '?'}{path}"


# --------------------------------------------------------------------------------------------------
# downloading


async def download(
    session: aiohttp.ClientSession, url: str, limit: int = MAX_DOWNLOAD_BYTES
) -> bytes:
    """The bytes at `url`, from its own host only, within `limit` bytes and the default times.

    Kept for callers that have no policy of their own; `MediaFetcher` also checks the host
    against the source's media hosts and what the bytes are, and should be preferred.
    """
    policy = replace(MediaPolicy.of(url), max_bytes=limit)
    data, _ = await fetch_file(session, url, policy)
    return data


async def fetch_file(
    session: aiohttp.ClientSession, url: str, policy: MediaPolicy, *, label: str = ""
) -> tuple[bytes, str]:
    """The bytes and Content-Type of a file, within the policy's hosts, size and time limits.

    Redirects are followed by hand (at most `max_redirects`) so that each hop is checked against
    the allowed hosts; `label` replaces the URL in error messages when the URL holds a secret
    (Telegram file URLs contain the bot token).
    """
    what = label or describe(url)
    timeout = aiohttp.ClientTimeout(
        total=policy.total_timeout,
        sock_connect=policy.connect_timeout,
        sock_read=policy.read_timeout,
    )
    try:
        async with asyncio.timeout(policy.total_timeout):
            for _ in range(policy.max_redirects + 1):
                if not policy.allows(url):
                    raise MediaError(f"{what}: {describe(url)} is not a media host of the source")
                async with session.get(url, timeout=timeout, allow_redirects=False) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    data = await _read(response, policy.max_bytes, what)
                    return data, response.headers.get("Content-Type", "")
            raise MediaError(f"{what}: more than {policy.max_redirects} redirects")
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise MediaError(f"download of {what} failed: {type(error).__name__}") from None


async def _read(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    if response.status != 200:
        raise MediaError(f"download of {what} answered HTTP {response.status}")
    if response.content_length is not None and response.content_length > limit:
        raise MediaError(f"{what} is {response.content_length} bytes, over {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise MediaError(f"{what} is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------------------------------
# knowing what arrived

_FTYP_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"hevc": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"mif1": "image/heic",
    b"msf1": "image/heic",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"qt  ": "video/quicktime",
}
_PREFIXES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x1aE\xdf\xa3", "video/webm"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"%PDF-", "application/pdf"),
)
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav"}
#: Formats Pillow must be able to open before an image counts as one.
_PILLOW_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}


def sniff(data: bytes) -> str | None:
    """The MIME type the bytes themselves show (magic numbers), or None when they show none."""
    for prefix, mime in _PREFIXES:
        if data.startswith(prefix):
            return mime
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "video/mp4")
    if len(data) >= 4 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0:
        return "audio/aac"
    if len(data) >= 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "audio/mpeg"
    return None


def _family(mime: str) -> str | None:
    """Images must stay images; audio and video share containers (mp4), so they go together."""
    major = mime.split("/", 1)[0].lower()
    return {"image": "image", "video": "av", "audio": "av"}.get(major)


def _looks_like_markup(data: bytes) -> bool:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<", b"{", b"["))


def verify(data: bytes, declared: str) -> tuple[str, tuple[int, int] | None]:
    """The MIME type to record for `data` and an image's size; `MediaError` when it is unfit.

    Refused: an empty file; bytes of no known media type (an HTML error page, JSON, a script);
    bytes of another kind than `declared` says (a "photo" that is a video); an image Pillow cannot
    open, or one whose pixel count makes it a decompression bomb.
    """
    if not data:
        raise MediaError("the file is empty")
    sniffed = sniff(data)
    if sniffed is None:
        kind = "markup or text" if _looks_like_markup(data) else "of no known media type"
        raise MediaError(f"declared {declared or 'nothing'} but the bytes are {kind}")
    wanted = _family(declared)
    if wanted is not None and wanted != _family(sniffed):
        raise MediaError(f"declared {declared} but the bytes are {sniffed}")
    size = _image_size(data, sniffed) if sniffed in _PILLOW_FORMATS else None
    return sniffed, size


def _image_size(data: bytes, mime: str) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format != _PILLOW_FORMATS[mime]:
                    raise MediaError(f"bytes start like {mime} but are {image.format}")
                size = image.size
                image.verify()
                return size
    except MediaError:
        raise
    except Exception as error:  # Pillow raises many kinds for broken files; all mean "unfit"
        raise MediaError(f"{mime} that cannot be read: {type(error).__name__}") from None


@dataclass
class MediaFetcher:
    """Fetches the media of one source account under its policy; what fails stays a link."""

    session: aiohttp.ClientSession
    policy: MediaPolicy
    account: str

    async def fetch(self, item: Media, *, url: str = "", label: str = "") -> Media:
        """The medium with its bytes and sniffed type (and size, for images), or as it was.

        `url` is where to fetch it when that is not `item.url` (which then stays as it is). Never
        raises for a bad file or server: the failure is logged in one line (no URL when a `label`
        is given) and the medium is returned without data, so the copy links to the original.
        """
        try:
            data, content_type = await fetch_file(
                self.session, url or item.url, self.policy, label=label
            )
            declared = item.mime if _family(item.mime) else content_type.split(";", 1)[0].strip()
            try:
                mime, size = verify(data, declared)
            except MediaError as error:
                raise MediaError(f"{label or describe(url or item.url)}: {error}") from None
        except MediaError as error:
            log.warning("%s: %s; carried as a link", self.account, error)
            return item
        width, height = size if size is not None else (item.width, item.height)
        return replace(item, data=data, mime=mime, width=width, height=height)


# --------------------------------------------------------------------------------------------------
# fitting under a target's limit


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


def fit_image(data: bytes, mime: str, max_bytes: int) -> tuple[bytes, str]:
    """Return the image unchanged when it fits, else a JPEG re-encoded and scaled until it does.

    Quality is lowered first (cheap, keeps resolution), then the image is scaled down, so that a photo
    loses as little as possible; transparency is flattened on white because JPEG has none.
    """
    if len(data) <= max_bytes:
        return data, mime
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode not in ("RGB", "L"):
                background = Image.new("RGB", image.size, "white")
                rgba = image.convert("RGBA")
                background.paste(rgba, mask=rgba.getchannel("A"))
                image = background
            scale = 1.0
            while True:
                size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
                resized = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
                for quality in (90, 80, 70, 60):
                    out = io.BytesIO()
                    resized.save(out, format="JPEG", quality=quality, optimize=True)
                    if out.tell() <= max_bytes:
                        return out.getvalue(), "image/jpeg"
                if size == (1, 1):
                    raise MediaError("image cannot be made small enough")
                scale *= 0.75
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(f"not an image Pillow can read: {error}") from error
