"""Every result the Telegram sandbox serves, checked against the Bot API's own type descriptions.

``api.json`` describes each type as a list of fields with their types ("Integer", "Array of
PhotoSize", "Integer or String" as two entries), whether they are required ("Optional." ones are
not), and in prose which constant a discriminating field holds ('always "administrator"',
'must be photo', 'can be either "private", "group", ...'). ``telegram_schema`` turns that into
JSON Schema (draft 2020-12) with one ``$defs`` entry per type: required fields, field types,
nested types by reference, arrays, unions (``anyOf``) for types that are "one of" several
subtypes, string constants and enumerations, and ``additionalProperties: false`` so that a field
the API does not define is an error too.

The live tests talk to a running sandbox over HTTP (JSON bodies, forms and multipart uploads, as
clients do) and validate each result against the return type the spec gives for that method.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from relaybird.sandbox.telegram import SandboxLimits, TelegramSandbox
from relaybird.sandbox.telegram_state import SandboxBot, SandboxChat, SandboxUser
from tests.specs import load_spec

PRIMITIVES: dict[str, dict[str, Any]] = {
    "Integer": {"type": "integer"},
    "Float": {"type": "number"},
    "String": {"type": "string"},
    "Boolean": {"type": "boolean"},
    "True": {"const": True},
}
QUOTED = r"[\"“]([^\"”]+)[\"”]"
ENUM_PHRASES = re.compile(r"can be either|can be one of|Currently, can be|must be one of")


# ---------------------------------------------------------------------------- the translator


def type_schema(expression: str) -> dict[str, Any]:
    """Schema of one type expression such as "Integer", "Message" or "Array of Array of X"."""
    if expression.startswith("Array of "):
        return {"type": "array", "items": type_schema(expression[len("Array of ") :])}
    if expression in PRIMITIVES:
        return dict(PRIMITIVES[expression])
    return {"$ref": f"#/$defs/{expression}"}


def union_schema(expressions: list[str]) -> dict[str, Any]:
    """A field typed "X or Y" is listed with several types; any of them will do."""
    schemas = [type_schema(expression) for expression in expressions]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def string_constants(description: str) -> list[str] | None:
    """The values a String field may take, when the description pins them down."""
    always = re.search(r"\balways " + QUOTED, description)
    if always:
        return [always.group(1)]
    must_be = re.search(r",\s*must be ([a-z_]+)\.?$", description)
    if must_be:
        return [must_be.group(1)]
    if ENUM_PHRASES.search(description):
        return re.findall(QUOTED, description) or None
    return None


def field_schema(spec_field: dict[str, Any]) -> dict[str, Any]:
    schema = union_schema(spec_field["types"])
    if spec_field["types"] == ["String"]:
        constants = string_constants(spec_field["description"])
        if constants:
            schema["enum"] = constants
    return schema


def object_schema(definition: dict[str, Any]) -> dict[str, Any]:
    """A type is either "one of" its subtypes or an object with exactly its own fields."""
    if definition.get("subtypes"):
        return {"anyOf": [type_schema(name) for name in definition["subtypes"]]}
    fields = definition.get("fields", [])
    return {
        "type": "object",
        "properties": {f["name"]: field_schema(f) for f in fields},
        "required": [f["name"] for f in fields if f["required"]],
        "additionalProperties": False,
    }


def telegram_schema(spec: dict[str, Any]) -> dict[str, Any]:
    """All Bot API types as JSON Schema definitions."""
    definitions = {name: object_schema(d) for name, d in spec["types"].items()}
    definitions["ResponseError"] = {
        "type": "object",
        "properties": {
            "ok": {"const": False},
            "error_code": {"type": "integer"},
            "description": {"type": "string"},
            "parameters": {"$ref": "#/$defs/ResponseParameters"},
        },
        "required": ["ok", "error_code", "description"],
        "additionalProperties": False,
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": definitions}


class SpecValidator:
    """Validates values against type expressions or method return types of the spec."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.schema = telegram_schema(spec)
        Draft202012Validator.check_schema(self.schema)

    def errors(self, value: Any, expressions: list[str]) -> list[str]:
        validator = Draft202012Validator({**self.schema, **union_schema(expressions)})
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(value), key=str)
        ]

    def check(self, value: Any, expressions: list[str]) -> None:
        problems = self.errors(value, expressions)
        assert not problems, f"not a valid {' or '.join(expressions)}:\n" + "\n".join(problems)

    def check_result(self, method: str, result: Any) -> None:
        self.check(result, self.spec["methods"][method]["returns"])


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = load_spec("telegram-bot-api/api.json")
    return loaded


