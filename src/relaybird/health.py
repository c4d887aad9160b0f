"""The operator's endpoints on the `listen` address: `/healthz` and `/metrics`.

`/healthz` answers 200 when every account's stream is connected and the state database takes writes,
503 saying which is not; `relaybird status` reads it to show the running daemon's view. `/metrics`
is the Prometheus text format of the relay's own registry.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from relaybird.relay import Relay


def health_report(relay: Relay) -> dict[str, object]:
    now = time.time()
    accounts = {
        name: {
            "network": h.network,
            "role": h.role,
            "connected": h.connected,
            "detail": h.detail,
            "since_seconds": round(now - h.since, 1),
        }
        for name, h in relay.health.items()
    }
    healthy = relay.healthy()
    return {
        "status": "ok" if healthy else "unhealthy",
        "accounts": accounts,
        "store": {"ok": not relay.store_error, "detail": relay.store_error},
        "rate_limits": {
            name: {"held_seconds": round(limiter.held_for(), 1)}
            for name, limiter in relay.limiters.items()
        },
    }


def health_app(relay: Relay) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        report = health_report(relay)
        return web.json_response(report, status=200 if report["status"] == "ok" else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = relay.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_health_server(relay: Relay, listen: str) -> web.AppRunner | None:
    """Serve `/healthz` and `/metrics` on `host:port`; an empty `listen` turns them off."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(health_app(relay), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
    return runner
