"""What `relaybird check` prints about a valid config: its accounts and routes as tables.

Kept apart from the config itself so that the daemon, which never prints tables, does not import
rich's table machinery.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from relaybird.config import Config, route_settings


def describe(config: Config) -> Group:
    """Accounts and routes as rich tables for `relaybird check`; never shows a secret.

    Values go in as `Text` so that a name with brackets is never read as rich markup.
    """
    accounts = Table(title="Accounts", title_justify="left")
    for column in ("name", "network", "base_url", "handle / chat"):
        accounts.add_column(column)
    for name, account in config.accounts.items():
        accounts.add_row(
            Text(name),
            Text(account.network),
            Text(account.base_url),
            Text(account.identity() or "-"),
        )
    routes = Table(title="Routes", title_justify="left")
    for column in ("name", "from", "", "to", "settings"):
        routes.add_column(column)
    for route in config.routes:
        routes.add_row(
            Text(route.name),
            Text(", ".join(route.sources)),
            Text("→"),
            Text(", ".join(route.targets)),
            Text(route_settings(route) or "defaults"),
        )
    return Group(
        Text(f"{config.path}: {len(config.accounts)} account(s), {len(config.routes)} route(s)"),
        accounts,
        routes,
    )
