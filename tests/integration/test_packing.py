"""Tasks packed into one Slurm job on the real cluster: each task runs as a job step in turn with its
own state, logs and cancel, the shared job is never cancelled for one of them, and a step that runs
long hands the tasks still waiting back, to run as jobs of their own."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from hpc_bridge.config import SiteConfig, load_config
from hpc_bridge.slurm.client import CliSlurmClient
from hpc_bridge.store import Store
from hpc_bridge.tes.service import TaskService

from .conftest import ServerProcess, free_port, slurm_runs, write_config

TES = "/ga4gh/tes/v1"


def _task(script: str, time: str | None = "5") -> dict:
    backend = {"time": time} if time else {}
    return {"executors": [{"image": "busybox", "command": ["sh", "-c", script]}],
            "resources": {"cpu_cores": 1, "ram_gb": 0.5, "backend_parameters": backend}}


def _state(url: str, task_id: str) -> dict:
    return requests.get(f"{url}{TES}/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json()


def _wait(url: str, task_id: str, states: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while (task := _state(url, task_id))["state"] not in states:
        assert time.monotonic() < deadline, task
        time.sleep(0.3)
    return task


def test_packed_tasks_keep_their_own_state_logs_and_cancel(dev_config: SiteConfig, tmp_path: Path,
                                                            slurm: CliSlurmClient) -> None:
    # A threshold longer than the test: the waiting task stays in the shared job until cancelled.
    config_path = write_config(dev_config, tmp_path, slurm={"packing": {"enabled": True, "max_tasks": 4,
                                                                        "hand_back_seconds": 600}})
    config = load_config(config_path)
    # Created before the daemon starts, so its first cycle finds all four due together.
    service = TaskService(Store(config.database), config)
    ids = [service.create(_task(script), owner="local")
           for script in ("echo zero", "echo one; sleep 120", "echo never", "echo three >&2")]
    server = ServerProcess(config_path, free_port()).start()
    try:
        _wait(server.url, ids[1], {"RUNNING"})
        assert _state(server.url, ids[0])["state"] == "COMPLETE"
        waiting = _state(server.url, ids[2])
        assert waiting["state"] == "QUEUED"
        assert any("waiting for its turn" in line for line in waiting["logs"][0]["system_logs"])
        # One that has not had its turn, then the running one. (The other way round is a race that TES
        # allows: the waiting task may start, and end, before its cancel reaches the daemon.)
        for task_id in (ids[2], ids[1]):
            assert requests.post(f"{server.url}{TES}/tasks/{task_id}:cancel", timeout=10).status_code == 200

        tasks = [_wait(server.url, task_id, {"COMPLETE", "CANCELED", "EXECUTOR_ERROR", "SYSTEM_ERROR"})
                 for task_id in ids]
        assert [t["state"] for t in tasks] == ["COMPLETE", "CANCELED", "CANCELED", "COMPLETE"]
        logs = [t["logs"][0] for t in tasks]
        assert logs[0]["logs"][0]["stdout"] == "zero\n" and logs[3]["logs"][0]["stderr"] == "three\n"
        assert "logs" not in logs[2] or not logs[2]["logs"]  # skipped: never ran
        meta = [log["metadata"] for log in logs]
        assert len({m["slurm_job_id"] for m in meta}) == 1 and len({m["slurm_pack_id"] for m in meta}) == 1
        job = next(j for j in slurm.queue() if j.job_id == meta[0]["slurm_job_id"])
        assert job.state == "COMPLETED"  # the task after the cancelled ones ran: the job was not cancelled
        assert slurm_runs(config.database, ids, slurm, config.storage.work_root) == {
            ids[0]: 1, ids[1]: 1, ids[2]: 0, ids[3]: 1}
    finally:
        server.stop()


def test_a_long_step_hands_the_waiting_tasks_back_to_run_elsewhere(dev_config: SiteConfig, tmp_path: Path,
                                                                    slurm: CliSlurmClient) -> None:
    """No task declares a length; the second sleeps. The two after it are handed back once it has run
    the threshold and end while it still runs, in a new shared job; it keeps its step and cancel."""
    config_path = write_config(dev_config, tmp_path, slurm={"packing": {"enabled": True, "max_tasks": 4,
                                                                        "hand_back_seconds": 3}})
    config = load_config(config_path)
    service = TaskService(Store(config.database), config)
    ids = [service.create(_task(script, time=None), owner="local")
           for script in ("echo zero", "echo one; sleep 300", "echo two", "echo three")]
    server = ServerProcess(config_path, free_port()).start()
    try:
        after = [_wait(server.url, task_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"})
                 for task_id in ids[2:]]
        assert [t["state"] for t in after] == ["COMPLETE", "COMPLETE"]
        long_task = _state(server.url, ids[1])
        assert long_task["state"] == "RUNNING"  # the others did not wait for it to end
        shared = long_task["logs"][0]["metadata"]["slurm_job_id"]
        for task, out in zip(after, ("two\n", "three\n"), strict=True):
            assert task["logs"][0]["metadata"]["slurm_job_id"] != shared
            assert task["logs"][0]["logs"][0]["stdout"] == out
            assert any(f"handed back by Slurm job {shared}" in line for line in task["logs"][0]["system_logs"])
        # Handed back once, they share a new job (handed back again, each would go alone).
        assert len({t["logs"][0]["metadata"]["slurm_job_id"] for t in after}) == 1
        assert _state(server.url, ids[0])["state"] == "COMPLETE"
        assert requests.post(f"{server.url}{TES}/tasks/{ids[1]}:cancel", timeout=10).status_code == 200
        assert _wait(server.url, ids[1], {"CANCELED", "COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"})["state"] == \
            "CANCELED"
        assert slurm_runs(config.database, ids, slurm, config.storage.work_root) == dict.fromkeys(ids, 1)
    finally:
        server.stop()
