"""The `tradingd` command line.

Exit codes: 0 clean stop, 1 runtime failure (one line on stderr, details in the log),
2 bad configuration or usage (one line on stderr naming the key, the value and what is allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

    emu = sub.add_parser("emulator", help="serve a local Binance spot emulator (REST and "
                         "websockets on 127.0.0.1) for offline testnet-mode runs")
    emu.add_argument("--data", help="CSV bars: ../shared/data, its binance-spot/<interval> "
                     "folder or any folder of BASE-QUOTE.csv (default: a seeded random walk)")
    emu.add_argument("--symbols", nargs="+", default=["BTC/USDT", "ETH/USDT"])
    emu.add_argument("--interval", default="1h", help="bar interval of the data (default 1h)")
    emu.add_argument("--port", type=int, default=8765, help="REST port (0: any free port)")
    emu.add_argument("--ws-port", type=int, default=8766, help="websocket port (0: any)")
    emu.add_argument("--bar-period", type=float, default=1.0,
                     help="seconds between bars; 0: only POST /_emulator/advance moves them")
    emu.add_argument("--cash", type=float, default=10_000.0, help="starting quote balance")
    emu.add_argument("--seed", type=int, default=0, help="random walk and fault seed")

    vb = sub.add_parser("var-backtest", help="validate the VaR model on CSV history "
                        "(Kupiec, Christoffersen, Basel traffic light)")
    vb.add_argument("--data", required=True, help="folder of BASE-QUOTE.csv bar files")
    vb.add_argument("--symbols", nargs="+", required=True, help="e.g. BTC/USDT ETH/USDT")
    vb.add_argument("--weights", nargs="+", type=float, help="constant weights (default equal)")
    vb.add_argument("--models", nargs="+", help="default: every model")
    vb.add_argument("--confidence", nargs="+", type=float, help="default: risk.var.confidence")
    vb.add_argument("--start", help="first bar (inclusive), e.g. 2021-01-01")
    vb.add_argument("--end", help="last bar (exclusive)")
    vb.add_argument("--config", help="take the other [risk.var] settings from this file")

    from daemon import replay

    replay.add_arguments(sub.add_parser(
        "replay", help="replay CSV bars through the daemon and write an HTML report"))

    from daemon import ops_cli

    ops_cli.add_commands(sub)  # status, health, halt, resume, rebalance-now, cancel-all
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
        if args.command == "var-backtest":
            return _cmd_var_backtest(args)
        if args.command == "emulator":
            return _cmd_emulator(args)
        if args.command == "replay":
            from daemon import replay

            return replay.cli_main(args)
        from daemon import ops_cli

        if args.command in ops_cli.COMMANDS:
            return ops_cli.main(args)
    except ConfigError as exc:
        print(f"tradingd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_CONFIG


def _cmd_check_config(args: argparse.Namespace) -> int:
    from daemon.config import load_config
    from daemon.ops import preflight

    cfg = load_config(args.path)
    preflight(cfg)  # secrets (required in testnet mode), key-file mode, control socket path
    print(f"{args.path}: ok (mode={cfg.daemon.mode}, symbols={', '.join(cfg.market.symbols)})")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from daemon.config import load_config
    from daemon.logs import configure
    from daemon.ops import attach, preflight

    if args.max_bars is not None and args.max_bars < 1:
        raise ConfigError("--max-bars", args.max_bars, "must be >= 1")
    cfg = load_config(args.config)
    preflight(cfg, export_keys=True)  # before any log line: registers the keys for redaction
    configure(cfg.daemon.log_level)
    log = structlog.get_logger("cli")

    async def go() -> Any:
        from daemon.app import Daemon

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        daemon = Daemon(cfg)
        attach(daemon, args.config)  # control socket, HTTP, SIGHUP reload, systemd notify
        # Everything built so far (modules, config, the daemon's objects) lives as long as the
        # process: move it out of the collector's reach, so a collection in the middle of an
        # order (the gate's p99) scans only what was made since, not the whole heap
        gc.collect()
        gc.freeze()
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


def _cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the emulator until SIGINT/SIGTERM; print where it listens and how to point the
    daemon at it (its API keys are fixed, public test values, not secrets)."""
    from adapters.binance_emulator import BinanceEmulator, run_emulator
    from adapters.binance_emulator.bars import INTERVALS

    if args.interval not in INTERVALS:
        raise ConfigError("--interval", args.interval, "must be one of " + ", ".join(INTERVALS))
    for name in ("port", "ws_port"):
        if not 0 <= getattr(args, name) <= 65535:
            raise ConfigError(f"--{name.replace('_', '-')}", getattr(args, name),
                              "must be a port number (0: any free port)")
    if args.bar_period < 0 or args.cash <= 0:
        raise ConfigError("--bar-period/--cash", (args.bar_period, args.cash),
                          "bar period must be >= 0 and cash > 0")
    quote = args.symbols[0].partition("/")[2] or "USDT"

    def ready(emu: BinanceEmulator) -> None:
        period = f"one every {args.bar_period:g} s" if args.bar_period else \
            "moved by POST /_emulator/advance?n=1"
        print(f"tradingd emulator: Binance spot on 127.0.0.1 ({', '.join(emu.symbols)}; "
              f"{args.interval} bars, {period})\n"
              f"  REST       {emu.http_url}\n  websocket  {emu.ws_url}\n"
              f"run the daemon against it (config.testnet-emulator.toml has these URLs):\n"
              f"  export TRADINGD_API_KEY={emu.api_key}\n"
              f"  export TRADINGD_API_SECRET={emu.api_secret}\n"
              f"  tradingd run --config config.testnet-emulator.toml", flush=True)

    async def serve() -> None:
        task = asyncio.ensure_future(run_emulator(
            port=args.port, ws_port=args.ws_port, data_dir=args.data, symbols=args.symbols,
            interval=args.interval, bar_period_s=args.bar_period or None,
            balances={quote: args.cash}, seed=args.seed, on_ready=ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            print("tradingd emulator: stopped", flush=True)

    try:
        _run_loop(serve())
    except (FileNotFoundError, ValueError) as exc:  # no CSVs for a symbol, unknown symbol
        print(f"tradingd: emulator: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:  # port in use
        print(f"tradingd: emulator: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_journal(args: argparse.Namespace) -> int:
    from daemon.config import load_config
    from daemon.journal import Journal

    if args.limit < 1:
        raise ConfigError("--limit", args.limit, "must be >= 1")
    cfg = load_config(args.config)
    path = cfg.state_path / "journal.sqlite"
    if not path.exists():
        print(f"tradingd: no journal at {path}", file=sys.stderr)
        return EXIT_FAILURE
    journal = Journal(path)
    orders = journal.orders(limit=args.limit)
    fills = journal.fills(limit=args.limit)
    if args.json:
        print(json.dumps(journal.recent(args.limit), indent=2, default=str))
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
          f"{'quantity':>14} {'price':>14} {'fee':>12} fee asset")
    for f in fills:
        print(f"  {f.ts:%Y-%m-%d %H:%M:%S}  {f.trade_id:<14} {f.client_order_id:<30} "
              f"{f.side.value:<4} {f.quantity:>14.8g} {f.price:>14.8g} {f.fee:>12.8g} "
              f"{f.fee_currency}")
    for at, kind, ok, report in journal.reconciliations(limit=1):
        print(f"last reconciliation  {at:%Y-%m-%d %H:%M:%S} {kind}: "
              + ("ok" if ok else f"MISMATCH {report.get('issues')} {report.get('mismatches')}"))
    return EXIT_OK


def _cmd_var_backtest(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    import pandas as pd

    from adapters.csv_bars import BarDataError, read_bars_csv
    from risk.var import MODELS, VarConfig
    from risk.var_backtest import backtest_var, format_table

    base = VarConfig()
    if args.config:
        from daemon.config import load_config

        base = load_config(args.config).risk.var
    weights = args.weights or [1.0 / len(args.symbols)] * len(args.symbols)
    if len(weights) != len(args.symbols):
        raise ConfigError("--weights", weights, f"need one per symbol ({len(args.symbols)})")
    models = args.models or list(MODELS)
    for m in models:
        if m not in MODELS:
            raise ConfigError("--models", m, "must be one of " + ", ".join(MODELS))
    closes = {}
    for symbol in args.symbols:
        path = Path(args.data) / (symbol.replace("/", "-") + ".csv")
        try:
            bars = read_bars_csv(path)
        except BarDataError as exc:
            print(f"tradingd: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        closes[symbol] = pd.Series(bars.close, index=pd.to_datetime(bars.ts_ns, utc=True))
    frame = pd.DataFrame(closes).dropna()  # timestamps every symbol has
    if args.start:
        frame = frame[frame.index >= pd.Timestamp(args.start, tz="UTC")]
    if args.end:
        frame = frame[frame.index < pd.Timestamp(args.end, tz="UTC")]
    returns = frame.pct_change().iloc[1:]
    results = []
    try:
        for model in models:
            for confidence in args.confidence or [base.confidence]:
                cfg = replace(base, model=model, confidence=confidence, horizon_bars=1)
                results.append(backtest_var(returns, pd.Series(weights).to_numpy(), cfg))
    except ValueError as exc:  # too little history, a bad confidence: the user's input
        print(f"tradingd: var-backtest: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{len(returns)} bars of {', '.join(args.symbols)}, weights {weights}, "
          f"window {base.window_bars} bars")
    print(format_table(results))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