@pytest.fixture(scope="module")
def validator(spec: dict[str, Any]) -> SpecValidator:
    return SpecValidator(spec)


# ---------------------------------------------------------------------------- translator checks


USER = {"id": 1, "is_bot": False, "first_name": "Ann"}
CHANNEL = {"id": -1001, "type": "channel", "title": "News", "username": "news"}


def test_translator_accepts_a_valid_message_with_nested_types(validator: SpecValidator) -> None:
    message = {
        "message_id": 5,
        "sender_chat": CHANNEL,
        "chat": CHANNEL,
        "date": 1_700_000_000,
        "photo": [{"file_id": "a", "file_unique_id": "b", "width": 90, "height": 60}],
        "caption": "hi",
        "caption_entities": [{"type": "bold", "offset": 0, "length": 2}],
        "reply_to_message": {"message_id": 4, "chat": CHANNEL, "date": 1_700_000_000},
    }
    assert validator.errors(message, ["Message"]) == []


@pytest.mark.parametrize(
    ("value", "expression", "complaint"),
    [
        ({**USER, "nickname": "x"}, "User", "Additional properties are not allowed"),
        ({"id": 1, "is_bot": False}, "User", "'first_name' is a required property"),
        ({**USER, "id": "1"}, "User", "'1' is not of type 'integer'"),
        ({**USER, "is_bot": 1}, "User", "1 is not of type 'boolean'"),
        ({**CHANNEL, "type": "chanel"}, "Chat", "'chanel' is not one of"),
        ({"type": "shout", "offset": 0, "length": 1}, "MessageEntity", "'shout' is not one of"),
        (
            {"message_id": 1, "chat": {"id": 1}, "date": 1},
            "Message",
            "'type' is a required property",
        ),
        (
            {"message_id": 1, "chat": CHANNEL, "date": 1, "photo": {"file_id": "a"}},
            "Message",
            "is not of type 'array'",
        ),
        ({"status": "administrator", "user": USER}, "ChatMember", "is not valid under any"),
        ([{"update_id": "7"}], "Array of Update", "'7' is not of type 'integer'"),
    ],
)
def test_translator_flags_what_the_spec_forbids(
    validator: SpecValidator, value: Any, expression: str, complaint: str
) -> None:
    problems = validator.errors(value, [expression])
    assert any(complaint in problem for problem in problems), problems


def test_translator_reads_unions_and_constants(validator: SpecValidator) -> None:
    assert validator.errors({"status": "member", "user": USER}, ["ChatMember"]) == []
    assert validator.errors({"status": "left", "user": USER}, ["ChatMember"]) == []
    assert validator.errors({"status": "member", "user": USER}, ["ChatMemberLeft"]) != []
    origin = {"type": "channel", "date": 1, "chat": CHANNEL, "message_id": 3}
    assert validator.errors(origin, ["MessageOrigin"]) == []
    assert validator.errors({**origin, "type": "user"}, ["MessageOrigin"]) != []
    assert validator.errors(True, ["Message", "Boolean"]) == []
    assert validator.errors("yes", ["Message", "Boolean"]) != []
    assert validator.errors([[{"text": "a"}]], ["Array of Array of InlineKeyboardButton"]) == []


