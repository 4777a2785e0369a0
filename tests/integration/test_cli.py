"""The `hpc-bridge` client commands as a user runs them: a real process against `hpc-bridge serve`,
its daemon, Slurm and Apptainer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ServerProcess

EXE = str(Path(sys.executable).parent / "hpc-bridge")


def hpcb(server: ServerProcess, *args: str, input: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], input=input, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HPC_BRIDGE_URL": server.url})


def status(server: ServerProcess, task_id: str) -> dict[str, Any]:
    result = hpcb(server, "status", task_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_state(server: ServerProcess, task_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = status(server, task_id)
        if task["state"] in states:
            return task
        time.sleep(0.3)
    pytest.fail(f"task {task_id} not in {states} after {timeout}s (state {task['state']})")


def test_submit_wait_passes_on_the_exit_code_and_logs_show_the_output(server: ServerProcess) -> None:
    result = hpcb(server, "submit", "--wait", "--image", "busybox", "--name", "cli-exit", "--mem", "256M",
                  "--time", "00:05:00", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert result.returncode == 3, result.stderr
    task_id, final = result.stdout.splitlines()
    assert final == f"{task_id} EXECUTOR_ERROR: executor 0 exited with 3"
    assert f"{task_id} QUEUED" in result.stderr and f"{task_id} EXECUTOR_ERROR" in result.stderr

    assert hpcb(server, "logs", task_id).stdout == "hi\n"
    assert hpcb(server, "logs", task_id, "--stderr").stdout == "oops\n"
    shown = hpcb(server, "status", task_id)
    assert shown.returncode == 0, shown.stderr
    job_id = status(server, task_id)["logs"][0]["metadata"]["slurm_job_id"]
    assert job_id.isdigit()
    assert ["slurm", "job", job_id] in [line.split() for line in shown.stdout.splitlines()]
    assert re.search(r"^0 +busybox +sh -c 'echo hi; echo oops >&2; exit 3' +3 +\d{4}-", shown.stdout, re.M)


def test_submit_a_task_file_and_list_with_filters(server: ServerProcess, tmp_path: Path) -> None:
    task = {"name": "cli-file", "tags": {"suite": "cli"}, "volumes": ["/shared"],
            "executors": [{"image": "busybox", "command": ["sh", "-c", "echo from-file > /shared/f"]},
                          {"image": "busybox", "command": ["cat", "/shared/f"]}]}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    done = hpcb(server, "submit", "--wait", str(path))
    assert done.returncode == 0, done.stderr
    file_id = done.stdout.splitlines()[0]
    assert hpcb(server, "logs", file_id, "--executor", "1").stdout == "from-file\n"

    other = hpcb(server, "submit", "--image", "busybox", "--name", "cli-other", "--", "sleep", "30")
    other_id = other.stdout.strip()

    def listed(*args: str) -> list[str]:
        result = hpcb(server, "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [t["id"] for t in json.loads(result.stdout)]

    assert listed() == [other_id, file_id]
    assert listed("--tag", "suite=cli") == [file_id]
    assert listed("--name-prefix", "cli-o") == [other_id]
    assert listed("--state", "COMPLETE", "--all") == [file_id]
    table = hpcb(server, "list", "--tag", "suite").stdout.splitlines()
    assert table[1].split()[:3] == [file_id, "cli-file", "COMPLETE"]
    hpcb(server, "cancel", other_id)


def test_cancel_a_running_task(server: ServerProcess) -> None:
    task_id = hpcb(server, "submit", "--image", "busybox", "--", "sleep", "60").stdout.strip()
    wait_state(server, task_id, {"RUNNING"})
    result = hpcb(server, "cancel", task_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == task_id
    assert result.stdout.split()[1] in ("CANCELING", "CANCELED")
    wait_state(server, task_id, {"CANCELED"})
    again = hpcb(server, "cancel", task_id)
    assert again.returncode == 0 and again.stdout.split() == [task_id, "CANCELED"]


def test_ctrl_c_stops_waiting_but_not_the_task(server: ServerProcess) -> None:
    # As from a terminal: a run started in the background (`make test &`) ignores SIGINT, and so
    # would the CLI, which inherits that.
    proc = subprocess.Popen([EXE, "submit", "--wait", "--image", "busybox", "--", "sleep", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HPC_BRIDGE_URL": server.url},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    task_id = proc.stdout.readline().strip()
    wait_state(server, task_id, {"RUNNING"})
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert f"task {task_id} keeps running" in stderr and f"hpc-bridge cancel --url {server.url}" in stderr
    time.sleep(2)  # several daemon cycles: the task stays RUNNING (no flapping back to INITIALIZING)
    assert status(server, task_id)["state"] == "RUNNING"
    hpcb(server, "cancel", task_id)


def test_a_task_slurm_cannot_run_ends_wait_with_125(server: ServerProcess) -> None:
    result = hpcb(server, "submit", "--wait", "--image", "busybox", "--mem", "100T", "--", "true")
    assert result.returncode == 125, result.stderr
    task_id, final = result.stdout.splitlines()
    assert final == f"{task_id} SYSTEM_ERROR"
    assert "system log:" in result.stderr


def test_unknown_task_and_no_server(server: ServerProcess) -> None:
    missing = hpcb(server, "logs", "no-such-task")
    assert missing.returncode == 1
    assert "task 'no-such-task' not found" in missing.stderr
    server.stop()
    down = hpcb(server, "list")
    assert down.returncode == 1
    assert f"no answer from the server at {server.url}" in down.stderr
