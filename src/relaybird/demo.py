"""`relaybird demo`: the whole relay on local sandbox networks, no accounts and no internet needed.

It starts a Mastodon, a Bluesky and a Telegram sandbox on 127.0.0.1, writes a config that mirrors a
Mastodon account to a Bluesky account and a Telegram channel, runs the daemon, publishes a short story
through Mastodon.py as a person would, and reports where every copy landed and how long it took.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mastodon import Mastodon
from PIL import Image
from rich.console import Console
from rich.table import Table

from relaybird.config import load_config
from relaybird.logsetup import setup_logging
from relaybird.model import TargetRef
from relaybird.relay import Relay
from relaybird.sandbox.bluesky import BlueskySandbox
from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.telegram import TelegramSandbox
from relaybird.store import Delivery, Store

TARGETS = ("demo_bsky", "demo_tg")
WAIT_SECONDS = 60.0

REPORT_URL = "https://example.org/reports/2026/annual-report?lang=en"
LINK_POST = (
    f"Our annual report is out: {REPORT_URL} "
    "#OpenData\n\nالتقرير السنوي متاح الآن للجميع 🌍✨ شاركوه مع أصدقائكم 👩‍👩‍👧"
)
THREAD = [
    "How we verify a story before it goes out — a short thread 🧵 (1/3)",
    "First, two independent sources, each checked by a second editor. (2/3)",
    "Then the desk reads it once more for fairness & context. Questions welcome! (3/3)",
]
LONG_POST = (
    "Why we post everywhere now: our readers moved, and so did we. Every story we publish here is "
    "also mirrored to Bluesky and to our Telegram channel by relaybird, so you can follow us on the "
    "network you like best. Replies reach the same newsroom wherever you write them. This post is "
    "longer than Bluesky's 300 characters on purpose, so on Bluesky it arrives as a thread of two "
    "posts that split at a word boundary, while Mastodon and Telegram keep it whole. #NewsroomNotes"
)
IMAGE_ALT = "A bar chart of monthly readers per network: Mastodon 40%, Bluesky 35%, Telegram 25%."


def demo_image() -> bytes:
    """A noisy 1600x1200 JPEG of about 2 MB: over Bluesky's 1 MB blob limit, so it must be shrunk."""
    rng = random.Random(7)
    image = Image.frombytes("RGB", (1600, 1200), rng.randbytes(1600 * 1200 * 3))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    return out.getvalue()


@dataclass
class Published:
    label: str
    status_id: str
    at: float
    landed: dict[str, tuple[TargetRef, int, float]] = field(default_factory=dict)


def write_config(
    folder: Path,
    masto_url: str,
    masto_token: str,
    bsky_url: str,
    bsky_handle: str,
    bsky_password: str,
    tg_url: str,
    tg_token: str,
) -> Path:
    path = folder / "relaybird.toml"
    path.write_text(
        f"""[relaybird]
state = "relaybird.sqlite3"
listen = ""
log_level = "warning"

[accounts.demo_masto]
network = "mastodon"
base_url = "{masto_url}"
access_token = "{masto_token}"

[accounts.demo_bsky]
network = "bluesky"
base_url = "{bsky_url}"
handle = "{bsky_handle}"
app_password = "{bsky_password}"

[accounts.demo_tg]
network = "telegram"
base_url = "{tg_url}"
bot_token = "{tg_token}"
chat = "@newsroom_channel"

# The sandbox channel takes a burst; real Telegram wants about one message a second per chat,
# which the default limits keep to.
[accounts.demo_tg.rate_limit]
post_burst = 20
call_burst = 40

[[routes]]
name = "mirror"
from = ["demo_masto"]
to = ["demo_bsky", "demo_tg"]
""",
        encoding="utf-8",
    )
    return path


async def publish_story(client: Mastodon) -> list[Published]:
    """Post the story as the newsroom's editor would, through the real Mastodon.py client."""
    published: list[Published] = []

    async def post(label: str, text: str, **kwargs: object) -> str:
        status = await asyncio.to_thread(client.status_post, text, **kwargs)
        published.append(Published(label, str(status["id"]), time.monotonic()))
        return str(status["id"])

    await post("link, hashtag, Arabic and emoji", LINK_POST, visibility="public")
    parent = None
    for index, text in enumerate(THREAD, start=1):
        parent = await post(f"thread {index}/3", text, in_reply_to_id=parent)
    await post(f"long post ({len(LONG_POST)} characters)", LONG_POST)
    media = await asyncio.to_thread(
        client.media_post,
        demo_image(),
        mime_type="image/jpeg",
        description=IMAGE_ALT,
        synchronous=True,
    )
    await post(
        "image with alt text", "Where our readers are, by network 📊", media_ids=[media["id"]]
    )
    return published


