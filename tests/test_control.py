"""The control socket: owner-only, JSON lines, one daemon per state directory, and the commands
(status, halt, resume, rebalance-now, cancel-all) against a real in-process daemon."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app import Daemon
from daemon.config import parse_config
from daemon.control import ControlConfig, ControlError, ControlServer, request, socket_path
from daemon.ops import Ops, attach
from daemon.settings import ConfigError
from daemon.status import render

ROOT = Path(__file__).resolve().parent.parent


async def _echo(args: dict[str, Any]) -> Any:
    return {"echo": args}


async def _boom(args: dict[str, Any]) -> Any:
    raise RuntimeError("kaput")


async def _ask(path: Path, command: str, args: dict[str, Any] | None = None) -> Any:
    return await asyncio.to_thread(request, path, command, args, 10.0)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ControlServer]:
    srv = ControlServer(tmp_path / "state" / "control.sock", {"echo": _echo, "boom": _boom})
    await srv.start()
    yield srv
    await srv.stop()


async def test_socket_is_owner_only_and_speaks_json_lines(server: ControlServer) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(server.path).st_mode)
    assert await _ask(server.path, "echo", {"x": 1}) == {"echo": {"x": 1}}
    with pytest.raises(ControlError, match="unknown command 'nope'; known: boom, echo"):
        await _ask(server.path, "nope")
    with pytest.raises(ControlError, match="boom failed: RuntimeError: kaput"):
        await _ask(server.path, "boom")

    def raw(payload: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(server.path))
            s.sendall(payload)
            return json.loads(s.makefile().readline())  # type: ignore[no-any-return]

    assert await asyncio.to_thread(raw, b"not json\n") == {
        "ok": False, "error": "request is not a JSON object"}
    assert (await asyncio.to_thread(raw, b'{"args": {}}\n'))["ok"] is False
    assert (await asyncio.to_thread(raw, b"x" * (70 * 1024) + b"\n"))["error"] == \
        "request too long"


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="needs root (to connect as another user) and /usr/bin/python3")
async def test_other_users_are_refused_even_if_the_mode_were_loosened() -> None:
    # a directory another user can reach (pytest's own tmp dirs are root-only)
    base = Path(tempfile.mkdtemp(prefix="tradingd-ctl-"))
    try:
        base.chmod(0o755)
        server = ControlServer(base / "state" / "control.sock", {"echo": _echo})
        await server.start()
        client = ("import json, socket, sys\n"
                  "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                  "s.sendall(b'{\"command\": \"echo\"}\\n'); print(s.makefile().readline())")

        def as_nobody() -> subprocess.CompletedProcess[str]:
            return subprocess.run(["/usr/bin/python3", "-c", client, str(server.path)],
                                  user=65534, capture_output=True, text=True, timeout=30)

        assert "Permission denied" in (await asyncio.to_thread(as_nobody)).stderr
        server.path.parent.chmod(0o755)
        server.path.chmod(0o666)  # as if a permissive umask or directory had slipped through
        proc = await asyncio.to_thread(as_nobody)
        assert json.loads(proc.stdout) == {"ok": False,
                                           "error": "uid 65534 may not control this daemon"}
        await server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_second_daemon_on_same_state_dir_is_refused(server: ControlServer) -> None:
    other = ControlServer(server.path, {})
    with pytest.raises(RuntimeError, match="another tradingd is listening"):
        await other.start()
    assert await _ask(server.path, "echo") == {"echo": {}}  # the first one is untouched


async def test_stale_socket_is_replaced_and_stop_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # a socket file nobody listens on: left over from a crash
    srv = ControlServer(path, {"echo": _echo})
    await srv.start()
    assert await _ask(path, "echo") == {"echo": {}}
    await srv.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(RuntimeError, match="is not a socket"):
        await ControlServer(path, {}).start()


def test_socket_path_relative_to_state_and_length_checked(tmp_path: Path) -> None:
    assert socket_path(ControlConfig(), tmp_path) == tmp_path / "control.sock"
    assert socket_path(ControlConfig("/run/x.sock"), tmp_path) == Path("/run/x.sock")
    with pytest.raises(ConfigError) as err:
        socket_path(ControlConfig("s" * 120 + ".sock"), tmp_path)
    assert err.value.key == "control.socket" and "at most 107" in str(err.value)


def test_cli_finds_the_socket_as_the_config_does(tmp_path: Path) -> None:
    from daemon.config import load_config
    from daemon.ops_cli import _raw_socket

    for text in ('[daemon]\nstate_dir = "st"\n', '[daemon]\nstate_dir = "/srv/td"\n'
                 '[control]\nsocket = "ctl/x.sock"\n', '[control]\nsocket = "/run/t.sock"\n',
                 ""):
        path = tmp_path / "c.toml"
        path.write_text(text)
        cfg = load_config(path)
        assert _raw_socket(str(path)) == socket_path(cfg.control, cfg.state_path)
    path.write_text("[rebalance]\nband = -1\n")  # invalid, yet the socket is still found
    assert _raw_socket(str(path)) == tmp_path / "state" / "control.sock"
    path.write_text("[daemon\n")
    assert _raw_socket(str(path)) is None


def test_client_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no daemon at"):
        request(tmp_path / "missing.sock", "status")
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--socket",
                           str(tmp_path / "missing.sock")], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("tradingd: status: no daemon at") and \
        proc.stderr.count("\n") == 1


# -- against a running daemon ---------------------------------------------------------------

CONFIG = """
[daemon]
state_dir = "{state}"
log_level = "warning"
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
[market.simulated]
seed = 3
speed = {speed}
[rebalance]
solver = "thread"
[allocation]
lookback_bars = 30
[http]
port = 0
"""


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Ops]]:
    # 200 simulated hours a second: bars keep flowing while the test talks to the daemon
    cfg = parse_config(CONFIG.format(state=tmp_path / "state", speed=3600 * 200.0),
                       str(tmp_path / "config.toml"))
    daemon = Daemon(cfg)
    ops = attach(daemon, str(tmp_path / "config.toml"))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop=stop))
    await asyncio.wait_for(daemon.started.wait(), 60)
    try:
        yield daemon, ops
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert not ops.control.path.exists()


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_second_daemon_refused_before_it_touches_anything(
        running: tuple[Daemon, Ops]) -> None:
    daemon, ops = running
    twin = Daemon(daemon.cfg)
    with pytest.raises(RuntimeError, match="two daemons must not share a state directory"):
        attach(twin, daemon.cfg.path)  # before run(): no venue, no reconciliation
    twin.journal.close()
    assert ops.lock is not None and ops.lock.path.read_text().strip() == str(os.getpid())


async def test_status_halt_resume_rebalance_cancel(running: tuple[Daemon, Ops]) -> None:
    daemon, ops = running
    path = ops.control.path
    await _until(lambda: daemon.rebalancer.targets is not None and daemon.counters.fills > 0)

    snap = await _ask(path, "status")
    assert snap["started"] and snap["mode"] == "paper"
    assert snap["trading"]["state"] == "ACTIVE"
    assert {p["symbol"] for p in snap["positions"]} == {"BTC/USDT", "ETH/USDT", "BNB/USDT"}
    assert snap["nav"] == pytest.approx(daemon.portfolio.nav, rel=0.05)
    assert sum(p["target"] for p in snap["positions"]) == pytest.approx(1.0, abs=1e-6)
    assert snap["band"] == daemon.cfg.rebalance.band
    assert set(snap["bars"]) == {"BTC/USDT", "ETH/USDT", "BNB/USDT"}
    assert all(b["age_s"] < 5 for b in snap["bars"].values())
    assert snap["counters"]["fills"] > 0 and snap["health"]["ok"], snap["health"]
    for key in ("gross_exposure", "var_fraction", "var_limit_fraction"):
        assert key in snap["risk"]
    table = render(snap)
    assert "BTC/USDT" in table and "open orders" in table and "recent rejections" in table
    assert "trading ACTIVE" in table and "band" in table

    halted = await _ask(path, "halt", {"reason": "exchange maintenance", "by": "alice"})
    assert halted["state"] == "HALTED" and "exchange maintenance" in halted["reason"]
    assert (await _ask(path, "status"))["trading"]["state"] == "HALTED"
    # halted: a requested rebalance produces no approved order
    fills = daemon.counters.fills
    await _ask(path, "rebalance-now", {"reason": "while halted"})
    await asyncio.sleep(0.5)
    assert daemon.counters.fills == fills
    resumed = await _ask(path, "resume", {"by": "alice"})
    assert resumed["state"] == "ACTIVE"

    rebalances = daemon.rebalancer.rebalances
    answer = await _ask(path, "rebalance-now", {"reason": "operator test"})
    assert answer["queued"] is True
    await _until(lambda: daemon.rebalancer.rebalances > rebalances)

    cancelled = await _ask(path, "cancel-all", {"reason": "test"})
    assert cancelled["still_working"] == 0
    health = await _ask(path, "health")
    assert health["ok"] is True


async def test_cli_talks_to_the_daemon(running: tuple[Daemon, Ops], tmp_path: Path) -> None:
    daemon, ops = running
    await _until(lambda: daemon.rebalancer.targets is not None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--socket",
                               str(ops.control.path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)

    status, as_json, halt = await asyncio.gather(
        asyncio.to_thread(cli, "status"), asyncio.to_thread(cli, "status", "--json"),
        asyncio.to_thread(cli, "halt", "--reason", "cli test"))
    assert status.returncode == 0, status.stderr
    assert "NAV" in status.stdout and "BTC/USDT" in status.stdout
    assert json.loads(as_json.stdout)["mode"] == "paper"
    assert halt.returncode == 0 and halt.stdout.startswith("trading HALTED"), halt.stdout
    resume = await asyncio.to_thread(cli, "resume")
    assert resume.stdout.startswith("trading ACTIVE"), resume.stdout + resume.stderr
    health = await asyncio.to_thread(cli, "health")
    assert health.returncode == 0 and health.stdout.strip() == "healthy"
