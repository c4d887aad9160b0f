"""The real AppView network from `tests/appview.py`, through the atproto SDK as relaybird uses it.

These are the guarantees the mentions feature's tests build on: accounts can log in with the
profile lookup on, and a mention or a reply written on the PDS shows up in the mentioned account's
`listNotifications` within a bounded time.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
from atproto import Client, models

from tests.appview import AppViewNetwork, AppViewNetworkError

pytestmark = pytest.mark.pds

# Seen here: notifications arrive well under a second after the post; ten is the bound.
NOTIFICATION_TIMEOUT = 10.0


def _client(network: AppViewNetwork, handle: str, password: str) -> Client:
    """Log in exactly as relaybird does in production: profile lookup included."""
    client = Client(base_url=f"{network.url}/xrpc")
    client.login(handle, password)
    return client


def _mention_facet(text: str, mention: str, did: str) -> models.AppBskyRichtextFacet.Main:
    """Facet offsets are UTF-8 byte positions, end exclusive."""
    start = text.encode().index(mention.encode())
    return models.AppBskyRichtextFacet.Main(
        index=models.AppBskyRichtextFacet.ByteSlice(
            byte_start=start, byte_end=start + len(mention.encode())
        ),
        features=[models.AppBskyRichtextFacet.Mention(did=did)],
    )


def test_login_fetches_the_profile_through_the_appview(appview_network: AppViewNetwork) -> None:
    did, handle, password = appview_network.create_account("login")
    client = Client(base_url=f"{appview_network.url}/xrpc")
    with warnings.catch_warnings():
        # The SDK only warns (and leaves `me` empty) when no AppView answers getProfile.
        warnings.simplefilter("error")
        profile = client.login(handle, password)
    assert profile is not None
    assert (profile.did, profile.handle) == (did, handle)
    assert client.me is not None and client.me.did == did


def test_mention_and_reply_become_notifications(appview_network: AppViewNetwork) -> None:
    a_did, a_handle, a_password = appview_network.create_account("mentioned")
    b_did, b_handle, b_password = appview_network.create_account("mentioner")
    alice = _client(appview_network, a_handle, a_password)
    bob = _client(appview_network, b_handle, b_password)

    original = alice.send_post("Does anyone mirror posts to Telegram?")
    text = f"Hi @{a_handle} 👋 have a look at relaybird"
    mention = bob.send_post(text, facets=[_mention_facet(text, f"@{a_handle}", a_did)])
    parent = models.ComAtprotoRepoStrongRef.Main(uri=original.uri, cid=original.cid)
    reply = bob.send_post(
        "relaybird does, threads included",
        reply_to=models.AppBskyFeedPost.ReplyRef(root=parent, parent=parent),
    )

    deadline = time.monotonic() + NOTIFICATION_TIMEOUT
    while True:
        notifications = alice.app.bsky.notification.list_notifications().notifications
        by_reason = {n.reason: n for n in notifications}
        if {"mention", "reply"} <= by_reason.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    assert {"mention", "reply"} <= by_reason.keys(), [n.reason for n in notifications]
    assert by_reason["mention"].uri == mention.uri
    assert by_reason["mention"].author.did == b_did
    assert by_reason["reply"].uri == reply.uri
    assert by_reason["reply"].reason_subject == original.uri
    assert by_reason["reply"].author.did == b_did
    # Bob's own notifications stay empty: nobody mentioned or answered him.
    assert bob.app.bsky.notification.list_notifications().notifications == []


def test_harness_waits_until_the_appview_indexed_a_post(appview_network: AppViewNetwork) -> None:
    did, handle, password = appview_network.create_account("indexed")
    client = _client(appview_network, handle, password)
    post = client.send_post("indexed soon")
    view = appview_network.wait_for_post(post.uri)
    assert (view["uri"], view["author"]["did"]) == (post.uri, did)
    assert view["record"]["text"] == "indexed soon"


def test_missing_installation_names_the_setup_script(tmp_path: Path) -> None:
    network = AppViewNetwork(network_dir=tmp_path)
    with pytest.raises(AppViewNetworkError, match=r"bash scripts/setup"):
        network.start()
    assert network.root is None
