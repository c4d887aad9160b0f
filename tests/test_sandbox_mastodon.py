"""The Mastodon sandbox, driven through the unmodified Mastodon.py client and raw HTTP.

Mastodon.py is synchronous and the sandbox runs on the test's event loop, so every client call goes
through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mastodon import (
    Mastodon,
    MastodonAPIError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonUnauthorizedError,
    StreamListener,
)
from PIL import Image

from relaybird.sandbox.mastodon import MastodonSandbox, SandboxAccount

call = asyncio.to_thread


def png(width: int = 40, height: int = 30, colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def client(box: MastodonSandbox, account: SandboxAccount, **options: Any) -> Mastodon:
    return Mastodon(
        api_base_url=box.base_url,
        access_token=account.token,
        version_check_mode="none",
        **options,
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def box() -> AsyncIterator[MastodonSandbox]:
    sandbox = MastodonSandbox(heartbeat_seconds=0.2)
    await sandbox.start()
    yield sandbox
    await sandbox.stop()


@pytest.fixture
def alice(box: MastodonSandbox) -> SandboxAccount:
    return box.create_account("alice", "Alice")


@pytest.fixture
def bob(box: MastodonSandbox) -> SandboxAccount:
    return box.create_account("bob", "Bob")


async def upload_ready(api: Mastodon, data: bytes, description: str) -> Any:
    pending = await call(api.media_post, data, mime_type="image/png", description=description)
    return await call(api.media, pending)


# posting


async def test_post_is_stored_with_permalink_and_plain_source(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    posted = await call(api.status_post, "Hello <world> & friends", language="de")

    assert posted.content == "<p>Hello &lt;world&gt; &amp; friends</p>"
    assert posted.url == f"{box.base_url}/@alice/{posted.id}"
    assert posted.account.acct == "alice"
    assert posted.language == "de"
    assert posted.reblog is None and posted.edited_at is None
    stored = box.statuses_of("alice")
    assert [s["id"] for s in stored] == [str(posted.id)]
    assert box.source_text(str(posted.id)) == "Hello <world> & friends"
    source = await call(api.status_source, posted)
    assert source.text == "Hello <world> & friends"


async def test_post_accepts_json_bodies_like_form_bodies(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    headers = {"Authorization": f"Bearer {alice.token}"}
    body = {"status": "json body", "spoiler_text": "cw", "visibility": "unlisted"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{box.base_url}/api/v1/statuses", json=body, headers=headers) as response,
    ):
        assert response.status == 200
        status = await response.json()
    assert status["content"] == "<p>json body</p>"
    assert status["spoiler_text"] == "cw"
    assert status["sensitive"] is True
    assert status["visibility"] == "unlisted"


async def test_self_thread_links_each_reply_to_its_parent(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    api = client(box, alice)
    first = await call(api.status_post, "1/3")
    second = await call(api.status_post, "2/3", in_reply_to_id=first)
    third = await call(api.status_post, "3/3", in_reply_to_id=second)
    other = await call(client(box, bob).status_post, "nice thread", in_reply_to_id=third)

    assert (second.in_reply_to_id, second.in_reply_to_account_id) == (first.id, first.account.id)
    assert third.in_reply_to_id == second.id
    assert other.in_reply_to_account_id == third.account.id
    context = await call(api.status_context, third)
    assert [s.id for s in context.ancestors] == [first.id, second.id]
    assert [s.id for s in context.descendants] == [other.id]


async def test_exclude_replies_keeps_self_replies_and_drops_replies_to_others(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    alice_api, bob_api = client(box, alice), client(box, bob)
    root = await call(alice_api.status_post, "root")
    own_reply = await call(alice_api.status_post, "more", in_reply_to_id=root)
    bobs = await call(bob_api.status_post, "bob says")
    await call(alice_api.status_post, "answer to bob", in_reply_to_id=bobs)

    listed = await call(alice_api.account_statuses, alice.id, exclude_replies=True)
    assert [s.id for s in listed] == [own_reply.id, root.id]


async def test_unknown_reply_parent_is_404(box: MastodonSandbox, alice: SandboxAccount) -> None:
    with pytest.raises(MastodonNotFoundError) as raised:
        await call(client(box, alice).status_post, "orphan", in_reply_to_id="12345")
    assert raised.value.args[1] == 404
    assert raised.value.args[3] == "Record not found"
    assert box.statuses_of("alice") == []


async def test_idempotency_key_returns_the_same_status_once_per_account(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    api = client(box, alice)
    first = await call(api.status_post, "only once", idempotency_key="delivery-1")
    again = await call(api.status_post, "only once", idempotency_key="delivery-1")
    other = await call(client(box, bob).status_post, "bob", idempotency_key="delivery-1")

    assert again.id == first.id
    assert other.id != first.id
    assert len(box.statuses_of("alice")) == 1
    assert box.count_requests("POST", "/api/v1/statuses") == 3


# length limits


async def test_text_over_the_limit_is_refused_with_mastodons_message(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    await call(api.status_post, "a" * 500)
    with pytest.raises(MastodonAPIError) as raised:
        await call(api.status_post, "a" * 501)
    assert raised.value.args[1] == 422
    assert raised.value.args[3] == "Validation failed: Text character limit of 500 exceeded"
    assert len(box.statuses_of("alice")) == 1


async def test_urls_count_23_and_remote_mentions_count_their_username(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    long_url = "https://example.com/" + "p" * 200
    await call(api.status_post, "a" * 476 + " " + long_url)  # 476 + 1 + 23 = 500
    mention = "@someone@a-very-long-remote-domain.example"
    await call(api.status_post, mention + " " + "b" * (500 - len("@someone ")))
    with pytest.raises(MastodonAPIError):
        await call(api.status_post, "a" * 477 + " " + long_url)
    assert len(box.statuses_of("alice")) == 2


async def test_content_warning_counts_towards_the_limit(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    with pytest.raises(MastodonAPIError) as raised:
        await call(client(box, alice).status_post, "a" * 490, spoiler_text="c" * 11)
    assert raised.value.args[1] == 422


async def test_limit_follows_the_constructor_and_the_instance_reports_it() -> None:
    sandbox = MastodonSandbox(max_characters=50, image_size_limit=1234)
    await sandbox.start()
    try:
        account = sandbox.create_account("tiny")
        api = client(sandbox, account)
        instance = await call(api.instance_v2)
        assert instance.configuration.statuses.max_characters == 50
        assert instance.configuration.statuses.max_media_attachments == 4
        assert instance.configuration.statuses.characters_reserved_per_url == 23
        assert instance.configuration.media_attachments.image_size_limit == 1234
        assert instance.configuration.urls.streaming == "ws" + sandbox.base_url[4:]
        v1 = await call(api.instance_v1)
        assert v1.urls.streaming_api == "ws" + sandbox.base_url[4:]
        with pytest.raises(MastodonAPIError, match="character limit of 50"):
            await call(api.status_post, "x" * 51)
    finally:
        await sandbox.stop()


# HTML


async def test_html_renders_links_hashtags_and_mentions_like_mastodon(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    text = (
        "Hi @bob and @carol@remote.example!\n"
        "Read https://example.com/a/really/long/path/for/testing?x=1 and https://short.example/\n\n"
        "#Relay's it"
    )
    posted = await call(client(box, alice).status_post, text)
    base = box.base_url
    assert posted.content == (
        '<p>Hi <span class="h-card" translate="no">'
        f'<a href="{base}/@bob" class="u-url mention">@<span>bob</span></a></span> and '
        '<span class="h-card" translate="no">'
        '<a href="https://remote.example/@carol" class="u-url mention">@<span>carol</span></a>'
        "</span>!<br />Read "
        '<a href="https://example.com/a/really/long/path/for/testing?x=1" target="_blank" '
        'rel="nofollow noopener" translate="no"><span class="invisible">https://</span>'
        '<span class="ellipsis">example.com/a/really/long/path</span>'
        '<span class="invisible">/for/testing?x=1</span></a> and '
        '<a href="https://short.example/" target="_blank" rel="nofollow noopener" translate="no">'
        '<span class="invisible">https://</span><span class="">short.example/</span>'
        '<span class="invisible"></span></a></p>'
        f'<p><a href="{base}/tags/Relay" class="mention hashtag" rel="tag">#<span>Relay</span></a>'
        "&#39;s it</p>"
    )
    assert [(m.acct, m.url) for m in posted.mentions] == [
        ("bob", f"{base}/@bob"),
        ("carol@remote.example", "https://remote.example/@carol"),
    ]
    assert [(t.name, t.url) for t in posted.tags] == [("relay", f"{base}/tags/relay")]
    remote = await call(client(box, alice).account, posted.mentions[1].id)
    assert remote.acct == "carol@remote.example"


async def test_paragraphs_and_line_breaks_follow_rails_simple_format(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    posted = await call(client(box, alice).status_post, "one\ntwo\n\n\nthree\r\nfour\n")
    assert posted.content == "<p>one<br />two</p><p>three<br />four</p>"


async def test_trailing_punctuation_stays_outside_links_but_balanced_parens_stay_inside(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    text = "See https://example.com/x. And (https://en.example.org/wiki/A_(b))!"
    posted = await call(client(box, alice).status_post, text)
    hrefs = re.findall(r'href="([^"]+)"', posted.content)
    assert hrefs == ["https://example.com/x", "https://en.example.org/wiki/A_(b)"]
    assert "</a>. And (" in posted.content
    assert posted.content.endswith("</a>)!</p>")


async def test_length_is_counted_in_grapheme_clusters(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467"
    api = client(box, alice)
    await call(api.status_post, family * 500)
    with pytest.raises(MastodonAPIError):
        await call(api.status_post, family * 501)
    assert box.source_text(box.statuses_of("alice")[0]["id"]) == family * 500


async def test_unknown_local_mention_stays_plain_text(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    posted = await call(client(box, alice).status_post, "hello @nobody")
    assert posted.content == "<p>hello @nobody</p>"
    assert posted.mentions == []


# media


async def test_media_upload_answers_202_then_ready_with_alt_text_and_size(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    data = png(64, 48)
    pending = await call(api.media_post, data, mime_type="image/png", description="a red box")
    assert pending.url is None
    assert ("POST", "/api/v2/media", 202) in box.requests_log
    ready = await call(api.media, pending)
    assert ready.type == "image"
    assert ready.description == "a red box"
    assert (ready.meta.original.width, ready.meta.original.height) == (64, 48)
    async with aiohttp.ClientSession() as http, http.get(ready.url) as response:
        assert response.status == 200
        assert response.content_type == "image/png"
        assert await response.read() == data

    posted = await call(api.status_post, "look", media_ids=[ready])
    assert [(m.id, m.description) for m in posted.media_attachments] == [(ready.id, "a red box")]
    assert box.media_bytes(str(ready.id)) == data


async def test_media_polls_answer_206_until_processing_finishes() -> None:
    sandbox = MastodonSandbox(media_polls_before_ready=2)
    await sandbox.start()
    try:
        account = sandbox.create_account("poller")
        api = client(sandbox, account)
        pending = await call(api.media_post, png(), mime_type="image/png")
        assert (await call(api.media, pending)).url is None
        assert (await call(api.media, pending)).url is None
        assert (await call(api.media, pending)).url is not None
        statuses = [r.status for r in sandbox.requests_log if r.path.startswith("/api/v1/media/")]
        assert statuses == [206, 206, 200]
    finally:
        await sandbox.stop()


async def test_synchronous_media_post_of_mastodon_py_returns_a_url(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    uploaded = await call(
        api.media_post, png(), mime_type="image/png", description="sync", synchronous=True
    )
    assert uploaded.url.startswith(box.base_url)
    assert uploaded.description == "sync"


async def test_unprocessed_media_cannot_be_attached(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    pending = await call(api.media_post, png(), mime_type="image/png")
    with pytest.raises(MastodonAPIError) as raised:
        await call(api.status_post, "too early", media_ids=[pending])
    assert raised.value.args[1] == 422
    assert "not finished processing" in raised.value.args[3]


async def test_more_than_four_media_are_refused(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    media = [await upload_ready(api, png(colour=c), c) for c in ("red", "green", "blue", "white")]
    media.append(await upload_ready(api, png(colour="black"), "black"))
    with pytest.raises(MastodonAPIError) as raised:
        await call(api.status_post, "five", media_ids=media)
    assert raised.value.args[1] == 422
    assert raised.value.args[3] == "Cannot attach more than 4 files"
    posted = await call(api.status_post, "four", media_ids=media[:4])
    assert [m.description for m in posted.media_attachments] == ["red", "green", "blue", "white"]


async def test_media_over_the_size_limit_is_refused() -> None:
    sandbox = MastodonSandbox(image_size_limit=100)
    await sandbox.start()
    try:
        api = client(sandbox, sandbox.create_account("big"))
        with pytest.raises(MastodonAPIError) as raised:
            await call(api.media_post, png(200, 200), mime_type="image/png")
        assert raised.value.args[1] == 422
        assert "file size" in raised.value.args[3]
    finally:
        await sandbox.stop()


async def test_media_description_can_be_changed_before_posting(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    ready = await upload_ready(api, png(), "first")
    updated = await call(api.media_update, ready, description="second", focus=(0.5, -0.25))
    assert updated.description == "second"
    assert (updated.meta.focus.x, updated.meta.focus.y) == (0.5, -0.25)
    posted = await call(api.status_post, "", media_ids=[ready])
    assert posted.content == ""
    assert posted.media_attachments[0].description == "second"


# edit, delete, boost


async def test_edit_sets_edited_at_and_keeps_history(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    posted = await call(api.status_post, "frist")
    edited = await call(api.status_update, posted, "first #fixed")
    assert edited.id == posted.id
    assert edited.edited_at is not None
    assert edited.content.startswith("<p>first <a href=")
    assert box.source_text(str(posted.id)) == "first #fixed"
    history = await call(api.status_history, posted)
    assert [h.content for h in history] == ["<p>frist</p>", edited.content]


async def test_others_cannot_edit_or_delete(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    posted = await call(client(box, alice).status_post, "mine")
    bob_api = client(box, bob)
    with pytest.raises(MastodonAPIError) as raised:
        await call(bob_api.status_delete, posted)
    assert raised.value.args[1] == 403
    with pytest.raises(MastodonAPIError):
        await call(bob_api.status_update, posted, "theirs")
    assert box.source_text(str(posted.id)) == "mine"


async def test_delete_returns_the_source_text_and_the_status_is_gone(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    posted = await call(api.status_post, "short-lived #tag")
    deleted = await call(api.status_delete, posted)
    assert deleted.text == "short-lived #tag"
    assert deleted.id == posted.id
    assert box.statuses_of("alice") == []
    assert box.status(str(posted.id)) is None
    with pytest.raises(MastodonNotFoundError):
        await call(api.status, posted)


async def test_reblog_is_a_new_status_wrapping_the_original(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    original = await call(client(box, alice).status_post, "boost me")
    boosted = await call(client(box, bob).status_reblog, original)
    assert boosted.id != original.id
    assert boosted.reblog.id == original.id
    assert boosted.account.acct == "bob"
    again = await call(client(box, bob).status_reblog, original)
    assert again.id == boosted.id
    notes = box.notifications_of("alice")
    assert [(n["type"], n["account"]["acct"]) for n in notes] == [("reblog", "bob")]
    without = await call(client(box, alice).account_statuses, bob.id, exclude_reblogs=True)
    assert without == []


# catch-up


async def test_catch_up_with_since_id_and_link_pagination(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    posted = [await call(api.status_post, f"post {n}") for n in range(6)]

    newer = await call(api.account_statuses, alice.id, since_id=posted[1].id)
    assert [s.id for s in newer] == [p.id for p in reversed(posted[2:])]

    oldest_first = await call(api.account_statuses, alice.id, min_id=posted[0].id, limit=2)
    assert [s.id for s in oldest_first] == [posted[2].id, posted[1].id]

    page = await call(api.account_statuses, alice.id, limit=4)
    assert [s.id for s in page] == [p.id for p in reversed(posted[2:])]
    older = await call(api.fetch_next, page)
    assert [s.id for s in older] == [posted[1].id, posted[0].id]


async def test_link_header_has_next_only_after_a_full_page(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    api = client(box, alice)
    posted = [await call(api.status_post, f"post {n}") for n in range(3)]
    url = f"{box.base_url}/api/v1/accounts/{alice.id}/statuses"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"limit": "2"}) as response:
            link = response.headers["Link"]
        assert f'<{url}?limit=2&max_id={posted[1].id}>; rel="next"' in link
        assert f'<{url}?limit=2&min_id={posted[2].id}>; rel="prev"' in link
        async with http.get(url, params={"limit": "5"}) as response:
            assert 'rel="next"' not in response.headers["Link"]


# notifications


async def test_mentions_create_notifications_filtered_by_type_and_since_id(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    alice_api, bob_api = client(box, alice), client(box, bob)
    first = await call(alice_api.status_post, "hey @bob")
    await call(bob_api.status_reblog, await call(alice_api.status_post, "boost"))
    second = await call(alice_api.status_post, "again @bob")

    mentions = await call(bob_api.notifications, types=["mention"])
    assert [(n.type, n.status.id) for n in mentions] == [
        ("mention", second.id),
        ("mention", first.id),
    ]
    newer = await call(bob_api.notifications, since_id=mentions[1].id)
    assert [n.status.id for n in newer] == [second.id]
    assert await call(bob_api.notifications, types=["reblog"]) == []
    one = await call(bob_api.notifications, id=mentions[0].id)
    assert one.account.acct == "alice"


# streaming


class Recorder(StreamListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.heartbeats = 0
        self._lock = threading.Lock()

    def on_any_event(self, name: str, data: Any = None) -> None:
        with self._lock:
            self.events.append((name, data))

    def handle_heartbeat(self) -> None:
        self.heartbeats += 1

    def names(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.events]


async def test_mastodon_py_user_stream_gets_update_edit_delete_and_notification(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    box.follow("bob", "alice")
    recorder = Recorder()
    handle = await call(client(box, bob).stream_user, recorder, run_async=True)
    try:
        await wait_until(lambda: box.hub.connection_count == 1)
        alice_api = client(box, alice)
        posted = await call(alice_api.status_post, "streamed @bob")
        await call(alice_api.status_update, posted, "streamed and edited @bob")
        await call(alice_api.status_delete, posted)
        await wait_until(lambda: len(recorder.names()) >= 4)
        await wait_until(lambda: recorder.heartbeats >= 2)
    finally:
        await call(handle.close)
        await call(handle.join, 5)
    assert not handle.is_alive()

    names = recorder.names()
    assert sorted(names) == ["delete", "notification", "status.update", "update"]
    assert names.index("update") < names.index("status.update") < names.index("delete")
    by_name = dict(recorder.events)
    assert by_name["update"].id == posted.id
    assert by_name["notification"].type == "mention"
    assert by_name["notification"].status.id == posted.id
    assert by_name["status.update"]["content"].startswith("<p>streamed and edited")
    assert str(by_name["delete"]) == str(posted.id)
    await wait_until(lambda: box.hub.connection_count == 0)


async def test_user_stream_only_carries_home_statuses(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    stranger = box.create_account("stranger")
    recorder = Recorder()
    handle = await call(client(box, bob).stream_user, recorder, run_async=True)
    try:
        await wait_until(lambda: box.hub.connection_count == 1)
        await call(client(box, stranger).status_post, "not followed")
        own = await call(client(box, bob).status_post, "my own")
        await wait_until(lambda: len(recorder.names()) >= 1)
        await asyncio.sleep(0.1)
    finally:
        await call(handle.close)
        await call(handle.join, 5)
    assert [(name, data.id) for name, data in recorder.events] == [("update", own.id)]


async def test_websocket_stream_multiplexes_json_string_payloads(
    box: MastodonSandbox, alice: SandboxAccount, bob: SandboxAccount
) -> None:
    box.follow("bob", "alice")
    url = f"{box.base_url}/api/v1/streaming?access_token={bob.token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as socket:
        await socket.send_json({"type": "subscribe", "stream": "user"})
        await socket.send_json({"type": "subscribe", "stream": "nonsense"})
        error = json.loads((await socket.receive(timeout=5)).data)
        assert error["error"] == "Unknown stream type"
        posted = await call(client(box, alice).status_post, "over the socket")
        message = json.loads((await socket.receive(timeout=5)).data)
        assert message["stream"] == ["user"]
        assert message["event"] == "update"
        assert isinstance(message["payload"], str)
        assert json.loads(message["payload"])["id"] == str(posted.id)
        await call(client(box, alice).status_delete, posted)
        deletion = json.loads((await socket.receive(timeout=5)).data)
        assert (deletion["event"], deletion["payload"]) == ("delete", str(posted.id))


async def test_sse_sends_thump_heartbeats_and_refuses_bad_tokens(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{box.base_url}/api/v1/streaming/health") as health:
            assert await health.text() == "OK"
        url = f"{box.base_url}/api/v1/streaming/user"
        async with http.get(url, headers={"Authorization": "Bearer wrong"}) as refused:
            assert refused.status == 401
        async with http.get(url, headers=headers) as stream:
            assert stream.content_type == "text/event-stream"
            lines = [await asyncio.wait_for(stream.content.readline(), 5) for _ in range(3)]
    assert lines == [b":)\n", b":thump\n", b":thump\n"]


async def test_stop_ends_open_streams(alice: SandboxAccount, box: MastodonSandbox) -> None:
    url = f"{box.base_url}/api/v1/streaming/user?access_token={alice.token}"
    async with aiohttp.ClientSession() as http, http.get(url) as stream:
        await stream.content.readline()
        await asyncio.wait_for(box.stop(), 5)
        remaining = await asyncio.wait_for(stream.content.read(), 5)
    assert b"event:" not in remaining


# auth, rate limits, hooks


async def test_bad_token_is_401_and_unknown_status_is_404(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    with pytest.raises(MastodonUnauthorizedError) as raised:
        await call(Mastodon(api_base_url=box.base_url, access_token="nope").status_post, "x")
    assert raised.value.args[3] == "The access token is invalid"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{box.base_url}/api/v1/statuses", data={"status": "x"}) as response:
            assert response.status == 401
            assert await response.json() == {"error": "The access token is invalid"}
        headers = {"Authorization": f"Bearer {alice.token}"}
        async with http.get(f"{box.base_url}/api/v1/statuses/999", headers=headers) as response:
            assert response.status == 404
            assert await response.json() == {"error": "Record not found"}


async def test_rate_limit_headers_count_down_and_429_when_spent() -> None:
    sandbox = MastodonSandbox(rate_limit=3, rate_limit_period=300)
    await sandbox.start()
    try:
        account = sandbox.create_account("busy")
        headers = {"Authorization": f"Bearer {account.token}"}
        url = f"{sandbox.base_url}/api/v1/accounts/verify_credentials"
        seen = []
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(url, headers=headers) as response:
                    assert response.status == 200
                    seen.append(response.headers["X-RateLimit-Remaining"])
                    assert response.headers["X-RateLimit-Limit"] == "3"
                    reset = datetime.fromisoformat(response.headers["X-RateLimit-Reset"])
            async with http.get(url, headers=headers) as response:
                assert response.status == 429
                assert await response.json() == {"error": "Too many requests"}
        assert seen == ["2", "1", "0"]
        assert datetime.now(UTC) < reset
        with pytest.raises(MastodonRatelimitError):
            await call(client(sandbox, account, ratelimit_method="throw").me)
    finally:
        await sandbox.stop()


async def test_a_hook_can_answer_before_the_api(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    async def unavailable(request: web.Request) -> web.StreamResponse | None:
        if request.method == "POST" and request.path == "/api/v1/statuses":
            return web.json_response({"error": "Service Unavailable"}, status=503)
        return None

    box.hooks.append(unavailable)
    api = client(box, alice)
    with pytest.raises(MastodonAPIError) as raised:
        await call(api.status_post, "refused")
    assert raised.value.args[1] == 503
    box.hooks.clear()
    await call(api.status_post, "accepted")
    assert [r.status for r in box.requests_log if r.path == "/api/v1/statuses"] == [503, 200]


async def test_restart_on_the_same_port_keeps_the_data(
    box: MastodonSandbox, alice: SandboxAccount
) -> None:
    posted = await call(client(box, alice).status_post, "survives")
    port = int(box.base_url.rsplit(":", 1)[1])
    await box.stop()
    assert await box.start(port=port) == f"http://127.0.0.1:{port}"
    again = await call(client(box, alice).status, posted)
    assert again.content == "<p>survives</p>"
    url = f"{box.base_url}/api/v1/streaming/user?access_token={alice.token}"
    async with aiohttp.ClientSession() as http, http.get(url) as stream:
        assert await asyncio.wait_for(stream.content.readline(), 5) == b":)\n"
