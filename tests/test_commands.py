"""The crosspost bot's grammar, its allowlist and its per-person rate limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaybird.commands import (
    REFUSALS,
    Allowlist,
    Command,
    CopyLink,
    PersonLimiter,
    classify_entry,
    parse_command,
    person_key,
    render_answer,
)
from relaybird.model import Author, Media, Post, Span, SpanKind

BOT_HANDLES = {"relaybird@mastodon.example", "relaybird.test", "did:plc:bot", "relaybird_bot"}
WORDS = {
    "bluesky": "bluesky",
    "bsky": "bluesky",
    "telegram": "telegram",
    "tg": "telegram",
    "mastodon": "mastodon",
    "news_tg": "news_tg",
}
MASTO_BOT = Span(0, 10, SpanKind.MENTION, url="https://mastodon.example/@relaybird",
                 handle="relaybird@mastodon.example")  # fmt: skip


def masto_mention(text: str, at: int = 0) -> Span:
    """Mastodon shows `@relaybird`; the span carries the full handle from the status's mentions."""
    return Span(
        at,
        at + len("@relaybird"),
        SpanKind.MENTION,
        url="https://mastodon.example/@relaybird",
        handle="relaybird@mastodon.example",
    )


def post(text: str, spans: list[Span] | None = None, **fields: object) -> Post:
    return Post(id="req-1", text=text, spans=spans or [], **fields)  # type: ignore[arg-type]


def parse(p: Post, **options: object) -> Command | None:
    settings: dict[str, object] = {"bot_handles": BOT_HANDLES, "network_words": WORDS, **options}
    return parse_command(p, **settings)  # type: ignore[arg-type]


def covered(p: Post) -> list[tuple[SpanKind, str]]:
    return [(s.kind, p.text[s.start : s.end]) for s in p.spans]


def rest_of(text: str, spans: list[Span] | None = None) -> Post:
    command = parse(post(text, spans))
    assert command is not None and command.standalone_rest is not None
    return command.standalone_rest


# ------------------------------------------------------------------------------------------------
# recognising a request


def test_mastodon_mention_in_a_reply_crossposts_the_parent() -> None:
    request = post("@relaybird crosspost", [masto_mention("")], reply_to="110")
    command = parse(request)
    assert command is not None
    assert command.crosspost_of == "110"
    assert command.standalone_rest is None
    assert command.targets_narrowed_to == frozenset()
    assert command.request is request


def test_full_fediverse_handle_with_networks_narrows_the_targets() -> None:
    text = "@relaybird@mastodon.example crosspost bluesky telegram"
    span = Span(0, 27, SpanKind.MENTION, handle="relaybird@mastodon.example")
    command = parse(post(text, [span], reply_to="7"))
    assert command is not None
    assert command.targets_narrowed_to == {"bluesky", "telegram"}


def test_full_handle_written_as_plain_text_is_recognised() -> None:
    command = parse(post("@relaybird@mastodon.example crosspost", reply_to="7"))
    assert command is not None and command.crosspost_of == "7"


def test_bluesky_mention_facet_of_the_bot_did() -> None:
    span = Span(
        0, 15, SpanKind.MENTION, url="https://bsky.app/profile/did:plc:bot", did="did:plc:bot"
    )
    command = parse(post("@relaybird.test crosspost bsky", [span], reply_to="at://x/p/1"),
                    bot_handles={"did:plc:bot"})  # fmt: skip
    assert command is not None
    assert command.targets_narrowed_to == {"bluesky"}
    assert command.crosspost_of == "at://x/p/1"


def test_telegram_mention_of_the_bot_username() -> None:
    span = Span(0, 14, SpanKind.MENTION, url="https://t.me/relaybird_bot", handle="relaybird_bot")
    command = parse(post("@relaybird_bot crosspost tg", [span], reply_to="-100:5"))
    assert command is not None and command.targets_narrowed_to == {"telegram"}


@pytest.mark.parametrize(
    ("text", "narrowed"),
    [
        ("/crosspost", set()),
        ("/CrossPost", set()),
        ("  /crosspost", set()),
        ("/crosspost@relaybird_bot", set()),
        ("/crosspost@RelayBird_Bot bluesky", {"bluesky"}),
        ("/crosspost bsky news_tg", {"bluesky", "news_tg"}),
    ],
)
def test_telegram_slash_commands(text: str, narrowed: set[str]) -> None:
    command = parse(post(text, reply_to="-100:5"))
    assert command is not None
    assert command.targets_narrowed_to == narrowed
    assert command.crosspost_of == "-100:5"


