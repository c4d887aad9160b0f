"""Every JSON body the Mastodon sandbox serves, checked against the Mastodon OpenAPI spec.

A scenario drives a running sandbox over HTTP and its WebSocket stream and records what it answered.
Each recorded body is validated (JSON Schema 2020-12, `$ref`s resolved inside the spec document,
formats checked) against the schema the spec declares for that operation and status code, and the
entities are also checked one by one against their component schemas. The spec writes nullable
fields as `type: [..., "null"]` or `oneOf: [..., {type: null}]`; both are standard 2020-12 and are
used exactly as written.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from PIL import Image
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from relaybird.sandbox.mastodon import MastodonSandbox
from tests.specs import load_spec

SPEC_URI = "urn:relaybird:mastodon-openapi"
_DATE_TIME = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")
_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    status: int
    body: Any


@dataclass
class Recording:
    responses: list[Served] = field(default_factory=list)
    stream: list[dict[str, Any]] = field(default_factory=list)

    def bodies(self, method: str, pattern: str, status: int = 200) -> list[Any]:
        return [
            r.body
            for r in self.responses
            if r.method == method and re.fullmatch(pattern, r.path) and r.status == status
        ]

    def one(self, method: str, pattern: str, status: int = 200) -> Any:
        found = self.bodies(method, pattern, status)
        assert found, f"the scenario recorded no {status} answer to {method} {pattern}"
        return found[0]


class Client:
    """Raw HTTP against the sandbox that records every JSON answer."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, recording: Recording) -> None:
        self.http = http
        self.base_url = base_url
        self.recording = recording

    async def request(
        self, method: str, path: str, token: str | None = None, **options: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, self.base_url + path, headers=headers, **options
        ) as response:
            body = await response.json() if response.content_type == "application/json" else None
            self.recording.responses.append(Served(method, path, response.status, body))
            return body


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), "blue").save(buffer, format="PNG")
    return buffer.getvalue()


async def _exercise(api: Client, alice: str, bob: str, spender: str, ids: dict[str, str]) -> None:
    """One pass over everything a crossposter does, plus the error answers."""
    await api.request("GET", "/api/v1/instance")
    await api.request("GET", "/api/v2/instance")
    await api.request("GET", "/api/v1/accounts/verify_credentials", alice)
    await api.request("GET", f"/api/v1/accounts/{ids['bob']}")
    await api.request("GET", "/api/v1/accounts/lookup", params={"acct": "bob"})
    await api.request("POST", f"/api/v1/accounts/{ids['alice']}/follow", bob)
    await api.request("GET", "/api/v1/accounts/relationships", bob, params={"id[]": ids["alice"]})

    form = aiohttp.FormData()
    form.add_field("file", _png(), filename="blue.png", content_type="image/png")
    form.add_field("description", "a blue box")
    form.add_field("focus", "0.1,-0.2")
    media = await api.request("POST", "/api/v2/media", alice, data=form)
    await api.request("GET", f"/api/v1/media/{media['id']}", alice)
    await api.request("PUT", f"/api/v1/media/{media['id']}", alice, data={"description": "blue"})

    text = "Hi @bob and @eve@remote.example, see https://example.com/some/long/path #Sandbox"
    fields = [
        ("status", text),
        ("media_ids[]", media["id"]),
        ("spoiler_text", "test"),
        ("language", "en"),
    ]
    status = await api.request("POST", "/api/v1/statuses", alice, data=fields)
    await api.request(
        "POST", "/api/v1/statuses", alice, data={"status": "https://example.org/card"}
    )
    reply = {"status": "a reply", "in_reply_to_id": status["id"], "visibility": "unlisted"}
    await api.request("POST", "/api/v1/statuses", alice, json=reply)
    for suffix in ("", "/source", "/context", "/history"):
        await api.request("GET", f"/api/v1/statuses/{status['id']}{suffix}", alice)
    await api.request("PUT", f"/api/v1/statuses/{status['id']}", alice, data={"status": "edited"})
    await api.request("POST", f"/api/v1/statuses/{status['id']}/reblog", bob)
    await api.request("GET", f"/api/v1/accounts/{ids['alice']}/statuses", params={"limit": "1"})
    await api.request("GET", "/api/v1/timelines/home", bob)
    notifications = await api.request("GET", "/api/v1/notifications", bob)
    await api.request("GET", f"/api/v1/notifications/{notifications[0]['id']}", bob)
    await api.request("POST", f"/api/v1/statuses/{status['id']}/unreblog", bob)
    await api.request("DELETE", f"/api/v1/statuses/{status['id']}", alice)

    await api.request("GET", "/api/v1/accounts/verify_credentials", "not-a-token")
    await api.request("GET", "/api/v1/statuses/1", alice)
    await api.request("POST", "/api/v1/statuses", alice, data={"status": "x" * 501})
    for _ in range(31):
        await api.request("GET", "/api/v1/accounts/verify_credentials", spender)


