"""The CWL engine on the real cluster: `python -I -m hpc_bridge.cwl`, started as the job user with a
run credential as the WES supervisor starts it, creates TES tasks over the API of a running
`hpc-bridge serve`, whose daemon runs them as Slurm jobs in Apptainer.

A two-step workflow with a scatter of three produces the right outputs (all three scatter jobs are
in Slurm before any of them ends); a failing tool ends the run with exit code 3 and its task
EXECUTOR_ERROR; an engine killed after the first step is run again and reuses that step's task
(one task, one Slurm job) instead of running it twice; SIGTERM cancels the run's tasks (exit 5).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpc_bridge.auth import runtoken
from hpc_bridge.config import SiteConfig, load_config
from hpc_bridge.cwl.fetch import FetchPolicy
from hpc_bridge.store import Store, TaskFilter, TaskRow
from hpc_bridge.store.runs import RunStore
from hpc_bridge.wes.rundir import hand_over_run_dir

from .conftest import ServerProcess

SHOUT = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c]
arguments: ["cat $(inputs.prefix.path); echo $(inputs.word) | tr a-z A-Z; sleep $(inputs.pause)"]
inputs:
  word: string
  prefix: File
  pause: {type: int, default: 0}
stdout: shout.txt
outputs:
  out: stdout
"""

JOIN = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: cat
inputs:
  files: {type: 'File[]', inputBinding: {position: 1}}
stdout: joined.txt
outputs:
  out: stdout
"""

WORKFLOW = """cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  words: string[]
  prefix: File
  pause: {type: int, default: 0}
outputs:
  shouted: {type: 'File[]', outputSource: shout/out}
  joined: {type: File, outputSource: join/out}
steps:
  shout:
    run: shout.cwl
    scatter: word
    in: {word: words, prefix: prefix, pause: pause}
    out: [out]
  join:
    run: join.cwl
    in: {files: shout/out}
    out: [out]
"""

FAIL = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c, "echo about to fail >&2; exit 7"]
inputs: []
outputs: []
"""

# Step one is quick, step two slow: the engine is killed while step two runs.
TWO_STEPS = """cwlVersion: v1.2
class: Workflow
inputs:
  prefix: File
outputs:
  final: {type: File, outputSource: second/out}
steps:
  first:
    run: shout.cwl
    in: {word: {default: first}, prefix: prefix}
    out: [out]
  second:
    run: join.cwl
    in: {files: {source: first/out, valueFrom: "$([self])"}}
    out: [out]
requirements:
  StepInputExpressionRequirement: {}
  InlineJavascriptRequirement: {}
"""

SLOW_JOIN = JOIN.replace("baseCommand: cat", "baseCommand: [sh, -c, 'sleep 6; cat \"$@\"', sh]")


@pytest.fixture()
def run_dirs(dev_config: SiteConfig) -> Iterator[Callable[[], Path]]:
    made: list[Path] = []
    root = dev_config.wes.root(dev_config.storage.data_roots)

    def make() -> Path:
        root.mkdir(mode=0o711, exist_ok=True)
        path = root / str(uuid.uuid4())
        path.mkdir(mode=0o700)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def write_run(server: ServerProcess, run_dir: Path, files: dict[str, str], main: str, params: dict) -> None:
    """The run as the WES API records it: its row (RUNNING) and request.json."""
    config = load_config(server.config_path)
    for name, text in files.items():
        (run_dir / name).write_text(text)
    (run_dir / "prefix.txt").write_text("P\n")
    params = {**params, "prefix": {"class": "File", "location": (run_dir / "prefix.txt").as_uri()}}
    (run_dir / "request.json").write_text(json.dumps({
        "run_id": run_dir.name, "owner": "local", "workflow": str(run_dir / main), "params": params,
        "engine_parameters": {}, "fetch_policy": FetchPolicy.for_run(config, run_dir).to_json(),
        "apptainer": config.apptainer.model_dump(mode="json")}))
    runs = RunStore(Store(config.database))
    runs.create(id=run_dir.name, owner="local", request={}, tags={}, run_dir=str(run_dir),
                workflow=str(run_dir / main))
    runs.update(run_dir.name, state="RUNNING")


def engine(server: ServerProcess, run_dir: Path) -> subprocess.Popen[bytes]:
    """What the supervisor does: a new credential, the run dir to the job user, the engine as it."""
    config = load_config(server.config_path)
    token = runtoken.mint(run_dir.name)
    RunStore(Store(config.database)).update(run_dir.name, engine_token=token.digest)
    assert config.slurm.submit_as is not None
    hand_over_run_dir(run_dir, pwd.getpwnam(config.slurm.submit_as))
    user = pwd.getpwnam(config.slurm.submit_as)
    proc = subprocess.Popen([sys.executable, "-I", "-m", "hpc_bridge.cwl"], cwd=run_dir, stdin=subprocess.PIPE,
                            start_new_session=True, user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"tes_url": server.url, "token": token.bearer}).encode())
    proc.stdin.close()
    return proc


def finish(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float = 180) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    return proc.returncode, (run_dir / "stderr.log").read_text(errors="replace")


