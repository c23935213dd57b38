"""Exchange API credentials: from the environment or an owner-only key file, nowhere else.

Never from config.toml (it is world-readable and gets copied around). The key file uses the same
KEY=VALUE lines as a systemd EnvironmentFile or a docker env file, so one file can serve either
way. A key file that its group or others can read or write is refused: a leaked exchange key
moves money. Every value loaded is registered with the log redactor before anything can log it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.redact import register_secret
from daemon.settings import ConfigError

if TYPE_CHECKING:
    from daemon.config import Config

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIN_LENGTH = 8
# what the [exchange] table defaults to, for builds or configs without one
DEFAULT_NAMES = ("TRADINGD_API_KEY", "TRADINGD_API_SECRET", "TRADINGD_API_PASSWORD")


@dataclass(frozen=True)
class SecretsConfig:
    key_file: str = field(default="", metadata={
        "doc": "file of NAME=value lines holding the variables named by exchange.api_key_env, "
               "exchange.api_secret_env (and exchange.password_env); mode 0600, owned by the "
               "daemon's user. Empty: read them from the environment. Relative paths are "
               "relative to the config file"})


@dataclass(frozen=True)
class Credentials:
    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    password: str = field(default="", repr=False)
    source: str = ""
    names: tuple[str, str, str] = DEFAULT_NAMES

    def __str__(self) -> str:
        return f"Credentials(source={self.source})"

    def environ(self) -> dict[str, str]:
        out = {self.names[0]: self.api_key, self.names[1]: self.secret}
        if self.password:
            out[self.names[2]] = self.password
        return out


def credential_names(cfg: Config) -> tuple[str, str, str]:
    """The variable names the venue reads (the [exchange] table names them)."""
    exchange = getattr(cfg, "exchange", None)
    return (getattr(exchange, "api_key_env", DEFAULT_NAMES[0]),
            getattr(exchange, "api_secret_env", DEFAULT_NAMES[1]),
            getattr(exchange, "password_env", DEFAULT_NAMES[2]))


def key_file_path(cfg: SecretsConfig, config_path: str) -> Path | None:
    if not cfg.key_file:
        return None
    path = Path(cfg.key_file)
    if not path.is_absolute() and config_path:
        path = Path(config_path).resolve().parent / path
    return path


def _parse_env_file(path: Path, text: str) -> dict[str, str]:
    out = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.match(name):
            # never echo the line: it may hold a secret
            raise ConfigError("secrets.key_file", str(path), f"line {n} is not NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def read_key_file(path: Path) -> dict[str, str]:
    """The file's NAME=value pairs, after checking it is a regular, owner-only file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError("secrets.key_file", str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError("secrets.key_file", str(path),
                          f"cannot be examined: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("secrets.key_file", str(path), "is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError("secrets.key_file", str(path),
                          f"has mode {mode:04o}, so its group or others can read or change it; "
                          f"it must be owner-only: chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError("secrets.key_file", str(path),
                          f"cannot be read by uid {os.geteuid()} (owner uid {st.st_uid}); "
                          f"chown it to the daemon's user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("secrets.key_file", str(path), f"cannot be read: {exc}") from None
    return _parse_env_file(path, text)


def _checked(key: str, name: str, value: str | None, where: str) -> str:
    if value is None or value.strip() == "":
        raise ConfigError(key, name, f"is not set in {where}")
    value = value.strip()
    if len(value) < _MIN_LENGTH or any(ch.isspace() for ch in value):
        # the length, never the value
        raise ConfigError(key, name, f"value in {where} is not a plausible key "
                                     f"({len(value)} characters, or contains whitespace)")
    return value


def load_credentials(cfg: Config, *, required: bool, env: Mapping[str, str] | None = None
                     ) -> Credentials | None:
    """The configured credentials, registered for redaction. Raises ConfigError naming the
    setting when they are required and missing, or when the key file is unsafe or malformed.
    With `required=False` (paper mode) absent credentials are fine; an unsafe key file is not."""
    env = os.environ if env is None else env
    names = credential_names(cfg)
    path = key_file_path(cfg.secrets, cfg.path)
    if path is not None:
        values = read_key_file(path)
        where = f"key file {path}"
    else:
        values = {n: env.get(n, "") for n in names}
        where = "the environment"
    # registered before any check below can fail and something logs around it; the process
    # environment's values too, should a key file and the environment both hold some
    for name in names:
        register_secret(values.get(name, "").strip())
        register_secret(env.get(name, "").strip())
    if not required and not any(values.get(n, "").strip() for n in names[:2]):
        return None
    suffix = ' (daemon.mode = "testnet" needs API keys)' if required else ""
    api_key = _checked("exchange.api_key_env", names[0], values.get(names[0]), where + suffix)
    secret = _checked("exchange.api_secret_env", names[1], values.get(names[1]),
                      where + suffix)
    return Credentials(api_key=api_key, secret=secret,
                       password=values.get(names[2], "").strip(), source=where, names=names)


def export(credentials: Credentials, env: MutableMapping[str, str] | None = None) -> None:
    """Make key-file credentials visible where the venue reads them (the process environment,
    as a systemd EnvironmentFile would). Environment-sourced ones are there already."""
    target = os.environ if env is None else env
    target.update(credentials.environ())
