"""The control socket: a local Unix stream socket speaking JSON lines, for `tradingd status`,
`halt`, `resume`, `rebalance-now`, `cancel-all` and `health`.

Request:  {"command": "halt", "args": {"reason": "exchange maintenance"}}\\n
Response: {"ok": true, "result": {...}}\\n   or   {"ok": false, "error": "..."}\\n

Access control is the file system's: the socket is created owner-only (0600) inside the state
directory, and a peer whose uid is neither ours nor root is refused as well (SO_PEERCRED), so a
permissive umask or directory cannot open it up. Anyone who can connect can halt trading and
cancel orders, so nothing else may.

A live socket at the configured path means another daemon runs on this state directory: start-up
stops rather than steal it (two daemons on one journal would double-trade). A dead one is left
over from a crash and is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from daemon.redact import scrub
from daemon.settings import ConfigError

log = structlog.get_logger("control")

MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT_S = 30.0
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux

Command = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class ControlConfig:
    socket: str = field(default="control.sock", metadata={
        "doc": "Unix socket for status and control commands, created owner-only (0600); "
               "relative paths are relative to daemon.state_dir"})


def socket_path(cfg: ControlConfig, state_path: Path) -> Path:
    path = Path(cfg.socket)
    if not path.is_absolute():
        path = state_path / path
    if len(os.fsencode(str(path))) > _SUN_PATH_MAX:
        raise ConfigError("control.socket", str(path),
                          f"is {len(os.fsencode(str(path)))} bytes long; a Unix socket path "
                          f"must be at most {_SUN_PATH_MAX}")
    return path


class ControlError(Exception):
    """A command failed in a way the caller should see as one line."""


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """A daemon Service serving `commands` (name -> async fn(args) -> JSON-able result)."""

    name = "control"

    def __init__(self, path: Path, commands: Mapping[str, Command]) -> None:
        self.path = path
        self.commands = dict(commands)
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._clear_stale()
        # the umask makes the socket 0600 from its first instant; chmod below is a second lock
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise RuntimeError(f"control socket {self.path} has mode "
                               f"{stat.S_IMODE(st.st_mode):04o}, expected 0600")
        self._inode = st.st_ino
        log.info("control_listening", path=str(self.path))

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"control socket path {self.path} exists and is not a socket; "
                               f"move it away or set control.socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError:
            os.unlink(self.path)  # nobody listening: left over from a crash
            log.info("control_stale_socket_removed", path=str(self.path))
            return
        finally:
            probe.close()
        raise RuntimeError(f"another tradingd is listening on {self.path}: two daemons must not "
                           f"share a state directory")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            uid = _peer_uid(writer)
            if uid is not None and uid not in (os.geteuid(), 0):
                log.warning("control_peer_refused", uid=uid)
                # read (and ignore) the request first: closing on unread data could reset the
                # connection before the client sees why
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.readline(), 5.0)
                await self._reply(writer, {"ok": False, "error": f"uid {uid} may not control "
                                                                 f"this daemon"})
                return
            while not self._closing:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
                except (TimeoutError, ConnectionError):
                    return
                except (asyncio.LimitOverrunError, ValueError):
                    await self._reply(writer, {"ok": False, "error": "request too long"})
                    return
                if not line:
                    return
                await self._reply(writer, await self.handle(line))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._clients.discard(task)

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not a JSON object"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'request needs "command": "<name>"'}
        name, args = request["command"], request.get("args") or {}
        command = self.commands.get(name)
        if command is None:
            return {"ok": False, "error": f"unknown command {name!r}; known: "
                                          f"{', '.join(sorted(self.commands))}"}
        if not isinstance(args, dict):
            return {"ok": False, "error": '"args" must be an object'}
        try:
            return {"ok": True, "result": await command(args)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a failing command must not kill the server or the daemon
            log.error("control_command_failed", command=name,
                      error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return {"ok": False, "error": f"{name} failed: {type(exc).__name__}: {exc}"}

    async def _reply(self, writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        # responses may quote operator text or venue errors: scrub them like log lines
        writer.write(json.dumps(scrub(response), default=str).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def stop(self) -> None:
        self._closing = True  # a cancel that wait_for swallows still ends the client loop
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.wait(set(self._clients), timeout=2.0)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            # only our own socket: a successor may already have bound a new one
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)


# -- client ---------------------------------------------------------------------------------

def request(path: Path, command: str, args: dict[str, Any] | None = None,
            timeout: float = 30.0) -> Any:
    """Send one command to a running daemon and return its result; ControlError otherwise,
    with one line saying what to do."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no daemon at {path} (is tradingd running with this config? "
                               f"control.socket sets the path)") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run this as the daemon's user, "
                               f"e.g. sudo -u tradingd tradingd {command} ...") from None
        except ConnectionRefusedError:
            raise ControlError(f"no daemon listening at {path} (stale socket: it stopped "
                               f"without cleaning up)") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        payload = {"command": command, "args": args or {}}
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise ControlError(f"the daemon did not answer {command!r} within "
                               f"{timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"connection to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        response = json.loads(data)
    except json.JSONDecodeError:
        raise ControlError(f"the daemon sent no valid answer to {command!r}") from None
    if not response.get("ok"):
        raise ControlError(str(response.get("error", "unknown error")))
    return response.get("result")
