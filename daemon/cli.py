"""The `tradingd` command line.

Exit codes: 0 clean stop, 1 runtime failure (one line on stderr, details in the log),
2 bad configuration or usage (one line on stderr naming the key, the value and what is allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import structlog

from daemon.settings import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.run(coro)
    return uvloop.run(coro)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tradingd", description="Keeps a crypto portfolio on its "
                                "target weights: paper, testnet or replay.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon until SIGINT/SIGTERM or --max-bars")
    run.add_argument("--config", default="config.toml", help="path to config.toml")
    run.add_argument("--max-bars", type=int, default=None,
                     help="stop after this many bars per symbol and print a summary")

    check = sub.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("path", nargs="?", default="config.toml")

    journal = sub.add_parser("journal", help="print recent orders and fills from the journal")
    journal.add_argument("--config", default="config.toml")
    journal.add_argument("--limit", type=int, default=20)
    journal.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "check-config":
            return _cmd_check_config(args)
        if args.command == "journal":
            return _cmd_journal(args)
    except ConfigError as exc:
        print(f"tradingd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_CONFIG


def _cmd_check_config(args: argparse.Namespace) -> int:
    from daemon.config import load_config

    cfg = load_config(args.path)
    print(f"{args.path}: ok (mode={cfg.daemon.mode}, symbols={', '.join(cfg.market.symbols)})")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from daemon.config import load_config
    from daemon.logs import configure

    if args.max_bars is not None and args.max_bars < 1:
        raise ConfigError("--max-bars", args.max_bars, "must be >= 1")
    cfg = load_config(args.config)
    configure(cfg.daemon.log_level)
    log = structlog.get_logger("cli")

    async def go() -> Any:
        from daemon.app import Daemon

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        daemon = Daemon(cfg)
        return await daemon.run(max_bars=args.max_bars, stop=stop)

    try:
        summary = _run_loop(go())
    except ConfigError:
        raise
    except Exception as exc:
        log.error("daemon_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        print(f"tradingd: stopped on error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.flush()
    print(summary.render())
    return EXIT_OK


def _cmd_journal(args: argparse.Namespace) -> int:
    from daemon.config import load_config
    from daemon.journal import Journal

    cfg = load_config(args.config)
    path = cfg.state_path / "journal.sqlite"
    if not path.exists():
        print(f"tradingd: no journal at {path}", file=sys.stderr)
        return EXIT_FAILURE
    journal = Journal(path)
    orders = journal.orders(limit=args.limit)
    fills = journal.fills(limit=args.limit)
    if args.json:
        print(json.dumps({
            "orders": [{**o.__dict__, "side": o.side.value, "order_type": o.order_type.value,
                        "created_at": o.created_at.isoformat(),
                        "updated_at": o.updated_at.isoformat()} for o in orders],
            "fills": [{**{k: getattr(f, k) for k in f.__slots__}, "side": f.side.value,
                       "ts": f.ts.isoformat()} for f in fills],
        }, indent=2))
        return EXIT_OK
    print(f"orders (latest {len(orders)})")
    print(f"  {'created':<20} {'client order id':<30} {'symbol':<10} {'side':<4} "
          f"{'quantity':>14} {'filled':>14} {'state':<16} reason")
    for o in orders:
        print(f"  {o.created_at:%Y-%m-%d %H:%M:%S}  {o.client_order_id:<30} {o.symbol:<10} "
              f"{o.side.value:<4} {o.quantity:>14.8g} {o.filled:>14.8g} {o.state:<16} "
              f"{o.reason[:40]}")
    print(f"fills (latest {len(fills)})")
    print(f"  {'time':<20} {'trade id':<14} {'client order id':<30} {'side':<4} "
          f"{'quantity':>14} {'price':>14} {'fee':>10}")
    for f in fills:
        print(f"  {f.ts:%Y-%m-%d %H:%M:%S}  {f.trade_id:<14} {f.client_order_id:<30} "
              f"{f.side.value:<4} {f.quantity:>14.8g} {f.price:>14.8g} {f.fee:>10.4f}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
