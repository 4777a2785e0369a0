"""`hpc-bridge run` and the live view of `--wait`: the pure parts directly, the commands against the
real Flask app on a loopback port (no daemon: runs and tasks are written into the store)."""

from __future__ import annotations

import io
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import tes
from click.testing import CliRunner, Result
from rich.console import Console

from hpc_bridge import liveview, runcli
from hpc_bridge.cli import main
from hpc_bridge.clicommon import EXIT_INTERRUPTED, EXIT_NOT_FINISHED, EXIT_USAGE
from hpc_bridge.liveview import Snapshot, Step, changes, follow, render
from hpc_bridge.store.runs import RunStore

from .test_cli import Bridge, bridge  # noqa: F401 (the served app)

ANSI = re.compile(r"\x1b\[")


def run_snapshot(state: str, *steps: tuple[str, str, str]) -> Snapshot:
    return Snapshot("run", "r1", state, steps=tuple(Step(f"t-{name}", name, s, job) for name, s, job in steps))


def text(renderable: Any, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, record=True)
    console.print(renderable)
    return console.export_text()


# -- the live view --------------------------------------------------------------------------------


def test_plain_lines_say_each_change_once() -> None:
    first = run_snapshot("RUNNING", ("align", "QUEUED", ""))
    assert changes(None, first, "10:00:00") == ["10:00:00 run r1 RUNNING",
                                                "10:00:00   step align t-align QUEUED"]
    assert changes(first, first, "10:00:01") == []
    running = run_snapshot("RUNNING", ("align", "RUNNING", "41"), ("sort", "QUEUED", ""))
    assert changes(first, running, "10:00:02") == ["10:00:02   step align t-align RUNNING slurm job 41",
                                                   "10:00:02   step sort t-sort QUEUED"]
    done = run_snapshot("COMPLETE", ("align", "COMPLETE", "41"), ("sort", "QUEUED", ""))
    assert changes(running, done, "10:00:03") == ["10:00:03 run r1 COMPLETE",
                                                  "10:00:03   step align t-align COMPLETE slurm job 41"]


def test_a_task_line_names_its_slurm_job_once_known() -> None:
    queued = Snapshot("task", "t1", "QUEUED")
    running = Snapshot("task", "t1", "QUEUED", job="7")
    assert changes(None, queued, "09:00:00") == ["09:00:00 t1 QUEUED"]
    assert changes(queued, running, "09:00:01") == ["09:00:01 t1 QUEUED slurm job 7"]


def test_the_view_shows_the_run_its_counts_and_one_row_per_step() -> None:
    shown = text(render(run_snapshot("RUNNING", ("align", "COMPLETE", "41"), ("sort", "RUNNING", "42"),
                                     ("index", "QUEUED", "")), 12.4))
    lines = shown.splitlines()
    assert lines[0] == "run r1 RUNNING  12s  tasks: 1 COMPLETE, 1 QUEUED, 1 RUNNING"
    assert lines[1].split() == ["step", "task", "state", "slurm", "job"]
    assert [line.split() for line in lines[2:]] == [["align", "t-align", "COMPLETE", "41"],
                                                    ["sort", "t-sort", "RUNNING", "42"],
                                                    ["index", "t-index", "QUEUED"]]


def test_a_short_terminal_keeps_the_steps_still_going() -> None:
    steps = [(f"s{i}", "COMPLETE", str(i)) for i in range(10)] + [("late", "RUNNING", "99")]
    shown = text(render(run_snapshot("RUNNING", *steps), 1, rows=3))
    names = [line.split()[0] for line in shown.splitlines()[3:]]
    assert names == ["s8", "s9", "late"]
    assert "8 more (8 COMPLETE): hpc-bridge run tasks r1" in shown


def test_more_live_steps_than_rows_never_overflow_and_running_ones_come_first() -> None:
    steps = ([(f"q{i}", "QUEUED", "") for i in range(30)] + [(f"r{i}", "RUNNING", str(i)) for i in range(8)]
             + [("done", "COMPLETE", "1")])
    lines = text(render(run_snapshot("RUNNING", *steps), 1, rows=10)).splitlines()
    assert len(lines) == 3 + 10
    assert [line.split()[0] for line in lines[3:]] == ["q28", "q29", *(f"r{i}" for i in range(8))]
    assert "29 more (1 COMPLETE, 28 QUEUED)" in lines[1]


