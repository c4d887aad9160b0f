"""The log the daemon writes: what a library says on our behalf is kept short and body-free."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import telegram
from aiohttp import web
from telegram.error import TelegramError

from relaybird.logsetup import setup_logging
from relaybird.sandbox.telegram import ApiCall, TelegramSandbox

BODY = "<!DOCTYPE html><html><body>gateway page with private-marker-7731</body></html>"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("telegram", "telegram.request")}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, saved in levels.items():
            logging.getLogger(name).setLevel(saved)


@pytest.mark.parametrize("level", ["debug", "info"])
@pytest.mark.usefixtures("restored_logging")
async def test_a_telegram_answer_that_is_not_json_is_one_warning_without_the_body(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    """PTB logs the whole body with a traceback at ERROR; the daemon's log gets one short line."""
    sandbox = TelegramSandbox()
    root = await sandbox.start()
    try:
        account = sandbox.create_bot("relay_bot", "Relay")

        async def html(call: ApiCall) -> web.StreamResponse | None:
            return (
                web.Response(text=BODY, content_type="text/html")
                if call.method == "getMe"
                else None
            )

        sandbox.hooks.append(html)
        setup_logging(level, "text")
        bot = telegram.Bot(account.token, base_url=f"{root}/bot")
        with pytest.raises(TelegramError):
            await bot.get_me()
    finally:
        await sandbox.stop()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "telegram.request" in line]
    assert lines == [lines[0]] and "WARNING" in lines[0], err
    assert "not JSON" in lines[0]
    assert "private-marker-7731" not in err
    assert "Traceback" not in err
    assert logging.getLogger("telegram.request").getEffectiveLevel() <= max(
        logging.getLogger("httpx").getEffectiveLevel(), logging.WARNING
    )
