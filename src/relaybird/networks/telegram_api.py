"""A small Bot API client on aiohttp: `POST {base_url}{token}/{method}` and its `{"ok", "result"}`.

The daemon needs a dozen methods and plain JSON, not a typed SDK: results stay the dicts the
server sent, and failures are raised as the errors workers understand, classified once here.

What matters most is telling "not sent" from "in doubt", because Telegram has no idempotency
key. A failure before the request left (refused connection, DNS, connect timeout) or an answer
with an HTTP error status means the server did not act: `NotSent`, retried like any temporary
error. A failure after the connection was made (read timeout, reset, disconnect, a truncated
answer) means the server may have acted: `InDoubt`. A 2xx whose body cannot be read is
`Unreadable`: the call most likely took effect. Callers whose calls cannot be repeated safely
(sends) treat the last two as in doubt; the others retry them.

The token is part of every URL, and aiohttp puts URLs into some of its messages: nothing from a
transport error reaches a message before the token is scrubbed from it, and no transport error
is chained as a cause.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeGuard

import aiohttp

from relaybird.networks.base import PermanentError, RateLimited, TemporaryError

#: Seconds to open a connection; after this the request certainly did not leave.
CONNECT_TIMEOUT = 5.0
#: Seconds of silence while an answer is awaited before the call counts as failed.
READ_TIMEOUT = 5.0
#: What a refusal's description is cut to in messages (gateways send whole HTML pages).
_DESCRIPTION_LIMIT = 160


def short(message: str, limit: int = _DESCRIPTION_LIMIT) -> str:
    """One line of at most `limit` characters, for operators' eyes."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class ApiError(Exception):
    """Any failure of a Bot API call, whatever it means for the caller; messages hold no token."""


class Refused(PermanentError, ApiError):
    """The server answered 400, 401, 403, 404 or 409: this request will not work as it is."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description

    @property
    def token_refused(self) -> bool:
        """401 and 404 are how the Bot API answers a token it does not know."""
        return self.code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.NOT_FOUND)


class ChatMigrated(PermanentError, ApiError):
    """The group became a supergroup with another id; the config has to name the new chat."""

    def __init__(self, new_chat_id: int) -> None:
        super().__init__(f"the group became supergroup {new_chat_id}")
        self.new_chat_id = new_chat_id


class FloodWait(RateLimited, ApiError):
    """429 with `retry_after`: the request was refused, and may be made again after the wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"flood control, retry in {retry_after:.0f} s", time.time() + retry_after)
        self.retry_after = retry_after


class NotSent(TemporaryError, ApiError):
    """Certainly not acted on: no connection was made, or the server answered an error status."""


class InDoubt(TemporaryError, ApiError):
    """The connection broke after the request left: the server may or may not have acted."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Unreadable(TemporaryError, ApiError):
    """A success status whose body is not the promised `{"ok": true, "result": ...}`."""


@dataclass(frozen=True)
class Upload:
    """A file sent in a multipart request, named by `attach://<field>` or by its own field."""

    data: bytes
    mime: str = "application/octet-stream"
    filename: str = "file"


#: Failures raised before a request left the machine.
_BEFORE_SENDING: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.InvalidURL,
)


class TelegramApi:
    """One bot's Bot API client, owning one aiohttp session (opened on first use)."""

    def __init__(
        self, token: str, base_url: str, base_file_url: str, *, read_timeout: float = READ_TIMEOUT
    ) -> None:
        """`base_url` and `base_file_url` end where the token starts (`.../bot`, `.../file/bot`);
        `read_timeout` is how long a call waits for its answer (getUpdates adds its own wait)."""
        self._token = token
        self.base_url = base_url
        self.base_file_url = base_file_url
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The shared session, also used to download files; created inside the running loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT, sock_read=self.read_timeout
                )
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def file_url(self, file_path: str) -> str:
        """Where a file named by getFile is downloaded; holds the token, so never log it."""
        return f"{self.base_file_url}{self._token}/{file_path.lstrip('/')}"

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        files: Mapping[str, Upload] | None = None,
        *,
        read_timeout: float | None = None,
    ) -> Any:
        """The `result` of one method call, as JSON; raises the errors of this module.

        Parameters that are None are left out. With `files`, the request is multipart/form-data
        (objects and arrays JSON-encoded, as the Bot API reads them); otherwise a JSON body.
        """
        url = f"{self.base_url}{self._token}/{method}"
        values = {key: value for key, value in (params or {}).items() if value is not None}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout or self.read_timeout
        )
        body: dict[str, Any] = {"data": self._form(values, files)} if files else {"json": values}
        try:
            async with self.session().post(url, timeout=timeout, **body) as response:
                status = response.status
                payload = await response.read()
        except _BEFORE_SENDING as error:
            raise NotSent(f"cannot reach Telegram ({self._describe(error)})") from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise InDoubt(f"no answer in time ({self._describe(error)})", timed_out=True) from None
        except (aiohttp.ClientError, OSError) as error:
            raise InDoubt(f"connection broke ({self._describe(error)})", timed_out=False) from None
        return self._result(status, payload)

    @staticmethod
    def _form(values: Mapping[str, Any], files: Mapping[str, Upload]) -> aiohttp.FormData:
        form = aiohttp.FormData(quote_fields=False)
        for key, value in values.items():
            form.add_field(key, value if isinstance(value, str) else json.dumps(value))
        for name, upload in files.items():
            form.add_field(name, upload.data, filename=upload.filename, content_type=upload.mime)
        return form

    def _describe(self, error: BaseException) -> str:
        """The error's type and words, with the token taken out of any URL in them."""
        words = short(str(error).replace(self._token, "<token>"), 120)
        return f"{type(error).__name__}: {words}" if words else type(error).__name__

    @staticmethod
    def _result(status: int, payload: bytes) -> Any:
        if 200 <= status <= 299:
            try:
                answer = json.loads(payload)
            except ValueError:
                raise Unreadable("answer is not JSON") from None
            if not isinstance(answer, dict) or answer.get("ok") is not True:
                raise Unreadable("answer is not a Bot API result")
            if "result" not in answer:
                raise Unreadable("answer has no result")
            return answer["result"]
        raise _refusal(status, payload)


_NOISE = ("Error: ", "[Error]: ", "Bad Request: ")


def plain(description: str) -> str:
    """A refusal as operators have always read it here: "Chat not found", not "Bad Request: chat
    not found" (the wording python-telegram-bot gave, which status pages and tests know)."""
    words = description
    for prefix in _NOISE:
        words = words.removeprefix(prefix)
    return words.capitalize() if words != description else words


def _refusal(status: int, payload: bytes) -> Exception:
    """The error for a non-2xx answer, read the way the Bot API words refusals."""
    try:
        phrase = f"{HTTPStatus(status).phrase} ({status})"
    except ValueError:
        phrase = f"HTTP error ({status})"
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    description = phrase
    if isinstance(answer, dict):
        description = plain(str(answer.get("description") or phrase))
        parameters = answer.get("parameters")
        if isinstance(parameters, dict):
            migrated = parameters.get("migrate_to_chat_id")
            if _is_number(migrated) and isinstance(migrated, int) and migrated:
                return ChatMigrated(migrated)
            retry_after = parameters.get("retry_after")
            if _is_number(retry_after) and retry_after > 0:
                return FloodWait(float(retry_after))
    if status in (400, 401, 403, 404, 409):
        return Refused(status, short(description))
    return NotSent(short(description))


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
