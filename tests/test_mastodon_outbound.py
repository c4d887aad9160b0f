"""The Mastodon adapter's writes over the REST API, against the Mastodon sandbox.

The end-to-end tests show copies arriving; these pin what the adapter sends and how it reads a
server's refusals, which the worker's retry and dead-letter decisions rest on.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from conftest import Networks
from PIL import Image

from relaybird.model import Media, Post, TargetRef, Visibility
from relaybird.networks.base import PermanentError, ReplyTarget, TemporaryError
from relaybird.networks.mastodon import MastodonNetwork


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def opened(networks: Networks) -> MastodonNetwork:
    network = MastodonNetwork(networks.accounts()["news_masto"])
    await network.open()
    return network


def stored(networks: Networks, status_id: str) -> Any:
    return networks.loop.call(lambda: networks.masto.store.statuses[status_id])


async def test_a_create_sends_every_field_and_one_key_makes_one_status(networks: Networks) -> None:
    network = await opened(networks)
    try:
        parent = await network.publish(Post(id="p", text="parent"), None, "key-parent", False)
        post = Post(
            id="s",
            text="warned reply",
            content_warning="spoilers",
            sensitive=True,
            visibility=Visibility.UNLISTED,
            language="de",
        )
        reply = ReplyTarget(parent=parent, root=parent)
        first = await network.publish(post, reply, "key-reply", False)
        again = await network.publish(post, reply, "key-reply", True)
    finally:
        await network.close()
    assert again.id == first.id
    status = stored(networks, first.id)
    assert (status.text, status.spoiler_text, status.visibility) == (
        "warned reply",
        "spoilers",
        "unlisted",
    )
    assert status.sensitive and status.language == "de"
    assert status.in_reply_to_id == parent.id
    assert first.url.endswith(first.id)


async def test_an_image_still_processing_is_waited_for_before_the_status(
    networks: Networks,
) -> None:
    def defer() -> None:
        networks.masto.store.defer_image_processing = True
        networks.masto.store.media_polls_before_ready = 2

    networks.loop.call(defer)
    network = await opened(networks)
    try:
        image = Media(mime="image/png", alt="a red square", data=png())
        ref = await network.publish(
            Post(id="m", text="with image", media=[image]), None, "k", False
        )
    finally:
        await network.close()
    status = stored(networks, ref.id)
    items = networks.loop.call(lambda: [networks.masto.store.media[i] for i in status.media_ids])
    assert [(item.ready, item.description) for item in items] == [(True, "a red square")]


async def test_edit_keeps_the_attachments_and_delete_of_a_missing_status_is_done(
    networks: Networks,
) -> None:
    network = await opened(networks)
    try:
        image = Media(mime="image/png", alt="", data=png())
        ref = await network.publish(Post(id="e", text="before", media=[image]), None, "k", False)
        await network.edit(ref, Post(id="e", text="after"))
        status = stored(networks, ref.id)
        assert (status.text, len(status.media_ids)) == ("after", 1)
        await network.delete(ref)
        await network.delete(ref)  # already gone: nothing left to do, not an error
    finally:
        await network.close()
    assert stored(networks, ref.id).deleted


async def test_refusals_are_permanent_and_server_trouble_is_temporary(networks: Networks) -> None:
    network = await opened(networks)
    try:
        with pytest.raises(PermanentError, match="refused: Validation failed"):
            await network.publish(Post(id="x", text=""), None, "k-empty", False)
        with pytest.raises(PermanentError, match="not found"):
            await network.edit(TargetRef(id="999999999"), Post(id="x", text="t"))
        networks.loop.call(lambda: networks.masto.faults.fail(503, times=1))
        with pytest.raises(TemporaryError, match="server error"):
            await network.publish(Post(id="x", text="t"), None, "k-503", False)
        networks.loop.call(lambda: networks.masto.faults.malformed(times=1))
        with pytest.raises(TemporaryError, match="not JSON"):
            await network.publish(Post(id="x", text="t"), None, "k-bad", False)
    finally:
        await network.close()


async def test_a_long_post_with_a_warning_is_split_so_that_every_part_is_accepted(
    networks: Networks,
) -> None:
    """The sandbox counts spoiler_text + status against max_characters, as Mastodon does."""
    from relaybird.fitting import fit_post

    network = await opened(networks)
    warning = "Spoilers: the whole plot of the film, in detail, from start to end"
    source = Post(id="long", text=" ".join(f"word{i}" for i in range(140)), content_warning=warning)
    try:
        parts = fit_post(source, network.capabilities)
        refs = [await network.publish(part, None, f"k{i}", False) for i, part in enumerate(parts)]
    finally:
        await network.close()
    assert len(refs) == len(parts) >= 2
    assert all(stored(networks, ref.id).spoiler_text == warning for ref in refs)
