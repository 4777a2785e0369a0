"""slurmctld down: the API keeps serving, tasks stay QUEUED, and run once the controller is back."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import requests

from ..conftest import ROOT


def test_tasks_wait_out_a_controller_outage(server, slurm) -> None:
    subprocess.run(["pkill", "-x", "slurmctld"], check=True)
    try:
        deadline = time.monotonic() + 20
        while slurm.ping():
            assert time.monotonic() < deadline, "slurmctld did not stop"
            time.sleep(0.2)
        resp = requests.post(f"{server.url}/ga4gh/tes/v1/tasks", timeout=10, json={
            "executors": [{"image": "busybox", "command": ["echo", "after the outage"]}]})
        assert resp.status_code == 200
        task_id = resp.json()["id"]
        time.sleep(6)  # several daemon cycles against a dead controller
        task = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}?view=FULL", timeout=10).json()
        assert task["state"] == "QUEUED" and "metadata" not in task["logs"][0]  # no Slurm job yet
    finally:
        subprocess.run([str(Path(ROOT, "dev", "cluster")), "up"], check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while (task := requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}?view=FULL",
                                timeout=10).json())["state"] != "COMPLETE":
        assert task["state"] in ("QUEUED", "INITIALIZING", "RUNNING"), task
        assert time.monotonic() < deadline, task
        time.sleep(0.5)
    assert task["logs"][0]["logs"][0]["stdout"] == "after the outage\n"
