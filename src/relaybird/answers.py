"""Talking back on a network: answering someone else's post, and reading one we were pointed at.

A notice relayed to the inbox, a staff member's answer and the crosspost bot's reply all concern
posts that are not ours, so the mapping table knows nothing about them. What each network needs
to answer such a post differs (Bluesky a strong reference to the post and to its thread's root,
the others only its id), and so does reading one; this module asks each adapter in its terms.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from urllib.parse import urlsplit

from relaybird.model import Post, TargetRef
from relaybird.networks.base import (
    DeliveryError,
    Network,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.networks.bluesky import BlueskyNetwork
from relaybird.networks.bluesky_format import PayloadError, profile_url, record_to_post
from relaybird.networks.mastodon import MastodonNetwork
from relaybird.networks.mastodon_format import status_to_post
from relaybird.networks.telegram import TelegramNetwork
from relaybird.richtext import as_dict, as_text

log = logging.getLogger(__name__)


def names_of(network: Network) -> list[str]:
    """Every name people use to mention the account: full handles, DIDs, bot usernames."""
    if isinstance(network, MastodonNetwork):
        me = network.me
        host = urlsplit(str(me.get("url") or network.base_url)).hostname or ""
        username = str(me.get("username") or "")
        acct = str(me.get("acct") or "")
        return [name for name in {acct, f"{username}@{host}" if username else ""} if name]
    if isinstance(network, BlueskyNetwork):
        return [name for name in (network.handle, network.did) if name]
    if isinstance(network, TelegramNetwork):
        username = network.username  # empty until the network is opened
        return [username] if username else []
    return []


def shown_name(network: Network) -> str:
    """How people see the account: `@news@mastodon.example`, `@news.bsky.social`, `@news_bot`."""
    names = [name for name in names_of(network) if not name.startswith("did:")]
    best = max(names, key=len, default=network.name)
    return f"@{best}"


async def reply_target(network: Network, post_id: str) -> ReplyTarget:
    """What the adapter's `publish` needs to answer `post_id`, a post on its own network."""
    if isinstance(network, BlueskyNetwork):
        return await _bluesky_reply_target(network, post_id)
    ref = TargetRef(id=post_id)
    return ReplyTarget(parent=ref, root=ref)


async def _bluesky_reply_target(network: BlueskyNetwork, uri: str) -> ReplyTarget:
    """A Bluesky reply names its parent and its thread's root, each by uri and cid."""
    repo, collection, rkey = _at_uri(uri)
    try:
        found = await network.get_record(repo, collection, rkey)
    except RateLimited:
        raise
    except DeliveryError as error:
        raise TemporaryError(
            f"{network.name}: cannot read {uri}: {type(error).__name__}"
        ) from error
    parent = TargetRef(id=as_text(found.get("uri")) or uri, cid=as_text(found.get("cid")))
    reply = as_dict(as_dict(found.get("value")).get("reply"))
    root = as_dict(reply.get("root"))
    if not reply or not as_text(root.get("uri")):
        return ReplyTarget(parent=parent, root=parent)
    return ReplyTarget(
        parent=parent, root=TargetRef(id=as_text(root.get("uri")), cid=as_text(root.get("cid")))
    )


def _at_uri(uri: str) -> tuple[str, str, str]:
    parts = uri.removeprefix("at://").split("/")
    if len(parts) != 3:
        raise TemporaryError(f"not a post's at-uri: {uri}")
    return parts[0], parts[1], parts[2]


async def fetch_post(network: Network, post_id: str) -> Post | None:
    """Someone's post, read from its network with its media; None when it cannot be read.

    Telegram gives bots no way to read a message by id: such posts are known only from the
    updates the listener already passed on (the caller's memory).
    """
    try:
        if isinstance(network, MastodonNetwork):
            status = await network._get_json(f"/api/v1/statuses/{post_id}")
            post = status_to_post(status)
            return replace(post, media=[await network.media.fetch(item) for item in post.media])
        if isinstance(network, BlueskyNetwork):
            return await _bluesky_post(network, post_id)
    except (
        DeliveryError,
        PayloadError,
        KeyError,
        TypeError,
        ValueError,
    ) as error:
        log.warning("%s: cannot read %s (%s)", network.name, post_id, error)
    return None


async def _bluesky_post(network: BlueskyNetwork, uri: str) -> Post | None:
    repo, collection, rkey = _at_uri(uri)
    found = await network.get_record(repo, collection, rkey)
    handle = repo
    try:
        profile = await network.get_profile(repo)
        handle = as_text(profile.get("handle")) or repo
        name = as_text(profile.get("displayName"))
    except DeliveryError:
        name = ""
    record = found.get("value")
    if not isinstance(record, dict):
        raise PayloadError(f"{uri} has no record")
    post = record_to_post(uri, as_text(found.get("cid")), record, handle)
    if post.author is not None:
        author = replace(post.author, id=repo, display_name=name, url=profile_url(handle))
        post = replace(post, author=author)
    # Media of someone else's post live on their PDS; the permalink stays the way to them.
    return replace(post, media=[], card=replace(post.card, thumb=None) if post.card else None)