def polls(*snapshots: Snapshot) -> Any:
    seen = iter(snapshots)
    return lambda: next(seen)


def test_piped_the_view_is_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liveview, "sleep", lambda seconds: None)
    out = io.StringIO()
    last = follow(polls(run_snapshot("QUEUED"), run_snapshot("RUNNING", ("a", "QUEUED", "")),
                        run_snapshot("RUNNING", ("a", "QUEUED", "")),
                        run_snapshot("COMPLETE", ("a", "COMPLETE", "5"))), Console(file=out))
    assert last.state == "COMPLETE"
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == ["run r1 QUEUED", "run r1 RUNNING", "  step a t-a QUEUED", "run r1 COMPLETE",
                     "  step a t-a COMPLETE slurm job 5"]
    assert not ANSI.search(out.getvalue())


def test_on_a_terminal_the_view_is_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liveview, "sleep", lambda seconds: None)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=30)
    follow(polls(run_snapshot("RUNNING", ("a", "QUEUED", "")), run_snapshot("RUNNING", ("a", "RUNNING", "5")),
                 run_snapshot("COMPLETE", ("a", "COMPLETE", "5"))), console)
    raw = out.getvalue()
    assert "\x1b[1A" in raw and "\x1b[2K" in raw  # cursor up, erase line: the same lines drawn over
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert plain.count("run r1 RUNNING") == 2 and "run r1 COMPLETE" in plain


# -- exit codes -------------------------------------------------------------------------------------


def task(state: str, step: str, *codes: int) -> tes.Task:
    return tes.Task(id=f"t-{step}", state=state, tags={"cwl_step": step},
                    logs=[tes.TaskLog(logs=[tes.ExecutorLog(exit_code=c) for c in codes])])


@pytest.mark.parametrize(("state", "tasks", "code", "why"), [
    ("COMPLETE", [task("COMPLETE", "a", 0)], 0, ""),
    ("EXECUTOR_ERROR", [task("EXECUTOR_ERROR", "a", 0, 3), task("COMPLETE", "b", 0),
                        task("EXECUTOR_ERROR", "c", 7)], 7, "step c (t-c): executor 0 exited with 7"),
    ("EXECUTOR_ERROR", [task("COMPLETE", "a", 0)], 1, "the workflow failed"),
    ("SYSTEM_ERROR", [task("SYSTEM_ERROR", "a")], EXIT_NOT_FINISHED, ""),
    ("CANCELED", [], EXIT_NOT_FINISHED, ""),
])
def test_a_run_exits_as_a_task_does(state: str, tasks: list[tes.Task], code: int, why: str) -> None:
    got_code, got_why = runcli.run_outcome(state, tasks)
    assert got_code == code and got_why.startswith(why)


# -- the commands -----------------------------------------------------------------------------------


def hpcb(bridge: Bridge, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"HPC_BRIDGE_URL": bridge.url, "HPC_BRIDGE_TOKEN": ""})


def add_run(bridge: Bridge, tmp_path: Path, state: str = "RUNNING", **fields: Any) -> str:
    run_id = str(uuid.uuid4())
    run_dir = tmp_path / run_id
    run_dir.mkdir()
    (run_dir / "stderr.log").write_text("engine says\n")
    runs = RunStore(bridge.store)
    runs.create(id=run_id, owner="local", tags={"project": "p1"}, run_dir=str(run_dir),
                             workflow="wf.cwl", request={"workflow_url": "wf.cwl", "workflow_type": "CWL",
                                                         "workflow_type_version": "v1.2",
                                                         "workflow_params": {}})
    runs.update(run_id, state=state, **fields)
    return run_id


def add_step(bridge: Bridge, run_id: str, step: str, **fields: Any) -> str:
    task_id = str(uuid.uuid4())
    tags = {"wes_run_id": run_id, "cwl_step": step}
    bridge.store.tasks.create(id=task_id, owner="local", name=f"x-{step}", tags=tags,
                              task={"executors": [{"image": "busybox", "command": ["true"]}], "tags": tags})
    bridge.store.tasks.update(task_id, **fields)
    return task_id


