"""The daemon as a service, end to end in a subprocess: sd_notify READY/WATCHDOG/STOPPING on a
fake $NOTIFY_SOCKET, /healthz and /metrics, `tradingd status/halt/resume` over the control
socket, SIGHUP reload, SIGTERM, and not one known fake key, secret or listen key anywhere in
what it printed.

Paper mode always; testnet mode (ccxt venue, websocket klines, user data stream) against the
local Binance emulator, started here with the fake keys, so the keys really are used to sign.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
# 64 letters and digits, as Binance keys are (the emulator checks the shape)
KEY = "tdFAKEapiKEY0123456789abcdefABCDEF0123456789abcdefABCDEF01234567"
SECRET = "tdFAKEsecret9876543210zyxwvuZYXWVU9876543210zyxwvuZYXWVU98765432"
ENV_ONLY = "tdFAKEenvONLYvalue5555555555aaaaaaaaaaBBBBBBBBBB"  # in the env, not the key file

PAPER = """
[daemon]
mode = "paper"
state_dir = "{state}"
log_level = "debug"
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
[market.simulated]
seed = 9
speed = 180000.0
[rebalance]
band = 0.03
solver = "thread"
[allocation]
lookback_bars = 30
max_weight = 0.5
[http]
port = 0
[secrets]
key_file = "keys.env"
"""

TESTNET = """
[daemon]
mode = "testnet"
state_dir = "{state}"
log_level = "debug"
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
interval = "1h"
[rebalance]
band = 0.03
solver = "thread"
[allocation]
lookback_bars = 30
max_weight = 0.5
[risk]
max_volume_share = 1.0
[risk.throttle]
orders_per_minute = 5000
symbol_orders_per_minute = 2000
[http]
port = 0
[secrets]
key_file = "keys.env"
[exchange]
rest_url = "{rest}"
ws_url = "{ws}"
timeout_s = 2.0
ccxt_rate_limit_ms = 1
max_requests_per_s = 500
burst = 50
fills_poll_s = 0.2
fills_audit_s = 0.5
[exchange.stream]
bar_deadline_s = 0.3
ping_interval_s = 5.0
reconnect_min_s = 0.05
reconnect_max_s = 0.3
"""


class Daemon:
    """`tradingd run` in a subprocess, its output collected line by line."""

    def __init__(self, config: Path, notify: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_")}
        env.update(NOTIFY_SOCKET=notify, WATCHDOG_USEC="1000000", PYTHONUNBUFFERED="1",
                   TRADINGD_API_PASSWORD=ENV_ONLY)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._drain, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _drain(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in list(self.out):
            if line.startswith("{") and f'"event": "{name}"' in line:
                found.append(json.loads(line))
        return found

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_")}
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)


async def until(cond: Callable[[], Any], timeout: float, what: str,
                tick: Callable[[], Awaitable[Any]] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if tick is not None:
            await tick()
        await asyncio.sleep(0.02)


def listen(sock: socket.socket, sink: list[str]) -> None:
    """Read notifications as systemd does: promptly, all the time."""
    def run() -> None:
        while True:
            try:
                sink.append(sock.recv(4096).decode())
            except OSError:
                return
    threading.Thread(target=run, daemon=True).start()


async def scenario(tmp_path: Path, config_text: str,
                   tick: Callable[[], Awaitable[Any]] | None = None) -> str:
    """Run the daemon through its service life; returns everything it and the CLI printed."""
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    keys = tmp_path / "keys.env"
    keys.write_text(f"TRADINGD_API_KEY={KEY}\nTRADINGD_API_SECRET={SECRET}\n")
    keys.chmod(0o600)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    messages: list[str] = []
    listen(notify, messages)
    daemon = Daemon(config, str(tmp_path / "notify.sock"))
    printed: list[str] = []
    try:
        await until(lambda: any(m.startswith("READY=1") for m in messages)
                    or daemon.proc.poll() is not None, 90, "READY=1", tick)
        assert daemon.proc.poll() is None, daemon.text()[-3000:]
        port = daemon.events("http_listening")[0]["port"]
        base = f"http://127.0.0.1:{port}"

        # trading happens: fills, and two watchdog pings (1 s apart) from a healthy loop
        async def status() -> dict[str, Any]:
            proc = await asyncio.to_thread(cli, config, "status", "--json")
            printed.append(proc.stdout + proc.stderr)
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout)  # type: ignore[no-any-return]

        snap: dict[str, Any] = {}

        async def traded() -> bool:
            snap.update(await status())
            return bool(snap["counters"]["fills"])

        deadline = time.monotonic() + 90
        while not await traded():
            assert time.monotonic() < deadline, "no fill"
            if tick is not None:
                await tick()
        await until(lambda: messages.count("WATCHDOG=1") >= 2, 10, "watchdog pings", tick)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{base}/metrics") as r:
                metrics = await r.text()
                printed.append(metrics)
                assert re.search(r"^tradingd_nav [0-9.e+]+$", metrics, re.M)
                if "testnet" in config_text:  # the websocket links report their reconnects
                    assert re.search(r'^tradingd_reconnects_total\{component="feed"\} \d+$',
                                     metrics, re.M), metrics

        # an operator pastes the secret into a halt reason: it must not reach the log
        halt = await asyncio.to_thread(cli, config, "halt", "--reason",
                                       f"rotating key {SECRET}")
        printed.append(halt.stdout + halt.stderr)
        assert halt.returncode == 0 and halt.stdout.startswith("trading HALTED"), halt.stderr
        assert (await status())["trading"]["state"] == "HALTED"
        resume = await asyncio.to_thread(cli, config, "resume")
        printed.append(resume.stdout + resume.stderr)
        assert resume.stdout.startswith("trading ACTIVE"), resume.stdout + resume.stderr

        # SIGHUP: a wider band is applied; a broken file is refused and the daemon carries on
        config.write_text(config_text.replace("band = 0.03", "band = 0.07"))
        daemon.proc.send_signal(signal.SIGHUP)
        await until(lambda: daemon.events("config_reloaded"), 15, "reload", tick)
        assert daemon.events("config_reloaded")[0]["applied"] == {
            "rebalance.band": "0.03 -> 0.07"}
        assert (await status())["band"] == 0.07
        config.write_text(config_text.replace("band = 0.03", "band = -1"))
        daemon.proc.send_signal(signal.SIGHUP)
        await until(lambda: daemon.events("config_reload_rejected"), 15, "rejection", tick)
        assert (await status())["band"] == 0.07

        daemon.proc.send_signal(signal.SIGTERM)
        try:
            await until(lambda: daemon.proc.poll() is not None, 30, "exit", tick)
        except AssertionError:
            from daemon.control import request
            tasks = request(tmp_path / "state" / "control.sock", "tasks")
            raise AssertionError(f"no exit 30 s after SIGTERM; tasks: {tasks}") from None
        assert daemon.proc.returncode == 0, daemon.text()[-3000:]
        await asyncio.sleep(0.2)  # the drain threads finish the pipes
        assert messages[-1].startswith("STOPPING=1")
        assert "tradingd run summary" in "".join(daemon.out)
        assert not (tmp_path / "state" / "control.sock").exists()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        notify.close()
        (tmp_path / "daemon.log").write_text(daemon.text())  # for a failure's post-mortem
    return daemon.text() + "".join(printed)


def assert_no_secret(text: str, *secrets: str) -> None:
    assert text.strip(), "nothing was captured"
    for secret in secrets:
        # the whole value, or any 16-character piece of it
        pieces = {secret[i:i + 16] for i in range(len(secret) - 15)}
        leaked = [p for p in pieces if p in text]
        assert not leaked, f"secret material in the output: {leaked[:3]}"


async def test_paper_service_life_and_no_key_in_any_output(tmp_path: Path) -> None:
    text = await scenario(tmp_path, PAPER.format(state=tmp_path / "state"))
    assert "[REDACTED]" in text  # the pasted secret was caught, not merely absent
    assert_no_secret(text, KEY, SECRET, ENV_ONLY)


async def test_testnet_against_emulator_signs_with_keys_and_never_logs_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = pytest.importorskip("adapters.binance_emulator")
    pytest.importorskip("adapters.ccxt_venue")
    from adapters.binance_emulator import ws_requests

    issued: list[str] = []  # the signatures of the user stream's subscriptions
    handle = ws_requests.handle

    def recording_handle(request: Any, session: Any, creds: Any) -> Any:
        if isinstance(request, dict) and \
                request.get("method") == "userDataStream.subscribe.signature":
            issued.append(str(request["params"]["signature"]))
        return handle(request, session, creds)

    monkeypatch.setattr(ws_requests, "handle", recording_handle)
    symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
    emu = emulator.BinanceEmulator(symbols, emulator.SyntheticBars(symbols, seed=4),
                                   balances={"USDT": 100_000.0}, history_bars=40,
                                   api_key=KEY, api_secret=SECRET)
    async with emu:
        last = [0.0]

        async def tick() -> None:  # one bar every 50 ms: an hourly market, sped up
            if time.monotonic() - last[0] > 0.05:
                last[0] = time.monotonic()
                await emu.advance()

        text = await scenario(tmp_path, TESTNET.format(state=tmp_path / "state",
                                                       rest=emu.http_url, ws=emu.ws_url),
                              tick=tick)
    assert issued, "the daemon never opened a user data stream"
    assert_no_secret(text, KEY, SECRET, ENV_ONLY, *issued)