@pytest.mark.parametrize(
    "text",
    [
        "/crosspost@other_bot",
        "/crossposting",
        "/crosspost/now",
        "please /crosspost",
        "crosspost this please",
        "https://mastodon.example/@relaybird crosspost",
        "mail relaybird.test@example.org crosspost",
        "@relaybird.testing crosspost",
        "",
    ],
)
def test_texts_that_are_not_requests(text: str) -> None:
    assert parse(post(text, reply_to="1")) is None


def test_mention_without_the_trigger_right_after_it_is_not_a_request() -> None:
    assert parse(post("@relaybird thanks!", [masto_mention("")])) is None
    assert parse(post("@relaybird please crosspost", [masto_mention("")])) is None
    assert parse(post("@relaybird crossposting rocks", [masto_mention("")])) is None


def test_a_namesake_on_another_server_is_not_the_bot() -> None:
    other = Span(0, 10, SpanKind.MENTION, handle="relaybird@other.example")
    assert parse(post("@relaybird crosspost", [other], reply_to="1")) is None
    # Without the resolved span, a bare `@relaybird` may be anyone's.
    assert parse(post("@relaybird crosspost", reply_to="1")) is None


def test_a_bare_handle_counts_when_it_is_one_of_the_bot_handles() -> None:
    command = parse(post("@relaybird crosspost", reply_to="1"), bot_handles={"relaybird"})
    assert command is not None


def test_custom_trigger_word() -> None:
    request = post("@relaybird share", [masto_mention("")], reply_to="1")
    assert parse(request, trigger="share") is not None
    assert parse(request) is None
    assert parse(post("/share", reply_to="1"), trigger="share") is not None


def test_no_bot_handles_or_no_trigger_recognises_nothing() -> None:
    request = post("@relaybird crosspost", [masto_mention("")], reply_to="1")
    assert parse(request, bot_handles=set()) is None
    assert parse(request, bot_handles={"", "@"}) is None
    assert parse(request, trigger=" ") is None


def test_separators_between_mention_and_trigger() -> None:
    for text in ("@relaybird, crosspost", "@relaybird: crosspost", "@relaybird  crosspost"):
        assert parse(post(text, [masto_mention("")], reply_to="1")) is not None, text


def test_first_mention_followed_by_the_trigger_is_the_command() -> None:
    text = "@relaybird hello @relaybird crosspost telegram"
    spans = [masto_mention(""), masto_mention("", at=17)]
    command = parse(post(text, spans, reply_to="1"))
    assert command is not None and command.targets_narrowed_to == {"telegram"}


@pytest.mark.parametrize(
    ("after", "narrowed", "rest"),
    [
        ("bluesky, telegram: Hello", {"bluesky", "telegram"}, "Hello"),
        ("bluesky and telegram Hello", {"bluesky", "telegram"}, "Hello"),
        ("bluesky & tg Hello", {"bluesky", "telegram"}, "Hello"),
        ("Bluesky. Hello", {"bluesky"}, "Hello"),
        ("bluesky and then some", {"bluesky"}, "and then some"),
        ("android news", set(), "android news"),
        ("— Hello", set(), "Hello"),
        ("\nBluesky is where we are", set(), "Bluesky is where we are"),
    ],
)
def test_narrowing_words_end_at_the_first_other_word(
    after: str, narrowed: set[str], rest: str
) -> None:
    text = f"@relaybird crosspost {after}"
    command = parse(post(text, [masto_mention("")]))
    assert command is not None
    assert command.targets_narrowed_to == narrowed
    assert command.standalone_rest is not None
    assert command.standalone_rest.text == rest


# ------------------------------------------------------------------------------------------------
# the rest of a standalone request


