"""Running as a service: wires the operations parts onto a `Daemon` and implements the control
commands.

    ops = attach(daemon, config_path)   # before daemon.run()

registers, as daemon Services: the loop-lag monitor, the SIGHUP reloader, the control socket,
the HTTP server (/healthz, /metrics) and the systemd notifier (READY after start-up, a
health-gated WATCHDOG, STOPPING first thing at shutdown: it is registered last, so stopped first).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon.control import Command, ControlError, ControlServer, socket_path
from daemon.health import Health, HealthMonitor, auto_stale_after
from daemon.http_api import HttpServer
from daemon.logs import configure as configure_logs
from daemon.metrics import EventObserver, LoopLagMonitor, render_prometheus
from daemon.redact import scrub_text
from daemon.reload import ConfigReloader
from daemon.secrets import Credentials, export, load_credentials
from daemon.settings import ConfigError
from daemon.status import snapshot
from daemon.systemd_notify import SystemdNotifier

if TYPE_CHECKING:
    from daemon.app import Daemon
    from daemon.config import Config

log = structlog.get_logger("ops")

_MAX_REASON = 200


def _trading_state(daemon: Daemon) -> Any | None:
    """What owns the kill switch (ACTIVE/REDUCING/HALTED with halt/resume): the risk gate, or
    a state machine the daemon keeps; None when this build has neither."""
    for obj in (daemon.gate, getattr(daemon, "trading_state", None)):
        if obj is not None and callable(getattr(obj, "halt", None)) \
                and callable(getattr(obj, "resume", None)) and hasattr(obj, "state"):
            return obj
    return None


def _text(args: dict[str, Any], key: str, default: str) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise ControlError(f"{key} must be a string")
    # scrubbed here, before the gate journals it: an operator may paste anything
    value = scrub_text(" ".join(value.split())[:_MAX_REASON])
    return value or default


class Ops:
    def __init__(self, daemon: Daemon, config_path: str) -> None:
        self.daemon = daemon
        cfg = daemon.cfg
        self.started_at = time.monotonic()
        self.observer = EventObserver()
        self.observer.subscribe(daemon.bus)
        self.lag = LoopLagMonitor()
        self.feed = daemon.feed  # the source itself: start-up may wrap daemon.feed for a resume
        speed = getattr(getattr(daemon.feed, "cfg", None), "speed", None)
        self.auto_stale_s = auto_stale_after(
            cfg.market.interval_s, speed if isinstance(speed, int | float) else None)
        stale = cfg.health.stale_after_s or self.auto_stale_s
        self.monitor = HealthMonitor(cfg.health, started=daemon.started.is_set, lag=self.lag,
                                     bars=self.observer, bus=daemon.bus, stale_after_s=stale)
        self.notifier = SystemdNotifier(daemon.started, self.health)
        self.reloader = ConfigReloader(daemon, config_path, on_applied=[self._reloaded],
                                       on_begin=self.notifier.reloading,
                                       on_end=self.notifier.reloaded)
        self.control = ControlServer(socket_path(cfg.control, cfg.state_path), self.commands())
        self.http = HttpServer(cfg.http, self.health, self.metrics)
        self.lock: StateLock | None = None

    def services(self) -> list[Any]:
        return [self.lag, self.reloader, self.control, self.http, self.notifier]

    # -- what the surfaces read -------------------------------------------------------------
    def health(self) -> Health:
        return self.monitor.check()

    def trading(self) -> dict[str, Any]:
        ts = _trading_state(self.daemon)
        if ts is None:
            reason = self.daemon.oms.halted_reason
            return {"state": "HALTED" if reason else "ACTIVE", "reason": reason}
        state = getattr(ts, "state", None)
        out: dict[str, Any] = {"state": state.name if isinstance(state, Enum) else str(state)}
        # the gate keeps reason/by/since on its state machine's current record
        record = getattr(getattr(ts, "trading", ts), "record", ts)
        for key in ("reason", "by", "since"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value.isoformat() if hasattr(value, "isoformat") else value
        return out

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.daemon, observer=self.observer, lag=self.lag,
                        health=self.health(), trading=self.trading(),
                        reloads=self.reloader.results, started=self.daemon.started.is_set(),
                        started_at=self.started_at, feed=self.feed)

    def metrics(self) -> str:
        return render_prometheus(self.snapshot())

    def _reloaded(self, cfg: Config) -> None:
        self.monitor.cfg = cfg.health
        self.monitor.stale_after_s = cfg.health.stale_after_s or self.auto_stale_s
        configure_logs(cfg.daemon.log_level)

    # -- control commands -------------------------------------------------------------------
    def commands(self) -> dict[str, Command]:
        return {"status": self._status, "health": self._health, "halt": self._halt,
                "resume": self._resume, "rebalance-now": self._rebalance_now,
                "cancel-all": self._cancel_all, "reload": self._reload, "tasks": self._tasks}

    async def _status(self, args: dict[str, Any]) -> Any:
        return self.snapshot()

    async def _health(self, args: dict[str, Any]) -> Any:
        h = self.health()
        return {"ok": h.ok, "reasons": h.reasons, **h.details}

    async def _halt(self, args: dict[str, Any]) -> Any:
        reason = _text(args, "reason", "operator halt")
        by = _text(args, "by", "operator")
        ts = _trading_state(self.daemon)
        if ts is not None:
            ts.halt(reason, by)
        else:
            # the OMS refuses every approved order while this is set
            self.daemon.oms.halted_reason = f"OPERATOR {reason}"
        log.warning("operator_halt", reason=reason, by=by, via="control socket")
        return self.trading()

    async def _resume(self, args: dict[str, Any]) -> Any:
        by = _text(args, "by", "operator")
        ts = _trading_state(self.daemon)
        if ts is not None:
            ts.resume(by)
        else:
            self.daemon.oms.halted_reason = None
        log.warning("operator_resume", by=by, via="control socket")
        return self.trading()

    async def _rebalance_now(self, args: dict[str, Any]) -> Any:
        reason = _text(args, "reason", "operator request")
        request: Callable[[str], Any] | None = getattr(
            self.daemon.rebalancer, "request_rebalance", None)
        if request is None:
            raise ControlError("this build's rebalancer cannot take rebalance requests")
        answer = request(reason)
        log.info("operator_rebalance_now", reason=reason)
        return {"queued": True, "reason": reason, "detail": answer}

    async def _cancel_all(self, args: dict[str, Any]) -> Any:
        reason = _text(args, "reason", "operator cancel-all")
        working = len(self.daemon.oms.working())
        log.warning("operator_cancel_all", reason=reason, working=working)
        cancelled = await self.daemon.oms.cancel_all(reason)
        return {"cancel_requested": cancelled, "still_working": len(self.daemon.oms.working())}

    async def _reload(self, args: dict[str, Any]) -> Any:
        return self.reloader.reload()

    async def _tasks(self, args: dict[str, Any]) -> Any:
        """Every asyncio task and where it waits: for diagnosing a daemon that hangs."""
        out = []
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=3)
            where = [f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} "
                     f"{f.f_code.co_name}" for f in frames]
            out.append({"name": task.get_name(), "where": where})
        return sorted(out, key=lambda t: t["name"])


def preflight(cfg: Config, *, export_keys: bool = False) -> Credentials | None:
    """Checks that need more than the config file itself; raises ConfigError naming the key.
    API keys are required in testnet mode; a configured key file must be owner-only in any
    mode. With `export_keys`, key-file credentials are put where the venue reads them."""
    socket_path(cfg.control, cfg.state_path)
    # systemd's StateDirectory= is the one writable place under ProtectSystem=strict: a journal
    # configured elsewhere would fail at start, or worse, land somewhere unexpected
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given and Path(given).resolve() != cfg.state_path.resolve():
        raise ConfigError("daemon.state_dir", cfg.daemon.state_dir,
                          f"resolves to {cfg.state_path}, but systemd gives this service "
                          f"{given} (StateDirectory=): set daemon.state_dir = \"{given}\"")
    credentials = load_credentials(cfg, required=cfg.daemon.mode == "testnet")
    if credentials is not None and export_keys:
        export(credentials)
    return credentials


class StateLock:
    """An exclusive lock on the state directory, held for the life of the process (the kernel
    drops it if the process dies): two daemons on one journal would trade twice."""

    def __init__(self, state_path: Path) -> None:
        self.path = state_path / "tradingd.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another tradingd holds {self.path}: two daemons must not "
                               f"share a state directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for an operator wondering who holds it
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def attach(daemon: Daemon, config_path: str) -> Ops:
    """Before `daemon.run()`: take the state directory's lock (before the venue or the
    reconciler is touched), then register the services."""
    lock = StateLock(daemon.cfg.state_path)
    lock.acquire()
    ops = Ops(daemon, config_path)
    ops.lock = lock
    daemon.services.extend(ops.services())
    return ops
