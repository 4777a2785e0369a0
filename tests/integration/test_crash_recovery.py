"""SIGKILL the daemon in the middle of a burst of submissions: after a restart every task finishes
exactly once. Counted in Slurm itself (the job carrying each task: its own, or a shared pack job)
and in each task's record (one start per run)."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from .conftest import slurm_runs

N = 80


def _submitted(db: str) -> tuple[int, int]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT count(*), count(job_id) FROM tasks").fetchone()
    finally:
        conn.close()


def test_sigkill_during_burst_loses_nothing_and_submits_nothing_twice(server_factory, slurm,
                                                                     dev_config) -> None:
    server = server_factory()
    db = str(server.config_path.parent / "hpc-bridge.sqlite")
    body = {"name": "burst", "executors": [{"image": "busybox", "command": ["true"]}]}
    with requests.Session() as http, ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: http.post(f"{server.url}/ga4gh/tes/v1/tasks", json=body,
                                                timeout=30).json()["id"], range(N)))
    deadline = time.monotonic() + 60
    while _submitted(db)[1] == 0:
        assert time.monotonic() < deadline, "the daemon never submitted anything"
        time.sleep(0.01)
    server.kill()
    created, with_job = _submitted(db)
    assert created == N and 0 < with_job < N, "the kill did not land in the middle of the burst"

    server.start()  # same database, new process: adopts, then submits the rest
    deadline = time.monotonic() + 300
    while True:
        tasks = requests.get(f"{server.url}/ga4gh/tes/v1/tasks", params={"page_size": 2000},
                             timeout=30).json()["tasks"]
        states = Counter(t["state"] for t in tasks)
        if states["COMPLETE"] == N:
            break
        assert set(states) <= {"QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"}, states
        assert time.monotonic() < deadline, f"not all tasks finished: {states}"
        time.sleep(1)

    runs = slurm_runs(Path(db), ids, slurm, dev_config.storage.work_root)
    assert runs == {task_id: 1 for task_id in ids}


def test_restart_adopts_a_job_submitted_just_before_a_crash(dev_config, tmp_path, slurm) -> None:
    """The narrowest window: sbatch succeeded, the store never heard of the job id."""
    from hpc_bridge.daemon import Daemon
    from hpc_bridge.slurm.client import CliSlurmClient
    from hpc_bridge.store import Store
    from hpc_bridge.tes.service import TaskService

    config = dev_config.model_copy(update={"database": tmp_path / "db.sqlite"})
    store = Store(config.database)
    task_id = TaskService(store, config).create(
        {"executors": [{"image": "busybox", "command": ["echo", "adopted"]}]}, owner="local")
    client = CliSlurmClient(submit_as=config.slurm.submit_as)
    daemon = Daemon(config, store, client)

    # What the crashed daemon did: prepared the task, ran sbatch, and died before recording the id.
    script = daemon.prepare(store.tasks.get(task_id)).script
    job_id = client.submit(script, workdir=script.parent)

    deadline = time.monotonic() + 120
    while store.tasks.get(task_id).state != "COMPLETE":
        assert time.monotonic() < deadline, store.tasks.get(task_id)
        daemon.cycle()
        time.sleep(0.3)
    row = store.tasks.get(task_id)
    assert row.job_id == job_id and client.calls["sbatch"] == 1
    assert row.executor_logs[0]["stdout"] == "adopted\n"
    assert any("adopted Slurm job" in (e["message"] or "") for e in store.tasks.events(task_id))
