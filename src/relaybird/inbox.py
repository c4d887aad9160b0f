"""The shared inbox: how a mention of, or a reply to, one of our accounts reads where staff see it.

A notification travels to a target that is not where it happened (typically a private Telegram
group), so it has to say by itself who wrote, on which network, what they were answering, and
where to answer them. The header names the person with a link to their profile rather than a
mention: an inbox message must not notify the person it is about, nor point at a stranger of the
same name on the inbox's network. Their own text follows with its rich text intact, then a link
to their post, which is where a reply has to happen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from relaybird import richtext
from relaybird.model import Author, Post, Span, SpanKind

Reason = Literal["mention", "reply", "quote"]

#: How each network is named to people; an unknown network is shown capitalised.
NETWORK_NAMES = {"mastodon": "Mastodon", "bluesky": "Bluesky", "telegram": "Telegram"}


def network_name(network: str) -> str:
    return NETWORK_NAMES.get(network, network.capitalize() or "an unknown network")


@dataclass(frozen=True)
class OriginalRef:
    """Our post that a notification is about, as its readers know it.

    `permalink` and `network` say where the original lives: when the notification comes from
    another network, it answers our mirrored copy there, and the inbox says so. `account` is our
    account as people see it (``@news@mastodon.example``), used for "mentioned <account>".
    """

    permalink: str
    network: str
    account: str = ""


class _Text:
    """Text assembled piece by piece, with spans kept on the pieces they describe."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.spans: list[Span] = []

    def add(self, piece: str) -> None:
        self.parts.append(piece)
        self.length += len(piece)

    def link(self, shown: str, url: str) -> None:
        """`shown` as a link to `url`, or as plain text when there is no URL to link."""
        if url and shown:
            self.spans.append(Span(self.length, self.length + len(shown), SpanKind.LINK, url=url))
        self.add(shown)

    def post_text(self, post: Post) -> None:
        """The post's text with every one of its spans moved to where the text now starts."""
        self.spans.extend(span.shifted(self.length) for span in post.spans)
        self.add(post.text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _one_line(value: str) -> str:
    """A display name on one line: a name with line breaks must not fake a second header line."""
    return " ".join(richtext.clean_text(value).split())


def _who(text: _Text, author: Author | None, network: str) -> None:
    """`Display Name (@handle, Network)`, the handle linked to the profile.

    With no handle (a Telegram user without a username) the name itself carries the link.
    """
    name = _one_line(author.display_name) if author else ""
    handle = _one_line(author.handle).lstrip("@") if author else ""
    url = author.url if author else ""
    shown_handle = f"@{handle}" if handle else ""
    if name and shown_handle:
        text.add(f"{name} (")
        text.link(shown_handle, url)
        text.add(f", {network_name(network)})")
    elif name or shown_handle:
        text.link(name or shown_handle, url)
        text.add(f" ({network_name(network)})")
    else:
        text.add(f"Someone ({network_name(network)})")


def _what(
    text: _Text, reason: Reason, network: str, original: OriginalRef | None, account: str
) -> None:
    """What they did, with a link to our post when we know it.

    A reply or quote made on another network than the original's answers our mirrored copy
    there, which is worth saying: the person may not know the original exists.
    """
    if reason == "mention":
        who = _one_line(account or (original.account if original else "")) or "us"
        text.add(f"mentioned {who}")
        return
    verb = "replied to" if reason == "reply" else "quoted"
    if original is None:
        text.add(f"{verb} our post")
        return
    if original.network and original.network != network:
        text.add(f"{verb} our copy on {network_name(network)}")
        if original.permalink:
            text.add(" of ")
            text.link(original.permalink, original.permalink)
        return
    text.add(f"{verb} our post")
    if original.permalink:
        text.add(" ")
        text.link(original.permalink, original.permalink)


def render_notification(
    mention: Post,
    *,
    reason: Reason,
    original: OriginalRef | None,
    account: str = "",
) -> Post:
    """The post an inbox target receives for `mention` (a mention, reply or quote by someone).

    `original` is our post that was answered or quoted, when known; `account` names the
    mentioned account for "mentioned <account>" (else `original.account`, else "us"). The result
    keeps the mention's id, author, media, card, content warning and visibility (a direct message
    stays direct on a target that has such a thing), and answers nothing: it is a notice, not part
    of a thread on the inbox's network.
    """
    network = mention.author.network if mention.author else ""
    text = _Text()
    _who(text, mention.author, network)
    text.add(" ")
    _what(text, reason, network, original, account)
    if mention.text.strip():
        text.add("\n\n")
        text.post_text(mention)
    if mention.permalink:
        text.add(f"\n\nOpen on {network_name(network)}: ")
        text.link(mention.permalink, mention.permalink)
    rendered = replace(
        mention,
        text=text.text,
        spans=text.spans,
        reply_to=None,
        reply_to_author_id=None,
        thread_root=None,
        is_repost=False,
    )
    return richtext.clean_post(rendered)
