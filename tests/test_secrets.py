"""API keys: only from the environment or an owner-only key file, and never in a log line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon.config import parse_config
from daemon.logs import configure
from daemon.redact import REDACTED, clear_secrets, register_secret, scrub, scrub_text
from daemon.secrets import export, load_credentials, read_key_file
from daemon.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent
KEY = "tdFAKEapiKEY0123456789abcdefABCDEF0123456789abcdefABCDEF01234567"
SECRET = "tdFAKEsecret9876543210zyxwvuZYXWVU9876543210zyxwvuZYXWVU98765432"


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


def _config(tmp_path: Path, mode: str = "paper", key_file: str = "") -> str:
    text = f'[daemon]\nmode = "{mode}"\nstate_dir = "{tmp_path / "state"}"\n'
    if key_file:
        text += f'[secrets]\nkey_file = "{key_file}"\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def _key_file(tmp_path: Path, mode: int, text: str | None = None) -> Path:
    path = tmp_path / "keys.env"
    path.write_text(text if text is not None else
                    f"# testnet keys\nexport TRADINGD_API_KEY={KEY}\n"
                    f"TRADINGD_API_SECRET='{SECRET}'\n")
    path.chmod(mode)
    return path


# -- loading -----------------------------------------------------------------------------------

def test_owner_only_key_file_is_read(tmp_path: Path) -> None:
    path = _key_file(tmp_path, 0o600)
    cfg = parse_config(Path(_config(tmp_path, "testnet", str(path))).read_text(),
                       str(tmp_path / "config.toml"))
    creds = load_credentials(cfg, required=True, env={})
    assert creds is not None
    assert (creds.api_key, creds.secret) == (KEY, SECRET)
    assert KEY not in repr(creds) and SECRET not in str(creds)
    env: dict[str, str] = {}
    export(creds, env)
    assert env == {"TRADINGD_API_KEY": KEY, "TRADINGD_API_SECRET": SECRET}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_group_or_world_accessible_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, mode)
    cfg = parse_config(f'[secrets]\nkey_file = "{path}"\n')
    with pytest.raises(ConfigError) as err:
        load_credentials(cfg, required=False, env={})
    message = str(err.value)
    assert err.value.key == "secrets.key_file"
    assert str(path) in message and f"{mode:04o}" in message and "chmod 600" in message


def test_key_file_relative_to_config_and_missing(tmp_path: Path) -> None:
    cfg = parse_config('[secrets]\nkey_file = "nope.env"\n', str(tmp_path / "config.toml"))
    with pytest.raises(ConfigError, match="file not found") as err:
        load_credentials(cfg, required=False, env={})
    assert str(tmp_path / "nope.env") in str(err.value)


def test_malformed_key_file_line_is_named_but_not_echoed(tmp_path: Path) -> None:
    path = _key_file(tmp_path, 0o600, f"TRADINGD_API_KEY={KEY}\n{SECRET}\n")
    with pytest.raises(ConfigError) as err:
        read_key_file(path)
    assert "line 2" in str(err.value)
    assert SECRET not in str(err.value)


def test_testnet_needs_keys_paper_does_not(tmp_path: Path) -> None:
    testnet = parse_config('[daemon]\nmode = "testnet"\n')
    with pytest.raises(ConfigError) as err:
        load_credentials(testnet, required=True, env={})
    assert err.value.key == "exchange.api_key_env"
    assert "TRADINGD_API_KEY" in str(err.value) and "testnet" in str(err.value)
    with pytest.raises(ConfigError, match="TRADINGD_API_SECRET"):
        load_credentials(testnet, required=True, env={"TRADINGD_API_KEY": KEY})
    with pytest.raises(ConfigError, match="not a plausible key") as short:
        load_credentials(testnet, required=True,
                         env={"TRADINGD_API_KEY": "abc", "TRADINGD_API_SECRET": SECRET})
    assert "abc" not in str(short.value).replace("TRADINGD", "")
    assert load_credentials(parse_config(""), required=False, env={}) is None
    creds = load_credentials(testnet, required=True,
                             env={"TRADINGD_API_KEY": KEY, "TRADINGD_API_SECRET": SECRET})
    assert creds is not None and creds.source == "the environment"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_")}
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={**base, **(env or {})})


def test_check_config_validates_secrets_one_line(tmp_path: Path) -> None:
    proc = _cli("check-config", _config(tmp_path, "testnet"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "TRADINGD_API_KEY" in proc.stderr and "testnet" in proc.stderr

    bad = _key_file(tmp_path, 0o644)
    proc = _cli("check-config", _config(tmp_path, "paper", str(bad)))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert str(bad) in proc.stderr and "0644" in proc.stderr

    proc = _cli("check-config", _config(tmp_path, "testnet"),
                env={"TRADINGD_API_KEY": KEY, "TRADINGD_API_SECRET": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert KEY not in proc.stdout + proc.stderr


# -- redaction -----------------------------------------------------------------------------------

def test_sensitive_field_names_are_redacted_at_any_depth() -> None:
    event = {"event": "request", "apiKey": "abc", "headers": {"X-MBX-APIKEY": "k1"},
             "params": [{"signature": "deadbeef", "symbol": "BTCUSDT"}], "listenKey": "lk",
             "api_secret": "s", "password": "p", "secret_key": "sk", "client_order_id": "td-1"}
    out = scrub(event)
    assert out["apiKey"] == out["api_secret"] == out["password"] == REDACTED
    assert out["headers"]["X-MBX-APIKEY"] == REDACTED
    assert out["params"][0]["signature"] == REDACTED and out["listenKey"] == REDACTED
    assert out["secret_key"] == REDACTED
    assert out["params"][0]["symbol"] == "BTCUSDT" and out["client_order_id"] == "td-1"


def test_inline_and_token_patterns_and_registered_values() -> None:
    url = ("GET /api/v3/order?symbol=BTCUSDT&timestamp=1700000000000&"
           "signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert "0f1e2d3c" not in scrub_text(url)
    assert "symbol=BTCUSDT" in scrub_text(url)
    assert scrub_text("{'apiKey': 'hunter2-x', 'id': 5}") == "{'apiKey': '[REDACTED]', 'id': 5}"
    assert "Xyz" not in scrub_text("listenKey=Xyz987 expired")
    # an opaque token under an innocent name still looks like a key
    assert scrub_text("token pZ9a8b7c6d5e4f3g2h1i0jKLMNOPQRSTUV0123") == f"token {REDACTED}"
    # ordinary values survive: order ids, numbers, paths, timestamps, symbols
    plain = ("td-000123-BTCUSDT-b0 2022-01-01T00:00:00+00:00 /var/lib/tradingd/journal.sqlite "
             "12345678901234567890 ETH/USDT")
    assert scrub_text(plain) == plain
    register_secret("short")  # too short to register: it would redact ordinary words
    assert scrub_text("a short word") == "a short word"
    register_secret("lettersonlysecretvalue")
    assert scrub_text("boom: lettersonlysecretvalue!") == f"boom: {REDACTED}!"


def test_configured_logger_scrubs_fields_messages_and_tracebacks() -> None:
    register_secret(SECRET)
    stream = io.StringIO()
    configure("debug", stream=stream)
    log = structlog.get_logger("test")
    log.info(f"connecting with {SECRET}", exchange="binance", note=f"x{SECRET}y",
             nested={"deep": [SECRET]})
    try:
        raise RuntimeError(f"venue said: invalid signature for key {SECRET}")
    except RuntimeError as exc:
        log.error("failed", exc_info=exc, error=str(exc))
    log.warning("obj", creds=type("C", (), {"__str__": lambda self: f"C({SECRET})"})())
    text = stream.getvalue()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["exchange"] == "binance" and lines[0]["note"] == f"x{REDACTED}y"
    assert "RuntimeError" in lines[1]["exception"] and REDACTED in lines[1]["exception"]
    configure("info")
