"""How a post is shaped for a target: templates, content warnings, truncation, numbering, media."""

from __future__ import annotations

import io

from PIL import Image

from relaybird.fitting import FitOptions, apply_content_warning, extract_content_warning, fit_post
from relaybird.model import Author, LinkCard, Media, Post, Span, SpanKind
from relaybird.networks.bluesky import CAPABILITIES as BLUESKY
from relaybird.networks.telegram import CAPABILITIES as TELEGRAM
from relaybird.richtext import count_graphemes

PERMALINK = "https://mastodon.example/@news/1"


def post(text: str, **fields: object) -> Post:
    values: dict[str, object] = {
        "id": "1",
        "text": text,
        "permalink": PERMALINK,
        "author": Author("mastodon", "news@mastodon.example", "The News"),
    }
    values.update(fields)
    return Post(**values)  # type: ignore[arg-type]


def test_template_appends_permalink_as_a_link_and_keeps_spans() -> None:
    source = post("see #tag", spans=[Span(4, 8, SpanKind.HASHTAG, tag="tag")])
    (part,) = fit_post(source, BLUESKY, FitOptions(template="{text}\n\nvia {author}: {permalink}"))
    assert part.text == f"see #tag\n\nvia The News: {PERMALINK}"
    kinds = {part.text[s.start : s.end]: s.kind for s in part.spans}
    assert kinds == {"#tag": SpanKind.HASHTAG, PERMALINK: SpanKind.LINK}


def test_truncate_cuts_within_the_limit_and_links_the_original() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    (part,) = fit_post(post(words), BLUESKY, FitOptions(overflow="truncate"))
    assert count_graphemes(part.text) <= 300
    assert part.text.endswith(f" … {PERMALINK}")
    assert part.spans[-1].url == PERMALINK


def test_numbering_marks_each_part_and_stays_within_the_limit() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    parts = fit_post(post(words), BLUESKY, FitOptions(numbering=True))
    assert len(parts) >= 2
    for index, part in enumerate(parts, start=1):
        assert part.text.endswith(f"({index}/{len(parts)})")
        assert count_graphemes(part.text) <= 300


def test_content_warning_becomes_prefix_and_spoiler_and_reads_back() -> None:
    shaped = apply_content_warning(post("the ending", content_warning="Spoilers"), TELEGRAM)
    assert shaped.text == "CW: Spoilers\n\nthe ending"
    assert [(s.kind, shaped.text[s.start : s.end]) for s in shaped.spans] == [
        (SpanKind.SPOILER, "the ending")
    ]
    back = extract_content_warning(post(shaped.text, spans=shaped.spans))
    assert (back.content_warning, back.text, back.spans) == ("Spoilers", "the ending", [])


def test_text_that_merely_starts_with_cw_is_left_alone() -> None:
    assert extract_content_warning(post("CW: no blank line after it")).content_warning == ""


def test_reply_posted_standalone_links_the_original() -> None:
    (part,) = fit_post(post("answer", reply_to="0"), BLUESKY, FitOptions(standalone_reply=True))
    assert part.text == f"answer\n\n↩ {PERMALINK}"


def test_big_image_is_shrunk_and_card_only_without_media() -> None:
    image = Image.effect_noise((1200, 1200), 100).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    big = Media(mime="image/png", alt="noise", data=out.getvalue())
    assert big.size > 1_000_000
    card = LinkCard(url="https://example.org", title="Example")
    (with_media,) = fit_post(post("pic", media=[big], card=card), BLUESKY)
    assert with_media.media[0].size <= 1_000_000 and with_media.media[0].alt == "noise"
    assert with_media.card is None
    (text_only,) = fit_post(post("link", card=card), BLUESKY)
    assert text_only.card == card


def test_telegram_caption_limit_applies_when_media_is_attached() -> None:
    photo = Media(mime="image/png", data=b"\x89PNG", alt="")
    long_text = " ".join(f"word{i}" for i in range(300))
    parts = fit_post(post(long_text, media=[photo]), TELEGRAM)
    assert parts[0].media and len(parts[0].text) <= 1024
    assert sum(len(p.text.split()) for p in parts) == 300


def test_media_that_cannot_be_carried_leaves_a_link_to_the_original() -> None:
    video = Media(mime="video/mp4", alt="clip", data=b"\x00" * 2_000_000)
    (part,) = fit_post(post("watch", media=[video]), BLUESKY)
    assert part.media == []
    assert part.text == f"watch\n\n📎 media: {PERMALINK}"
    assert part.spans[-1].url == PERMALINK


def test_a_warning_that_counts_against_the_limit_leaves_room_in_every_part() -> None:
    """Mastodon counts the content warning and the text together against its 500 characters."""
    from relaybird.networks.mastodon import MastodonNetwork

    mastodon = MastodonNetwork._capabilities({})
    warning = "Spoilers for the season finale, all of it"
    words = " ".join(f"word{i}" for i in range(150))
    parts = fit_post(post(words, content_warning=warning), mastodon)
    assert len(parts) >= 2
    for part in parts:
        assert part.content_warning == warning
        assert len(part.text) + len(warning) <= 500
    assert " ".join(part.text for part in parts) == words
