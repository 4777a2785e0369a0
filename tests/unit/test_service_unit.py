"""The shipped systemd unit passes `systemd-analyze verify` (with its ExecStart pointed at this venv's
hpc-bridge, which verify requires to exist) and carries the directives the README promises; the JSON
log format gives one JSON object per line."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from hpc_bridge.logformat import JsonFormatter

from ..conftest import ROOT

UNIT = ROOT / "site_config" / "systemd" / "hpc-bridge.service"


def test_the_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian's systemd package)"
    exe = Path(sys.executable).parent / "hpc-bridge"
    unit = tmp_path / "hpc-bridge.service"
    unit.write_text(UNIT.read_text().replace("/opt/hpc-bridge/venv/bin/hpc-bridge", str(exe)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # unknown keys are only warnings there
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("PrivateTmp=", "PrivatTmp="))
    assert "Unknown key" in subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True,
                                           timeout=60).stderr
    directives = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
    assert directives["User"] == "hpcbridge" and directives["Restart"] == "on-failure"
    assert directives["ProtectSystem"] == "strict" and directives["PrivateTmp"] == "true"
    assert directives["NoNewPrivileges"] == "true" and directives["KillMode"] == "mixed"
    assert "--log-format json" in directives["ExecStart"] and "-HUP" in directives["ExecReload"]


def test_json_log_lines_are_json_whatever_the_message() -> None:
    record = logging.LogRecord("hpc_bridge.x", logging.WARNING, __file__, 1, 'a "quoted"\nline %s', ("é",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == 'a "quoted"\nline é' and entry["level"] == "WARNING"
    assert entry["logger"] == "hpc_bridge.x" and entry["time"].endswith("+00:00")