def test_run_tasks_lists_the_steps_in_order_with_their_slurm_jobs(bridge: Bridge, tmp_path: Path) -> None:
    run_id = add_run(bridge, tmp_path)
    first = add_step(bridge, run_id, "align", state="COMPLETE", job_id="41", executor_logs=[{"exit_code": 0}])
    second = add_step(bridge, run_id, "sort", state="RUNNING", job_id="42")
    add_step(bridge, add_run(bridge, tmp_path), "other", state="QUEUED")
    result = hpcb(bridge, "run", "tasks", run_id)
    assert result.exit_code == 0, result.output
    rows = [line.split()[:5] for line in result.stdout.splitlines()[1:]]
    assert rows == [["align", first, "COMPLETE", "41", "0"], ["sort", second, "RUNNING", "42"]]
    as_json = json.loads(hpcb(bridge, "run", "tasks", run_id, "--json").stdout)
    assert [t["id"] for t in as_json] == [first, second]
    status = hpcb(bridge, "run", "status", run_id)
    assert "1 COMPLETE, 1 RUNNING" in status.stdout and "wf.cwl" in status.stdout


def test_an_unknown_run_exits_1_naming_it(bridge: Bridge) -> None:
    for command in ("status", "tasks", "cancel", "outputs", "logs"):
        result = hpcb(bridge, "run", command, "no-such-run")
        assert result.exit_code == 1, (command, result.output)
        assert "no-such-run" in result.stderr and "not found" in result.stderr


def test_run_logs_cancel_list_and_outputs(bridge: Bridge, tmp_path: Path) -> None:
    run_id = add_run(bridge, tmp_path)
    step = add_step(bridge, run_id, "align", state="COMPLETE",
                    executor_logs=[{"exit_code": 0, "stdout": "aligned\n", "stderr": ""}])
    assert hpcb(bridge, "run", "logs", run_id, "--stderr").stdout == "engine says\n"
    assert hpcb(bridge, "run", "logs", run_id, "--task", step).stdout == "aligned\n"
    refused = hpcb(bridge, "run", "outputs", run_id)
    assert refused.exit_code == 1 and "is RUNNING" in refused.stderr
    cancel = hpcb(bridge, "run", "cancel", run_id)
    assert cancel.exit_code == 0 and cancel.stdout.split() == [run_id, "CANCELING"]
    listed = hpcb(bridge, "run", "list")
    assert [run_id, "CANCELING"] == listed.stdout.splitlines()[1].split()[:2] and "project=p1" in listed.stdout
    done = add_run(bridge, tmp_path, state="COMPLETE", outputs={"n": 3})
    printed = json.loads(hpcb(bridge, "run", "outputs", done).stdout)
    assert printed == {"n": 3}  # the crate's entry is the server's, not a CWL output


def test_run_submit_refuses_what_it_cannot_read_before_sending(bridge: Bridge, tmp_path: Path) -> None:
    missing = hpcb(bridge, "run", "submit", str(tmp_path / "nope.cwl"))
    assert missing.exit_code == EXIT_USAGE and "nope.cwl: no such file" in missing.stderr
    workflow = tmp_path / "wf.cwl"
    workflow.write_text("cwlVersion: v1.2\nclass: CommandLineTool\ninputs: []\noutputs: []\nbaseCommand: true\n")
    (tmp_path / "job.yml").write_text("a: [1\n")
    broken = hpcb(bridge, "run", "submit", str(workflow), str(tmp_path / "job.yml"))
    assert broken.exit_code == EXIT_USAGE and "not YAML or JSON" in broken.stderr
    absent = hpcb(bridge, "run", "submit", str(workflow), str(tmp_path / "absent.yml"))
    assert absent.exit_code == EXIT_USAGE and "absent.yml" in absent.stderr
    assert hpcb(bridge, "run", "list").stdout == ""  # nothing was sent


