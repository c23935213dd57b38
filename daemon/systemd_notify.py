"""sd_notify(3) without libsystemd: READY, STOPPING, STATUS and a health-gated watchdog.

systemd hands a `Type=notify` service the path of a Unix datagram socket in $NOTIFY_SOCKET
(a leading '@' means the abstract namespace); each datagram is newline-separated KEY=VALUE
assignments. With `WatchdogSec=` it also sets $WATCHDOG_USEC (and $WATCHDOG_PID): the service
must send WATCHDOG=1 more often than that or systemd kills and restarts it.

The watchdog here pings only while the daemon is healthy (the event loop is not lagging, bars
are arriving, the bus is delivering; see `daemon.health`), never from a bare timer: a daemon
whose feed died or whose bus is wedged stops pinging and systemd restarts it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

from adapters.tasks import stop_task
from daemon.health import Health

log = structlog.get_logger("systemd")
_failing = [False]


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace
    if path.startswith("/"):
        return path
    return None  # unset, or a transport we do not speak (vsock:)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification; False when not under systemd or the send failed. Never raises:
    losing a STATUS line must not take the daemon down (a lost READY=1 makes systemd time the
    start out, which is the right outcome for a daemon that cannot talk to its supervisor)."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        # non-blocking: a supervisor that reads slowly must never stall the event loop (a full
        # datagram queue would block a plain send); a dropped ping is what the watchdog is for
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                           | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        if not _failing[0]:  # once per episode: a slow supervisor must not flood the log
            log.warning("sd_notify_failed", state=state.splitlines()[0], error=str(exc))
        _failing[0] = True
        return False
    _failing[0] = False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the configured timeout, as sd_watchdog_enabled(3)
    recommends), or None when systemd did not enable a watchdog for this process."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6 / 2


class SystemdNotifier:
    """A daemon Service: READY=1 once `started` is set (after `Daemon._start`, so after
    reconciliation), WATCHDOG=1 while `health()` is ok, STOPPING=1 when shutdown begins."""

    name = "systemd"

    def __init__(self, started: asyncio.Event, health: Callable[[], Health],
                 env: Mapping[str, str] | None = None) -> None:
        self.started = started
        self.health = health
        self.env = dict(os.environ if env is None else env)
        self.enabled = _address(self.env) is not None
        self.interval = watchdog_interval(self.env) if self.enabled else None
        self.pings = 0
        self.withheld = 0
        self._task: asyncio.Task[None] | None = None

    def send(self, state: str) -> bool:
        return notify(state, self.env) if self.enabled else False

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="systemd-notify")

    async def _run(self) -> None:
        await self.started.wait()
        self.send(f"READY=1\nSTATUS=running\nMAINPID={os.getpid()}")
        log.info("systemd_ready", watchdog_interval_s=self.interval)
        if self.interval is None:
            return
        failing = False
        while True:
            health = self.health()
            if health.ok:
                self.send("WATCHDOG=1")
                self.pings += 1
                if failing:
                    failing = False
                    self.send("STATUS=running")
                    log.info("watchdog_resumed")
            else:
                # no ping: if this lasts WatchdogSec, systemd kills us and Restart= restarts us
                self.withheld += 1
                if not failing:
                    failing = True
                    self.send("STATUS=unhealthy: " + "; ".join(health.reasons))
                    log.error("watchdog_withheld", reasons=health.reasons)
            await asyncio.sleep(self.interval)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 match this to the reload request it sent
        self.send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self) -> None:
        self.send("READY=1\nSTATUS=running")

    async def stop(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")
        await stop_task(self._task)
