"""`hpc-bridge serve --log-format json` as systemd runs it: every log line is a JSON object, SIGHUP
reloads the keys, SIGTERM stops it cleanly (exit status 0) with its daemon and supervisor."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpc_bridge.config import SiteConfig

from .conftest import ServerProcess, free_port, write_config


class JsonServer(ServerProcess):
    def spawn(self) -> subprocess.Popen[bytes]:
        exe = Path(sys.executable).parent / "hpc-bridge"
        with open(self.log, "ab") as out:
            return subprocess.Popen([str(exe), "serve", "--config", str(self.config_path), "--port", str(self.port),
                                     "--log-format", "json"], stdout=out, stderr=out)


def wait_for(server: ServerProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log.read_text()}"
        time.sleep(0.2)


def test_json_logs_reload_on_hup_and_a_clean_stop_on_term(dev_config: SiteConfig, tmp_path: Path) -> None:
    server = JsonServer(write_config(dev_config, tmp_path), free_port()).start()
    assert server.proc is not None
    try:
        wait_for(server, "daemon started")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(server, "keys reloaded")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    lines = server.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line: JSON
    messages = [e["message"] for e in entries]
    assert any(m.startswith("hpc-bridge serving http://") for m in messages)
    assert messages[-1] == "stopped" and any("SIGTERM" in m for m in messages)