def test_run_submit_attaches_the_workflow_and_its_local_inputs(bridge: Bridge, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    workflow = tmp_path / "src" / "wf.cwl"
    workflow.write_text("cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: cat\n"
                        "inputs: {f: {type: File, inputBinding: {position: 1}}}\noutputs: []\n")
    (tmp_path / "src" / "in.txt").write_text("x")
    (tmp_path / "src" / "job.yml").write_text("f: {class: File, path: in.txt}\n")
    result = hpcb(bridge, "run", "submit", "--tag", "project=p1", str(workflow), str(tmp_path / "src" / "job.yml"))
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    row = RunStore(bridge.store).get(run_id)
    assert row is not None and row.tags == {"project": "p1"}
    assert row.request["workflow_url"] == "wf.cwl"
    assert row.request["workflow_params"] == {"f": {"class": "File", "location": "./in.txt"}}
    attached = Path(row.run_dir) / "attachments"
    assert sorted(p.name for p in attached.iterdir()) == ["in.txt", "wf.cwl"]


def test_ctrl_c_while_a_run_is_followed_leaves_it_running(bridge: Bridge, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(liveview, "sleep", interrupt)
    workflow = tmp_path / "wf.cwl"
    workflow.write_text("cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: 'true'\ninputs: []\noutputs: []\n")
    result = hpcb(bridge, "run", "submit", "--wait", str(workflow))
    run_id = result.stdout.strip()
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert f"run {run_id} keeps running" in result.stderr
    assert f"hpc-bridge run cancel --url {bridge.url} {run_id}" in result.stderr
    assert f"run {run_id} QUEUED" in result.stderr  # what the view showed before Ctrl-C
    row = RunStore(bridge.store).get(run_id)
    assert row is not None and row.state == "QUEUED"


@pytest.mark.parametrize("body", [b"<html>a web page</html>", b"[]", b"{}", b"null"])
@pytest.mark.parametrize("command", [["run", "status", "r1"], ["run", "status", "r1", "--json"], ["run", "list"],
                                     ["run", "cancel", "r1"], ["run", "tasks", "r1"], ["run", "outputs", "r1"],
                                     ["status", "t1"]])
def test_a_server_that_is_not_hpc_bridge_gets_a_message_not_a_traceback(body: bytes, command: list[str]) -> None:
    import http.server
    import threading

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if body.startswith(b"<") else "application/json")
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        result = CliRunner().invoke(main, [*command, "--url", f"http://127.0.0.1:{server.server_address[1]}"])
    finally:
        server.shutdown()
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)  # not a traceback
    assert result.exit_code == 1 and "unexpected answer" in result.stderr, result.output


def test_a_crate_that_cannot_be_written_is_a_usage_error(bridge: Bridge, tmp_path: Path) -> None:
    done = add_run(bridge, tmp_path, state="COMPLETE", outputs={})
    result = hpcb(bridge, "run", "crate", done, "-o", str(tmp_path / "missing" / "crate.zip"))
    assert result.exit_code == EXIT_USAGE and "crate.zip" in result.stderr, result.output


def test_a_slow_poll_spaces_out_the_next_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    slept: list[float] = []
    monkeypatch.setattr(liveview, "monotonic", lambda: clock[0])
    monkeypatch.setattr(liveview, "sleep", slept.append)

    def slow(snapshot: Snapshot) -> Any:
        def poll() -> Snapshot:
            clock[0] += 3.0  # a listing of many steps
            return snapshot
        return poll

    seen = iter([run_snapshot("RUNNING"), run_snapshot("COMPLETE")])
    follow(lambda: slow(next(seen))(), Console(file=io.StringIO()))
    assert slept == [6.0]


def test_following_rides_out_a_server_restart_but_not_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    from hpc_bridge import clicommon
    from hpc_bridge.wes.runner import RunnerError

    slept: list[float] = []
    monkeypatch.setattr(clicommon, "sleep", slept.append)

    def flaky(*failures: Exception) -> Any:
        pending = list(failures)

        def poll() -> str:
            if pending:
                raise pending.pop(0)
            return "answer"
        return poll

    down = requests.ConnectionError("refused")
    assert clicommon.patient(flaky(down, RunnerError("503", status=503)))() == "answer"
    assert slept == [1, 2]
    with pytest.raises(RunnerError):  # a 404 is an answer: no retry
        clicommon.patient(flaky(RunnerError("gone", status=404)))()
    assert slept == [1, 2]
    with pytest.raises(requests.ConnectionError):
        clicommon.patient(flaky(*[down] * 5))()
    assert slept == [1, 2, 1, 2, 4, 8]
