"""Which adapter class serves which `network = "..."` value of the config.

Each adapter is imported when an account needs it, so that the daemon carries only the code of the
networks its config uses.
"""

from __future__ import annotations

from relaybird.config import BlueskyAccount, MastodonAccount, TelegramAccount
from relaybird.networks.base import Network
from relaybird.store import Store


def build_network(
    account: MastodonAccount | BlueskyAccount | TelegramAccount, store: Store
) -> Network:
    if isinstance(account, MastodonAccount):
        from relaybird.networks.mastodon import MastodonNetwork

        return MastodonNetwork(account)
    if isinstance(account, BlueskyAccount):
        from relaybird.networks.bluesky import BlueskyNetwork

        return BlueskyNetwork(account, store)
    from relaybird.networks.telegram import TelegramNetwork

    return TelegramNetwork(account)
