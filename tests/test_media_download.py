"""Media downloads: only from the source's hosts, within size and time limits, and only real media.

Two local aiohttp servers play the source network's media host and a stranger's host; the
unmodified aiohttp client of relaybird fetches from them as it would in production.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
from aiohttp import web
from conftest import Networks
from PIL import Image

from relaybird.config import load_config
from relaybird.media import (
    MediaError,
    MediaFetcher,
    MediaPolicy,
    download,
    fetch_file,
    host_entry,
    sniff,
    verify,
)
from relaybird.model import Media
from relaybird.networks.mastodon import MastodonNetwork

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def png(size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 120, 10)).save(out, "JPEG")
    return out.getvalue()


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A few hundred bytes claiming 900 million pixels: Pillow must refuse it before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


HTML = b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"


@dataclass
class Host:
    """One local server; `hits` counts the requests that reached it, by path."""

    url: str = ""
    routes: dict[str, Handler] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def add(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url + path

    def serve(self, path: str, body: bytes, content_type: str) -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=content_type)

        return self.add(path, handler)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)


async def start_host() -> tuple[Host, web.AppRunner]:
    host = Host()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", host.dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return host, runner


@dataclass
class Rig:
    source: Host
    stranger: Host
    session: aiohttp.ClientSession
    policy: MediaPolicy

    def fetcher(self, **limits: float) -> MediaFetcher:
        return MediaFetcher(self.session, replace(self.policy, **limits), "source")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    source, source_runner = await start_host()
    stranger, stranger_runner = await start_host()
    session = aiohttp.ClientSession()
    try:
        yield Rig(source, stranger, session, MediaPolicy.of(source.url))
    finally:
        await session.close()
        await source_runner.cleanup()
        await stranger_runner.cleanup()


# --------------------------------------------------------------------------------------------------
# what is accepted, and what is recorded


async def test_real_image_is_fetched_with_its_sniffed_type_and_size(rig: Rig) -> None:
    data = png((8, 6))
    url = rig.source.serve("/a.png", data, "image/png")
    fetched = await rig.fetcher().fetch(Media(mime="image/png", url=url, alt="a chart"))
    assert (fetched.data, fetched.mime, fetched.width, fetched.height) == (data, "image/png", 8, 6)
    assert (fetched.alt, fetched.url) == ("a chart", url)


async def test_the_bytes_decide_the_recorded_type_not_the_server_nor_the_post(rig: Rig) -> None:
    data = jpeg()
    url = rig.source.serve("/photo.png", data, "image/png")
    fetched = await rig.fetcher().fetch(Media(mime="image/png", url=url))
    assert fetched.data == data
    assert fetched.mime == "image/jpeg"


async def test_untyped_medium_takes_the_type_its_bytes_show(rig: Rig) -> None:
    url = rig.source.serve("/file", png(), "application/octet-stream")
    fetched = await rig.fetcher().fetch(Media(mime="application/octet-stream", url=url))
    assert fetched.mime == "image/png" and fetched.data is not None


# --------------------------------------------------------------------------------------------------
# what is refused: the medium stays a link (no data), and one line says why


async def refused(rig: Rig, caplog: pytest.LogCaptureFixture, item: Media, **limits: float) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="relaybird.media"):
        fetched = await rig.fetcher(**limits).fetch(item)
    assert fetched == item, "a refused medium is carried unchanged, as a link"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    return warnings[0].getMessage()


async def test_html_served_as_png_is_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    url = rig.source.serve("/lying.png", HTML, "image/png")
    message = await refused(rig, caplog, Media(mime="image/png", url=url))
    assert "markup" in message and "carried as a link" in message


async def test_zero_byte_file_is_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    url = rig.source.serve("/empty.jpg", b"", "image/jpeg")
    assert "empty" in await refused(rig, caplog, Media(mime="image/jpeg", url=url))


async def test_png_header_over_garbage_is_refused(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    url = rig.source.serve("/broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png")
    assert "cannot be read" in await refused(rig, caplog, Media(mime="image/png", url=url))


async def test_decompression_bomb_is_refused_before_decoding(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    url = rig.source.serve("/bomb.png", png_bomb(), "image/png")
    started = time.monotonic()
    message = await refused(rig, caplog, Media(mime="image/png", url=url))
    assert "Decompression" in message
    assert time.monotonic() - started < 2


async def test_video_posing_as_a_photo_is_refused(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
    url = rig.source.serve("/clip", mp4, "image/jpeg")
    assert "video/mp4" in await refused(rig, caplog, Media(mime="image/jpeg", url=url))


async def test_oversize_is_refused_from_its_content_length_without_reading_it(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[int] = []

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 5_000_000
        await response.prepare(request)
        chunk = b"\x00" * 65536
        try:
            for _ in range(5_000_000 // len(chunk)):
                await response.write(chunk)
                sent.append(len(chunk))
                await asyncio.sleep(0.01)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return response

    url = rig.source.add("/big.png", big)
    message = await refused(rig, caplog, Media(mime="image/png", url=url), max_bytes=100_000)
    assert "5000000 bytes, over 100000" in message
    assert sum(sent) < 5_000_000


async def test_oversize_without_length_is_cut_off_while_reading(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(200):
                await response.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 65528)
                sent.append(65536)
                await asyncio.sleep(0.005)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return response

    url = rig.source.add("/stream.png", endless)
    message = await refused(rig, caplog, Media(mime="image/png", url=url), max_bytes=200_000)
    assert "over 200000 bytes" in message
    await asyncio.sleep(0.1)
    assert sum(sent) < 200 * 65536, "the download stopped at the cap, not at the end"


async def test_stalled_transfer_times_out_on_read(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async def stalled(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"\x89PNG")
        await asyncio.sleep(5)
        return response

    url = rig.source.add("/stalled.png", stalled)
    started = time.monotonic()
    message = await refused(rig, caplog, Media(mime="image/png", url=url), read_timeout=0.3)
    assert "Timeout" in message
    assert time.monotonic() - started < 2


async def test_trickling_transfer_times_out_on_the_total(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 1000
        await response.prepare(request)
        try:
            for _ in range(1000):
                await response.write(b"\x00")
                await asyncio.sleep(0.1)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return response

    url = rig.source.add("/trickle.png", trickle)
    started = time.monotonic()
    message = await refused(
        rig, caplog, Media(mime="image/png", url=url), read_timeout=1.0, total_timeout=0.6
    )
    assert "Timeout" in message
    assert time.monotonic() - started < 2


async def test_foreign_host_is_never_contacted(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    url = rig.stranger.serve("/tracker.png", png(), "image/png")
    message = await refused(rig, caplog, Media(mime="image/png", url=url))
    assert "not a media host of the source" in message
    assert rig.stranger.hits == []


async def test_redirect_to_a_foreign_host_is_not_followed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = rig.stranger.serve("/x.png", png(), "image/png")

    async def bounce(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(elsewhere)

    url = rig.source.add("/bounce.png", bounce)
    assert "not a media host" in await refused(rig, caplog, Media(mime="image/png", url=url))
    assert rig.stranger.hits == []


async def test_redirect_within_the_source_is_followed(rig: Rig) -> None:
    data = png()
    target = rig.source.serve("/real.png", data, "image/png")

    async def bounce(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(target)

    url = rig.source.add("/moved.png", bounce)
    fetched = await rig.fetcher().fetch(Media(mime="image/png", url=url))
    assert fetched.data == data


async def test_error_status_is_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    async def gone(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, body=HTML, content_type="text/html")

    url = rig.source.add("/gone.png", gone)
    message = await refused(rig, caplog, Media(mime="image/png", url=url))
    assert "HTTP 502" in message and "<html" not in message


async def test_a_label_keeps_a_secret_url_out_of_the_log(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    url = rig.source.serve("/file/bot123:SECRET-TOKEN/photos/1.jpg", HTML, "image/jpeg")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="relaybird.media"):
        fetched = await rig.fetcher().fetch(
            Media(mime="image/jpeg", url="tg-file:ABC"), url=url, label="Telegram photo"
        )
    assert fetched.data is None and fetched.url == "tg-file:ABC"
    assert "Telegram photo" in caplog.text and "SECRET" not in caplog.text


async def test_plain_download_keeps_its_size_cap_and_own_host(rig: Rig) -> None:
    data = png()
    url = rig.source.serve("/p.png", data, "image/png")
    assert await download(rig.session, url) == data
    with pytest.raises(MediaError, match="over 10"):
        await download(rig.session, url, limit=10)
    elsewhere = rig.stranger.serve("/y.png", data, "image/png")

    async def bounce(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(elsewhere)

    with pytest.raises(MediaError, match="not a media host"):
        await download(rig.session, rig.source.add("/b.png", bounce))


async def test_fetch_file_reports_the_content_type(rig: Rig) -> None:
    url = rig.source.serve("/c.png", png(), "image/png")
    data, content_type = await fetch_file(rig.session, url, rig.policy)
    assert data.startswith(b"\x89PNG") and content_type == "image/png"


# --------------------------------------------------------------------------------------------------
# the pieces


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("https://files.example.social/a.png", "files.example.social"),
        ("https://Files.Example.Social.:443/a", "files.example.social"),
        ("http://127.0.0.1:8080/x", "127.0.0.1:8080"),
        ("wss://pds.example/xrpc", "pds.example"),
        ("http://[::1]:9000/x", "[::1]:9000"),
        ("ftp://files.example/x", None),
        ("javascript:alert(1)", None),
        ("http://user:pw@files.example/x", None),
        ("http://[::1/x", None),
    ],
)
def test_host_entries(url: str, entry: str | None) -> None:
    assert host_entry(url) == entry


def test_policy_matches_hosts_ports_and_wildcards() -> None:
    policy = MediaPolicy.of(
        "https://social.example", extra_hosts=["*.cdn.example", "media.example:8443"]
    )
    assert policy.allows("https://social.example/system/a.png")
    assert not policy.allows("https://social.example:8443/a.png"), "another port, another service"
    assert policy.allows("https://eu.files.cdn.example/a.png")
    assert not policy.allows("https://cdn.example.evil/a.png")
    assert not policy.allows("https://evilcdn.example/a.png")
    assert policy.allows("https://media.example:8443/a.png")
    assert not policy.allows("https://media.example/a.png")
    assert not policy.allows("https://user@social.example/a.png")
    assert not policy.allows("file:///etc/passwd")
    assert policy.with_hosts("https://s3.example/x").allows("https://s3.example/y.png")


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"GIF89a....", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00", "image/avif"),
        (b"\x00\x00\x00\x1cftypisom\x00\x00", "video/mp4"),
        (b"\x00\x00\x00\x1cftypqt  \x00\x00", "video/quicktime"),
        (b"\x1aE\xdf\xa3\x01\x00", "video/webm"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"ID3\x04\x00", "audio/mpeg"),
        (b"%PDF-1.7\n", "application/pdf"),
        (HTML, None),
        (b'{"error": "not found"}', None),
        (b"", None),
    ],
)
def test_sniffing_reads_magic_numbers(data: bytes, mime: str | None) -> None:
    assert sniff(data) == mime


def test_verify_refuses_what_is_not_what_it_claims() -> None:
    assert verify(png((3, 2)), "image/png") == ("image/png", (3, 2))
    assert verify(b"%PDF-1.4 x", "application/pdf") == ("application/pdf", None)
    for data, declared in ((b"", "image/png"), (HTML, "image/png"), (b"x" * 100, "")):
        with pytest.raises(MediaError):
            verify(data, declared)


# --------------------------------------------------------------------------------------------------
# a Mastodon server whose media live on a CDN host of its own


async def test_mastodon_media_host_is_learnt_from_the_server_not_from_statuses(
    networks: Networks, rig: Rig
) -> None:
    """The instance thumbnail names the CDN; an attachment there is fetched, a stranger's not."""
    url = f"{networks.masto.base_url}/api/v2/instance"
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        instance = await answer.json()
    instance["thumbnail"] = {"url": f"{rig.source.url}/site_uploads/thumbnail.png"}

    async def announce_cdn(request: web.Request) -> web.StreamResponse | None:
        return web.json_response(instance) if request.path == "/api/v2/instance" else None

    networks.loop.call(networks.masto.hooks.append, announce_cdn)
    config = load_config(networks.write_config(), networks.env)
    network = MastodonNetwork(config.accounts["news_masto"])
    await network.open()
    try:
        data = png()
        on_cdn = rig.source.serve("/media_attachments/files/1/original/a.png", data, "image/png")
        elsewhere = rig.stranger.serve("/a.png", data, "image/png")
        fetched = await network.media.fetch(Media(mime="image/png", url=on_cdn))
        refused = await network.media.fetch(Media(mime="image/png", url=elsewhere))
    finally:
        await network.close()
    assert fetched.data == data
    assert refused.data is None and rig.stranger.hits == []
