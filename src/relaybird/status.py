"""`relaybird status`: what the store says about cursors, queues and dead letters, as a table or JSON."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from relaybird.config import Config
from relaybird.store import Store

STATES = ("done", "pending", "sending", "retry", "dead")


def collect(config: Config, store: Store) -> dict[str, Any]:
    now = time.time()
    accounts = {}
    for name, account in config.accounts.items():
        row = store.db.execute(
            "SELECT value, updated_at FROM cursors WHERE account=?", (name,)
        ).fetchone()
        accounts[name] = {
            "network": account.network,
            "cursor": row["value"] if row else None,
            "cursor_age_seconds": round(now - row["updated_at"], 1) if row else None,
        }
    counts = store.counts()
    routes = {
        route.name: {state: counts.get((route.name, state), 0) for state in STATES}
        for route in config.routes
    }
    failing = [
        {
            "id": d.id,
            "route": d.route,
            "source": f"{d.source_account}:{d.source_id}",
            "target": d.target_account,
            "state": d.state,
            "attempts": d.attempts,
            "error": d.last_error,
        }
        for d in store.deliveries()
        if d.state in ("dead", "retry")
    ]
    return {"accounts": accounts, "routes": routes, "problems": failing[-20:]}


def print_status(config: Config, as_json: bool = False) -> int:
    path = config.state_path()
    console = Console()
    if not path.exists():
        console.print(f"no state yet at {path}: the daemon has not run with this config")
        return 0
    store = Store(path)
    try:
        report = collect(config, store)
    finally:
        store.close()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    accounts = Table(title="accounts")
    for column in ("account", "network", "cursor", "cursor age (s)"):
        accounts.add_column(column)
    for name, info in report["accounts"].items():
        accounts.add_row(
            name, info["network"], str(info["cursor"]), str(info["cursor_age_seconds"])
        )
    routes = Table(title="routes")
    routes.add_column("route")
    for state in STATES:
        routes.add_column(state, justify="right")
    for name, states in report["routes"].items():
        routes.add_row(name, *(str(states[s]) for s in STATES))
    console.print(accounts, routes)
    if report["problems"]:
        problems = Table(title="retrying and dead-lettered deliveries")
        for column in ("id", "route", "source", "target", "state", "attempts", "error"):
            problems.add_column(column)
        for item in report["problems"]:
            problems.add_row(
                *(
                    str(item[k])
                    for k in ("id", "route", "source", "target", "state", "attempts", "error")
                )
            )
        console.print(problems)
    return 0
