"""The `/healthz` endpoint: 200 when every account's stream is connected, 503 saying which is not."""

from __future__ import annotations

from aiohttp import web

from relaybird.relay import Relay


def health_app(relay: Relay) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        accounts = {
            name: {
                "network": h.network,
                "role": h.role,
                "connected": h.connected,
                "detail": h.detail,
            }
            for name, h in relay.health.items()
        }
        healthy = relay.healthy()
        body = {"status": "ok" if healthy else "unhealthy", "accounts": accounts}
        return web.json_response(body, status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


async def start_health_server(relay: Relay, listen: str) -> web.AppRunner | None:
    """Serve `/healthz` on `host:port`; an empty `listen` turns the endpoint off."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(health_app(relay), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
    return runner
