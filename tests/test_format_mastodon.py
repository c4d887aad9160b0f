"""Mastodon statuses to the neutral model and back, from golden payloads as Mastodon 4.x renders them."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybird import richtext
from relaybird.model import Post, Span, SpanKind, Visibility
from relaybird.networks.mastodon_format import (
    html_to_text,
    post_to_status_text,
    status_to_post,
)
from tests.specs import load_spec
from tests.test_richtext import rich_posts

DATA = Path(__file__).parent / "data" / "mastodon"
GOLDEN = ["status_rich", "status_reply_cw", "status_reblog"]


def load(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


def expected_post(name: str) -> Post:
    return Post.from_json((DATA / f"{name}.post.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# golden payloads


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_status_is_a_valid_status_entity(name: str) -> None:
    """The payloads are what the API documents, so the converter is tested on real shapes."""
    spec = load_spec("mastodon-openapi/schema.json")
    schema = {"$ref": "#/components/schemas/Status", "components": spec["components"]}
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    assert list(validator.iter_errors(load(name))) == []


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_status_converts_to_the_expected_post(name: str) -> None:
    assert status_to_post(load(name)) == expected_post(name)


def test_shortened_link_shows_the_full_url() -> None:
    post = status_to_post(load("status_rich"))
    link = next(s for s in post.spans if s.kind is SpanKind.LINK)
    full = "https://example.com/blog/2024/relaybird-release-notes?utm=x&ref=fedi"
    assert post.text[link.start : link.end] == full
    assert link.url == full
    assert "relaybir\u2026" not in post.text


def test_mentions_carry_the_full_handle_and_local_ones_get_the_domain() -> None:
    post = status_to_post(load("status_rich"))
    mentions = {
        post.text[s.start : s.end]: s.handle for s in post.spans if s.kind is SpanKind.MENTION
    }
    assert mentions == {"@bob": "bob@social.example", "@alice": "alice@mastodon.example"}


def test_local_domain_overrides_the_profile_host() -> None:
    """Instances whose accounts live on a different domain than their web host (WEB_DOMAIN)."""
    post = status_to_post(load("status_rich"), local_domain="example.org")
    handles = {s.handle for s in post.spans if s.kind is SpanKind.MENTION}
    assert handles == {"bob@social.example", "alice@example.org"}
    assert post.author is not None and post.author.handle == "relaybird@example.org"


def test_unknown_visibility_of_forks_is_treated_as_private() -> None:
    status = {**load("status_rich"), "visibility": "local"}
    assert status_to_post(status).visibility is Visibility.PRIVATE


# --------------------------------------------------------------------------------------------------
# HTML details


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("<p>a<br>b<br /><br/>c</p>", "a\nb\n\nc"),
        ("<p>a \n  b</p>\n<p> c </p>", "a b\n\nc"),
        (
            "<p>&lt;b&gt; &amp;amp; &quot;q&quot; &#39;s&#39; &#x1F600;</p>",
            "<b> &amp; \"q\" 's' \U0001f600",
        ),
        ("<ul><li>one</li><li>two</li></ul><p>after</p>", "- one\n- two\n\nafter"),
        ("<pre><code>x  =  1\n  y</code></pre>", "x  =  1\n  y"),
        ("<p>x<!-- hidden --> y</p>", "x y"),
        ("<blockquote><p>quoted</p></blockquote><p>reply</p>", "quoted\n\nreply"),
    ],
)
def test_html_becomes_plain_text_as_a_reader_sees_it(content: str, text: str) -> None:
    assert html_to_text(content)[0] == text


def test_formatting_from_remote_servers_becomes_spans() -> None:
    text, spans = html_to_text("<p>a <strong>b</strong> <em>c</em> <code>d</code></p><pre>e</pre>")
    assert text == "a b c d\n\ne"
    found = {(text[s.start : s.end], s.kind) for s in spans}
    assert found == {
        ("b", SpanKind.BOLD),
        ("c", SpanKind.ITALIC),
        ("d", SpanKind.CODE),
        ("e", SpanKind.CODE),
    }


def test_link_with_other_text_keeps_its_text() -> None:
    text, spans = html_to_text('<p>see <a href="https://x.example/doc">the docs</a></p>')
    assert text == "see the docs"
    assert spans == [Span(4, 12, SpanKind.LINK, url="https://x.example/doc")]


def test_mention_not_in_the_mentions_list_is_read_from_its_url() -> None:
    content = (
        '<p><a href="https://far.example/@zed" class="u-url mention">@<span>zed</span></a></p>'
    )
    _, spans = html_to_text(content)
    assert spans == [
        Span(0, 4, SpanKind.MENTION, url="https://far.example/@zed", handle="zed@far.example")
    ]


WORD = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=8,
)
PARAGRAPH = st.lists(st.lists(WORD, min_size=1, max_size=5).map(" ".join), min_size=1, max_size=3)


def mastodon_html(paragraphs: list[list[str]]) -> str:
    """Plain text as Mastodon's formatter renders it: escaped, `<p>` per paragraph, `<br />`."""
    return "".join(
        "<p>" + "<br />".join(html.escape(line, quote=True) for line in lines) + "</p>"
        for lines in paragraphs
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(PARAGRAPH, min_size=1, max_size=4))
def test_html_to_text_inverts_mastodons_rendering(paragraphs: list[list[str]]) -> None:
    text, spans = html_to_text(mastodon_html(paragraphs))
    assert text == "\n\n".join("\n".join(lines) for lines in paragraphs)
    assert spans == []


