"""The log the daemon writes: what a server says on a bad day is kept short and body-free."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from aiohttp import web

from relaybird.config import TelegramAccount
from relaybird.logsetup import setup_logging
from relaybird.networks.base import TemporaryError
from relaybird.networks.telegram import TelegramNetwork
from relaybird.sandbox.telegram import ApiCall, TelegramSandbox

BODY = "<!DOCTYPE html><html><body>gateway page with private-marker-7731</body></html>"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("level", ["debug", "info"])
@pytest.mark.usefixtures("restored_logging")
async def test_a_gateway_page_instead_of_json_leaves_no_body_in_the_log_or_the_error(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    """A proxy's HTML page is someone else's content: neither the error nor any log line of the
    daemon (the HTTP client's included, at debug) may carry it, nor the token in the URL."""
    sandbox = TelegramSandbox()
    root = await sandbox.start()
    account = sandbox.create_bot("relay_bot", "Relay")

    async def html(call: ApiCall) -> web.StreamResponse | None:
        if call.method == "getMe":
            return web.Response(text=BODY, status=502, content_type="text/html")
        return None

    sandbox.hooks.append(html)
    setup_logging(level, "text", secrets=[account.token])
    network = TelegramNetwork(
        TelegramAccount(
            name="news_tg", network="telegram", base_url=root, bot_token=account.token, chat="@x"
        )
    )
    try:
        with pytest.raises(TemporaryError) as raised:
            await network.open()
    finally:
        await network.close()
        await sandbox.stop()
    err = capsys.readouterr().err
    assert "Bad Gateway" in str(raised.value)
    for text in (str(raised.value), err):
        assert "private-marker-7731" not in text
        assert account.token not in text
    assert "Traceback" not in err
