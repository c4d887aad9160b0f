"""The configuration contract: what loads, what it means, and what users are told when it is wrong.

Broken files live in tests/configs/bad/, each starting with comment lines that say what must be
reported: pairs of ``# where: <key path or line/column>`` and ``# expect: <message fragment>``, and
optionally ``# secret: <text>`` for a value that must never appear in the message.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, ValidationError
from rich.console import Console

from relaybird.config import (
    BlueskyAccount,
    BlueskyRateLimit,
    CommandSettings,
    Config,
    ConfigError,
    GlobalSettings,
    MastodonAccount,
    MastodonRateLimit,
    Route,
    TelegramAccount,
    TelegramRateLimit,
    load_config,
    route_settings,
)
from relaybird.config_summary import describe

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
BAD = sorted((CONFIGS / "bad").glob("*.toml"))
GOOD = sorted((CONFIGS / "good").glob("*.toml"))

SECRETS = {
    "MASTODON_TOKEN": "mastodon-secret-token-Zq81",
    "BSKY_APP_PASSWORD": "bsky-secret-app-pw-Xk3",
    "TELEGRAM_BOT_TOKEN": "123456:telegram-secret-token-Wv9",
}
ENV = {
    **SECRETS,
    "RELAYBIRD_TEST_STATE_DIR": "/srv/relay",
    "RELAYBIRD_TEST_PORT": "9999",
    "RELAYBIRD_TEST_CHAT_ID": "-100777",
    "RELAYBIRD_TEST_ROUTE": "from-env",
    "RELAYBIRD_TEST_SOURCE": "bsky",
}

MINIMAL = """
[accounts.masto]
network = "mastodon"
base_url = "https://mastodon.example"
access_token = "${MASTODON_TOKEN}"

[accounts.bsky]
network = "bluesky"
handle = "news.example.org"
app_password = "${BSKY_APP_PASSWORD}"