async def _record(sandbox: MastodonSandbox) -> Recording:
    recording = Recording()
    alice = sandbox.create_account("alice", "Alice")
    bob = sandbox.create_account("bob", "Bob")
    spender = sandbox.create_account("spender")
    ids = {"alice": alice.id, "bob": bob.id}
    sandbox.register_card("https://example.org/card", "A card", "Described", _png())
    socket_url = f"{sandbox.base_url}/api/v1/streaming?access_token={bob.token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(socket_url) as socket:
        await socket.send_json({"type": "subscribe", "stream": "user"})
        await asyncio.sleep(0.05)
        await _exercise(
            Client(http, sandbox.base_url, recording), alice.token, bob.token, spender.token, ids
        )
        while True:
            try:
                message = await socket.receive_json(timeout=0.3)
            except TimeoutError:
                break
            recording.stream.append(message)
    return recording


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def recording() -> AsyncIterator[Recording]:
    sandbox = MastodonSandbox(rate_limit=30, heartbeat_seconds=5)
    await sandbox.start()
    try:
        yield await _record(sandbox)
    finally:
        await sandbox.stop()


@pytest.fixture(scope="module")
def spec() -> Any:
    return load_spec("mastodon-openapi/schema.json")


def _format_checker() -> FormatChecker:
    """Formats checked strictly, including the ones jsonschema leaves to optional packages."""
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        datetime.fromisoformat(value)
        return bool(_DATE_TIME.match(value))

    @checker.checks("date", raises=ValueError)
    def _date(value: object) -> bool:
        if not isinstance(value, str):
            return True
        date.fromisoformat(value)
        return bool(_DATE.match(value))

    @checker.checks("uri")
    def _uri(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parts = urlsplit(value)
        return parts.scheme in ("http", "https", "ws", "wss") and bool(parts.netloc)

    @checker.checks("iso-639-1")
    def _language(value: object) -> bool:
        return not isinstance(value, str) or bool(re.fullmatch(r"[a-z]{2}", value))

    return checker


@pytest.fixture(scope="module")
def validator_for(spec: Any) -> Callable[[str], Draft202012Validator]:
    """A validator for a JSON pointer into the spec, so that its `#/components` refs resolve."""
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec))
    checker = _format_checker()

    def make(pointer: str) -> Draft202012Validator:
        return Draft202012Validator(
            {"$ref": f"{SPEC_URI}#{pointer}"}, registry=registry, format_checker=checker
        )

    return make


def component(name: str) -> str:
    return f"/components/schemas/{name}"


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def _operation(spec: Any, method: str, path: str) -> tuple[str, Any] | None:
    """The spec's path template for a concrete path; literal templates win over `{id}` ones."""
    templates = sorted(spec["paths"], key=lambda t: (t.count("{"), -len(t)))
    for template in templates:
        pattern = re.sub(
            r"\{[^}]+\}", "[^/]+", re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
        )
        if re.fullmatch(pattern, path.rstrip("/")) and method.lower() in spec["paths"][template]:
            return template, spec["paths"][template][method.lower()]
    return None


def _errors(validator: Draft202012Validator, body: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]


def test_every_json_answer_matches_the_schema_the_spec_declares_for_it(
    recording: Recording, spec: Any, validator_for: Callable[[str], Draft202012Validator]
) -> None:
    problems: list[str] = []
    validated: set[tuple[str, str, int]] = set()
    for served in recording.responses:
        found = _operation(spec, served.method, served.path)
        if found is None:
            problems.append(f"{served.method} {served.path} is not in the spec")
            continue
        template, operation = found
        declared = operation["responses"].get(str(served.status))
        if declared is None:
            problems.append(f"{served.method} {template} answered undeclared {served.status}")
            continue
        if "application/json" not in declared.get("content", {}):
            continue
        pointer = "/".join(
            [
                "/paths",
                _escape(template),
                served.method.lower(),
                "responses",
                str(served.status),
                "content",
                "application~1json",
                "schema",
            ]
        )
        for error in _errors(validator_for(pointer), served.body):
            problems.append(f"{served.method} {template} {served.status}: {error}")
        validated.add((served.method, template, served.status))
    assert problems == []
    expected = {
        ("GET", "/api/v1/instance", 200),
        ("GET", "/api/v2/instance", 200),
        ("POST", "/api/v1/statuses", 200),
        ("POST", "/api/v1/statuses", 422),
        ("POST", "/api/v2/media", 202),
        ("GET", "/api/v1/media/{id}", 200),
        ("GET", "/api/v1/notifications", 200),
        ("GET", "/api/v1/statuses/{id}/context", 200),
        ("DELETE", "/api/v1/statuses/{id}", 200),
        ("GET", "/api/v1/accounts/verify_credentials", 401),
        ("GET", "/api/v1/accounts/verify_credentials", 429),
    }
    assert expected <= validated