def run_tasks(config_path: Path, run_id: str) -> list[TaskRow]:
    store = Store(load_config(config_path).database)
    return store.tasks.list(TaskFilter(tags=(("wes_run_id", run_id),)), before_seq=None, limit=100)


def test_scatter_workflow_runs_through_slurm(server_factory, run_dirs) -> None:
    server = server_factory()
    run_dir = run_dirs()
    write_run(server, run_dir, {"wf.cwl": WORKFLOW, "shout.cwl": SHOUT, "join.cwl": JOIN}, "wf.cwl",
              {"words": ["alpha", "beta", "gamma"], "pause": 3})
    code, err = finish(engine(server, run_dir), run_dir)
    assert code == 0, err

    outputs = json.loads((run_dir / "outputs.json").read_text())
    assert [Path(f["path"]).read_text() for f in outputs["shouted"]] == ["P\nALPHA\n", "P\nBETA\n", "P\nGAMMA\n"]
    assert Path(outputs["joined"]["path"]).read_text() == "P\nALPHA\nP\nBETA\nP\nGAMMA\n"
    assert all(Path(f["path"]).parent == run_dir / "outputs" for f in [*outputs["shouted"], outputs["joined"]])
    assert not (run_dir / ".cwl").exists()  # the work area goes once the run is complete

    tasks = run_tasks(server.config_path, run_dir.name)
    steps = sorted(t.tags["cwl_step"] for t in tasks)
    assert steps == ["join", "shout", "shout_2", "shout_3"], steps
    assert all(t.state == "COMPLETE" and t.job_id for t in tasks)
    assert len({t.job_id for t in tasks}) == 4 and len({t.tags["cwl_job_key"] for t in tasks}) == 4
    scatter = [t for t in tasks if t.tags["cwl_step"].startswith("shout")]
    # the scatter's three jobs were all handed to Slurm before the first of them ended
    assert max(t.created_at for t in scatter) < min(t.end_time for t in scatter)


def test_failing_tool_is_an_executor_error(server_factory, run_dirs) -> None:
    server = server_factory()
    run_dir = run_dirs()
    write_run(server, run_dir, {"fail.cwl": FAIL}, "fail.cwl", {})
    code, err = finish(engine(server, run_dir), run_dir)
    assert code == 3, err
    assert "exited with status: 7" in err and "about to fail" in err
    assert not (run_dir / "outputs.json").exists()
    (task,) = run_tasks(server.config_path, run_dir.name)
    assert task.state == "EXECUTOR_ERROR"
    assert task.executor_logs[-1]["exit_code"] == 7


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_killed_engine_resumes_without_running_finished_steps_again(server_factory, run_dirs) -> None:
    server = server_factory()
    run_dir = run_dirs()
    write_run(server, run_dir, {"wf.cwl": TWO_STEPS, "shout.cwl": SHOUT, "join.cwl": SLOW_JOIN}, "wf.cwl", {})

    def step_states() -> dict[str, str]:
        return {t.tags["cwl_step"]: t.state for t in run_tasks(server.config_path, run_dir.name)}

    first = engine(server, run_dir)
    _wait_for(lambda: step_states().get("first") == "COMPLETE" and "second" in step_states(), 120,
              "the first step to complete and the second to start")
    os.killpg(first.pid, signal.SIGKILL)  # no clean-up at all, as when the daemon's host goes down
    first.wait(10)
    before = {t.tags["cwl_step"]: t for t in run_tasks(server.config_path, run_dir.name)}

    code, err = finish(engine(server, run_dir), run_dir)
    assert code == 0, err
    assert f"reusing completed TES task {before['first'].id}" in err
    assert f"adopting TES task {before['second'].id}" in err or \
        f"reusing completed TES task {before['second'].id}" in err
    tasks = run_tasks(server.config_path, run_dir.name)
    assert sorted(t.tags["cwl_step"] for t in tasks) == ["first", "second"]  # nothing ran twice
    assert {t.id for t in tasks} == {t.id for t in before.values()}
    assert next(t for t in tasks if t.tags["cwl_step"] == "first").job_id == before["first"].job_id
    outputs = json.loads((run_dir / "outputs.json").read_text())
    assert Path(outputs["final"]["path"]).read_text() == "P\nFIRST\n"


def test_sigterm_cancels_the_runs_tasks(server_factory, run_dirs) -> None:
    server = server_factory()
    run_dir = run_dirs()
    write_run(server, run_dir, {"wf.cwl": WORKFLOW, "shout.cwl": SHOUT, "join.cwl": JOIN}, "wf.cwl",
              {"words": ["a", "b"], "pause": 120})
    proc = engine(server, run_dir)
    _wait_for(lambda: len(run_tasks(server.config_path, run_dir.name)) == 2, 60, "the scatter's tasks")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, run_dir, timeout=30)
    assert code == 5, err
    assert "2 live TES task(s) cancelled" in err
    _wait_for(lambda: all(t.state == "CANCELED" for t in run_tasks(server.config_path, run_dir.name)),
              60, "the tasks to be cancelled")
    assert os.path.exists(run_dir / "request.json") and not (run_dir / "outputs.json").exists()
