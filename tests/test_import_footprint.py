"""The daemon carries only what its config uses: no network SDK, no parser it does not need.

Memory at idle is mostly import cost (the atproto SDK alone was ~40 MB of pydantic models), so
what `relaybird run` imports is checked here, in a fresh interpreter, for configs with and
without each network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Top-level packages the daemon must never load: SDKs and parsers it replaced with aiohttp,
#: `html.parser` and libipld, and rich's tables, which only `check` and `status` print.
NEVER = {"mastodon", "telegram", "atproto", "atproto_client", "atproto_core", "httpx", "bs4"}

ACCOUNTS = {
    "mastodon": '[accounts.masto]\nnetwork = "mastodon"\nbase_url = "http://127.0.0.1:9/"\n'
    'access_token = "t"\n',
    "telegram": '[accounts.tg]\nnetwork = "telegram"\nbot_token = "1:x"\nchat = -100123\n'
    'base_url = "http://127.0.0.1:9/"\n',
    "bluesky": '[accounts.bsky]\nnetwork = "bluesky"\nbase_url = "http://127.0.0.1:9/"\n'
    'handle = "news.test"\napp_password = "p"\n',
}
NAMES = {"mastodon": "masto", "telegram": "tg", "bluesky": "bsky"}

PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from relaybird import cli, health, relay
    from relaybird.config import load_config
    from relaybird.networks.registry import build_network
    from relaybird.store import Store

    config = load_config(Path(sys.argv[1]))
    store = Store(Path(sys.argv[2]))
    for account in config.accounts.values():
        build_network(account, store)
    tops = {name.split(".")[0] for name in sys.modules}
    print(json.dumps(sorted(tops | {n for n in sys.modules if n.startswith("relaybird.")})))
    """
)


def loaded(tmp_path: Path, networks: list[str]) -> set[str]:
    config = "".join(ACCOUNTS[n] for n in networks)
    names = [NAMES[n] for n in networks]
    config += f'[[routes]]\nname = "r"\nfrom = ["{names[0]}"]\nto = {json.dumps(names[1:])}\n'
    path = tmp_path / "relaybird.toml"
    path.write_text(config)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(tmp_path / "state.sqlite3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    "networks",
    [["mastodon", "telegram"], ["telegram", "mastodon"], ["bluesky", "mastodon", "telegram"]],
    ids="-".join,
)
def test_the_daemon_imports_no_network_sdk(tmp_path: Path, networks: list[str]) -> None:
    found = loaded(tmp_path, networks)
    assert "relaybird" in found
    assert found & NEVER == set()
    assert "rich" not in found


def test_an_adapter_is_imported_only_when_the_config_has_its_network(tmp_path: Path) -> None:
    found = loaded(tmp_path, ["mastodon", "telegram"])
    assert "relaybird.networks.mastodon" in found
    assert "relaybird.networks.bluesky" not in found
    assert "libipld" not in found  # the Bluesky adapter's only native dependency
    assert "PIL" in found  # media fitting is shared by every network
