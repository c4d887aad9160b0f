"""Logging for people (one readable line per decision) or machines (`--log-format json`).

JSON lines carry the ids a decision is about (route, source_account, source_id, target_account,
delivery_id, ...) as keys of their own, taken from the `extra=` of the call. Whatever the format,
the configured secrets are replaced by `***` in everything written, tracebacks included: a library
that puts a token in a URL or an error message must not leak it into the log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
REDACTED = "***"
#: Shorter values could match ordinary words; the config never accepts secrets this short anyway.
MIN_SECRET_LENGTH = 4


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = self._plain(value)
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)

    def _plain(self, value: object) -> object:
        if isinstance(value, str):
            return self.redact(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redact(str(value))


#: Loggers of python-telegram-bot's HTTP layer, which logs a whole answer it cannot parse.
TELEGRAM_REQUEST_LOGGERS = "telegram.request"
_NOISY = ("httpx", "httpcore", "aiohttp.access", "urllib3", "telegram", "apscheduler")


class TerseTelegramRequests(logging.Filter):
    """Cuts PTB's request records down to one warning line without the body or traceback.

    On an answer that is not JSON, PTB logs the whole body (an HTML error page, or anything a
    proxy sends) with a traceback at ERROR, then raises; relaybird handles that error itself, so
    the body is noise at best and someone else's content at worst.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(TELEGRAM_REQUEST_LOGGERS):
            return True
        if isinstance(record.msg, str) and record.msg.startswith("Can not load invalid JSON"):
            record.msg = "Telegram answered with a body that is not JSON"
        else:
            record.msg = str(record.msg).splitlines()[0][:200] if record.msg else ""
        record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    handler.addFilter(TerseTelegramRequests())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = max(logging.WARNING, root.level)
    for noisy in (*_NOISY, TELEGRAM_REQUEST_LOGGERS):
        logging.getLogger(noisy).setLevel(quiet)
