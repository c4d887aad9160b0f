"""End to end against the real reference PDS: what the daemon writes must be accepted by it.

The Python sandbox is checked against the real PDS by the contract test; this test closes the loop by
running the daemon itself against the real server for a thread, a long post and an image.
"""

from __future__ import annotations

from typing import Any

import pytest
import regex
from atproto import Client
from conftest import Networks
from harness import wait_for
from realpds import RealPds
from test_e2e_mastodon_source import noisy_jpeg

pytestmark = pytest.mark.pds


def posts_on(pds: RealPds, did: str) -> list[Any]:
    client = Client(base_url=pds.url)
    answer = client.com.atproto.repo.list_records(
        {"repo": did, "collection": "app.bsky.feed.post", "limit": 100}
    )
    return sorted(answer.records, key=lambda r: r.uri.rsplit("/", 1)[-1])


def test_daemon_mirrors_thread_long_post_and_image_to_the_real_pds(
    networks: Networks, real_pds: RealPds
) -> None:
    did, handle, password = real_pds.create_account("relay")
    networks.env["BSKY_APP_PASSWORD"] = password
    networks.bsky_handle = handle
    config = networks.write_config(bsky_url=real_pds.url)
    daemon = networks.daemon(config).start()
    editor = networks.editor()
    long_text = " ".join(f"sentence{i}" for i in range(40)) + " #RealPds https://example.org/x"
    try:
        first = editor.status_post("Real PDS thread (1/2) https://example.org/thread")
        editor.status_post("Real PDS thread (2/2)", in_reply_to_id=first["id"])
        editor.status_post(long_text)
        media = editor.media_post(
            noisy_jpeg(), mime_type="image/jpeg", description="Static noise", synchronous=True
        )
        editor.status_post("A real picture", media_ids=[media["id"]])
        wait_for(lambda: len(posts_on(real_pds, did)) >= 5, timeout=60, what="5 posts on the PDS")
    finally:
        daemon.stop()
    records = posts_on(real_pds, did)
    assert len(records) == 5
    by_text = {r.value.text: r for r in records}
    root = by_text["Real PDS thread (1/2) https://example.org/thread"]
    reply = by_text["Real PDS thread (2/2)"]
    assert reply.value.reply.parent.uri == root.uri
    assert reply.value.reply.root.cid == root.cid
    link = root.value.facets[0]
    text_bytes = root.value.text.encode()
    assert text_bytes[link.index.byte_start : link.index.byte_end] == b"https://example.org/thread"
    long_parts = [
        r for r in records if r.value.text.startswith("sentence") or "#RealPds" in r.value.text
    ]
    assert len(long_parts) == 2
    assert all(len(regex.findall(r"\X", r.value.text)) <= 300 for r in long_parts)
    picture = by_text["A real picture"]
    image = picture.value.embed.images[0]
    assert image.alt == "Static noise"
    assert image.image.size <= 1_000_000
