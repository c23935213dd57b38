"""SIGHUP: re-read config.toml and apply the limits and bands without a restart.

The new file is validated in full first; an invalid one changes nothing and the reason is
logged. Sections are frozen objects, so applying means swapping references on the parts that
hold them (risk gate, rebalancer, solver, OMS); positions, orders and targets are untouched.

Reloadable: [risk], [rebalance], [allocation], [venue.retry], [health] and daemon.log_level,
except the keys in `_RESTART_ONLY` (they size a history buffer or pick the solver worker
at start-up). Any other change is logged as needing a restart and not applied; the rest
of the file still is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import structlog

from daemon.config import Config, load_config
from daemon.settings import ConfigError

if TYPE_CHECKING:
    from daemon.app import Daemon

log = structlog.get_logger("reload")

_RELOADABLE_PREFIXES = ("risk.", "rebalance.", "allocation.", "venue.retry.", "health.",
                        "daemon.log_level")
# inside reloadable sections, what sizes a buffer or picks a worker once at start-up (the risk
# gate's own windows and models are rebuilt by its `update_limits`)
_RESTART_ONLY = ("rebalance.solver", "rebalance.schedule.vol_window_bars",
                 "allocation.lookback_bars")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value of a nested config object."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        out.update(flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
    return out


def reloadable(key: str) -> bool:
    return key.startswith(_RELOADABLE_PREFIXES) and not key.startswith(_RESTART_ONLY)


def _recheck(obj: Any, path: str = "") -> None:
    """Run every section's cross-field `check` again on a merged config."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        _recheck(getattr(obj, f.name), f"{path}{f.name}.")
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(path + exc.key if not exc.key.startswith(path) else exc.key,
                              exc.value, exc.allowed) from None


@dataclass(frozen=True)
class ReloadPlan:
    config: Config                  # what to run with from now on
    applied: dict[str, tuple[Any, Any]]
    needs_restart: dict[str, tuple[Any, Any]]


def _merge(old: Any, new: Any, prefix: str = "") -> Any:
    """`old` with every reloadable leaf taken from `new`."""
    if not dataclasses.is_dataclass(old) or isinstance(old, type):
        return new if reloadable(prefix.rstrip(".")) else old
    changes = {}
    for f in dataclasses.fields(old):
        if not f.init:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        merged = _merge(a, b, f"{prefix}{f.name}.")
        if merged is not a:
            changes[f.name] = merged
    return replace(old, **changes) if changes else old


def plan(old: Config, new: Config) -> ReloadPlan:
    before, after = flatten(old), flatten(new)
    changed = {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k) and k != "path"}
    applied = {k: v for k, v in changed.items() if reloadable(k)}
    restart = {k: v for k, v in changed.items() if not reloadable(k)}
    merged = _merge(old, new)
    _recheck(merged)
    return ReloadPlan(config=merged, applied=applied, needs_restart=restart)


def swap_gate_limits(gate: Any, limits: Any) -> None:
    """New limits on the risk gate: through its `update_limits`, which keeps throttle windows,
    loss marks and the trading state and rebuilds what it derived from the limits; a gate
    without one just gets the new object."""
    update = getattr(gate, "update_limits", None)
    if callable(update):
        update(limits)
    else:
        gate.limits = limits


def apply(daemon: Daemon, cfg: Config) -> None:
    """Swap the new sections in. Synchronous and on the loop: no handler sees half of it."""
    swap_gate_limits(daemon.gate, cfg.risk)
    daemon.rebalancer.cfg = cfg.rebalance
    daemon.rebalancer.allocation = cfg.allocation
    daemon.solver.timeout_s = cfg.rebalance.solve_timeout_s
    daemon.oms.retry = cfg.venue.retry
    daemon.cfg = cfg


class ConfigReloader:
    """A daemon Service: SIGHUP (or the control socket's `reload`) re-reads `path`."""

    name = "reload"

    def __init__(self, daemon: Daemon, path: str,
                 on_applied: list[Callable[[Config], None]] | None = None,
                 on_begin: Callable[[], None] | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self.daemon = daemon
        self.path = path
        self.on_applied = on_applied or []
        self.on_begin = on_begin
        self.on_end = on_end
        self.results: dict[str, int] = {"ok": 0, "failed": 0}
        self._signal = False

    async def start(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signal = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            log.warning("sighup_reload_unavailable")

    def _on_sighup(self) -> None:
        log.info("config_reload_requested", signal="SIGHUP", path=self.path)
        self.reload()

    def reload(self) -> dict[str, Any]:
        if self.on_begin is not None:
            self.on_begin()
        try:
            return self._reload()
        finally:
            if self.on_end is not None:
                self.on_end()

    def _reload(self) -> dict[str, Any]:
        try:
            new = load_config(self.path)
            result = plan(self.daemon.cfg, new)
        except ConfigError as exc:
            self.results["failed"] += 1
            log.error("config_reload_rejected", path=self.path, error=str(exc),
                      kept="the running configuration")
            return {"applied": {}, "needs_restart": {}, "error": str(exc)}
        apply(self.daemon, result.config)
        for callback in self.on_applied:
            callback(result.config)
        self.results["ok"] += 1
        log.info("config_reloaded", path=self.path,
                 applied={k: f"{a!r} -> {b!r}" for k, (a, b) in result.applied.items()})
        if result.needs_restart:
            log.warning("config_reload_needs_restart",
                        keys={k: f"{a!r} -> {b!r}" for k, (a, b) in result.needs_restart.items()},
                        note="these changes are not applied until the daemon restarts")
        return {"applied": {k: [a, b] for k, (a, b) in result.applied.items()},
                "needs_restart": {k: [a, b] for k, (a, b) in result.needs_restart.items()}}

    async def stop(self) -> None:
        if self._signal:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