def test_standalone_request_keeps_the_rest_with_its_spans_and_media() -> None:
    text = "@relaybird crosspost Our report 📊 is out: https://example.org/r #news"
    link = text.index("https://")
    tag = text.index("#news")
    spans = [
        masto_mention(""),
        Span(link, link + len("https://example.org/r"), SpanKind.LINK, url="https://example.org/r"),
        Span(tag, tag + 5, SpanKind.HASHTAG, tag="news"),
    ]
    photo = Media("image/png", alt="a chart", data=b"png")
    request = post(text, spans, media=[photo], language="en", permalink="https://m.example/@a/1")
    command = parse(request)
    assert command is not None and command.crosspost_of is None
    rest = command.standalone_rest
    assert rest is not None
    assert rest.text == "Our report 📊 is out: https://example.org/r #news"
    assert covered(rest) == [(SpanKind.LINK, "https://example.org/r"), (SpanKind.HASHTAG, "#news")]
    assert rest.media == [photo]
    assert (rest.id, rest.language, rest.permalink) == ("req-1", "en", "https://m.example/@a/1")
    assert not command.nothing_to_post


def test_command_at_the_end_or_in_the_middle_leaves_one_space() -> None:
    end = rest_of("Big news today! @relaybird crosspost", [masto_mention("", at=16)])
    assert end.text == "Big news today!"
    text = "Big news @relaybird crosspost bluesky today"
    middle = parse(post(text, [masto_mention("", at=9)]))
    assert middle is not None and middle.standalone_rest is not None
    assert middle.standalone_rest.text == "Big news today"
    assert middle.targets_narrowed_to == {"bluesky"}


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("Line one\n{cmd}\nLine two", "Line one\nLine two"),
        ("Para one\n\n{cmd}\n\nPara two", "Para one\n\nPara two"),
        ("Para one\n{cmd}\n\nPara two", "Para one\n\nPara two"),
        ("{cmd}\n\nPara two", "Para two"),
        ("Para one\n\n{cmd}", "Para one"),
        ("Line one {cmd}\nLine two", "Line one\nLine two"),
    ],
)
def test_command_on_its_own_line_takes_its_line_break(text: str, rest: str) -> None:
    cmd = "@relaybird crosspost"
    full = text.format(cmd=cmd)
    assert rest_of(full, [masto_mention("", at=full.index(cmd))]).text == rest


def test_spans_around_the_command_cover_the_same_words_after_the_cut() -> None:
    text = "#first @alice @relaybird crosspost bluesky @bob https://example.org 🎉 #last"
    spans = [
        Span(0, 6, SpanKind.HASHTAG, tag="first"),
        Span(7, 13, SpanKind.MENTION, handle="alice@mastodon.example"),
        masto_mention("", at=14),
        Span(43, 47, SpanKind.MENTION, handle="bob@mastodon.example"),
        Span(48, 67, SpanKind.LINK, url="https://example.org"),
        Span(70, 75, SpanKind.HASHTAG, tag="last"),
    ]
    assert [text[s.start : s.end] for s in spans] == [
        "#first", "@alice", "@relaybird", "@bob", "https://example.org", "#last"
    ]  # fmt: skip
    rest = rest_of(text, spans)
    assert rest.text == "#first @alice @bob https://example.org 🎉 #last"
    assert covered(rest) == [
        (SpanKind.HASHTAG, "#first"),
        (SpanKind.MENTION, "@alice"),
        (SpanKind.MENTION, "@bob"),
        (SpanKind.LINK, "https://example.org"),
        (SpanKind.HASHTAG, "#last"),
    ]
    handles = [s.handle for s in rest.spans if s.kind is SpanKind.MENTION]
    assert handles == ["alice@mastodon.example", "bob@mastodon.example"]


def test_leading_whitespace_of_the_rest_moves_its_spans() -> None:
    text = "@relaybird crosspost\n\n  #tag here"
    rest = rest_of(text, [masto_mention(""), Span(24, 28, SpanKind.HASHTAG, tag="tag")])
    assert rest.text == "#tag here"
    assert covered(rest) == [(SpanKind.HASHTAG, "#tag")]


def test_slash_command_rest() -> None:
    rest = rest_of("/crosspost@relaybird_bot telegram Fresh from the newsroom")
    assert rest.text == "Fresh from the newsroom"


def test_command_alone_leaves_nothing_to_post_unless_media_came_with_it() -> None:
    command = parse(post("@relaybird crosspost", [masto_mention("")]))
    assert command is not None and command.standalone_rest is not None
    assert command.standalone_rest.text == ""
    assert command.nothing_to_post
    with_photo = parse(post("@relaybird crosspost", [masto_mention("")],
                            media=[Media("image/png", data=b"p")]))  # fmt: skip
    assert with_photo is not None and not with_photo.nothing_to_post