[[routes]]
name = "mirror"
from = ["masto"]
to = ["bsky"]
"""


@dataclass
class Expectation:
    pairs: list[tuple[str, str]] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


def read_expectation(path: Path) -> Expectation:
    expectation = Expectation()
    where: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"# (where|expect|secret): (.*)$", line)
        if not match:
            continue
        key, value = match.groups()
        if key == "where":
            where = value
        elif key == "expect":
            assert where is not None, f"{path.name}: '# expect:' needs a '# where:' before it"
            expectation.pairs.append((where, value))
            where = None
        else:
            expectation.secrets.append(value)
    assert expectation.pairs, f"{path.name} has no '# where:' / '# expect:' header"
    return expectation


def write(tmp_path: Path, text: str, name: str = "relaybird.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV if environ is None else environ)
    return caught.value


def render(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


# ------------------------------------------------------------------------------------------------
# The corpus


def test_corpus_is_not_empty() -> None:
    assert len(BAD) >= 40
    assert len(GOOD) >= 3


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_is_reported_with_file_key_path_and_advice(path: Path) -> None:
    expectation = read_expectation(path)
    error = error_of(path)
    lines = str(error).splitlines()
    for where, fragment in expectation.pairs:
        prefix = f"{path}: {where}: "
        assert any(line.startswith(prefix) and fragment in line for line in lines), (
            f"no line starting {prefix!r} containing {fragment!r} in:\n{error}"
        )
    assert len(lines) == len(expectation.pairs), f"unexpected extra problems:\n{error}"
    for secret in [*SECRETS.values(), *expectation.secrets]:
        assert secret not in str(error)
        assert secret not in repr(error)


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_config_loads(path: Path) -> None:
    config = load_config(path, ENV)
    assert config.accounts
    assert config.routes
    assert config.path == path.absolute()


def test_example_config_loads_with_its_variables_set() -> None:
    config = load_config(ROOT / "config.example.toml", SECRETS)
    assert set(config.accounts) == {"news_masto", "news_bsky", "news_tg"}
    assert [(r.name, r.sources, r.targets) for r in config.routes] == [
        ("mirror", ["news_masto"], ["news_bsky", "news_tg"]),
    ]
    assert [(c.bot, c.route, c.trigger) for c in config.commands] == [
        ("news_masto", "mirror", "crosspost")
    ]
    masto = config.accounts["news_masto"]
    assert isinstance(masto, MastodonAccount)
    assert masto.access_token.get_secret_value() == SECRETS["MASTODON_TOKEN"]


def test_example_config_names_every_missing_variable() -> None:
    error = error_of(ROOT / "config.example.toml", {})
    message = str(error)
    for variable, key in [
        ("MASTODON_TOKEN", "accounts.news_masto.access_token"),
        ("BSKY_APP_PASSWORD", "accounts.news_bsky.app_password"),
        ("TELEGRAM_BOT_TOKEN", "accounts.news_tg.bot_token"),
    ]:
        assert f"{key}: environment variable {variable} is not set" in message
    assert len(error.problems) == 3, message


def test_example_config_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    keys = set(re.findall(r"^([a-z_]+) =", text, re.MULTILINE))
    keys |= set(re.findall(r"^\[[A-Za-z0-9_.]+\.([a-z_]+)\]$", text, re.MULTILINE))
    models: list[type[BaseModel]] = [
        GlobalSettings,
        MastodonAccount,
        BlueskyAccount,
        TelegramAccount,
        MastodonRateLimit,
        BlueskyRateLimit,
        TelegramRateLimit,
        Route,
        CommandSettings,
    ]
    documented = {
        (info.validation_alias if isinstance(info.validation_alias, str) else name)
        for model in models
        for name, info in model.model_fields.items()
        if name != "name"
    } | {"name"}
    assert documented <= keys


# ------------------------------------------------------------------------------------------------
# Expansion of ${VAR}


def test_env_variables_are_expanded_in_every_string_value() -> None:
    config = load_config(CONFIGS / "good" / "env_everywhere.toml", ENV)
    assert config.relaybird.state == "/srv/relay/relaybird.sqlite3"
    assert config.relaybird.listen_address() == ("::1", 9999)
    assert config.routes[0].name == "from-env"
    assert config.routes[0].sources == ["bsky"]
    telegram = config.accounts["tg"]
    assert isinstance(telegram, TelegramAccount)
    assert telegram.chat == -100777
    assert telegram.bot_token.get_secret_value() == SECRETS["TELEGRAM_BOT_TOKEN"]


def test_double_dollar_brace_is_a_literal() -> None:
    config = load_config(CONFIGS / "good" / "env_everywhere.toml", ENV)
    bluesky = config.accounts["bsky"]
    assert isinstance(bluesky, BlueskyAccount)
    assert bluesky.app_password.get_secret_value() == "${not-a-variable}"


def test_several_variables_in_one_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace('access_token = "${MASTODON_TOKEN}"', 'access_token = "${A}-${B}$${C}"'),
    )
    config = load_config(path, {**ENV, "A": "one", "B": "two"})
    masto = config.accounts["masto"]
    assert isinstance(masto, MastodonAccount)
    assert masto.access_token.get_secret_value() == "one-two${C}"


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    config = load_config(write(tmp_path, MINIMAL))
    masto = config.accounts["masto"]
    assert isinstance(masto, MastodonAccount)
    assert masto.access_token.get_secret_value() == SECRETS["MASTODON_TOKEN"]


def test_unset_variable_is_reported_once_not_as_an_empty_value(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, MINIMAL), {"MASTODON_TOKEN": "x" * 10})
    assert [(p.where, "BSKY_APP_PASSWORD" in p.message) for p in error.problems] == [
        ("accounts.bsky.app_password", True)
    ]


def test_every_unset_variable_is_reported(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, MINIMAL), {})
    assert {p.where for p in error.problems} == {
        "accounts.masto.access_token",
        "accounts.bsky.app_password",
    }


# ------------------------------------------------------------------------------------------------
# Defaults and derived values


def test_defaults_fill_what_is_left_out() -> None:
    config = load_config(CONFIGS / "good" / "minimal.toml", ENV)
    assert config.relaybird == GlobalSettings(
        state="relaybird.sqlite3", listen="127.0.0.1:9810", log_level="info", log_format="text"
    )
    assert config.relaybird.listen_address() == ("127.0.0.1", 9810)
    telegram = config.accounts["tg"]
    assert isinstance(telegram, TelegramAccount)
    assert telegram.base_url == "https://api.telegram.org"
    assert telegram.chat == -1001234567890
    assert telegram.name == "tg"


def test_bluesky_base_url_defaults_to_the_entryway(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), ENV)
    assert config.accounts["bsky"].base_url == "https://bsky.social"


def test_values_are_normalised() -> None:
    config = load_config(CONFIGS / "good" / "both_ways.toml", ENV)
    assert config.relaybird.log_level == "debug"
    assert config.relaybird.listen_address() is None
    bluesky = config.accounts["bsky"]
    assert isinstance(bluesky, BlueskyAccount)
    assert bluesky.handle == "alice.test"
    assert config.accounts["tg-group"].base_url == "http://127.0.0.1:8081/custom"
    minimal = load_config(CONFIGS / "good" / "minimal.toml", ENV)
    assert minimal.accounts["masto"].base_url == "https://mastodon.example"


def test_relative_state_is_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[relaybird]\nstate = "data/relay.sqlite3"\n' + MINIMAL, "etc/relay.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/relay.toml"), ENV)
    monkeypatch.chdir(elsewhere)
    assert config.state_path() == tmp_path / "etc" / "data" / "relay.sqlite3"
    assert config.state_path().is_absolute()


def test_default_state_sits_beside_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL, "conf/relay.toml"), ENV)
    assert config.state_path() == tmp_path / "conf" / "relaybird.sqlite3"


def test_absolute_state_is_kept() -> None:
    config = load_config(CONFIGS / "good" / "both_ways.toml", ENV)
    assert config.state_path() == Path("/var/lib/relaybird/state.sqlite3")


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:0", ("localhost", 0)),
        ("[::]:65535", ("::", 65535)),
        ("", None),
    ],
)
def test_listen_is_parsed(listen: str, address: tuple[str, int] | None) -> None:
    assert GlobalSettings(listen=listen).listen_address() == address


@pytest.mark.parametrize("listen", ["9810", "::1:9810", "host:", "host:65536", " host:1", "a b:1"])
def test_bad_listen_is_refused(listen: str) -> None:
    with pytest.raises(ValidationError):
        GlobalSettings(listen=listen)


# ------------------------------------------------------------------------------------------------
# Route options and stream settings

ROUTE_DEFAULTS = {
    "kinds": ["post", "reply", "edit", "delete"],
    "visibility": ["public", "unlisted"],
    "include_tags": [],
    "exclude_tags": ["nobridge"],
    "include_regex": "",
    "exclude_regex": "",
    "languages": [],
    "skip_replies_to_others": True,
    "skip_reposts": True,
    "template": "{text}",
    "overflow": "thread",
    "numbering": False,
    "on_edit": "ignore",
    "on_delete": "delete",
    "unmapped_parent": "skip",
    "chain": False,
    "reply_back": False,
}


def test_route_options_default_to_the_documented_values() -> None:
    route = load_config(CONFIGS / "good" / "minimal.toml", ENV).routes[0]
    assert route.model_dump(exclude={"name", "sources", "targets"}) == ROUTE_DEFAULTS
    assert not route.mirrors_reposts()


def test_stream_settings_default_to_jetstream_and_a_thirty_second_long_poll(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, MINIMAL), ENV)
    bluesky = config.accounts["bsky"]
    assert isinstance(bluesky, BlueskyAccount)
    assert (bluesky.stream, bluesky.jetstream_url, bluesky.firehose_url, bluesky.poll_interval) == (
        "jetstream",
        "wss://jetstream2.us-east.bsky.network/subscribe",
        "",
        60,
    )
    telegram = load_config(CONFIGS / "good" / "minimal.toml", ENV).accounts["tg"]
    assert isinstance(telegram, TelegramAccount)
    assert telegram.poll_timeout == 30


def test_example_config_shows_exactly_the_defaults() -> None:
    """The example documents each option with its default value; the two must not drift apart."""
    config = load_config(ROOT / "config.example.toml", SECRETS)
    route = config.routes[0]
    assert route.model_dump(exclude={"name", "sources", "targets"}) == ROUTE_DEFAULTS
    assert route_settings(route) == ""
    bluesky = config.accounts["news_bsky"]
    assert isinstance(bluesky, BlueskyAccount)
    assert bluesky.model_dump(exclude_defaults=True, exclude={"app_password"}) == {
        "name": "news_bsky",
        "network": "bluesky",
        "handle": "news.example.org",
    }
    telegram = config.accounts["news_tg"]
    assert isinstance(telegram, TelegramAccount)
    assert telegram.poll_timeout == 30


def test_route_options_are_loaded_and_normalised() -> None:
    config = load_config(CONFIGS / "good" / "route_options.toml", ENV)
    route = config.routes[0]
    assert route.kinds == ["post", "reply", "repost", "edit", "delete"]
    assert route.visibility == ["public", "unlisted", "private", "direct"]
    assert route.include_tags == ["news", "tech"]
    assert route.exclude_tags == ["nobridge", "private"]
    assert route.include_regex == r"(?i)\brelease\b"
    assert route.exclude_regex == "^RT "
    assert route.languages == ["en", "pt-br", "und"]
    assert route.template == "{text}\n\n{{via {author} ({handle}) on {network}}}: {permalink}"
    assert (route.overflow, route.numbering) == ("truncate", True)
    assert (route.on_edit, route.on_delete, route.unmapped_parent) == (
        "repost",
        "ignore",
        "standalone",
    )
    assert (route.skip_replies_to_others, route.skip_reposts, route.chain) == (False, False, True)
    assert route.mirrors_reposts()
    assert config.routes[1].exclude_tags == []


def test_stream_settings_are_loaded_and_normalised() -> None:
    config = load_config(CONFIGS / "good" / "route_options.toml", ENV)
    bluesky = config.accounts["bsky"]
    assert isinstance(bluesky, BlueskyAccount)
    assert bluesky.stream == "firehose"
    assert bluesky.jetstream_url == "ws://127.0.0.1:6008/subscribe"
    assert bluesky.firehose_url == "wss://relay.example/xrpc"
    assert bluesky.poll_interval == 5
    telegram = config.accounts["tg"]
    assert isinstance(telegram, TelegramAccount)
    assert telegram.poll_timeout == 50


@pytest.mark.parametrize(
    "template",
    [
        "{text}",
        "{text}\n\n{permalink}",
        "{author} ({handle} on {network}): {text} {permalink}",
        "{{literal braces}} {text} {text}",
    ],
)
def test_templates_with_known_placeholders_are_accepted(template: str) -> None:
    assert Route(name="r", sources=["a"], targets=["b"], template=template).template == template


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{body}", 'unknown placeholder "{body}"'),
        ("{Text}", 'did you mean "{text}"?'),
        ("{text.upper}", 'unknown placeholder "{text.upper}"'),
        ("{text[0]}", 'unknown placeholder "{text[0]}"'),
        ("{0}", 'unknown placeholder "{0}"'),
        ("{text!r}", "write placeholders plainly"),
        ("{permalink}", "must contain {text}"),
        ("", "must contain {text}"),
        ("{text", "unmatched { or }"),
        ("text}", "unmatched { or }"),
    ],
)
def test_templates_are_checked_at_load(template: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Route(name="r", sources=["a"], targets=["b"], template=template)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("written", "stored"),
    [("#News", "news"), ("nobridge", "nobridge"), (" ÉTÉ ", "été"), ("#Straße", "strasse")],
)
def test_tags_are_stored_without_hash_and_case_folded(written: str, stored: str) -> None:
    route = Route(name="r", sources=["a"], targets=["b"], include_tags=[written])
    assert route.include_tags == [stored]


@pytest.mark.parametrize("language", ["en", "EN", "pt-BR", "und", "zh-hant-tw", "gsw"])
def test_language_codes_are_accepted_in_lower_case(language: str) -> None:
    route = Route(name="r", sources=["a"], targets=["b"], languages=[language])
    assert route.languages == [language.lower()]


@pytest.mark.parametrize("language", ["english", "e", "en_US", "en-", "", "fr fr"])
def test_malformed_language_codes_are_refused(language: str) -> None:
    with pytest.raises(ValidationError, match="must be a language code"):
        Route(name="r", sources=["a"], targets=["b"], languages=[language])


def test_repost_needs_both_switches_to_be_mirrored(tmp_path: Path) -> None:
    both = MINIMAL + 'kinds = ["post", "repost"]\nskip_reposts = false\n'
    assert load_config(write(tmp_path, both), ENV).routes[0].mirrors_reposts()
    only_kind = error_of(write(tmp_path, MINIMAL + 'kinds = ["repost"]\n'))
    assert [p.where for p in only_kind.problems] == ["routes[0].kinds"]
    only_switch = error_of(write(tmp_path, MINIMAL + "skip_reposts = false\n"))
    assert [p.where for p in only_switch.problems] == ["routes[0].skip_reposts"]


def test_regex_error_does_not_echo_a_secret_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'exclude_regex = "${PATTERN}("\n')
    error = error_of(path, {**ENV, "PATTERN": "secret-pattern-Zz9"})
    assert [p.where for p in error.problems] == ["routes[0].exclude_regex"]
    assert "secret-pattern-Zz9" not in str(error)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("jetstream_url", '"wss://jet.example/subscribe#x"', "leave out ?query"),
        ("jetstream_url", '"wss://user:pw@jet.example/subscribe"', "leave out ?query"),
        ("jetstream_url", '""', "must be a ws:// or wss:// URL"),
        ("jetstream_url", '"wss://"', "must be a ws:// or wss:// URL"),
        ("jetstream_url", '"wss://jet.example:99999/"', "must be a ws:// or wss:// URL"),
        ("firehose_url", '"http://pds.example/xrpc"', 'or "" for the default'),
        ("poll_interval", "4", "at least 5 seconds"),
        ("poll_interval", "true", "expected a whole number, got a boolean"),
        ("stream", '"websocket"', "must be one of: jetstream, firehose, poll"),
    ],
)
def test_bluesky_stream_settings_are_checked(
    tmp_path: Path, key: str, value: str, fragment: str
) -> None:
    text = MINIMAL.replace(
        'app_password = "${BSKY_APP_PASSWORD}"',
        f'app_password = "${{BSKY_APP_PASSWORD}}"\n{key} = {value}',
    )
    error = error_of(write(tmp_path, text))
    assert [p.where for p in error.problems] == [f"accounts.bsky.{key}"]
    assert fragment in error.problems[0].message


@pytest.mark.parametrize(("timeout", "ok"), [(1, True), (50, True), (0, False), (51, False)])
def test_telegram_poll_timeout_bounds(timeout: int, ok: bool) -> None:
    def build() -> TelegramAccount:
        return TelegramAccount(
            name="t",
            network="telegram",
            bot_token=SecretStr("b"),
            chat="@chan",
            poll_timeout=timeout,
        )

    if ok:
        assert build().poll_timeout == timeout
    else:
        with pytest.raises(ValidationError, match="between 1 and 50 seconds"):
            build()


def test_describe_shows_the_options_a_route_changes() -> None:
    config = load_config(CONFIGS / "good" / "route_options.toml", ENV)
    output = render(describe(config))
    onward = next(line for line in output.splitlines() if "onward" in line)
    assert 'kinds = ["post"]' in onward
    assert "exclude_tags = []" in onward
    assert "chain = true" in onward
    assert route_settings(config.routes[1]) == 'kinds = ["post"], exclude_tags = [], chain = true'
    minimal = render(describe(load_config(CONFIGS / "good" / "minimal.toml", ENV)))
    assert re.search(r"to-telegram .*defaults", minimal)


# ------------------------------------------------------------------------------------------------
# Secrets


def test_secrets_are_absent_from_repr_and_str_of_config() -> None:
    config = load_config(ROOT / "config.example.toml", SECRETS)
    for text in (repr(config), str(config), config.model_dump_json()):
        for secret in SECRETS.values():
            assert secret not in text


def test_secret_in_any_field_stays_out_of_errors(tmp_path: Path) -> None:
    secret = "sup3r-s3cret-value"
    text = MINIMAL.replace('handle = "news.example.org"', 'handle = "${LEAK}"').replace(
        'base_url = "https://mastodon.example"', 'base_url = "${LEAK}"'
    )
    text += '\n[relaybird]\nlisten = "${LEAK}"\nlog_level = "${LEAK}"\n'
    text += '\n[accounts.x]\nnetwork = "${LEAK}"\nacess_token = "literal-token-1234"\n'
    error = error_of(write(tmp_path, text), {**ENV, "LEAK": secret})
    assert {p.where for p in error.problems} >= {
        "accounts.bsky.handle",
        "accounts.masto.base_url",
        "relaybird.listen",
        "relaybird.log_level",
        "accounts.x.network",
    }
    assert secret not in str(error)
    assert "literal-token-1234" not in str(error)


def test_value_from_environment_is_masked_where_a_message_would_echo_it(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('to = ["bsky"]', 'to = ["${TARGET}"]'))
    error = error_of(path, {**ENV, "TARGET": "glpat-abcdEFGH1234"})
    assert str(error) == (
        f'{path}: routes[0].to[0]: no account is named "***"; known accounts: bsky, masto;'
        " fix the name or add [accounts.NAME]"
    )


def test_one_variable_unset_twice_in_a_value_is_reported_once(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"${MASTODON_TOKEN}"', '"${NOPE}:${NOPE}"'))
    assert len(error_of(path).problems) == 1


def test_secret_typed_as_number_stays_out_of_errors(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"${MASTODON_TOKEN}"', "55501234567"))
    error = error_of(path)
    assert [p.where for p in error.problems] == ["accounts.masto.access_token"]
    assert "55501234567" not in str(error)


# ------------------------------------------------------------------------------------------------
# Files that cannot be read or parsed


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    error = error_of(path)
    assert str(error) == (
        f"{path}: file not found; create it (start from config.example.toml) or give the right path"
    )
    assert error.path == path


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert str(error_of(tmp_path)).startswith(f"{tmp_path}: is a directory")


def test_path_through_a_file_is_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL) / "inner.toml"
    assert str(error_of(path)).startswith(f"{path}: cannot be read: ")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[relaybird]\nstate = "caf\xe9"\n'.encode("latin-1"))
    assert str(error_of(path)) == f"{path}: line 2: is not UTF-8 text; save the file as UTF-8"


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert set(load_config(path, ENV).accounts) == {"masto", "bsky"}


def test_syntax_error_at_end_of_file(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, MINIMAL + '\n[accounts.x]\nnetwork = "telegram'))
    assert [(p.where, p.message.split(";")[0]) for p in error.problems] == [
        ("end of file", "TOML syntax error: unterminated string")
    ]


# ------------------------------------------------------------------------------------------------
# Building a Config in code (other modules' tests do this)


def test_config_can_be_built_in_code(tmp_path: Path) -> None:
    config = Config(
        path=tmp_path / "c.toml",
        accounts={
            "m": MastodonAccount(
                name="m",
                network="mastodon",
                base_url="http://127.0.0.1:1",
                access_token=SecretStr("t"),
            ),
            "t": TelegramAccount(
                name="t", network="telegram", bot_token=SecretStr("b"), chat="@chan"
            ),
        },
        routes=[Route(name="r", sources=["m"], targets=["t"])],
    )
    assert config.state_path() == tmp_path / "relaybird.sqlite3"
    assert config.routes[0].model_dump(by_alias=True, exclude_defaults=True) == {
        "name": "r",
        "from": ["m"],
        "to": ["t"],
    }
    assert config.routes[0].kinds == ["post", "reply", "edit", "delete"]


def test_route_built_in_code_is_validated() -> None:
    assert Route(name="r", sources=["m"], targets=["t"], kinds=["mention"]).routes_mentions()
    with pytest.raises(ValidationError, match="Input should be"):
        Route(name="r", sources=["m"], targets=["t"], kinds=["mentions"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="unknown placeholder"):
        Route(name="r", sources=["m"], targets=["t"], template="{body}")


def test_config_built_in_code_is_cross_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"routes\[0\]\.to\[0\]: no account is named"):
        Config(
            path=tmp_path / "c.toml",
            accounts={
                "m": MastodonAccount(
                    name="m", network="mastodon", base_url="http://h", access_token=SecretStr("t")
                )
            },
            routes=[Route(name="r", sources=["m"], targets=["ghost"])],
        )


def test_config_is_immutable() -> None:
    config = load_config(CONFIGS / "good" / "minimal.toml", ENV)
    with pytest.raises(ValidationError):
        config.relaybird.log_level = "debug"


# ------------------------------------------------------------------------------------------------
# describe()


def test_describe_lists_accounts_and_routes_without_secrets() -> None:
    config = load_config(CONFIGS / "good" / "both_ways.toml", ENV)
    output = render(describe(config))
    for expected in (
        "masto",
        "mastodon",
        "http://127.0.0.1:8080",
        "bsky",
        "bluesky",
        "alice.test",
        "tg-group",
        "telegram",
        "@news_group",
        "masto-out",
        "bsky-back",
        "bsky, tg-group",
        "→",
    ):
        assert expected in output
    for secret in SECRETS.values():
        assert secret not in output
    route_line = next(line for line in output.splitlines() if "masto-out" in line)
    assert re.search(r"masto\s.*→.*bsky, tg-group", route_line)


def test_describe_prints_names_literally(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('name = "mirror"', 'name = "[bold]mirror[/bold]"'))
    assert "[bold]mirror[/bold]" in render(describe(load_config(path, ENV)))


def test_rate_limits_and_retention_are_loaded_over_the_network_defaults() -> None:
    config = load_config(CONFIGS / "good" / "rate_limits_and_retention.toml", ENV)
    assert (config.relaybird.retention_days, config.relaybird.mapping_retention_days) == (14, 365)
    assert config.relaybird.retention_seconds() == (14 * 86400.0, 365 * 86400.0)
    limits = config.accounts["news_tg"].rate_limit
    assert (limits.posts_per_hour, limits.post_burst, limits.calls_per_minute) == (120, 4, 30.5)
    # Keys left out keep the network's defaults.
    assert limits.deletes_per_hour == TelegramRateLimit().deletes_per_hour
    assert config.accounts["news_masto"].rate_limit == MastodonRateLimit()


def test_retention_defaults_to_90_days_and_mappings_kept_for_good() -> None:
    config = load_config(CONFIGS / "good" / "minimal.toml", ENV)
    assert config.relaybird.retention_seconds() == (90 * 86400.0, None)


def test_secret_values_lists_every_credential_for_log_masking() -> None:
    config = load_config(ROOT / "config.example.toml", SECRETS)
    assert config.secret_values() == set(SECRETS.values())


def test_media_hosts_default_to_none_and_are_normalised(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'access_token = "${MASTODON_TOKEN}"',
        'access_token = "${MASTODON_TOKEN}"\n'
        'media_hosts = ["Files.Example.Social.", "*.cdn.example", "media.example:8443",'
        ' "plain.example:443"]',
    )
    config = load_config(write(tmp_path, text), ENV)
    assert config.accounts["masto"].media_hosts == [
        "files.example.social",
        "*.cdn.example",
        "media.example:8443",
        "plain.example",
    ]
    assert config.accounts["bsky"].media_hosts == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('["https://files.example.social"]', "without scheme or path"),
        ('["files.example.social/media"]', "without scheme or path"),
        ('["*.cdn.example:8443"]', "takes no port"),
        ('["media.example:70000"]', "the port must be 1 to 65535"),
        ('["bad host"]', "must be a host name"),
        ('["*"]', "must be a host name"),
        ('"files.example.social"', ""),
    ],
)
def test_media_hosts_are_checked(tmp_path: Path, value: str, fragment: str) -> None:
    text = MINIMAL.replace(
        'app_password = "${BSKY_APP_PASSWORD}"',
        f'app_password = "${{BSKY_APP_PASSWORD}}"\nmedia_hosts = {value}',
    )
    error = error_of(write(tmp_path, text))
    assert [p.where.split("[")[0] for p in error.problems] == ["accounts.bsky.media_hosts"]
    assert fragment in error.problems[0].message
