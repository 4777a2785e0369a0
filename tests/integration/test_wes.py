"""WES end to end: `hpc-bridge serve` (API + daemon + WES supervisor) on the dev cluster, the real
CWL engine, TES tasks as Slurm jobs running in Apptainer; clients are wes-client (PyPI wes-service),
hpc-bridge-cwl-runner under cwltest, and plain requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from hpc_bridge.slurm.client import CliSlurmClient

from ..unit.test_wes_api import wes_validator
from .conftest import ServerProcess

WES = "/ga4gh/wes/v1"
ECHO = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c]
arguments: ["tr a-z A-Z < $(inputs.text.path) > upper.txt; cat $(inputs.extra.path) >> upper.txt"]
inputs:
  text: File
  extra: File
outputs:
  upper: {type: File, outputBinding: {glob: upper.txt}}
"""
WORKFLOW = """cwlVersion: v1.2
class: Workflow
inputs:
  text: File
  extra: File
outputs:
  result: {type: File, outputSource: shout/upper}
steps:
  shout:
    run: tools/echo.cwl
    in: {text: text, extra: extra}
    out: [upper]
"""
FAILING = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c, "echo going to fail >&2; exit 7"]
inputs: []
outputs: []
"""
SLEEPING = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sleep, "300"]
inputs: []
outputs: []
"""


def wait_state(url: str, run_id: str, states: set[str], timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = requests.get(f"{url}{WES}/runs/{run_id}/status", timeout=10).json()["state"]
        if state in states:
            return state
        time.sleep(0.5)
    log = requests.get(f"{url}{WES}/runs/{run_id}", timeout=10).json()
    pytest.fail(f"run {run_id} still {state} after {timeout}s: {json.dumps(log, indent=1)}")


def post(url: str, files: dict[str, str], **fields: Any) -> requests.Response:
    data = {"workflow_type": "CWL", "workflow_type_version": "v1.2"}
    data.update({k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()})
    parts = [("workflow_attachment", (name, content.encode())) for name, content in files.items()]
    return requests.post(f"{url}{WES}/runs", data=data, files=parts, timeout=120)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "tools").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "wf.cwl").write_text(WORKFLOW)
    (root / "tools" / "echo.cwl").write_text(ECHO)
    (root / "data" / "text.txt").write_text("hello wes\n")
    (root / "data" / "extra.txt").write_text("and more\n")
    (root / "job.json").write_text(json.dumps({
        "text": {"class": "File", "location": "data/text.txt"},
        "extra": {"class": "File", "location": "data/extra.txt"}}))
    return root


def test_wes_client_submits_with_attachments_and_gets_outputs(server: ServerProcess, project: Path) -> None:
    from wes_client.util import WESClient

    client = WESClient({"auth": {}, "proto": "http", "host": server.url.removeprefix("http://")})
    info = client.get_service_info()
    assert info["workflow_type_versions"]["CWL"]["workflow_type_version"] == ["v1.0", "v1.1", "v1.2"]
    run = client.run(str(project / "wf.cwl"), f"file://{project / 'job.json'}",
                     [f"file://{project / 'tools' / 'echo.cwl'}", f"file://{project / 'data' / 'text.txt'}",
                      f"file://{project / 'data' / 'extra.txt'}"])
    run_id = run["run_id"]
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE", \
        requests.get(f"{server.url}{WES}/runs/{run_id}/stderr", timeout=10).text
    log = client.get_run_log(run_id)
    result = log["outputs"]["result"]
    assert result["basename"] == "upper.txt" and result["size"] == len("HELLO WES\nand more\n")
    served = requests.get(f"{server.url}{WES}/runs/{run_id}/outputs",
                          params={"location": result["location"]}, timeout=10)
    assert served.status_code == 200 and served.text == "HELLO WES\nand more\n"
    assert log["run_log"]["exit_code"] == 0 and log["run_log"]["end_time"].endswith("Z")
    assert client.get_run_status(run_id) == {"run_id": run_id, "state": "COMPLETE"}
    assert run_id in [r["run_id"] for r in client.list_runs()["runs"]]

    tasks = requests.get(log["task_logs_url"], timeout=10).json()["task_logs"]
    assert len(tasks) == 1 and tasks[0]["name"] == "shout" and tasks[0]["exit_code"] == 0
    tes_task = requests.get(tasks[0]["tes_uri"], params={"view": "FULL"}, timeout=10).json()
    assert tes_task["state"] == "COMPLETE" and tes_task["tags"]["wes_run_id"] == run_id
    assert tes_task["logs"][0]["metadata"]["slurm_job_id"]
    assert requests.get(log["run_log"]["stderr"], timeout=10).status_code == 200
    validate = wes_validator()  # the real data of a finished run, against the official spec
    validate("get", f"{WES}/runs/{run_id}", 200, log)
    validate("get", f"{WES}/runs/{run_id}/tasks", 200, {"task_logs": tasks})
    validate("get", f"{WES}/service-info", 200, info)


