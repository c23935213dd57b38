"""`make run`'s command on the shipped config.toml: offline, no keys, trades, and a Ctrl-C stops
it cleanly (exit 0, no traceback, a summary, the journal on disk)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.journal import Journal

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_runs_offline_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    shutil.copy(ROOT / "config.toml", config)  # state_dir is relative to the config file
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_")}
    # the shipped pace is one 1h bar a second; the daemon needs lookback_bars of history
    # before its first trade, so speed the clock up through the config it ships with
    text = config.read_text().replace("speed = 3600.0", "speed = 360000.0")
    assert text != config.read_text(), "config.toml no longer sets speed = 3600.0"
    # a daemon already serving the shipped port on this machine must not fail the test
    assert "\nport = 9108\n" in text, "config.toml no longer sets [http] port = 9108"
    text = text.replace("\nport = 9108\n", "\nport = 0\n")
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    journal_path = tmp_path / "state" / "journal.sqlite"
    deadline = time.monotonic() + 90
    fills = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if journal_path.exists():
            journal = Journal(journal_path)
            fills = journal.counts()["fills"]
            journal.close()
            if fills:
                break
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert fills > 0, "no fill within 90 s of start"
    assert "Traceback" not in out + err
    assert "tradingd run summary" in out
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert "started" in events and "stopped" in events
    journal = Journal(journal_path)
    assert journal.counts()["fills"] >= fills
    journal.close()
