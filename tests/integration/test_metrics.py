"""/metrics scraped during a burst of 200 tasks through the real server and Slurm: the submission and
state counts move, Slurm commands and monitor cycles are timed; the names follow Prometheus'
conventions (`promtool check metrics`, and the checks below); /readyz reports the database, the daemon
lock and Slurm."""

from __future__ import annotations

import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ServerProcess

TASK = {"name": "burst", "executors": [{"image": "busybox", "command": ["true"]}]}
# dev/cluster unpacks it from Debian's prometheus package
PROMTOOL = os.path.join(os.environ.get("HPCB_DEV_PREFIX", "/opt/hpc-bridge-dev"), "prometheus", "promtool")


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = requests.get(f"{server.url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=resp.text, capture_output=True, text=True,
                          timeout=30)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, ""), lint
    families = list(text_string_to_metric_families(resp.text))
    for family in families:  # Prometheus naming: one prefix, base units, counters end in _total
        assert re.fullmatch(r"hpcbridge_[a-z_]+", family.name), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_during_a_burst_of_200_tasks(server: ServerProcess) -> None:
    before = scrape(server)
    assert value(before, "hpcbridge_task_submissions_total") == 0
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: requests.post(f"{server.url}/ga4gh/tes/v1/tasks", json=TASK,
                                                    timeout=30).json()["id"], range(200)))
    during = scrape(server)
    assert value(during, "hpcbridge_task_submissions_total") == 200
    assert sum(value(during, "hpcbridge_tasks", state=s) for s in ("QUEUED", "INITIALIZING", "RUNNING",
                                                                    "COMPLETE")) == 200
    deadline = time.monotonic() + 600
    while (done := value(scrape(server), "hpcbridge_tasks", state="COMPLETE")) < 200:
        assert time.monotonic() < deadline, f"{done} of 200 complete after 600 s"
        time.sleep(2)
    after = scrape(server)
    assert value(after, "hpcbridge_monitor_cycle_duration_seconds_count") > \
        value(during, "hpcbridge_monitor_cycle_duration_seconds_count") > 0
    assert value(after, "hpcbridge_slurm_command_duration_seconds_count", command="squeue", outcome="ok") > 0
    assert value(after, "hpcbridge_slurm_command_duration_seconds_count", command="sbatch", outcome="ok") > 0
    assert value(after, "hpcbridge_http_request_duration_seconds_count", method="POST",
                 route="/ga4gh/tes/v1/tasks", status="200") == 200
    assert len(ids) == 200
    ready = requests.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["problems"] == {}
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