def test_reply_request_is_never_empty() -> None:
    command = parse(post("@relaybird crosspost", [masto_mention("")], reply_to="9"))
    assert command is not None and not command.nothing_to_post


def test_rest_answers_nothing() -> None:
    # A standalone request has no parent; its rest must not pretend otherwise.
    rest = rest_of("@relaybird crosspost hello", [masto_mention("")])
    assert (rest.reply_to, rest.thread_root, rest.reply_to_author_id) == (None, None, None)


_text = st.text(st.characters(codec="utf-8"), max_size=80)
_fragments = st.lists(
    st.sampled_from(
        ["@relaybird", "@relaybird.test", "crosspost", "/crosspost", "@relaybird_bot", " ", "\n",
         ",", ":", "bluesky", "and", "tg", "#x", "@", "/", "—", "🎉", "é"]
    ) | _text,
    max_size=12,
).map("".join)  # fmt: skip


@st.composite
def arbitrary_posts(draw: st.DrawFn) -> Post:
    text = draw(_fragments)
    spans = [
        Span(draw(st.integers(-5, len(text) + 5)), draw(st.integers(-5, len(text) + 5)),
             draw(st.sampled_from(list(SpanKind))), handle=draw(st.sampled_from(["", "relaybird_bot", "relaybird@mastodon.example"])),
             did=draw(st.sampled_from(["", "did:plc:bot"])))
        for _ in range(draw(st.integers(0, 4)))
    ]  # fmt: skip
    reply_to = draw(st.sampled_from([None, "1"]))
    return Post(id="p", text=text, spans=spans, reply_to=reply_to)


@given(arbitrary_posts())
def test_parse_command_never_raises_and_rest_spans_fit(request: Post) -> None:
    command = parse(request)
    if command is None or command.standalone_rest is None:
        return
    rest = command.standalone_rest
    assert rest.text == rest.text.strip()
    assert all(0 <= s.start < s.end <= len(rest.text) for s in rest.spans)
    assert command.targets_narrowed_to <= set(WORDS.values())


# ------------------------------------------------------------------------------------------------
# allowlist


@pytest.mark.parametrize(
    ("entry", "kind", "value"),
    [
        ("did:plc:abc123", "did", "did:plc:abc123"),
        ("did:web:news.example", "did", "did:web:news.example"),
        ("123456789", "telegram_id", "123456789"),
        ("-1001234", "telegram_id", "-1001234"),
        ("@Alice@Mastodon.Example", "fediverse", "alice@mastodon.example"),
        ("alice@mastodon.example", "fediverse", "alice@mastodon.example"),
        ("Alice.bsky.social", "bluesky", "alice.bsky.social"),
        ("@alice.bsky.social", "bluesky", "alice.bsky.social"),
        ("@Alice_TG", "telegram_user", "alice_tg"),
        ("alice_tg", "telegram_user", "alice_tg"),
        ("  @bob  ", "telegram_user", "bob"),
    ],
)
def test_entries_are_classified_by_precedence(entry: str, kind: str, value: str) -> None:
    assert classify_entry(entry) == (kind, value)


@pytest.mark.parametrize(
    "entry", ["", "   ", "a b", "@", "user@", "@user@", "@a@b@c", "did:plc", "did:plc:"]
)
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        classify_entry(entry)
    with pytest.raises(ValueError):
        Allowlist([entry])


ALLOWED = Allowlist(
    ["@editor@mastodon.example", "did:plc:editor", "desk.news.example", "4242", "@night_desk"]
)


@pytest.mark.parametrize(
    "author",
    [
        Author("mastodon", "Editor@Mastodon.Example", id="1"),
        Author("bluesky", "renamed.example", id="did:plc:editor"),
        Author("bluesky", "Desk.News.Example", id="did:plc:someoneelse"),
        Author("telegram", "", id="4242"),
        Author("telegram", "Night_Desk", id="999"),
    ],
)
def test_allowed_people(author: Author) -> None:
    assert ALLOWED.allows(author)


@pytest.mark.parametrize(
    "author",
    [
        # Mastodon account ids are digits too: a Telegram id must not admit them.
        Author("mastodon", "stranger@mastodon.example", id="4242"),
        # A local handle without its host could be anyone's on any server.
        Author("mastodon", "editor", id="2"),
        Author("mastodon", "editor@evil.example", id="3"),
        Author("bluesky", "editor.bsky.social", id="did:plc:impostor"),
        # A Telegram username entry names a Telegram account, not a Bluesky one.
        Author("bluesky", "night_desk", id="did:plc:x"),
        Author("telegram", "editor", id="1"),
        Author("telegram", "", id=""),
        Author("", "", id=""),
    ],
)
def test_everyone_else_is_refused(author: Author) -> None:
    assert not ALLOWED.allows(author)


