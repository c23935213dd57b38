"""HTTP for machines: GET /healthz (200 only while healthy, else 503) and GET /metrics
(Prometheus text format). Read-only on purpose: control goes through the owner-only Unix socket,
never over TCP. Listens on loopback by default; an access log is off because a scrape every few
seconds would drown the trading log.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from daemon.health import Health
from daemon.settings import ConfigError

log = structlog.get_logger("http")


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = field(default=True, metadata={
        "doc": "serve /healthz and /metrics over HTTP"})
    host: str = field(default="127.0.0.1", metadata={
        "doc": "address to listen on; keep loopback unless a firewall guards the port "
               "(/metrics shows NAV and positions)"})
    port: int = field(default=9108, metadata={
        "doc": "TCP port; 0 picks a free one (tests)", "min": 0, "max": 65535})

    def check(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ConfigError("host", self.host, "must be an IP address such as 127.0.0.1 "
                                                 "or ::1") from None


class HttpServer:
    """A daemon Service."""

    name = "http"

    def __init__(self, cfg: HttpConfig, health: Callable[[], Health],
                 metrics: Callable[[], str]) -> None:
        self.cfg = cfg
        self.health = health
        self.metrics = metrics
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self.health()
        body: dict[str, Any] = {"status": "ok" if health.ok else "unhealthy",
                                "reasons": health.reasons, **health.details}
        return web.json_response(body, status=200 if health.ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics().encode("utf-8"), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def start(self) -> None:
        if not self.cfg.enabled:
            return
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise RuntimeError(f"cannot listen on {self.cfg.host}:{self.cfg.port} "
                               f"(http.host, http.port): {exc.strerror or exc}") from None
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.port
        log.info("http_listening", host=self.cfg.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
