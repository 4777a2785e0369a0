"""The WES supervisor with a fake engine process (a small script honouring the engine contract:
run dir as cwd, the launch JSON on stdin, its own stdout.log/stderr.log, request.json in,
outputs.json out, exit codes 0/3/4/5, SIGTERM cancels).
No Slurm: the TES tasks of a run are rows a test creates and finishes itself, as the daemon would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpc_bridge.auth import runtoken
from hpc_bridge.config import SiteConfig
from hpc_bridge.processes import process_start
from hpc_bridge.store import Store
from hpc_bridge.store.runs import RunStore
from hpc_bridge.tes.service import TaskService
from hpc_bridge.wes.supervisor import EngineCommand, Supervisor

FAKE_ENGINE = textwrap.dedent("""\
    import json, os, signal, sys, time
    launch = json.loads(sys.stdin.read())
    for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640), fd)
    if launch.get("relaunch"):
        print("engine: started again after a service restart", file=sys.stderr, flush=True)
    params = json.load(open("request.json"))["params"]
    behaviour = params.get("behaviour", "complete")

    def term(*_):
        if not params.get("ignore_term"):
            print("engine: cancelling my tasks", file=sys.stderr, flush=True)
            sys.exit(5)

    signal.signal(signal.SIGTERM, term)
    with open("engine.json.tmp", "w") as f:  # renamed when complete: the tests read it meanwhile
        json.dump({"argv": sys.argv[1:], "pid": os.getpid(), "cwd": os.getcwd(), "launch": launch}, f)
    os.replace("engine.json.tmp", "engine.json")
    print("engine: started", file=sys.stderr, flush=True)
    if behaviour == "complete":
        with open("outputs.json", "w") as f:
            json.dump({"out": {"class": "File", "location": "file:///data/out.txt"}}, f)
        sys.exit(0)
    if behaviour == "exit":
        for i in range(30):
            print(f"engine: line {i}", file=sys.stderr)
        print("engine: [job cat] exited with 2", file=sys.stderr)
        sys.exit(params["code"])
    if behaviour == "no_outputs":
        sys.exit(0)
    if behaviour == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "launcher_refused":
        os.dup2(os.open("/dev/null", os.O_WRONLY), 2)
        sys.exit(2)
    while True:
        time.sleep(0.02)