def test_unknown_author_and_empty_list_allow_nobody() -> None:
    assert not ALLOWED.allows(None)
    empty = Allowlist([])
    assert not empty
    assert not empty.allows(Author("telegram", "x", id="1"))
    assert ALLOWED


def test_person_key_prefers_the_stable_id() -> None:
    assert person_key(Author("bluesky", "a.test", id="did:plc:a")) == "bluesky:did:plc:a"
    assert person_key(Author("mastodon", "A@B.example")) == "mastodon:a@b.example"


# ------------------------------------------------------------------------------------------------
# rate limit


def test_limiter_allows_up_to_the_limit_per_window() -> None:
    limiter = PersonLimiter(max_requests=3, per_seconds=60)
    assert [limiter.allow("alice", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert not limiter.allow("alice", 59.9)
    assert limiter.allow("alice", 60)  # the request at 0 left the window
    assert not limiter.allow("alice", 60.5)
    assert limiter.allow("alice", 61)


def test_limiter_counts_each_person_apart() -> None:
    limiter = PersonLimiter(max_requests=1, per_seconds=10)
    assert limiter.allow("alice", 0)
    assert limiter.allow("bob", 0)
    assert not limiter.allow("alice", 5)


def test_refused_requests_do_not_extend_the_block() -> None:
    limiter = PersonLimiter(max_requests=2, per_seconds=10)
    assert limiter.allow("flood", 0) and limiter.allow("flood", 1)
    assert not any(limiter.allow("flood", 1 + i / 10) for i in range(80))
    assert limiter.allow("flood", 10)


def test_limiter_forgets_people_outside_the_window() -> None:
    limiter = PersonLimiter(max_requests=1, per_seconds=10)
    for person in range(300):
        limiter.allow(f"p{person}", 0)
    for _ in range(300):
        limiter.allow("late", 100)
    assert len(limiter) < 10


@pytest.mark.parametrize(("count", "seconds"), [(0, 10), (1, 0), (-1, 5)])
def test_limiter_refuses_a_limit_that_cannot_be_met(count: int, seconds: float) -> None:
    with pytest.raises(ValueError):
        PersonLimiter(count, seconds)


# ------------------------------------------------------------------------------------------------
# answers


def test_answer_links_every_copy() -> None:
    answer = render_answer(
        "req-1",
        [CopyLink("Bluesky", "https://bsky.app/profile/n.test/post/3k"),
         CopyLink("Telegram", "https://t.me/news/12")],
    )  # fmt: skip
    assert answer.text == (
        "Crossposted:\nBluesky: https://bsky.app/profile/n.test/post/3k\n"
        "Telegram: https://t.me/news/12"
    )
    assert [(answer.text[s.start : s.end], s.url) for s in answer.spans] == [
        ("https://bsky.app/profile/n.test/post/3k", "https://bsky.app/profile/n.test/post/3k"),
        ("https://t.me/news/12", "https://t.me/news/12"),
    ]
    assert all(s.kind is SpanKind.LINK for s in answer.spans)


def test_answer_says_already_and_names_failures() -> None:
    again = render_answer("r", [CopyLink("Bluesky", "https://b.example/1")], already=True)
    assert again.text.startswith("Already crossposted:\nBluesky: https://b.example/1")
    mixed = render_answer(
        "r", [CopyLink("Bluesky", "https://b.example/1")], [("Telegram", "the bot was removed")]
    )
    assert mixed.text.endswith("\nFailed:\nTelegram: the bot was removed")
    failed = render_answer("r", [], [("Bluesky", "text over 300 characters")])
    assert failed.text == "Could not crosspost to:\nBluesky: text over 300 characters"
    assert failed.spans == []
    assert render_answer("r", []).text.startswith("Nothing was crossposted")


def test_refusals_are_short_and_polite() -> None:
    assert all(text.startswith(("Sorry", "There is", "None")) for text in REFUSALS.values())
    assert all(len(text) < 120 for text in REFUSALS.values())
