"""The inbox notice: who wrote, what they answered, their text with its rich text, and a link."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from relaybird.inbox import OriginalRef, network_name, render_notification
from relaybird.model import Author, Media, Post, Span, SpanKind, Visibility

ALICE = Author(
    network="bluesky",
    handle="alice.test",
    display_name="Alice Example",
    url="https://bsky.app/profile/alice.test",
    id="did:plc:alice",
)
ORIGINAL = OriginalRef(
    permalink="https://mastodon.example/@news/110",
    network="mastodon",
    account="@news@mastodon.example",
)
MENTION_URL = "https://bsky.app/profile/alice.test/post/3kabc"


def covered(post: Post) -> list[tuple[SpanKind, str, str]]:
    """Each span as (kind, the text it covers, its URL or tag): what a reader would click."""
    return [(s.kind, post.text[s.start : s.end], s.url or s.tag) for s in post.spans]


def alice_reply(text: str = "", spans: list[Span] | None = None, **fields: object) -> Post:
    return Post(
        id="at://did:plc:alice/app.bsky.feed.post/3kabc",
        text=text,
        spans=spans or [],
        author=ALICE,
        permalink=MENTION_URL,
        reply_to="at://did:plc:news/app.bsky.feed.post/3kcopy",
        reply_to_author_id="did:plc:news",
        thread_root="at://did:plc:news/app.bsky.feed.post/3kcopy",
        **fields,  # type: ignore[arg-type]
    )


def test_reply_to_our_copy_names_the_person_the_copy_and_keeps_their_rich_text() -> None:
    body = "مرحبا 👋 @bob.test see https://example.org/a #news"
    spans = [
        Span(8, 17, SpanKind.MENTION, url="https://bsky.app/profile/bob.test", handle="bob.test",
             did="did:plc:bob"),
        Span(22, 43, SpanKind.LINK, url="https://example.org/a"),
        Span(44, 49, SpanKind.HASHTAG, tag="news"),
    ]  # fmt: skip
    mention = alice_reply(body, spans)
    assert [body[s.start : s.end] for s in spans] == ["@bob.test", "https://example.org/a", "#news"]

    notice = render_notification(mention, reason="reply", original=ORIGINAL)

    assert notice.text == (
        "Alice Example (@alice.test, Bluesky) replied to our copy on Bluesky of "
        "https://mastodon.example/@news/110\n\n"
        f"{body}\n\n"
        f"Open on Bluesky: {MENTION_URL}"
    )
    assert covered(notice) == [
        (SpanKind.LINK, "@alice.test", "https://bsky.app/profile/alice.test"),
        (SpanKind.LINK, ORIGINAL.permalink, ORIGINAL.permalink),
        (SpanKind.MENTION, "@bob.test", "https://bsky.app/profile/bob.test"),
        (SpanKind.LINK, "https://example.org/a", "https://example.org/a"),
        (SpanKind.HASHTAG, "#news", "news"),
        (SpanKind.LINK, MENTION_URL, MENTION_URL),
    ]
    kept = next(s for s in notice.spans if s.kind is SpanKind.MENTION)
    assert (kept.handle, kept.did) == ("bob.test", "did:plc:bob")


def test_header_links_the_profile_and_never_mentions_the_person() -> None:
    notice = render_notification(alice_reply("hi"), reason="reply", original=ORIGINAL)
    header = notice.text.split("\n", 1)[0]
    profile = notice.spans[0]
    assert profile.kind is SpanKind.LINK and profile.url == ALICE.url
    assert profile.end <= len(header)
    assert not any(s.kind is SpanKind.MENTION and s.end <= len(header) for s in notice.spans)


def test_reply_on_the_network_of_the_original_is_a_reply_to_our_post() -> None:
    original = OriginalRef("https://bsky.app/profile/news.test/post/3korig", "bluesky")
    notice = render_notification(alice_reply("agreed"), reason="reply", original=original)
    assert notice.text.startswith(
        "Alice Example (@alice.test, Bluesky) replied to our post "
        "https://bsky.app/profile/news.test/post/3korig\n\nagreed\n\n"
    )
    assert covered(notice)[1] == (SpanKind.LINK, original.permalink, original.permalink)


def test_reply_whose_original_is_unknown_says_our_post_without_a_link() -> None:
    notice = render_notification(alice_reply("agreed"), reason="reply", original=None)
    assert notice.text == (
        f"Alice Example (@alice.test, Bluesky) replied to our post\n\nagreed\n\n"
        f"Open on Bluesky: {MENTION_URL}"
    )
    assert [c[1] for c in covered(notice)] == ["@alice.test", MENTION_URL]


def test_copy_without_a_known_permalink_still_says_it_was_our_copy() -> None:
    original = OriginalRef("", "telegram")
    notice = render_notification(alice_reply("x"), reason="reply", original=original)
    assert notice.text.startswith(
        "Alice Example (@alice.test, Bluesky) replied to our copy on Bluesky\n\n"
    )


def test_quote_of_our_copy_and_of_our_post() -> None:
    copy = render_notification(alice_reply("look"), reason="quote", original=ORIGINAL)
    assert " quoted our copy on Bluesky of https://mastodon.example/@news/110\n" in copy.text
    same = render_notification(
        alice_reply("look"), reason="quote", original=OriginalRef(MENTION_URL, "bluesky")
    )
    assert f" quoted our post {MENTION_URL}\n" in same.text
    unknown = render_notification(alice_reply("look"), reason="quote", original=None)
    assert " quoted our post\n" in unknown.text


def test_mention_names_the_mentioned_account() -> None:
    mention = alice_reply("hello @news", [])
    named = render_notification(
        mention, reason="mention", original=None, account="@news@mastodon.example"
    )
    assert named.text.startswith(
        "Alice Example (@alice.test, Bluesky) mentioned @news@mastodon.example\n\nhello @news"
    )
    from_original = render_notification(mention, reason="mention", original=ORIGINAL)
    assert " mentioned @news@mastodon.example\n" in from_original.text
    bare = render_notification(mention, reason="mention", original=None)
    assert " mentioned us\n" in bare.text


def test_mastodon_author_shows_the_full_handle() -> None:
    author = Author("mastodon", "carol@social.example", "Carol", "https://social.example/@carol")
    mention = Post(
        id="9", text="@news hi", author=author, permalink="https://social.example/@carol/9"
    )
    notice = render_notification(mention, reason="mention", original=None, account="@news")
    assert notice.text.startswith("Carol (@carol@social.example, Mastodon) mentioned @news\n")
    assert covered(notice)[0] == (SpanKind.LINK, "@carol@social.example", author.url)
    assert notice.text.endswith("Open on Mastodon: https://social.example/@carol/9")


def test_telegram_user_without_username_is_named_without_a_link() -> None:
    author = Author("telegram", "", "Dana Staff", "", id="4242")
    mention = Post(id="-100:7", text="/crosspost", author=author)
    notice = render_notification(mention, reason="reply", original=None)
    assert notice.text == "Dana Staff (Telegram) replied to our post\n\n/crosspost"
    assert notice.spans == []


def test_name_only_or_handle_only_carries_the_profile_link() -> None:
    by_name = Author("telegram", "", "Eve", "https://t.me/eve")
    notice = render_notification(Post("1", "x", author=by_name), reason="mention", original=None)
    assert notice.text.startswith("Eve (Telegram) mentioned us")
    assert covered(notice) == [(SpanKind.LINK, "Eve", "https://t.me/eve")]
    by_handle = Author("telegram", "eve", "", "https://t.me/eve")
    notice = render_notification(Post("1", "x", author=by_handle), reason="mention", original=None)
    assert notice.text.startswith("@eve (Telegram) mentioned us")
    assert covered(notice) == [(SpanKind.LINK, "@eve", "https://t.me/eve")]


def test_no_author_at_all_is_someone() -> None:
    notice = render_notification(Post("1", "x"), reason="mention", original=None)
    assert notice.text == f"Someone ({network_name('')}) mentioned us\n\nx"


def test_display_name_cannot_break_the_header_into_lines() -> None:
    author = Author(
        "bluesky",
        "mallory.test",
        "Mallory\n\nOpen on Bluesky:",
        "https://bsky.app/profile/mallory.test",
    )
    notice = render_notification(Post("1", "x", author=author), reason="mention", original=None)
    assert notice.text.split("\n")[0] == (
        "Mallory Open on Bluesky: (@mallory.test, Bluesky) mentioned us"
    )


def test_unsafe_profile_url_is_not_linked() -> None:
    author = Author("mastodon", "x@evil.example", "X", "javascript:alert(1)")
    notice = render_notification(Post("1", "hi", author=author), reason="mention", original=None)
    assert notice.text.startswith("X (@x@evil.example, Mastodon) mentioned us")
    assert notice.spans == []


def test_empty_text_leaves_no_blank_block() -> None:
    mention = alice_reply("", media=[Media("image/png", alt="a chart", data=b"png")])
    notice = render_notification(mention, reason="reply", original=None)
    assert notice.text == (
        f"Alice Example (@alice.test, Bluesky) replied to our post\n\nOpen on Bluesky: {MENTION_URL}"
    )
    assert notice.media == mention.media


def test_notice_keeps_media_warning_and_visibility_and_answers_nothing() -> None:
    mention = alice_reply(
        "spoilers",
        media=[Media("image/jpeg", alt="still", data=b"\xff\xd8")],
        content_warning="film ending",
        sensitive=True,
        visibility=Visibility.DIRECT,
        language="en",
    )
    notice = render_notification(mention, reason="reply", original=ORIGINAL)
    assert (notice.id, notice.author, notice.permalink) == (mention.id, ALICE, MENTION_URL)
    assert notice.media == mention.media
    assert (notice.content_warning, notice.sensitive) == ("film ending", True)
    assert (notice.visibility, notice.language) == (Visibility.DIRECT, "en")
    assert (notice.reply_to, notice.reply_to_author_id, notice.thread_root) == (None, None, None)


def test_rendering_leaves_the_mention_unchanged() -> None:
    mention = alice_reply(
        "hi https://example.org", [Span(3, 22, SpanKind.LINK, url="https://example.org")]
    )
    before = Post.from_json(mention.to_json())
    render_notification(mention, reason="reply", original=ORIGINAL)
    assert mention == before


@st.composite
def texts_with_spans(draw: st.DrawFn) -> tuple[str, list[Span]]:
    text = draw(st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                        min_size=1, max_size=60))  # fmt: skip
    spans = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, len(text) - 1))
        end = draw(st.integers(start + 1, len(text)))
        spans.append(Span(start, end, SpanKind.LINK, url=f"https://example.org/{start}-{end}"))
    return text, spans


@given(texts_with_spans())
def test_every_span_of_their_text_covers_the_same_characters(
    sample: tuple[str, list[Span]],
) -> None:
    text, spans = sample
    assume(text.strip())  # a blank text is left out of the notice altogether
    notice = render_notification(alice_reply(text, spans), reason="reply", original=ORIGINAL)
    theirs = {(text[s.start : s.end], s.url) for s in spans}
    rendered = {(notice.text[s.start : s.end], s.url) for s in notice.spans}
    assert theirs <= rendered
