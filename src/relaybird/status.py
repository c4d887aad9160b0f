"""`relaybird status`: the running daemon's view of its streams, and the store's queues and errors.

Stream state lives in the daemon, not in the database, so it is read from `/healthz` on the `listen`
address; when nothing answers there, the report says the daemon is not running rather than guess.
Counts per route cover the retention window (`retention_days`). `--json` keys are stable:

    {"daemon": {"running", "listen", "status", "store_ok", "store_detail"},
     "accounts": {NAME: {"network", "role", "stream", "detail", "cursor", "cursor_age_seconds",
                         "rate_limited_for_seconds"}},
     "routes": {NAME: {"mirrored", "pending", "retrying", "dead", "skipped"}},
     "errors": [{"id", "route", "kind", "source", "target", "state", "attempts", "error",
                 "next_attempt_in_seconds"}]}
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from relaybird.config import Config, parse_listen
from relaybird.duties import Duties
from relaybird.networks.base import MENTIONS
from relaybird.store import Store, cursor_key

#: How the store's states add up to what an operator asks about.
ROUTE_COLUMNS: dict[str, tuple[str, ...]] = {
    "mirrored": ("done",),
    "pending": ("pending", "sending"),
    "retrying": ("retry",),
    "dead": ("dead",),
    "skipped": ("skipped",),
}
ERROR_LIMIT = 20
HEALTH_TIMEOUT_SECONDS = 2.0


def health_url(listen: str) -> str | None:
    """Where the daemon of this config answers `/healthz`; a wildcard bind is asked on loopback."""
    address = parse_listen(listen) if listen else None
    if address is None:
        return None
    host, port = address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def read_health(listen: str) -> dict[str, Any] | None:
    """The daemon's own report, or None when no daemon answers at `listen`."""
    url = health_url(listen)
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_SECONDS) as answer:
            body = answer.read()
    except urllib.error.HTTPError as error:
        body = error.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return None
    try:
        report = json.loads(body)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _stream(info: dict[str, Any] | None) -> tuple[str, str]:
    if info is None:
        return "unknown", ""
    state = "connected" if info.get("connected") else "disconnected"
    return state, str(info.get("detail", ""))


def collect(config: Config, store: Store | None, health: dict[str, Any] | None) -> dict[str, Any]:
    """The report; without a store (the daemon never ran) every count is zero."""
    now = time.time()
    live = health.get("accounts", {}) if health else {}
    held = health.get("rate_limits", {}) if health else {}
    cursors = store.cursors() if store else {}
    accounts = {}
    for name in _streams(config, live, cursors):
        account = config.accounts[name.partition("#")[0]]
        cursor = cursors.get(name)
        stream, detail = _stream(live.get(name)) if health else ("daemon not running", "")
        accounts[name] = {
            "network": account.network,
            "role": str(live.get(name, {}).get("role", _role(config, name))),
            "stream": stream,
            "detail": detail,
            "cursor": cursor[0] if cursor else None,
            "cursor_age_seconds": round(now - cursor[1], 1) if cursor else None,
            "rate_limited_for_seconds": held.get(name, {}).get("held_seconds") if health else None,
        }
    counts = store.counts() if store else {}
    routes = {
        route.name: {
            column: sum(counts.get((route.name, state), 0) for state in states)
            for column, states in ROUTE_COLUMNS.items()
        }
        for route in config.routes
    }
    errors = [
        {
            "id": d.id,
            "route": d.route,
            "kind": d.kind,
            "source": f"{d.source_account}:{d.source_id}",
            "target": d.target_account,
            "state": d.state,
            "attempts": d.attempts,
            "error": d.last_error,
            "next_attempt_in_seconds": round(max(0.0, d.next_at - now), 1)
            if d.state == "retry"
            else None,
        }
        for d in (store.problems(ERROR_LIMIT) if store else [])
    ]
    store_info = health.get("store", {}) if health else {}
    daemon = {
        "running": health is not None,
        "listen": config.relaybird.listen,
        "status": health.get("status") if health else None,
        "store_ok": store_info.get("ok") if health else None,
        "store_detail": store_info.get("detail", "") if health else "",
    }
    return {"daemon": daemon, "accounts": accounts, "routes": routes, "errors": errors}


def _streams(config: Config, live: dict[str, Any], cursors: dict[str, Any]) -> list[str]:
    """Every account, each followed by its mention stream when it has one (`name#mentions`)."""
    readers = Duties(config).notification_readers()
    names: list[str] = []
    for name in config.accounts:
        names.append(name)
        stream = cursor_key(name, MENTIONS)
        if stream in live or stream in cursors or name in readers:
            names.append(stream)
    return names


def _role(config: Config, name: str) -> str:
    """What the account does, from the config alone (the daemon says so itself when running)."""
    return MENTIONS if "#" in name else Duties(config).role(name)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def render(report: dict[str, Any], console: Console) -> None:
    daemon = report["daemon"]
    if daemon["running"]:
        line = f"daemon at {daemon['listen']}: {daemon['status']}"
        if daemon["store_ok"] is False:
            line += f" (state database failing: {daemon['store_detail']})"
        console.print(Text(line))
    else:
        console.print(Text(f"daemon not running (nothing answers at {daemon['listen'] or '-'})"))
    accounts = Table(title="accounts", title_justify="left")
    for column in ("account", "network", "role", "stream", "cursor age"):
        accounts.add_column(column)
    for name, info in report["accounts"].items():
        stream = info["stream"] + (f": {info['detail']}" if info["detail"] else "")
        if info["rate_limited_for_seconds"]:
            stream += f"; rate limited for {_age(info['rate_limited_for_seconds'])}"
        style = {"connected": "green", "disconnected": "red"}.get(info["stream"], "")
        accounts.add_row(
            Text(name),
            Text(info["network"]),
            Text(info["role"]),
            Text(stream, style=style),
            Text(_age(info["cursor_age_seconds"])),
        )
    routes = Table(title="routes", title_justify="left")
    routes.add_column("route")
    for column in ROUTE_COLUMNS:
        routes.add_column(column, justify="right")
    for name, states in report["routes"].items():
        routes.add_row(Text(name), *(str(states[c]) for c in ROUTE_COLUMNS))
    console.print(accounts, routes)
    if report["errors"]:
        errors = Table(
            title="last errors (re-queue a dead letter with `relaybird retry ID`)",
            title_justify="left",
        )
        for column in ("id", "route", "source", "target", "state", "attempts", "error"):
            errors.add_column(column, overflow="fold")
        for item in report["errors"]:
            state = item["state"]
            if item["next_attempt_in_seconds"] is not None:
                state += f" in {_age(item['next_attempt_in_seconds'])}"
            errors.add_row(
                str(item["id"]),
                Text(item["route"]),
                Text(item["source"]),
                Text(item["target"]),
                Text(state, style="red" if item["state"] == "dead" else "yellow"),
                str(item["attempts"]),
                Text(item["error"]),
            )
        console.print(errors)


def print_status(config: Config, as_json: bool = False) -> int:
    path = config.state_path()
    console = Console()
    health = read_health(config.relaybird.listen)
    if path.exists():
        store = Store(path)
        try:
            report = collect(config, store, health)
        finally:
            store.close()
    else:
        report = collect(config, None, health)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if not path.exists():
        console.print(Text(f"no state yet at {path}: the daemon has not run with this config"))
    render(report, console)
    return 0
