"""Bad configuration: one line on stderr naming key, value and what is allowed; exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import load_config, parse_config
from daemon.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_loads_and_documents_every_key() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg.daemon.mode == "paper"
    assert cfg.market.source == "simulated"
    assert len(cfg.market.symbols) >= 3
    text = (ROOT / "config.toml").read_text()
    # every key in the file has a comment line right above it or on its table
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#") and not line.startswith("["):
            above = lines[i - 1].strip()
            assert above.startswith("#") or "=" in above, f"undocumented key: {line}"


@pytest.mark.parametrize(("text", "key", "allowed"), [
    ("[rebalance]\nbandd = 0.1\n", "rebalance.bandd", "unknown key"),
    ("[rebalance]\nband = \"wide\"\n", "rebalance.band", "must be a number"),
    ("[rebalance]\nband = -0.1\n", "rebalance.band", "must be > 0.0"),
    ("[rebalance]\nband = 1.5\n", "rebalance.band", "must be <= 1.0"),
    ("[risk]\nmax_order_notional = 0\n", "risk.max_order_notional", "must be > 0.0"),
    ("[daemon]\nmode = \"live\"\n", "daemon.mode", "must be one of"),
    ("[market]\nsymbols = [\"BTCUSDT\"]\n", "market.symbols[0]", "BASE/USDT"),
    ("[market]\ninterval = \"7m\"\n", "market.interval", "must be one of"),
    ("[exchange.stream]\nuser_stream_api = \"listenkey\"\n",
     "exchange.stream.user_stream_api", "must be one of 'ws_api', 'listen_key'"),
    ("[market]\nsource = \"replay\"\n", "market.replay", "required"),
    ("[market.simulated]\nsymbols = [\"BTC/USDT\"]\n", "market.simulated.symbols",
     "market.symbols"),
    ("[market.simulated]\ngarch_alpha = 0.2\ngarch_beta = 0.9\n",
     "market.simulated.garch_beta", "< 1"),
    ("[venue.paper]\nfee_bps = true\n", "venue.paper.fee_bps", "must be a number"),
    ("[allocation]\nlookback_bars = 2.5\n", "allocation.lookback_bars", "must be an integer"),
    ("[rebalance]\nmax_child_notional = 50000.0\n", "rebalance.max_child_notional",
     "risk.max_order_notional"),
    ("daemon = 3\n", "daemon", "must be a table"),
])
def test_each_kind_of_bad_value_names_key_value_and_rule(text: str, key: str,
                                                          allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert err.value.key == key
    assert allowed in str(err.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(("text", "expected"), [
    ("[rebalance]\nband = -1\n", "rebalance.band = -1.0: must be > 0.0"),
    ("[risk]\nunknown_limit = 5\n", "risk.unknown_limit = 5: unknown key"),
    ("[market]\nsymbols = \"BTC/USDT\"\n", "market.symbols = 'BTC/USDT': must be a list"),
    ("[rebalance\n", "is not valid TOML"),
])
def test_cli_bad_config_one_line_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in (["run", "--config", str(path)], ["check-config", str(path)]):
        proc = run_cli(*command)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert expected in lines[0]
        assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_missing_config_file(tmp_path: Path) -> None:
    proc = run_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert "file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
