"""`hpc-bridge serve` as a real process behind waitress, as `make run` starts it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..conftest import ROOT
from .conftest import free_port


def test_serve_answers_service_info_per_spec(spec_validator) -> None:
    port = free_port()
    exe = Path(sys.executable).parent / "hpc-bridge"
    proc = subprocess.Popen([str(exe), "serve", "--config", str(ROOT / "site_config" / "dev.yaml"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/ga4gh/tes/v1/service-info"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    status, body = resp.status, resp.read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert status == 200
        spec_validator("tes-1.1.0.openapi.yaml", "get", "/ga4gh/tes/v1/service-info", 200, body)
        assert json.loads(body)["type"]["artifact"] == "tes"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
