"""`hpc-bridge serve` on a copy of a site config (own database, free loopback port), for the dev
scripts that drive real clients against it (dev/cwl-conformance, dev/tes-compliance) and the benches,
so a `make run` server may keep running meanwhile."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(config: Path, directory: Path, **overrides: Any) -> tuple[subprocess.Popen[bytes], str]:
    """A server on a copy of `config` (top-level sections replaced by `overrides`) with its own
    database in `directory`; returns it and its URL once it answers."""
    from hpc_bridge.config import load_config

    data = load_config(config).model_dump(mode="json")
    data["database"] = str(directory / "hpc-bridge.sqlite")
    data.update(overrides)
    copy = directory / "site.yaml"
    copy.write_text(yaml.safe_dump(data))
    port = free_port()
    log = open(directory / "serve.log", "ab")  # noqa: SIM115 - the server's whole lifetime
    proc = subprocess.Popen([str(BIN / "hpc-bridge"), "serve", "--config", str(copy), "--port", str(port)],
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ga4gh/tes/v1/service-info", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {directory / 'serve.log'}") from None
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    from tests.procs import terminate

    terminate(proc, 30)