def test_every_method_the_sandbox_serves_is_in_the_spec(spec: dict[str, Any]) -> None:
    served = {*TelegramSandbox().methods.handlers, "getupdates"}
    documented = {name.lower() for name in spec["methods"]}
    assert served <= documented, served - documented


# ---------------------------------------------------------------------------- the live sandbox


def image(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (240, 200, 10)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Live:
    """A running sandbox, an HTTP session, and every successful result seen, by method."""

    sandbox: TelegramSandbox
    http: aiohttp.ClientSession
    validator: SpecValidator
    bot: SandboxBot
    reader: SandboxBot
    alice: SandboxUser
    channel: SandboxChat
    group: SandboxChat
    seen: dict[str, list[Any]] = field(default_factory=dict)

    def url(self, bot: SandboxBot, method: str) -> str:
        return f"{self.sandbox.root_url}/bot{bot.token}/{method}"

    async def call(
        self, method: str, *, as_bot: SandboxBot | None = None, form: bool = False, **params: Any
    ) -> Any:
        """A successful call whose result must conform to the method's return type."""
        url = self.url(as_bot or self.bot, method)
        if form:
            data = {k: v if isinstance(v, str) else str(v) for k, v in params.items()}
            response = await self.http.post(url, data=data)
        else:
            response = await self.http.post(url, json=params)
        body = await response.json()
        assert response.status == 200 and body["ok"] is True, body
        assert set(body) == {"ok", "result"}
        self.validator.check_result(method, body["result"])
        self.seen.setdefault(method, []).append(body["result"])
        return body["result"]

    async def upload(self, method: str, files: dict[str, bytes], **params: Any) -> Any:
        form = aiohttp.FormData()
        for name, value in params.items():
            form.add_field(name, value if isinstance(value, str) else json.dumps(value))
        for name, content in files.items():
            form.add_field(name, content, filename=f"{name}.png", content_type="image/png")
        response = await self.http.post(self.url(self.bot, method), data=form)
        body = await response.json()
        assert response.status == 200 and body["ok"] is True, body
        self.validator.check_result(method, body["result"])
        self.seen.setdefault(method, []).append(body["result"])
        return body["result"]

    async def refusal(self, method: str, **params: Any) -> dict[str, Any]:
        response = await self.http.post(self.url(self.bot, method), json=params)
        body: dict[str, Any] = await response.json()
        assert response.status == body["error_code"] != 200
        self.validator.check(body, ["ResponseError"])
        return body


@pytest.fixture
async def live(validator: SpecValidator) -> AsyncIterator[Live]:
    sandbox = TelegramSandbox(per_chat_limit=40, limits=SandboxLimits(max_album=10))
    await sandbox.start()
    bot = sandbox.create_bot("relay_bot", "Relay")
    reader = sandbox.create_bot("reader_bot", "Reader")
    alice = sandbox.create_user("Alice", "alice")
    bob = sandbox.create_user("Bob")
    channel = sandbox.create_channel("news_channel", "News", admins=[alice.id, bot.id, reader.id])
    group = sandbox.create_group(
        "Chatter",
        members=[alice.id, bob.id, bot.id, reader.id],
        username="chatter",
        admins=[bot.id],
    )
    async with aiohttp.ClientSession() as http:
        yield Live(sandbox, http, validator, bot, reader, alice, channel, group)
    await sandbox.stop()


async def identity_calls(live: Live) -> None:
    me = await live.call("getMe")
    assert me["is_bot"] is True
    await live.call("getChat", chat_id="@news_channel", form=True)
    await live.call("getChat", chat_id=live.group.id)
    admin = await live.call("getChatMember", chat_id=live.group.id, user_id=live.bot.id)
    member = await live.call("getChatMember", chat_id=live.group.id, user_id=live.alice.id)
    stranger = live.sandbox.create_user("Stranger")
    left = await live.call("getChatMember", chat_id=live.group.id, user_id=stranger.id)
    channel_admin = await live.call("getChatMember", chat_id=live.channel.id, user_id=live.bot.id)
    assert [admin["status"], member["status"], left["status"], channel_admin["status"]] == [
        "administrator",
        "member",
        "left",
        "administrator",
    ]
    assert await live.call("sendChatAction", chat_id=live.channel.id, action="typing") is True


async def message_calls(live: Live) -> None:
    text = await live.call(
        "sendMessage",
        chat_id="@news_channel",
        text="Read https://example.org #news @alice 😀",
        entities=[{"type": "bold", "offset": 0, "length": 4}],
        link_preview_options={"is_disabled": True},
    )
    await live.call(
        "sendMessage",
        chat_id=live.channel.id,
        text=f'<a href="tg://user?id={live.alice.id}">Alice</a> <pre><code class="language-py">'
        "x = 1</code></pre> <blockquote expandable>q</blockquote> <tg-spoiler>s</tg-spoiler>",
        parse_mode="HTML",
        form=True,
    )
    await live.call(
        "sendMessage",
        chat_id=live.group.id,
        text="*bold* ||spoiler|| ![👍](tg://emoji?id=5368324170671202286)",
        parse_mode="MarkdownV2",
    )
    reply = await live.call(
        "sendMessage",
        chat_id=live.channel.id,
        text="a reply",
        reply_parameters={"message_id": text["message_id"]},
    )
    assert reply["reply_to_message"]["message_id"] == text["message_id"]
    photo = await live.upload(
        "sendPhoto",
        {"photo": image(900, 600)},
        chat_id=str(live.channel.id),
        caption="cap <b>tion</b>",
        parse_mode="HTML",
        has_spoiler="true",
    )
    await live.call("sendPhoto", chat_id=live.group.id, photo=photo["photo"][0]["file_id"])
    await live.upload("sendDocument", {"document": b"plain text"}, chat_id=str(live.group.id))
    await live.upload(
        "sendVideo",
        {"video": b"\x00\x00\x00\x18ftypmp42"},
        chat_id=str(live.channel.id),
        width="640",
        height="360",
        duration="4",
    )
    album = await live.upload(
        "sendMediaGroup",
        {"first": image(50, 50), "second": image(80, 40)},
        chat_id=str(live.channel.id),
        media=[
            {
                "type": "photo",
                "media": "attach://first",
                "caption": "one",
                "caption_entities": [{"type": "italic", "offset": 0, "length": 3}],
            },
            {"type": "photo", "media": "attach://second"},
            {"type": "photo", "media": photo["photo"][-1]["file_id"]},
        ],
    )
    assert len({m["media_group_id"] for m in album}) == 1
    edited = await live.call(
        "editMessageText", chat_id=live.channel.id, message_id=text["message_id"], text="edited"
    )
    assert "edit_date" in edited
    await live.call(
        "editMessageCaption", chat_id=live.channel.id, message_id=photo["message_id"], caption=""
    )
    assert await live.call("deleteMessage", chat_id=live.channel.id, message_id=reply["message_id"])
    file = await live.call("getFile", file_id=photo["photo"][-1]["file_id"])
    assert file["file_path"].startswith("photos/")

    for message in live.sandbox.messages_in(live.channel.id) + live.sandbox.messages_in(
        live.group.id
    ):
        live.validator.check(message, ["Message"])


async def update_calls(live: Live) -> None:
    await live.call("deleteWebhook", as_bot=live.reader, drop_pending_updates=True)
    post = live.sandbox.post_as_user(
        live.channel.id,
        live.alice.id,
        "post #tag",
        entities=[{"type": "underline", "offset": 0, "length": 4}],
    )
    live.sandbox.post_as_user(live.channel.id, None, photo=image(30, 30), caption="by the channel")
    live.sandbox.edit_as_user(live.channel.id, post["message_id"], "post, edited")
    said = live.sandbox.post_as_user(live.group.id, live.alice.id, "hi all")
    live.sandbox.post_as_user(live.group.id, None, "anonymous", reply_to=said["message_id"])
    live.sandbox.edit_as_user(live.group.id, said["message_id"], "hi all!")
    await live.call("sendMessage", chat_id=live.channel.id, text="from the other bot")

    info = await live.call("getWebhookInfo", as_bot=live.reader)
    assert info["pending_update_count"] == 7
    updates = await live.call("getUpdates", as_bot=live.reader, timeout=0)
    kinds = [next(k for k in update if k != "update_id") for update in updates]
    assert kinds == [
        "channel_post",
        "channel_post",
        "edited_channel_post",
        "message",
        "message",
        "edited_message",
        "channel_post",
    ]
    assert (
        await live.call(
            "getUpdates", as_bot=live.reader, offset=updates[-1]["update_id"] + 1, timeout=0
        )
        == []
    )


async def settings_calls(live: Live) -> None:
    assert await live.call(
        "setMyCommands", commands=[{"command": "status", "description": "Relay status"}]
    )
    assert await live.call("getMyCommands") == [
        {"command": "status", "description": "Relay status"}
    ]
    assert await live.call("deleteMyCommands")
    assert await live.call("getMyCommands") == []


async def test_refusals_conform_to_the_error_envelope(live: Live) -> None:
    fast = TelegramSandbox(per_chat_limit=1, per_chat_window=30)
    await fast.start()
    try:
        bot = fast.create_bot("quick_bot")
        channel = fast.create_channel("quick", "Quick", admins=[bot.id])
        url = f"{fast.root_url}/bot{bot.token}/sendMessage"
        statuses = []
        for _ in range(2):
            async with live.http.post(url, json={"chat_id": channel.id, "text": "x"}) as response:
                statuses.append(response.status)
                body = await response.json()
        assert statuses == [200, 429]
        live.validator.check(body, ["ResponseError"])
        assert body["parameters"] == {"retry_after": 30}
        assert body["description"] == "Too Many Requests: retry after 30"
    finally:
        await fast.stop()

    refusals = [
        await live.refusal("sendMessage", chat_id="@nowhere", text="x"),
        await live.refusal("sendMessage", chat_id=live.channel.id, text=""),
        await live.refusal("sendMessage", chat_id=live.channel.id, text="<b>", parse_mode="HTML"),
        await live.refusal("deleteMessage", chat_id=live.channel.id, message_id=77),
        await live.refusal("getFile", file_id="nope"),
        await live.refusal("noSuchMethod"),
    ]
    assert [(r["error_code"], r["description"]) for r in refusals] == [
        (400, "Bad Request: chat not found"),
        (400, "Bad Request: message text is empty"),
        (
            400,
            "Bad Request: can't parse entities: "
            'Can\'t find end tag corresponding to start tag "b"',
        ),
        (400, "Bad Request: message to delete not found"),
        (400, "Bad Request: invalid file_id"),
        (404, "Not Found"),
    ]
    async with live.http.post(f"{live.sandbox.root_url}/bot1:bad/getMe") as response:
        unauthorized = await response.json()
    live.validator.check(unauthorized, ["ResponseError"])
    assert (response.status, unauthorized["description"]) == (401, "Unauthorized")


async def test_identity_and_chat_results_conform(live: Live) -> None:
    await identity_calls(live)


async def test_message_results_of_every_kind_conform(live: Live) -> None:
    await message_calls(live)


async def test_updates_of_every_kind_conform(live: Live) -> None:
    await update_calls(live)


async def test_bot_settings_results_conform(live: Live) -> None:
    await settings_calls(live)


async def test_every_served_method_was_checked(live: Live) -> None:
    for scenario in (identity_calls, message_calls, update_calls, settings_calls):
        await scenario(live)
    checked = {name.lower() for name in live.seen}
    served = {*live.sandbox.methods.handlers, "getupdates"}
    assert served <= checked, served - checked
