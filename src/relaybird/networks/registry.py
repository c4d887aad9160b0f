"""Which adapter class serves which `network = "..."` value of the config."""

from __future__ import annotations

from relaybird.config import BlueskyAccount, MastodonAccount, TelegramAccount
from relaybird.networks.base import Network
from relaybird.networks.bluesky import BlueskyNetwork
from relaybird.networks.mastodon import MastodonNetwork
from relaybird.networks.telegram import TelegramNetwork
from relaybird.store import Store


def build_network(
    account: MastodonAccount | BlueskyAccount | TelegramAccount, store: Store
) -> Network:
    if isinstance(account, MastodonAccount):
        return MastodonNetwork(account)
    if isinstance(account, BlueskyAccount):
        return BlueskyNetwork(account, store)
    return TelegramNetwork(account)
