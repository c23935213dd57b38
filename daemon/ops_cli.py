"""The command-line side of the control socket: `tradingd status | health | halt | resume |
rebalance-now | cancel-all`. Each finds the socket from the config (or --socket), sends one
command and prints the answer; a daemon that cannot be reached is one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE = 0, 1

COMMANDS = {
    "status": "positions, weights vs targets, orders, risk usage, data age, rejections",
    "health": "exit 0 if the daemon is healthy (Docker HEALTHCHECK), else 1",
    "halt": "stop new orders (working orders are cancelled too while "
            "risk.state.cancel_working_on_halt is on)",
    "resume": "allow new orders again after a halt",
    "rebalance-now": "re-solve targets and trade back to them at the next bar close",
    "cancel-all": "cancel every working order",
}


def add_commands(sub: Any) -> None:
    """Register the subcommands on the CLI's subparsers."""
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default="config.toml",
                       help="config of the running daemon (to find its control socket)")
        p.add_argument("--socket", default=None, help="control socket path (overrides config)")
        p.add_argument("--timeout", type=_seconds, default=30.0,
                       help="seconds to wait for an answer")
        if name in ("status", "health"):
            p.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("halt", "rebalance-now", "cancel-all"):
            p.add_argument("--reason", default="", help="recorded in the log and the status")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be seconds, > 0 and <= 3600")
    return value


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container uid without a passwd entry
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{sudo} (sudo as {user})" if sudo and sudo != user else user


def _raw_socket(config: str) -> Path | None:
    """The socket path from a config that does not validate: the state directory and socket
    keys alone, resolved as `Config.state_path` does. None if even that cannot be read."""
    import tomllib

    from daemon.control import ControlConfig, socket_path

    try:
        data = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    daemon, control = data.get("daemon", {}), data.get("control", {})
    state = daemon.get("state_dir", "state") if isinstance(daemon, dict) else None
    sock = control.get("socket", "control.sock") if isinstance(control, dict) else None
    if not isinstance(state, str) or not isinstance(sock, str):
        return None
    state_path = Path(state)
    if not state_path.is_absolute():
        state_path = Path(config).resolve().parent / state_path
    return socket_path(ControlConfig(socket=sock), state_path)


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    # two keys read straight from the TOML: fast (no daemon imports, which matters for a
    # HEALTHCHECK every 30 s), and it still works while the file on disk is broken and the
    # daemon runs on its last good config, which is exactly when status matters
    path = _raw_socket(args.config)
    if path is not None:
        return path
    from daemon.config import load_config  # unreadable: let the loader say why, in one line
    from daemon.control import socket_path

    cfg = load_config(args.config)
    return socket_path(cfg.control, cfg.state_path)


def main(args: argparse.Namespace) -> int:
    from daemon.control import ControlError, request

    command = args.command
    payload: dict[str, Any] = {"by": _operator()}
    if getattr(args, "reason", None):
        payload["reason"] = args.reason
    path = _socket(args)
    try:
        result = request(path, command, payload, timeout=args.timeout)
    except ControlError as exc:
        print(f"tradingd: {command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    elif command == "status":
        from daemon.status import render

        print(render(result))
    elif command == "health":
        print("healthy" if result["ok"] else "unhealthy: " + "; ".join(result["reasons"]))
    elif command in ("halt", "resume"):
        reason = f" ({result['reason']})" if result.get("reason") else ""
        print(f"trading {result['state']}{reason}")
    elif command == "rebalance-now":
        print("rebalance requested: targets are re-solved and traded at the next bar close")
    elif command == "cancel-all":
        print(f"cancel requested for {result['cancel_requested']} working order(s); "
              f"{result['still_working']} still working")
    if command == "health" and not result["ok"]:
        return EXIT_FAILURE
    return EXIT_OK
