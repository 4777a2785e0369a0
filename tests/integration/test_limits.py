"""Limits count what Slurm will really grant, through the real server and the dev cluster: each way
around a limit with `backend_parameters` is a 400 naming the field, with nothing stored, and the
legitimate requests next to them run with the options Slurm was given (`scontrol show job`, and
the batch script Slurm holds)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hpc_bridge.config import SiteConfig, load_config
from hpc_bridge.slurm.client import CliSlurmClient
from hpc_bridge.store import Store
from hpc_bridge.tes.service import TaskService

from .conftest import ServerProcess, free_port, write_config

TES = "/ga4gh/tes/v1"
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
LIMITS = {"max_cpu_cores": 2, "max_ram_gb": 2, "max_gpus": 1, "max_nodes": 2, "max_time_minutes": 10,
          "allowed_accounts": ["proj-a"], "allowed_qos": ["normal"], "allowed_partitions": ["long"]}


def _task(**resources: Any) -> dict[str, Any]:
    return {"executors": [{"image": "busybox", "command": ["true"]}], "resources": resources}


def _bp(**parameters: str) -> dict[str, Any]:
    return _task(backend_parameters=parameters)


def _wait(url: str, task_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (task := requests.get(f"{url}{TES}/tasks/{task_id}", params={"view": "FULL"},
                                timeout=10).json())["state"] not in FINAL:
        assert time.monotonic() < deadline, task
        time.sleep(0.5)
    return task


def _job(task: dict[str, Any]) -> tuple[dict[str, str], str]:
    """What Slurm granted the task's job (`scontrol show job`), and the batch script it was given."""
    job_id = task["logs"][0]["metadata"]["slurm_job_id"]
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                           check=True, timeout=30).stdout
    script = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True,
                            text=True, check=True, timeout=30).stdout
    return dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", shown)), script