# --------------------------------------------------------------------------------------------------
# outbound


def test_status_text_spells_out_mentions_for_mastodon_to_resolve() -> None:
    text = post_to_status_text(expected_post("status_rich"))
    assert text.startswith(
        "Relaybird mirrors posts between networks & keeps threads together. "
        "Thanks @bob@social.example and @alice@mastodon.example!\n\n"
        "Read the notes: https://example.com/blog/2024/relaybird-release-notes?utm=x&ref=fedi"
        " #RelayBird\n\n"
    )


def test_status_text_of_a_labelled_link_and_bold() -> None:
    text = post_to_status_text(expected_post("status_reply_cw"))
    assert text.startswith(
        "@relaybird@mastodon.example Schau in die Anleitung (https://docs.example.org/guide#threads)"
        " \u2014 wichtig: <tags>"
    )


def test_bluesky_and_telegram_mentions_become_profile_links() -> None:
    text = "hi @alice.bsky.social and @carol"
    post = Post(
        id="1",
        text=text,
        spans=[
            Span(3, 21, SpanKind.MENTION, url="https://bsky.app/profile/alice.bsky.social"),
            Span(26, 32, SpanKind.MENTION, url="https://t.me/carol", handle="carol"),
        ],
    )
    assert post_to_status_text(post) == (
        "hi https://bsky.app/profile/alice.bsky.social and https://t.me/carol"
    )


def test_status_length_counts_what_is_sent() -> None:
    post = expected_post("status_reply_cw")
    sent = post_to_status_text(post)
    assert richtext.count_mastodon(post.text, post.spans) == richtext.count_mastodon(sent)
    assert richtext.count_mastodon(post.text, post.spans) == richtext.graphemes(sent) - len(
        "https://docs.example.org/guide#threads"
    ) + 23 - len("@mastodon.example")


@settings(max_examples=200, deadline=None)
@given(rich_posts())
def test_status_text_keeps_every_character_outside_spans(post: Post) -> None:
    """Only span texts are rewritten; everything between them reaches Mastodon as written (once
    NUL and lone surrogates, which no server takes, are replaced)."""
    sent = post_to_status_text(post)
    post = richtext.clean_post(post)
    atomic = richtext.non_overlapping(
        s
        for s in richtext.normalize_spans(post.text, post.spans)
        if s.kind in richtext.ATOMIC_KINDS
    )
    cursor = 0
    position = 0
    for span in atomic:
        between = post.text[cursor : span.start]
        assert sent.startswith(between, position)
        position += len(between)
        shown = post.text[span.start : span.end]
        rendered = richtext.render_plain(shown, [span.shifted(-span.start)])
        assert sent.startswith(rendered, position)
        if span.kind is SpanKind.LINK:
            assert span.url in rendered
        position += len(rendered)
        cursor = span.end
    assert sent[position:] == post.text[cursor:]
