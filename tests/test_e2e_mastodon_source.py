"""End to end: the daemon as a process mirrors a Mastodon account to Bluesky and Telegram sandboxes.

Each test posts through Mastodon.py as a person would and checks what the target servers stored.
"""

from __future__ import annotations

import io
import random
import sqlite3
from typing import Any

import regex
from conftest import Networks
from harness import wait_for
from PIL import Image

ARABIC = "التقرير السنوي متاح الآن للجميع 🌍✨ 👩‍👩‍👧"


def utf8_slice(text: str, start: int, end: int) -> str:
    return text.encode("utf-8")[start:end].decode("utf-8")


def utf16_slice(text: str, offset: int, length: int) -> str:
    return text.encode("utf-16-le")[offset * 2 : (offset + length) * 2].decode("utf-16-le")


def value(record: Any) -> dict[str, Any]:
    return record.value if hasattr(record, "value") else record["value"]


def mirrored(networks: Networks, bsky: int, tg: int, timeout: float = 30) -> None:
    wait_for(
        lambda: len(networks.bsky_posts()) >= bsky and len(networks.tg_messages()) >= tg,
        timeout=timeout,
        what=f"{bsky} Bluesky posts and {tg} Telegram messages",
    )


def test_link_hashtag_and_arabic_with_emoji_keep_their_rich_text(networks: Networks) -> None:
    daemon = networks.daemon().start()
    try:
        url = "https://example.org/reports/2026/annual-report-with-a-long-path?lang=en"
        networks.editor().status_post(f"Report: {url} #OpenData\n\n{ARABIC}")
        mirrored(networks, 1, 1)
    finally:
        daemon.stop()
    record = value(networks.bsky_posts()[0])
    assert url in record["text"] and ARABIC in record["text"]
    features = {
        f["features"][0]["$type"]: utf8_slice(
            record["text"], f["index"]["byteStart"], f["index"]["byteEnd"]
        )
        for f in record["facets"]
    }
    assert features["app.bsky.richtext.facet#link"] == url
    assert features["app.bsky.richtext.facet#tag"] == "#OpenData"
    message = networks.tg_messages()[0]
    assert ARABIC in message["text"]
    kinds = {
        e["type"]: utf16_slice(message["text"], e["offset"], e["length"])
        for e in message["entities"]
    }
    assert url in kinds.get("url", kinds.get("text_link", ""))
    assert kinds["hashtag"] == "#OpenData"


def test_self_thread_is_mirrored_as_thread(networks: Networks) -> None:
    daemon = networks.daemon().start()
    editor = networks.editor()
    try:
        first = editor.status_post("Thread start (1/3)")
        second = editor.status_post("Middle (2/3)", in_reply_to_id=first["id"])
        editor.status_post("End (3/3)", in_reply_to_id=second["id"])
        mirrored(networks, 3, 3)
    finally:
        daemon.stop()
    posts = networks.bsky_posts()
    by_text = {value(p)["text"]: p for p in posts}
    root, middle, end = (by_text[t] for t in ("Thread start (1/3)", "Middle (2/3)", "End (3/3)"))
    assert "reply" not in value(root)
    assert value(middle)["reply"]["parent"]["uri"] == root.uri
    assert value(end)["reply"]["parent"]["uri"] == middle.uri
    assert value(end)["reply"]["root"]["uri"] == root.uri
    assert value(end)["reply"]["root"]["cid"] == root.cid
    messages = {m["text"]: m for m in networks.tg_messages()}
    assert "reply_to_message" not in messages["Thread start (1/3)"]
    assert (
        messages["Middle (2/3)"]["reply_to_message"]["message_id"]
        == messages["Thread start (1/3)"]["message_id"]
    )
    assert (
        messages["End (3/3)"]["reply_to_message"]["message_id"]
        == messages["Middle (2/3)"]["message_id"]
    )


def test_post_over_300_graphemes_becomes_a_bluesky_thread_at_word_boundaries(
    networks: Networks,
) -> None:
    words = [f"word{i}" for i in range(58)] + [
        "#LongRead",
        "https://example.org/a/long/link/to/keep",
    ]
    text = " ".join(words)
    assert 300 < len(text) <= 500
    daemon = networks.daemon().start()
    try:
        networks.editor().status_post(text)
        mirrored(networks, 2, 1)
    finally:
        daemon.stop()
    parts = [value(p) for p in networks.bsky_posts()]
    assert len(parts) == 2
    for part in parts:
        assert len(regex.findall(r"\X", part["text"])) <= 300
    assert " ".join(p["text"] for p in parts).split() == words
    assert parts[1]["reply"]["parent"]["uri"] == networks.bsky_posts()[0].uri
    assert any(
        f["features"][0].get("uri") == "https://example.org/a/long/link/to/keep"
        for p in parts
        for f in p.get("facets", [])
    )
    assert [m["text"] for m in networks.tg_messages()] == [text]