@pytest.fixture(scope="module")
def limited(dev_config: SiteConfig, slurm: CliSlurmClient,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server in run_as.mode service (every job the service account's) with per-task limits and
    allow-lists of accounts, QoS and partitions."""
    server = ServerProcess(write_config(dev_config, tmp_path_factory.mktemp("limits"), limits=LIMITS),
                           free_port()).start()
    yield server
    server.stop()


@pytest.mark.parametrize(("body", "field"), [
    (_bp(time="0"), "resources.backend_parameters.time"),  # no time limit to sbatch
    (_bp(time="00:00:00"), "resources.backend_parameters.time"),
    (_bp(time="UNLIMITED"), "resources.backend_parameters.time"),
    (_bp(time="infinite"), "resources.backend_parameters.time"),
    (_bp(time="-1"), "resources.backend_parameters.time"),
    (_bp(time="10:01"), "resources.backend_parameters.time"),  # 11 minutes: Slurm rounds seconds up
    (_task(cpu_cores=2, backend_parameters={"nodes": "2"}), "resources.cpu_cores"),
    (_task(cpu_cores=2, backend_parameters={"nodes": "1-2"}), "resources.cpu_cores"),
    (_task(ram_gb=1.5, backend_parameters={"nodes": "2"}), "resources.ram_gb"),
    (_bp(gres="gpu:1", nodes="2"), "resources.backend_parameters.gpus"),  # --gres is per node
    (_bp(gres="gpu:1k"), "resources.backend_parameters.gres"),  # 1024 GPUs to Slurm
    (_bp(nodes="3"), "resources.backend_parameters.nodes"),
    (_bp(nodes="1k"), "resources.backend_parameters.nodes"),
    (_bp(nodes="1-0"), "resources.backend_parameters.nodes"),  # no maximum to Slurm
    (_bp(exclusive="true"), "resources.backend_parameters.exclusive"),
    (_bp(account="proj-b"), "resources.backend_parameters.account"),
    (_bp(qos="high"), "resources.backend_parameters.qos"),
    (_bp(partition="debug"), "resources.backend_parameters.partition"),
    (_bp(partition="long,debug"), "resources.backend_parameters.partition"),
    (_task(zones=["debug"]), "resources.zones[0]"),
])
def test_each_way_around_a_limit_is_a_400_naming_the_field(limited: ServerProcess, body: dict[str, Any],
                                                           field: str) -> None:
    resp = requests.post(f"{limited.url}{TES}/tasks", json=body, timeout=10)
    error = resp.json()
    assert resp.status_code == 400 and error["status_code"] == 400, error
    assert error["msg"].startswith(f"{field}: "), error
    assert requests.get(f"{limited.url}{TES}/tasks", timeout=10).json().get("tasks", []) == []


def test_a_request_within_the_limits_runs_with_what_it_asked_for(limited: ServerProcess) -> None:
    body = _task(cpu_cores=1, ram_gb=1, backend_parameters={
        "nodes": "1-2", "time": "9:30", "account": "proj-a", "qos": "normal", "partition": "long"})
    resp = requests.post(f"{limited.url}{TES}/tasks", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    task = _wait(limited.url, resp.json()["id"])
    assert task["state"] == "COMPLETE", task
    granted, script = _job(task)
    assert granted["Account"] == "proj-a" and granted["Partition"] == "long"
    assert granted["TimeLimit"] == "00:10:00"  # 9:30 is 10 minutes to Slurm, within the cap
    assert granted["NumNodes"] == "1" and granted["CPUs/Task"] == "1" and granted["MinMemoryNode"] == "1G"
    assert granted["OverSubscribe"] == "OK"  # not exclusive
    # This cluster keeps no QoS (no accounting database): the batch script shows what sbatch was given.
    for line in ("--nodes=1-2", "--qos=normal", "--account=proj-a", "--time=9:30"):
        assert f"#SBATCH {line}\n" in script, script


def test_exclusive_and_unlimited_tasks_run_where_the_site_allows_them(dev_config: SiteConfig, tmp_path: Path,
                                                                    slurm: CliSlurmClient) -> None:
    """Whole nodes for one user (`limits.users`); with no time cap, `0` and `-1` are no time limit to
    Slurm, also for the job they share with a task of the same shape (packing needs no declared length)."""
    config_path = write_config(dev_config, tmp_path, limits={"users": {"local": {"allow_exclusive": True}}},
                               slurm={"packing": {"enabled": True, "max_tasks": 4}})
    config = load_config(config_path)
    service = TaskService(Store(config.database), config)  # created before the daemon: one cycle takes all
    bodies = {"exclusive": _bp(exclusive="true", time="2"), "zero": _bp(time="0"), "zero2": _bp(time="0"),
              "minus": _bp(time="-1"), "minus2": _bp(time="-1"), "short": _bp(time="1"), "short2": _bp(time="1")}
    ids = {name: service.create(body, owner="local") for name, body in bodies.items()}
    server = ServerProcess(config_path, free_port()).start()
    try:
        tasks = {name: _wait(server.url, task_id) for name, task_id in ids.items()}
        assert {name: t["state"] for name, t in tasks.items()} == dict.fromkeys(ids, "COMPLETE")
        jobs = {name: _job(t)[0] for name, t in tasks.items()}
        assert jobs["exclusive"]["OverSubscribe"] == "NO" and jobs["exclusive"]["TimeLimit"] == "00:02:00"
        for name in ("zero", "zero2", "minus", "minus2"):
            assert jobs[name]["TimeLimit"] == "UNLIMITED", jobs[name]
            assert "slurm_pack_id" in tasks[name]["logs"][0]["metadata"]
        job_ids = {name: t["logs"][0]["metadata"]["slurm_job_id"] for name, t in tasks.items()}
        for a, b in (("short", "short2"), ("zero", "zero2"), ("minus", "minus2")):
            assert job_ids[a] == job_ids[b]  # packing is on: tasks of one shape shared a job
        assert len(set(job_ids.values())) == 4
    finally:
        server.stop()
