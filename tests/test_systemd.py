"""systemd integration: sd_notify over $NOTIFY_SOCKET, the health-gated watchdog, and the unit
file (verify, security score, and the daemon really running under its seccomp rules).

Tests that need `systemd-analyze` or libseccomp skip with the reason when the machine lacks them.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.health import Health
from daemon.systemd_notify import SystemdNotifier, notify, watchdog_interval

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "tradingd.service"
SANDBOX = ROOT / "systemd" / "sandbox_check.py"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def _messages(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return out


def test_notify_path_and_abstract_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("STATUS=hello", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STATUS=hello"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"tradingd-test-{os.getpid()}"
    abstract.bind("\0" + name)
    try:
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(4096) == b"READY=1"
    finally:
        abstract.close()
    assert not notify("READY=1", {})  # not under systemd: a no-op
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(Path(path).parent / "gone.sock")})


def test_notify_never_blocks_on_a_full_queue(notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket  # nobody reads: the datagram queue fills up
    import time

    started = time.monotonic()
    results = [notify("WATCHDOG=1", {"NOTIFY_SOCKET": path}) for _ in range(600)]
    assert time.monotonic() - started < 5
    assert results[0] and not results[-1]  # later ones are dropped, the caller goes on


def test_watchdog_interval_is_half_the_timeout_and_only_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


async def test_ready_after_start_watchdog_only_while_healthy_stopping_first(
        notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    started = asyncio.Event()
    health = {"now": Health(ok=True)}
    notifier = SystemdNotifier(started, lambda: health["now"],
                               env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})
    assert notifier.interval == 0.02
    await notifier.start()
    await asyncio.sleep(0.1)
    assert _messages(sock) == []  # nothing before start-up completes, not even a ping
    started.set()
    await asyncio.sleep(0.1)
    sent = _messages(sock)
    assert sent[0].startswith("READY=1\n")
    assert sent.count("WATCHDOG=1") >= 2
    health["now"] = Health(ok=False, reasons=["no new bar for 300s > 180s"])
    await asyncio.sleep(0.05)
    _messages(sock)
    await asyncio.sleep(0.1)
    withheld = _messages(sock)
    assert "WATCHDOG=1" not in withheld  # an unhealthy daemon is left to the watchdog
    assert notifier.withheld >= 2
    health["now"] = Health(ok=True)
    await asyncio.sleep(0.1)
    assert "WATCHDOG=1" in _messages(sock)
    await notifier.stop()
    assert _messages(sock)[-1].startswith("STOPPING=1")


def test_state_dir_must_be_systemds_state_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.config import parse_config
    from daemon.ops import preflight
    from daemon.settings import ConfigError

    cfg = parse_config(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    preflight(cfg)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/tradingd")
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert err.value.key == "daemon.state_dir" and "/var/lib/tradingd" in str(err.value)


def test_unit_declares_what_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure",
                 "StateDirectory=tradingd", "EnvironmentFile=-/etc/tradingd/keys.env",
                 "MemoryDenyWriteExecute=yes", "ExecReload=/bin/kill -HUP $MAINPID",
                 "User=tradingd"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    # the reason MemoryDenyWriteExecute works at all: arch must not load numba's JIT
    assert re.search(r"^Environment=.*\bARCH_DISABLE_NUMBA=1\b", text, re.M)


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this checkout's
    exe = shutil.which("tradingd") or str(Path(sys.executable).parent / "tradingd")
    if not os.access(exe, os.X_OK):
        pytest.skip("no tradingd executable installed in this environment")
    unit = tmp_path / "tradingd.service"
    unit.write_text(UNIT.read_text().replace("/opt/tradingd/venv/bin/tradingd", exe))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "tradingd.service" not in proc.stderr, proc.stderr


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(UNIT)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for tradingd\.service: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout


SANDBOX_CONFIG = """
[daemon]
state_dir = "{state}"
log_level = "warning"
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
[market.simulated]
seed = 5
speed = 0.0
[rebalance]
solver = "process"
[allocation]
lookback_bars = 40
[http]
port = 0
"""


def _sandboxed(unit: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARCH_DISABLE_NUMBA"}
    proc = subprocess.run([sys.executable, str(SANDBOX), str(unit), "--", *command],
                          capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    return proc


@needs_analyze
@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None,
                    reason="libseccomp not installed (apt-get install libseccomp2)")
def test_daemon_runs_under_the_units_seccomp_and_memory_rules(tmp_path: Path) -> None:
    probe = ("import mmap, socket, os\n"
             "for name, fn in [('wx', lambda: mmap.mmap(-1, 4096, prot=7)),\n"
             "                 ('netlink', lambda: socket.socket(16, 3, 0)),\n"
             "                 ('affinity', lambda: os.sched_setaffinity(0, {0})),\n"
             "                 ('nice', lambda: os.nice(1))]:\n"
             "    try:\n        fn(); print(name, 'allowed')\n"
             "    except OSError:\n        print(name, 'refused')\n")
    proc = _sandboxed(UNIT, sys.executable, "-c", probe)
    # the filters really bite: writable-executable memory, exotic sockets, @resources; and the
    # solver worker may still lower its own priority
    assert proc.stdout.split() == ["wx", "refused", "netlink", "refused", "affinity",
                                   "refused", "nice", "allowed"], proc.stdout + proc.stderr
    cfg = tmp_path / "config.toml"
    cfg.write_text(SANDBOX_CONFIG.format(state=tmp_path / "state"))
    # the solver worker process inherits the filters; 120 bars give several solves and trades
    proc = _sandboxed(UNIT, sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg),
                      "--max-bars", "120")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fills = re.search(r"orders / fills\s+(\d+) / (\d+)", proc.stdout)
    assert fills and int(fills.group(2)) > 0, proc.stdout