def report(console: Console, story: list[Published]) -> bool:
    table = Table(title="relaybird demo: Mastodon → Bluesky, Telegram")
    table.add_column("source post")
    for target in TARGETS:
        table.add_column(target)
    complete = True
    for item in story:
        cells = []
        for target in TARGETS:
            landed = item.landed.get(target)
            if landed is None:
                complete = False
                cells.append("[red]missing[/]")
            else:
                ref, parts, seconds = landed
                where = ref.id.rsplit("/", 1)[-1]
                shape = "1 post" if parts == 1 else f"thread of {parts}"
                cells.append(f"{shape}, id {where}\n[green]{seconds * 1000:.0f} ms[/]")
        table.add_row(f"{item.label}\nmastodon {item.status_id}", *cells)
    console.print(table)
    return complete


async def run_demo(keep: bool = False, verbose: bool = False) -> int:
    console = Console()
    setup_logging("info" if verbose else "warning")
    folder = Path(tempfile.mkdtemp(prefix="relaybird-demo-"))
    masto = MastodonSandbox(defer_image_processing=False)
    bsky, tg = BlueskySandbox(), TelegramSandbox()
    relay: Relay | None = None
    store: Store | None = None
    try:
        masto_url, bsky_url, tg_url = await asyncio.gather(masto.start(), bsky.start(), tg.start())
        editor = masto.create_account("newsroom", "The Newsroom")
        # As on a real server, the link's preview card is fetched a moment after the post.
        masto.register_card(
            REPORT_URL, "Annual report 2026", "Our year in numbers.", fetched_after=0.3
        )
        bsky_account = bsky.create_account("newsroom.bsky.sandbox", "demo-app-password")
        bot = tg.create_bot("relaybird_bot", "relaybird")
        tg.create_channel("newsroom_channel", "The Newsroom", admins=[bot.id])
        config_path = write_config(
            folder,
            masto_url,
            editor.token,
            bsky_url,
            bsky_account.handle,
            bsky_account.password,
            tg_url,
            bot.token,
        )
        console.print(f"sandboxes: mastodon {masto_url}, bluesky {bsky_url}, telegram {tg_url}")
        console.print(f"config and state in {folder}")
        config = load_config(config_path)
        store = Store(config.state_path())
        landed: dict[tuple[str, str], tuple[TargetRef, int, float]] = {}

        def delivered(delivery: Delivery, ref: TargetRef) -> None:
            assert store is not None
            parts = len(store.parts(delivery.id))
            landed[(delivery.source_id, delivery.target_account)] = (ref, parts, time.monotonic())

        relay = Relay(config, store, on_delivered=delivered)
        await relay.start()
        await wait_until(relay.healthy, 20)
        client = Mastodon(
            api_base_url=masto_url, access_token=editor.token, version_check_mode="none"
        )
        story = await publish_story(client)
        expected = {(item.status_id, target) for item in story for target in TARGETS}
        await wait_until(lambda: expected <= landed.keys(), WAIT_SECONDS)
        for item in story:
            for target in TARGETS:
                if (item.status_id, target) in landed:
                    ref, parts, at = landed[(item.status_id, target)]
                    item.landed[target] = (ref, parts, at - item.at)
        complete = report(console, story)
        console.print(
            f"Bluesky holds {len(bsky.records(bsky_account.did))} posts; the Telegram channel holds "
            f"{len(tg.messages_in('@newsroom_channel'))} messages."
        )
        if complete:
            console.print("[bold green]every copy arrived[/]")
            return 0
        console.print(
            "[bold red]some copies did not arrive[/] (run with -v to see the daemon's log)"
        )
        return 1
    finally:
        if relay is not None:
            await relay.stop()
        if store is not None:
            store.close()
        await asyncio.gather(masto.stop(), bsky.stop(), tg.stop(), return_exceptions=True)
        if keep:
            console.print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        logging.shutdown()


async def wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        await asyncio.sleep(0.05)
    return False