def noisy_jpeg(size: tuple[int, int] = (1400, 1000)) -> bytes:
    rng = random.Random(3)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_image_with_alt_text_is_copied_and_shrunk_under_bluesky_blob_limit(
    networks: Networks,
) -> None:
    data = noisy_jpeg()
    assert len(data) > 1_000_000
    daemon = networks.daemon().start()
    try:
        editor = networks.editor()
        media = editor.media_post(
            data, mime_type="image/jpeg", description="Noise, for testing", synchronous=True
        )
        editor.status_post("A picture", media_ids=[media["id"]])
        mirrored(networks, 1, 1)
    finally:
        daemon.stop()
    record = value(networks.bsky_posts()[0])
    image = record["embed"]["images"][0]
    assert image["alt"] == "Noise, for testing"
    blob = networks.loop.call(networks.bsky.blob, networks.bsky_did, image["image"]["ref"]["$link"])
    assert len(blob) <= 1_000_000
    assert Image.open(io.BytesIO(blob)).format == "JPEG"
    message = networks.tg_messages()[0]
    assert message["caption"] == "A picture"
    biggest = max(message["photo"], key=lambda p: p["file_size"])
    assert networks.loop.call(networks.tg.file_bytes, biggest["file_id"]) == data


def test_private_direct_boosts_and_replies_to_others_never_leave_mastodon(
    networks: Networks,
) -> None:
    other = networks.loop.call(networks.masto.create_account, "stranger")
    stranger = networks.editor().__class__(
        api_base_url=networks.masto.base_url, access_token=other.token, version_check_mode="none"
    )
    foreign = stranger.status_post("A stranger's post")
    daemon = networks.daemon().start()
    try:
        editor = networks.editor()
        editor.status_post("followers only", visibility="private")
        editor.status_post("@stranger a direct message", visibility="direct")
        editor.status_post("@stranger I disagree", in_reply_to_id=foreign["id"])
        editor.status_reblog(foreign["id"])
        editor.status_post("public marker")
        mirrored(networks, 1, 1)
    finally:
        daemon.stop()
    assert [value(p)["text"] for p in networks.bsky_posts()] == ["public marker"]
    assert [m["text"] for m in networks.tg_messages()] == ["public marker"]


def test_first_start_mirrors_nothing_from_the_past(networks: Networks) -> None:
    networks.editor().status_post("posted before relaybird was set up")
    daemon = networks.daemon().start()
    try:
        networks.editor().status_post("posted after")
        mirrored(networks, 1, 1)
    finally:
        daemon.stop()
    assert [value(p)["text"] for p in networks.bsky_posts()] == ["posted after"]


def test_restart_does_not_double_and_catches_up_what_was_posted_while_down(
    networks: Networks,
) -> None:
    daemon = networks.daemon().start()
    editor = networks.editor()
    try:
        first = editor.status_post("before the restart")
        mirrored(networks, 1, 1)
    finally:
        assert daemon.stop() == 0
    editor.status_post("while the daemon was down")
    editor.status_post("a reply while down", in_reply_to_id=first["id"])
    daemon.start()
    try:
        mirrored(networks, 3, 3)
        editor.status_post("after the restart")
        mirrored(networks, 4, 4)
    finally:
        daemon.stop()
    texts = [value(p)["text"] for p in networks.bsky_posts()]
    assert texts == [
        "before the restart",
        "while the daemon was down",
        "a reply while down",
        "after the restart",
    ]
    assert len(networks.tg_messages()) == 4
    reply = value(networks.bsky_posts()[2])
    assert reply["reply"]["parent"]["uri"] == networks.bsky_posts()[0].uri
    db = sqlite3.connect(networks.folder / "state.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM mappings").fetchone()[0] == 8


def test_healthz_reports_a_lost_stream_with_503(networks: Networks) -> None:
    daemon = networks.daemon().start()
    try:
        status, body = daemon.health() or (0, {})
        assert status == 200 and body["accounts"]["news_masto"]["connected"] is True
        networks.loop.run(networks.masto.stop())
        answer = wait_for(
            lambda: (h := daemon.health()) is not None and h[0] == 503 and h, timeout=20, what="503"
        )
        assert answer[1]["accounts"]["news_masto"]["connected"] is False
        assert answer[1]["accounts"]["news_bsky"]["connected"] is True
    finally:
        daemon.stop()


def test_a_card_the_server_fetches_after_the_status_still_reaches_bluesky(
    networks: Networks,
) -> None:
    """Mastodon streams a new status before its link card is fetched; the copy waits for it."""
    url = "https://example.org/story/late"
    networks.loop.call(
        lambda: networks.masto.register_card(url, "Late card", "Fetched later", fetched_after=1.0)
    )
    daemon = networks.daemon().start()
    try:
        status = networks.editor().status_post(f"Breaking: {url}")
        assert status["card"] is None  # as the server answered, and streamed, at creation
        mirrored(networks, 1, 1)
    finally:
        daemon.stop()
    external = value(networks.bsky_posts()[0])["embed"]["external"]
    assert (external["uri"], external["title"]) == (url, "Late card")


def test_link_card_becomes_a_bluesky_external_embed_with_thumbnail(networks: Networks) -> None:
    url = "https://example.org/story/card"
    thumb = noisy_jpeg((300, 200))
    networks.loop.call(networks.masto.register_card, url, "A story", "What happened", thumb)
    daemon = networks.daemon().start()
    try:
        networks.editor().status_post(f"Read this: {url}")
        mirrored(networks, 1, 1)
    finally:
        daemon.stop()
    external = value(networks.bsky_posts()[0])["embed"]["external"]
    assert (external["uri"], external["title"], external["description"]) == (
        url,
        "A story",
        "What happened",
    )
    blob = networks.loop.call(
        networks.bsky.blob, networks.bsky_did, external["thumb"]["ref"]["$link"]
    )
    assert blob == thumb