def test_the_wes_client_command(server: ServerProcess, project: Path) -> None:
    """`wes-client` sends the job's files as absolute client paths and attaches them relative to the
    workflow's directory: the service maps them back to the attachments."""
    attachments = ",".join(str(project / p) for p in ("tools/echo.cwl", "data/text.txt", "data/extra.txt"))
    proc = subprocess.run([str(Path(sys.executable).parent / "wes-client"), "--host",
                           server.url.removeprefix("http://"), "--proto", "http", "--quiet",
                           f"--attachments={attachments}", str(project / "wf.cwl"), str(project / "job.json")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)["result"]
    assert result["basename"] == "upper.txt" and result["size"] == 19


def test_a_broken_workflow_is_400_with_cwltools_message(server: ServerProcess) -> None:
    broken = ECHO.replace("baseCommand", "baseCommmand")
    resp = post(server.url, {"tool.cwl": broken}, workflow_url="tool.cwl",
                workflow_params={"text": {"class": "File", "location": "tool.cwl"},
                                 "extra": {"class": "File", "location": "tool.cwl"}})
    assert resp.status_code == 400
    assert "baseCommmand" in resp.json()["msg"]
    assert requests.get(f"{server.url}{WES}/runs", timeout=10).json()["runs"] == []


def test_a_failing_tool_is_executor_error_with_logs(server: ServerProcess) -> None:
    resp = post(server.url, {"fail.cwl": FAILING}, workflow_url="fail.cwl")
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "EXECUTOR_ERROR"
    log = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()
    assert log["run_log"]["exit_code"] == 3
    task = requests.get(log["task_logs_url"], timeout=10).json()["task_logs"][0]
    assert task["exit_code"] == 7 and "TES state: EXECUTOR_ERROR" in task["system_logs"]
    assert "going to fail" in requests.get(task["stderr"], timeout=10).text


def test_cancel_stops_the_engine_and_the_slurm_jobs(server: ServerProcess, slurm: CliSlurmClient) -> None:
    resp = post(server.url, {"sleep.cwl": SLEEPING}, workflow_url="sleep.cwl")
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    wait_state(server.url, run_id, {"RUNNING"})
    tasks_url = f"{server.url}{WES}/runs/{run_id}/tasks"
    deadline = time.monotonic() + 120
    while True:
        tasks = requests.get(tasks_url, timeout=10).json()["task_logs"]
        task = requests.get(tasks[0]["tes_uri"], params={"view": "FULL"}, timeout=10).json() if tasks else {}
        if task.get("state") == "RUNNING":
            break
        assert time.monotonic() < deadline, task
        time.sleep(0.5)
    job_id = task["logs"][0]["metadata"]["slurm_job_id"]
    assert requests.post(f"{server.url}{WES}/runs/{run_id}/cancel", timeout=10).json() == {"run_id": run_id}
    assert requests.get(f"{server.url}{WES}/runs/{run_id}/status", timeout=10).json()["state"] in (
        "CANCELING", "CANCELED")
    assert wait_state(server.url, run_id, {"CANCELED", "COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"},
                      timeout=120) == "CANCELED"
    assert requests.get(tasks[0]["tes_uri"], timeout=10).json()["state"] == "CANCELED"
    live = [j for j in slurm.queue() if j.job_id == job_id and j.state in ("PENDING", "RUNNING")]
    assert live == []


def test_cwltest_with_the_runner(server: ServerProcess, project: Path, tmp_path: Path) -> None:
    (project / "fail.cwl").write_text(FAILING)
    tests = [
        {"id": "upper", "doc": "a workflow with a step in tools/ and two input files",
         "tool": str(project / "wf.cwl"), "job": str(project / "job.json"),
         "output": {"result": {"class": "File", "basename": "upper.txt", "location": "upper.txt",
                               "size": 19, "checksum": "sha1$" + __import__("hashlib").sha1(
                                   b"HELLO WES\nand more\n").hexdigest()}}},
        {"id": "fails", "doc": "a tool exiting 7", "tool": str(project / "fail.cwl"), "should_fail": True},
    ]
    (tmp_path / "tests.yml").write_text(json.dumps(tests))
    runner = Path(sys.executable).parent / "hpc-bridge-cwl-runner"
    proc = subprocess.run([str(Path(sys.executable).parent / "cwltest"), "--test", str(tmp_path / "tests.yml"),
                           "--tool", str(runner), "-j", "2"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
                          env={**os.environ, "HPC_BRIDGE_URL": server.url})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All tests passed" in proc.stderr + proc.stdout


def test_the_runner_prints_outputs_like_cwltool(server: ServerProcess, project: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    proc = subprocess.run([str(Path(sys.executable).parent / "hpc-bridge-cwl-runner"), "--quiet",
                           "--url", server.url, "--outdir", str(outdir), str(project / "wf.cwl"),
                           str(project / "job.json")], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["result"]
    assert result["path"] == str(outdir / "upper.txt") and result["location"] == (outdir / "upper.txt").as_uri()
    assert (outdir / "upper.txt").read_text() == "HELLO WES\nand more\n"


def test_a_run_survives_a_service_crash(server_factory: Callable[..., ServerProcess], project: Path) -> None:
    """kill -9 of the service while a run's task is in Slurm: the next service process re-launches
    the engine, which adopts the task instead of submitting it again."""
    slow = ECHO.replace('["tr a-z', '["sleep 8; tr a-z')
    server = server_factory()
    resp = post(server.url, {"wf.cwl": WORKFLOW, "tools/echo.cwl": slow, "data/text.txt": "hello wes\n",
                             "data/extra.txt": "and more\n"}, workflow_url="wf.cwl",
                workflow_params={"text": {"class": "File", "location": "data/text.txt"},
                                 "extra": {"class": "File", "location": "data/extra.txt"}})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    wait_state(server.url, run_id, {"RUNNING"})
    server.kill()
    server.start()
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    tasks = requests.get(f"{server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]
    assert len(tasks) == 1
    assert "service restarted" in requests.get(f"{server.url}{WES}/runs/{run_id}/stderr", timeout=10).text


def test_sigterm_to_the_runner_cancels_its_run(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "sleep.cwl").write_text(SLEEPING)
    runner = subprocess.Popen([str(Path(sys.executable).parent / "hpc-bridge-cwl-runner"), "--url", server.url,
                               "--outdir", str(tmp_path / "out"), str(tmp_path / "sleep.cwl")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            runs = requests.get(f"{server.url}{WES}/runs", timeout=10).json()["runs"]
            if runs and runs[0]["state"] == "RUNNING":
                break
            assert time.monotonic() < deadline and runner.poll() is None, runs
            time.sleep(0.5)
        runner.terminate()
        assert runner.wait(60) == 130
    finally:
        runner.kill()
    assert wait_state(server.url, runs[0]["run_id"], {"CANCELED"}, timeout=120) == "CANCELED"


SLEEP_ECHO = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
  ToolTimeLimit: {timelimit: 120}
baseCommand: [sh, -c, 'sleep "$0"; echo "slept $0" > out.txt']
inputs:
  seconds: {type: int, inputBinding: {position: 1}}
outputs:
  out: {type: File, outputBinding: {glob: out.txt}}
"""
SCATTER = """cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  seconds: int[]
outputs:
  outs: {type: "File[]", outputSource: each/out}
steps:
  each:
    run: sleep_echo.cwl
    scatter: seconds
    in: {seconds: seconds}
    out: [out]
"""


@pytest.mark.parametrize("packing", [False, True], ids=["own-jobs", "packed"])
def test_a_scatter_survives_a_daemon_kill_and_no_finished_step_runs_twice(
        server_factory: Callable[..., ServerProcess], dev_config, slurm: CliSlurmClient, packing: bool) -> None:
    """kill -9 of `serve` (API, daemon, WES supervisor) while a scatter is half done: after the
    restart the run completes, and Slurm ran every scatter element exactly once (packed into shared
    jobs or not), the finished ones before the kill included."""
    from .conftest import slurm_runs

    seconds = [0, 0, 0, 0, 10, 10, 10, 10]
    server = server_factory(slurm={"packing": {"enabled": packing, "max_tasks": 2}})
    resp = post(server.url, {"wf.cwl": SCATTER, "sleep_echo.cwl": SLEEP_ECHO}, workflow_url="wf.cwl",
                workflow_params={"seconds": seconds})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]

    def tasks() -> list[dict]:
        return requests.get(f"{server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]

    deadline = time.monotonic() + 120
    while sum("TES state: COMPLETE" in t["system_logs"] for t in tasks()) < 2:
        assert time.monotonic() < deadline, tasks()
        time.sleep(0.3)
    before = {t["id"]: t["system_logs"][0] for t in tasks()}
    assert list(before.values()).count("TES state: COMPLETE") < len(seconds), "the kill came too late"
    server.kill()
    server.start()
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"

    after = tasks()
    assert len(after) == len(seconds) and set(before) <= {t["id"] for t in after}
    db = server.config_path.parent / "hpc-bridge.sqlite"
    assert slurm_runs(db, [t["id"] for t in after], slurm, dev_config.storage.work_root) == \
        {t["id"]: 1 for t in after}
    log = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()
    assert sorted(o["size"] for o in log["outputs"]["outs"]) == sorted(len(f"slept {s}\n") for s in seconds)
