"""WES retention through the real server: an ended run's directory goes once its time is past, its
record stays with a note; a running run is never touched."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import requests

from hpc_bridge.config import SiteConfig

from .conftest import ServerProcess
from .test_wes import ECHO, SLEEPING, WES, WORKFLOW, post, wait_state


def test_retention_removes_ended_run_directories_and_keeps_their_records(
        server_factory: Callable[..., ServerProcess], dev_config: SiteConfig) -> None:
    server = server_factory(wes={"retention_hours": 0}, monitor={"cleanup_interval": 1})
    root = dev_config.wes.root(dev_config.storage.data_roots)
    assert root is not None
    sleeping = post(server.url, {"sleep.cwl": SLEEPING}, workflow_url="sleep.cwl", workflow_params={}).json()["run_id"]
    done = post(server.url, {"wf.cwl": WORKFLOW, "tools/echo.cwl": ECHO, "text.txt": "hi\n", "extra.txt": "x\n"},
                workflow_url="wf.cwl", workflow_params={"text": {"class": "File", "location": "text.txt"},
                                                        "extra": {"class": "File", "location": "extra.txt"}})
    run_id = done.json()["run_id"]
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    assert wait_state(server.url, sleeping, {"RUNNING"}) == "RUNNING"
    deadline = time.monotonic() + 120
    while (root / run_id).exists():
        assert time.monotonic() < deadline, "the ended run's directory is still there"
        time.sleep(0.5)
    log = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()
    assert log["state"] == "COMPLETE" and "result" in log["outputs"]  # the record stays
    assert any("run directory removed" in line for line in log["run_log"]["system_logs"])
    assert Path(root / sleeping).is_dir()  # never a live run's
    requests.post(f"{server.url}{WES}/runs/{sleeping}/cancel", timeout=10).raise_for_status()
    assert wait_state(server.url, sleeping, {"CANCELED", "SYSTEM_ERROR", "EXECUTOR_ERROR"}) == "CANCELED"
