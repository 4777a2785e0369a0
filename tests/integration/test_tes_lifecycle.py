"""The TES task lifecycle through the real server, Slurm and Apptainer, driven by py-tes."""

from __future__ import annotations

import time

import pytest
import tes

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
IMAGE = "busybox"


def wait_final(client: tes.HTTPClient, task_id: str, timeout: float = 60) -> tes.Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(task_id, view="FULL")
        if task.state in FINAL:
            return task
        time.sleep(0.3)
    pytest.fail(f"task {task_id} not finished after {timeout}s (state {task.state})")


def sh(script: str, **kwargs: object) -> tes.Executor:
    return tes.Executor(image=IMAGE, command=["sh", "-c", script], **kwargs)


def test_success_with_logs(tes_client: tes.HTTPClient) -> None:
    task_id = tes_client.create_task(tes.Task(name="ok", executors=[sh("echo out; echo err >&2")]))
    task = wait_final(tes_client, task_id)
    assert task.state == "COMPLETE"
    log = task.logs[0]
    assert log.metadata["slurm_job_id"].isdigit()
    assert [(e.exit_code, e.stdout, e.stderr) for e in log.logs] == [(0, "out\n", "err\n")]
    assert log.start_time and log.end_time