""")


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite")


@pytest.fixture()
def config(dev_config: SiteConfig, tmp_path: Path) -> SiteConfig:
    (tmp_path / "data").mkdir()
    storage = dev_config.storage.model_copy(update={"data_roots": [tmp_path / "data"]})
    wes = dev_config.wes.model_copy(update={"max_parallel_runs": 2, "poll_interval": 0.05,
                                            "cancel_grace": 0.5, "max_relaunches": 2})
    return dev_config.model_copy(update={"storage": storage, "wes": wes})


@pytest.fixture()
def engine(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return [sys.executable, str(script)]


@pytest.fixture()
def make_supervisor(config: SiteConfig, store: Store, engine: list[str], tmp_path: Path):
    made: list[Supervisor] = []

    def make(**wes: Any) -> Supervisor:
        cfg = config.model_copy(update={"wes": config.wes.model_copy(update=wes)}) if wes else config
        sup = Supervisor(cfg, store, TaskService(store, cfg), tes_url="http://tes.test",
                         launcher=lambda row: EngineCommand(engine))
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.shutdown()


@pytest.fixture()
def supervisor(make_supervisor) -> Supervisor:
    return make_supervisor()


def new_run(store: Store, config: SiteConfig, **params: Any) -> str:
    run_id = str(uuid.uuid4())
    run_dir = config.storage.data_roots[0] / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "request.json").write_text(json.dumps({"run_id": run_id, "params": params}))
    RunStore(store).create(id=run_id, owner="local", request={}, tags={}, run_dir=str(run_dir),
                           workflow="file:///wf.cwl")
    return run_id


def until(sup: Supervisor, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        sup.tick()
        time.sleep(0.02)


def state(store: Store, run_id: str) -> str:
    return RunStore(store).get(run_id).state


def add_task(store: Store, run_id: str, state: str = "QUEUED") -> str:
    task_id = str(uuid.uuid4())
    store.tasks.create(id=task_id, owner="local", name="t", task={"executors": []},
                       tags={"wes_run_id": run_id, "cwl_step": "s", "cwl_job_key": task_id}, state=state)
    return task_id


def test_a_run_completes_with_its_outputs(supervisor: Supervisor, store: Store, config: SiteConfig,
                                          tmp_path: Path) -> None:
    run_id = new_run(store, config)
    supervisor.tick()
    row = RunStore(store).get(run_id)
    assert row.state == "INITIALIZING" and row.launches == 1 and row.start_time
    assert row.engine_start == process_start(row.engine_pid)
    until(supervisor, lambda: state(store, run_id) == "COMPLETE")
    row = RunStore(store).get(run_id)
    assert row.outputs == {"out": {"class": "File", "location": "file:///data/out.txt"}}
    assert row.exit_code == 0 and row.end_time and row.engine_pid is None
    seen = json.loads((Path(row.run_dir) / "engine.json").read_text())
    assert seen["argv"] == [] and seen["cwd"] == row.run_dir  # nothing of the run in argv
    launch = seen["launch"]
    assert launch["tes_url"] == "http://tes.test" and launch["service_pid"] == os.getpid()
    assert launch["service_start"] == process_start(os.getpid()) and not launch["relaunch"]
    token = runtoken.parse(launch["token"])
    assert token.run_id == run_id
    assert row.engine_token is None  # the credential died with the run
    assert (Path(row.run_dir) / "stderr.log").read_text() == "engine: started\n"
    states = [e["state"] for e in RunStore(store).events(run_id)]
    assert [s for i, s in enumerate(states) if not i or states[i - 1] != s] == ["QUEUED", "INITIALIZING", "COMPLETE"]


@pytest.mark.parametrize(("params", "final", "log"), [
    ({"behaviour": "exit", "code": 3}, "EXECUTOR_ERROR", "engine exited with code 3"),
    ({"behaviour": "exit", "code": 4}, "SYSTEM_ERROR", "engine exited with code 4"),
    ({"behaviour": "exit", "code": 5}, "CANCELED", "engine exited with code 5"),
    ({"behaviour": "exit", "code": 1}, "SYSTEM_ERROR", "engine exited with code 1"),
    ({"behaviour": "killed"}, "SYSTEM_ERROR", "engine killed by signal SIGKILL"),
    ({"behaviour": "no_outputs"}, "SYSTEM_ERROR", "outputs.json is unusable"),
])
def test_exit_codes_map_to_states(supervisor: Supervisor, store: Store, config: SiteConfig,
                                  params: dict, final: str, log: str) -> None:
    run_id = new_run(store, config, **params)
    until(supervisor, lambda: state(store, run_id) == final)
    row = RunStore(store).get(run_id)
    assert any(log in line for line in row.system_logs), row.system_logs
    if params.get("behaviour") == "exit":
        tail = row.system_logs[-1]
        assert tail.startswith("end of the engine's stderr:")
        assert tail.endswith("engine: [job cat] exited with 2") and "line 10" not in tail
    assert row.outputs is None and row.end_time


def test_engines_run_in_bounded_parallel_oldest_first(supervisor: Supervisor, store: Store,
                                                      config: SiteConfig) -> None:
    runs = [new_run(store, config, behaviour="sleep") for _ in range(3)]
    supervisor.tick()
    assert [state(store, r) for r in runs] == ["INITIALIZING", "INITIALIZING", "QUEUED"]
    assert set(supervisor.engines) == set(runs[:2])
    add_task(store, runs[0], "RUNNING")
    supervisor.tick()
    assert state(store, runs[0]) == "RUNNING"
    supervisor.engines[runs[1]].kill()
    until(supervisor, lambda: state(store, runs[2]) == "INITIALIZING")
    assert state(store, runs[1]) == "SYSTEM_ERROR"


def test_cancel_cascades_to_the_engine_and_every_live_task(supervisor: Supervisor, store: Store,
                                                           config: SiteConfig) -> None:
    runs = RunStore(store)
    run_id = new_run(store, config, behaviour="sleep")
    until(supervisor, lambda: (Path(runs.get(run_id).run_dir) / "engine.json").exists())
    live = [add_task(store, run_id, s) for s in ("QUEUED", "RUNNING", "INITIALIZING")]
    done = add_task(store, run_id, "COMPLETE")
    other = add_task(store, str(uuid.uuid4()), "RUNNING")
    runs.request_cancel(run_id)
    until(supervisor, lambda: run_id not in supervisor.engines)
    assert [store.tasks.get(t).state for t in live] == ["CANCELING"] * 3
    assert store.tasks.get(done).state == "COMPLETE" and store.tasks.get(other).state == "RUNNING"
    row = runs.get(run_id)
    assert row.state == "CANCELING" and row.exit_code == 5  # the engine took SIGTERM as a cancel
    assert "engine: cancelling my tasks" in (Path(row.run_dir) / "stderr.log").read_text()
    for _ in range(3):
        supervisor.tick()
    assert runs.get(run_id).state == "CANCELING"  # Slurm jobs not gone yet
    for task_id in live:
        store.tasks.update(task_id, state="CANCELED")  # what the daemon does after scancel
    supervisor.tick()
    row = runs.get(run_id)
    assert row.state == "CANCELED" and row.end_time
    assert [e["state"] for e in runs.events(run_id)][-1] == "CANCELED"


def test_an_engine_ignoring_sigterm_is_killed_after_the_grace_time(supervisor: Supervisor, store: Store,
                                                                   config: SiteConfig) -> None:
    runs = RunStore(store)
    run_id = new_run(store, config, behaviour="sleep", ignore_term=True)
    until(supervisor, lambda: (Path(runs.get(run_id).run_dir) / "engine.json").exists())
    runs.request_cancel(run_id)
    started = time.monotonic()
    until(supervisor, lambda: state(store, run_id) == "CANCELED")
    assert time.monotonic() - started >= 0.5
    assert runs.get(run_id).exit_code == -signal.SIGKILL


def test_a_queued_run_is_canceled_without_an_engine(supervisor: Supervisor, store: Store,
                                                    config: SiteConfig) -> None:
    run_id = new_run(store, config, behaviour="sleep")
    RunStore(store).request_cancel(run_id)
    supervisor.tick()
    assert state(store, run_id) == "CANCELED" and not supervisor.engines
    assert RunStore(store).get(run_id).launches == 0


def test_a_running_engine_holds_the_one_valid_credential(supervisor: Supervisor, store: Store,
                                                         config: SiteConfig) -> None:
    run_id = new_run(store, config, behaviour="sleep")
    engine_json = Path(RunStore(store).get(run_id).run_dir) / "engine.json"
    until(supervisor, engine_json.exists)
    token = runtoken.parse(json.loads(engine_json.read_text())["launch"]["token"])
    assert runtoken.matches(token, RunStore(store).get(run_id).engine_token)


def test_engines_stop_when_the_service_is_gone(tmp_path: Path) -> None:
    """The engine watches the pid and start time of the service that started it."""
    service = subprocess.Popen(["sleep", "60"])
    code = ("import sys, time\n"
            "from hpc_bridge.cwl.engine import _watch_service\n"
            f"_watch_service({service.pid}, {process_start(service.pid)!r})\n"
            "time.sleep(30)\nsys.exit(0)\n")
    engine = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.0)
    assert engine.poll() is None
    service.kill()
    service.wait()
    assert engine.wait(10) == 4  # EXIT_SYSTEM_ERROR, long before its 30 s sleep


def test_what_the_launcher_says_reaches_the_system_logs(make_supervisor, store: Store,
                                                        config: SiteConfig, tmp_path: Path) -> None:
    script = tmp_path / "refusing_launcher.py"
    script.write_text("import sys\nprint('submit-as: refused: Unix user bob is not in hpcbusers', "
                      "file=sys.stderr)\nsys.exit(2)\n")
    sup = Supervisor(config, store, TaskService(store, config), tes_url="http://tes.test",
                     launcher=lambda row: EngineCommand([sys.executable, str(script)]))
    run_id = new_run(store, config)
    try:
        until(sup, lambda: state(store, run_id) == "SYSTEM_ERROR")
    finally:
        sup.shutdown()
    logs = RunStore(store).get(run_id).system_logs
    assert any("refused: Unix user bob" in line for line in logs), logs


def test_without_a_user_to_run_as_no_engine_starts(store: Store, config: SiteConfig) -> None:
    unmapped = config.model_copy(update={"slurm": config.slurm.model_copy(update={"submit_as": None})})
    sup = Supervisor(unmapped, store, TaskService(store, unmapped), tes_url="http://tes.test")
    run_id = new_run(store, config)
    sup.tick()
    row = RunStore(store).get(run_id)
    assert row.state == "SYSTEM_ERROR" and row.launches == 0
    assert any("never as the service account" in line for line in row.system_logs)


def test_a_restarted_service_relaunches_running_runs_and_kills_leftovers(
        make_supervisor, store: Store, config: SiteConfig, engine: list[str]) -> None:
    runs = RunStore(store)
    run_id = new_run(store, config, behaviour="sleep")
    run_dir = runs.get(run_id).run_dir
    # An engine a previous service process started, still alive (no PDEATHSIG here).
    leftover = subprocess.Popen(engine, cwd=run_dir, stdin=subprocess.PIPE, start_new_session=True)
    leftover.stdin.write(b'{"tes_url": "x", "token": "y"}')
    leftover.stdin.close()
    runs.update(run_id, state="RUNNING", engine_pid=leftover.pid, engine_start=process_start(leftover.pid),
                launches=1, start_time="2026-01-01T00:00:00.000000Z")
    sup = make_supervisor()
    sup.tick()
    assert leftover.wait(10) == -signal.SIGKILL
    row = runs.get(run_id)
    assert run_id in sup.engines and row.engine_pid == sup.engines[run_id].pid != leftover.pid
    assert row.state == "RUNNING" and row.launches == 2 and row.start_time.startswith("2026-01-01")
    until(sup, lambda: (Path(run_dir) / "engine.json").exists()
          and json.loads((Path(run_dir) / "engine.json").read_text())["pid"] == row.engine_pid)
    assert "started again after a service restart" in (Path(run_dir) / "stderr.log").read_text()


def test_a_recycled_pid_is_not_killed(make_supervisor, store: Store, config: SiteConfig) -> None:
    runs = RunStore(store)
    run_id = new_run(store, config, behaviour="complete")
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        runs.update(run_id, state="RUNNING", engine_pid=bystander.pid, engine_start="1", launches=1)
        sup = make_supervisor()
        until(sup, lambda: state(store, run_id) == "COMPLETE")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_run_relaunched_too_often_fails(make_supervisor, store: Store, config: SiteConfig) -> None:
    run_id = new_run(store, config, behaviour="sleep")
    RunStore(store).update(run_id, state="RUNNING", launches=3)
    make_supervisor().tick()
    row = RunStore(store).get(run_id)
    assert row.state == "SYSTEM_ERROR" and "started 3 times" in row.system_logs[0]


def test_a_crashed_engine_leaves_no_live_task(supervisor: Supervisor, store: Store,
                                              config: SiteConfig) -> None:
    run_id = new_run(store, config, behaviour="sleep")
    supervisor.tick()
    task_id = add_task(store, run_id, "RUNNING")
    supervisor.engines[run_id].kill()
    until(supervisor, lambda: state(store, run_id) == "SYSTEM_ERROR")
    assert store.tasks.get(task_id).state == "CANCELING"


def test_the_loop_wakes_up_and_stops(supervisor: Supervisor, store: Store, config: SiteConfig) -> None:
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        run_id = new_run(store, config)
        supervisor.wake()
        deadline = time.monotonic() + 15
        while state(store, run_id) != "COMPLETE":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        supervisor.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert os.path.exists(RunStore(store).get(run_id).run_dir)
