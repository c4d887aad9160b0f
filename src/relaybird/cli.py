"""`relaybird run | check | demo | status | retry`.

Exit codes: 0 success, 1 a runtime failure (a network refused our credentials, the demo missed a copy),
2 a problem with the config or the command line, found before any connection is made.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relaybird.config import Config, ConfigError, load_config
from relaybird.logsetup import setup_logging

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("relaybird")

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def _console(stderr: bool = False) -> Console:
    """rich is imported on first use: `relaybird run` prints nothing with it unless it fails."""
    from rich.console import Console

    return Console(stderr=stderr)


def _load(path: str) -> Config | None:
    try:
        return load_config(Path(path))
    except ConfigError as error:
        _console(stderr=True).print(
            f"[bold red]config error[/]: {error}", highlight=False, markup=True
        )
        return None


def cmd_check(args: argparse.Namespace) -> int:
    from relaybird.config_summary import describe

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    out = _console()
    out.print(f"{args.config}: OK")
    out.print(describe(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging(
        args.log_level or config.relaybird.log_level,
        args.log_format or config.relaybird.log_format,
        secrets=config.secret_values(),
    )
    return asyncio.run(run_daemon(config))


async def run_daemon(config: Config) -> int:
    """Run until SIGTERM or Ctrl-C, then stop listeners, let workers wind down and close the store."""
    from relaybird.health import start_health_server
    from relaybird.networks.base import DeliveryError
    from relaybird.relay import Relay
    from relaybird.store import Store

    store = Store(config.state_path())
    relay = Relay(config, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = None
    try:
        try:
            await relay.start()
        except DeliveryError as error:
            log.error("cannot start: %s", error)
            return EXIT_RUNTIME
        runner = await start_health_server(relay, config.relaybird.listen)
        log.info(
            "relaybird running with %d accounts and %d routes",
            len(relay.networks),
            len(config.routes),
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        await relay.stop()
        if runner is not None:
            await runner.cleanup()
        store.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from relaybird.demo import run_demo

    return asyncio.run(run_demo(keep=args.keep, verbose=args.verbose))


def cmd_status(args: argparse.Namespace) -> int:
    from relaybird.status import print_status

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    return print_status(config, as_json=args.json)


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-queue dead letters; a running daemon picks them up within seconds."""
    from relaybird.store import Store

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    out, err = _console(), _console(stderr=True)
    if args.all == (args.id is not None):
        err.print("say which delivery to retry (an id from `relaybird status`) or --all, not both")
        return EXIT_CONFIG
    path = config.state_path()
    if not path.exists():
        err.print(f"no state at {path}: the daemon has not run with this config", highlight=False)
        return EXIT_RUNTIME
    store = Store(path)
    try:
        count = store.requeue(None if args.all else args.id)
        found = store.find(args.id) if not count and args.id is not None else None
        state = found.state if found else None
    finally:
        store.close()
    if args.id is not None and not count:
        if state is None:
            err.print(f"there is no delivery {args.id}; `relaybird status` lists the failed ones")
        else:
            err.print(f"delivery {args.id} is not dead-lettered (it is {state}); nothing to do")
        return EXIT_RUNTIME
    out.print(
        f"re-queued {count} dead-lettered deliver{'y' if count == 1 else 'ies'}"
        " (with the replies that were skipped for want of their copies)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaybird", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="validate a config without touching the network")
    check.add_argument("-c", "--config", default="relaybird.toml")
    check.set_defaults(func=cmd_check)

    run = commands.add_parser("run", help="run the daemon until SIGTERM or Ctrl-C")
    run.add_argument("-c", "--config", default="relaybird.toml")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", choices=["text", "json"])
    run.set_defaults(func=cmd_run)

    demo = commands.add_parser(
        "demo", help="mirror a scripted story between local sandbox networks"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's temporary folder")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the daemon's log")
    demo.set_defaults(func=cmd_demo)

    status = commands.add_parser("status", help="show streams, queues and dead letters")
    status.add_argument("-c", "--config", default="relaybird.toml")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    retry = commands.add_parser("retry", help="re-queue dead-lettered deliveries")
    retry.add_argument("-c", "--config", default="relaybird.toml")
    retry.add_argument("id", nargs="?", type=int)
    retry.add_argument("--all", action="store_true")
    retry.set_defaults(func=cmd_retry)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