def _status(recording: Recording) -> Any:
    return recording.bodies("POST", r"/api/v1/statuses")[0]


ENTITIES: dict[str, Callable[[Recording], list[Any]]] = {
    "Status": lambda r: [
        _status(r),
        r.one("PUT", r"/api/v1/statuses/\d+"),
        r.one("POST", r"/api/v1/statuses/\d+/reblog"),
        r.one("DELETE", r"/api/v1/statuses/\d+"),
        *r.bodies("POST", r"/api/v1/statuses"),
        *r.one("GET", r"/api/v1/timelines/home"),
    ],
    "Account": lambda r: [r.one("GET", r"/api/v1/accounts/\d+"), _status(r)["account"]],
    "CredentialAccount": lambda r: [r.one("GET", "/api/v1/accounts/verify_credentials")],
    "MediaAttachment": lambda r: [
        r.one("POST", "/api/v2/media", 202),
        r.one("GET", r"/api/v1/media/\d+"),
        r.one("PUT", r"/api/v1/media/\d+"),
        *_status(r)["media_attachments"],
    ],
    "V1Instance": lambda r: [r.one("GET", "/api/v1/instance")],
    "Instance": lambda r: [r.one("GET", "/api/v2/instance")],
    "Notification": lambda r: [
        *r.one("GET", "/api/v1/notifications"),
        r.one("GET", r"/api/v1/notifications/\d+"),
    ],
    "PreviewCard": lambda r: [
        s["card"] for s in r.bodies("POST", r"/api/v1/statuses") if s["card"]
    ],
    "StatusSource": lambda r: [r.one("GET", r"/api/v1/statuses/\d+/source")],
    "Context": lambda r: [r.one("GET", r"/api/v1/statuses/\d+/context")],
    "StatusEdit": lambda r: r.one("GET", r"/api/v1/statuses/\d+/history"),
    "Relationship": lambda r: [
        r.one("POST", r"/api/v1/accounts/\d+/follow"),
        *r.one("GET", "/api/v1/accounts/relationships"),
    ],
    "Error": lambda r: [
        r.one("GET", "/api/v1/accounts/verify_credentials", 401),
        r.one("GET", r"/api/v1/statuses/\d+", 404),
        r.one("POST", "/api/v1/statuses", 422),
        r.one("GET", "/api/v1/accounts/verify_credentials", 429),
    ],
}


@pytest.mark.parametrize("name", sorted(ENTITIES))
def test_each_entity_matches_its_component_schema(
    name: str, recording: Recording, validator_for: Callable[[str], Draft202012Validator]
) -> None:
    samples = ENTITIES[name](recording)
    assert samples
    validator = validator_for(component(name))
    problems = [error for sample in samples for error in _errors(validator, sample)]
    assert problems == []


def test_streamed_payloads_are_entities_encoded_as_json_strings(
    recording: Recording, validator_for: Callable[[str], Draft202012Validator]
) -> None:
    schema_of_event = {
        "update": "Status",
        "status.update": "Status",
        "notification": "Notification",
    }
    events = [message["event"] for message in recording.stream]
    assert {"update", "status.update", "notification", "delete"} <= set(events)
    for message in recording.stream:
        assert message["stream"] == ["user"]
        assert isinstance(message["payload"], str)
        if message["event"] == "delete":
            assert message["payload"].isdigit()
            continue
        validator = validator_for(component(schema_of_event[message["event"]]))
        assert _errors(validator, json.loads(message["payload"])) == []


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "missing account": lambda s: s.pop("account"),
    "unknown visibility": lambda s: s.update(visibility="secret"),
    "null visibility": lambda s: s.update(visibility=None),
    "edited_at not a date-time": lambda s: s.update(edited_at="yesterday"),
    "id as a number": lambda s: s.update(id=int(s["id"])),
    "media type outside the enum": lambda s: s["media_attachments"][0].update(type="picture"),
    "mention without acct": lambda s: s["mentions"][0].pop("acct"),
    "reblog as a string": lambda s: s.update(reblog="none"),
    "account url not a uri": lambda s: s["account"].update(url="not a url"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_check_rejects_a_served_status_once_it_is_broken(
    breakage: str, recording: Recording, validator_for: Callable[[str], Draft202012Validator]
) -> None:
    status = copy.deepcopy(_status(recording))
    validator = validator_for(component("Status"))
    assert _errors(validator, status) == []
    BREAKAGES[breakage](status)
    with pytest.raises(ValidationError):
        validator.validate(status)
