"""Packing tasks into one Slurm job: grouping, the launcher script (run for real by bash with a
stand-in `srun`: steps in turn, the hand-back of waiting tasks once a step runs long), the packed
task's state, and the daemon's submit/cancel/hand-back through a fake Slurm."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from hpc_bridge.config import PackingSettings, SiteConfig
from hpc_bridge.slurm import pack
from hpc_bridge.slurm.record import parse_record
from hpc_bridge.slurm.script import render
from hpc_bridge.slurm.states import map_state, member_state

from ..fake_slurm import FakeSlurm
from .test_runas import job_writes

SHAPE = [("partition", "debug"), ("cpus-per-task", "1"), ("mem", "1024M"), ("time", "10")]


def test_tasks_of_one_shape_are_split_evenly_and_others_stay_alone() -> None:
    items = [("a", SHAPE)] * 10 + [("b", SHAPE)] + [("a", [*SHAPE, ("gres", "gpu:1")])]
    packs = pack.group(list(enumerate(items)), key=lambda i: (i[1][0], tuple(i[1][1])),
                       options=lambda i: i[1][1], settings=PackingSettings(max_tasks=4))
    assert [len(p) for p in packs] == [4, 3, 3, 1, 1]
    assert [i for i, _ in packs[0] + packs[1] + packs[2]] == list(range(10))


@pytest.mark.parametrize(("time", "max_minutes", "sizes"), [
    (None, None, [7]),  # no declared length: packed all the same (a long one hands the others back)
    ("11", None, [7]),
    ("0", None, [7]),  # what Slurm reads as no time limit: the shared job gets none either
    ("UNLIMITED", 50, [7]),
    ("45", 50, [4, 3]),  # 45 + 3 hand-backs of a minute + 1 for the launcher = 49 fits, 50 does not
    ("49", 50, [1, 1, 1, 1, 1, 1, 1]),  # no room for a second task's hand-back
])
def test_tasks_of_any_length_are_packed_within_max_minutes(time: str | None, max_minutes: int | None,
                                                           sizes: list[int]) -> None:
    options = [("time", time)] if time else []
    settings = PackingSettings(max_tasks=8, hand_back_seconds=60, max_minutes=max_minutes)
    packs = pack.group(list(range(7)), key=lambda _: 0, options=lambda _: options, settings=settings)
    assert [len(p) for p in packs] == sizes


def test_the_shared_job_asks_one_whole_limit_plus_a_hand_back_per_other_task() -> None:
    assert pack.pack_options(SHAPE, 3, 5) == [*SHAPE[:3], ("time", "12")]  # 10 + 2 × 5 s, + 1
    assert pack.pack_options(SHAPE, 3, 60) == [*SHAPE[:3], ("time", "13")]
    assert pack.pack_options([("time", "0:30")], 4, 30) == [("time", "4")]  # Slurm grants whole minutes
    assert pack.pack_options([("time", "1-00:00:00")], 2, 60) == [("time", "1442")]
    assert pack.pack_options([("mem", "1M")], 5, 5) == [("mem", "1M")]
    assert pack.pack_options([("time", "0")], 5, 5) == [("time", "0")]


def _script(tmp_path: Path, ids: list[str], step_time: str | None = "10", hand_back_seconds: int = 5,
            sleep: dict[str, float] | None = None) -> tuple[pack.PackScript, str]:
    members = []
    for task_id in ids:
        workdir = tmp_path / task_id
        workdir.mkdir()
        nap = f"sleep {(sleep or {}).get(task_id, 0)}; "
        (workdir / "job.sh").write_text(f'{nap}echo "{task_id} ran in $PWD" >>"{tmp_path}/ran"; exit ${{RC:-0}}\n')
        members.append(pack.Member(task_id=task_id, name=f"tes-{task_id}", workdir=str(workdir),
                                   record=str(workdir / "record.jsonl"), output=str(workdir / "slurm.out")))
    script = pack.PackScript(pack_id="p1", directory=str(tmp_path / "pack"), members=members,
                             options=pack.pack_options(SHAPE, len(ids), hand_back_seconds), step_time=step_time,
                             hand_back_seconds=hand_back_seconds)
    (tmp_path / "pack" / "cancel").mkdir(parents=True)
    return script, render(script, [Path(__file__).parents[2] / "slurm_templates"], "pack.sh.j2")


def _run_launcher(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> None:
    """Run the launcher with an `srun` that runs its command with --chdir and --output applied."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nall="$*"\nwhile [[ "$1" == --* ]]; do case "$1" in --chdir=*) cd "${1#*=}";; '
                    '--output=*) out="${1#*=}";; esac; shift; done\n'
                    'echo "$all" >>"$out.argv"; exec "$@" >>"$out" 2>&1\n')
    srun.chmod(srun.stat().st_mode | stat.S_IXUSR)
    launcher = tmp_path / "pack" / "pack.sh"
    launcher.write_text(text)
    subprocess.run(["bash", str(launcher)], check=True, timeout=30,
                   env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})})


def test_the_launcher_runs_each_task_as_a_step_in_turn(tmp_path: Path) -> None:
    script, text = _script(tmp_path, ["t1", "t2", "t3"])
    assert "#SBATCH --comment=hpc-bridge-pack:p1" in text and "#SBATCH --time=12" in text
    (tmp_path / "pack" / "cancel" / "t2").touch()  # cancelled before its turn
    _run_launcher(tmp_path, text)
    assert (tmp_path / "ran").read_text().splitlines() == [f"t1 ran in {tmp_path}/t1", f"t3 ran in {tmp_path}/t3"]
    assert "--time=10" in (tmp_path / "t1" / "slurm.out.argv").read_text()
    t1 = parse_record((tmp_path / "t1" / "record.jsonl").read_text())
    assert t1.finished and t1.step_exit == 0 and not t1.step_timed_out
    t2 = parse_record((tmp_path / "t2" / "record.jsonl").read_text())
    assert t2.skipped and t2.finished and not (tmp_path / "t2" / "slurm.out").exists()

    # Requeued by Slurm: the tasks that ended are not run again.
    (tmp_path / "ran").unlink()
    _run_launcher(tmp_path, text)
    assert not (tmp_path / "ran").exists()


def test_a_step_that_runs_long_hands_the_waiting_tasks_back(tmp_path: Path) -> None:
    _, text = _script(tmp_path, ["t1", "t2", "t3", "t4"], hand_back_seconds=1, sleep={"t2": 3})
    (tmp_path / "pack" / "cancel" / "t4").touch()  # cancelled while waiting: skipped, not handed back
    started = time.monotonic()
    _run_launcher(tmp_path, text, {"SLURM_JOB_ID": "77"})
    assert time.monotonic() - started >= 3  # the long step itself ran to its end
    assert (tmp_path / "ran").read_text().splitlines() == [f"t1 ran in {tmp_path}/t1", f"t2 ran in {tmp_path}/t2"]
    t2 = parse_record((tmp_path / "t2" / "record.jsonl").read_text())
    assert t2.step_exit == 0 and t2.returned_by is None
    t3 = parse_record((tmp_path / "t3" / "record.jsonl").read_text())
    assert t3.returned_by == "77" and not t3.finished and not (tmp_path / "t3" / "slurm.out").exists()
    assert parse_record((tmp_path / "t4" / "record.jsonl").read_text()).skipped
    assert (tmp_path / "pack" / "returned").exists()

    # Requeued by Slurm after the hand-back: the daemon has t3 now, the launcher starts nothing.
    (tmp_path / "ran").unlink()
    _run_launcher(tmp_path, text, {"SLURM_JOB_ID": "77"})
    assert not (tmp_path / "ran").exists()


def test_steps_within_the_threshold_hand_nothing_back(tmp_path: Path) -> None:
    _, text = _script(tmp_path, ["t1", "t2", "t3"], hand_back_seconds=5, sleep={"t1": 1, "t2": 1})
    _run_launcher(tmp_path, text, {"SLURM_JOB_ID": "78"})
    assert len((tmp_path / "ran").read_text().splitlines()) == 3
    assert not (tmp_path / "pack" / "returned").exists()
    assert all(parse_record((tmp_path / t / "record.jsonl").read_text()).step_exit == 0 for t in ("t1", "t2", "t3"))


def test_a_failing_step_is_recorded_with_its_exit(tmp_path: Path) -> None:
    _, text = _script(tmp_path, ["t1", "t2"], step_time=None)
    _run_launcher(tmp_path, text, {"RC": "3"})
    record = parse_record((tmp_path / "t1" / "record.jsonl").read_text())
    assert record.step_exit == 3 and not record.step_timed_out
    assert (tmp_path / "t2" / "record.jsonl").exists()  # the next task still had its turn


def _record(*events: dict) -> str:
    return "".join(json.dumps({"time": "2026-01-01T00:00:00.000Z", **e}) + "\n" for e in events)


START = {"event": "job_start", "job_id": "9", "step_id": "2"}
DONE = [START, {"event": "executor_start", "executor": 0}, {"event": "executor_end", "executor": 0, "exit_code": 0},
        {"event": "job_end", "exit_code": 0}, {"event": "step_end", "exit_code": 0, "timed_out": False}]


@pytest.mark.parametrize(("carrier", "events", "cancel", "expected"), [
    ("PENDING", [], False, "QUEUED"),
    ("RUNNING", [], False, "QUEUED"),  # waiting for its turn
    ("RUNNING", [START], False, "INITIALIZING"),
    ("RUNNING", [START, {"event": "executor_start", "executor": 0}], False, "RUNNING"),
    ("RUNNING", DONE, False, "COMPLETE"),  # the shared job goes on; this task is over
    (None, DONE, False, "COMPLETE"),
    ("RUNNING", [START, {"event": "executor_start", "executor": 0},
                 {"event": "step_end", "exit_code": 137, "timed_out": False}], True, "CANCELED"),
    ("RUNNING", [START, {"event": "step_end", "exit_code": 137, "timed_out": False}], False, "SYSTEM_ERROR"),
    ("RUNNING", [START, {"event": "step_end", "exit_code": 1, "timed_out": True}], False, "EXECUTOR_ERROR"),
    ("RUNNING", [{"event": "skipped"}], True, "CANCELED"),
    ("RUNNING", [], True, "CANCELING"),
    ("NODE_FAIL", [], False, "SYSTEM_ERROR"),
])
def test_a_packed_tasks_state(carrier: str | None, events: list[dict], cancel: bool, expected: str) -> None:
    record = parse_record(_record(*events)) if events else None
    slurm_state, reason = member_state(carrier, "", record, carrier_id="9", cancel_requested=cancel)
    mapped = map_state(slurm_state, reason, record, ignore_error=[False], cancel_requested=cancel)
    assert mapped.state == expected, mapped
    if carrier == "RUNNING" and not events and not cancel:
        assert mapped.log == "Slurm: job pending (waiting for its turn in Slurm job 9)"


def test_the_daemon_packs_submits_once_and_cancels_one_task_alone(dev_config: SiteConfig, tmp_path: Path) -> None:
    from hpc_bridge.daemon import Daemon
    from hpc_bridge.slurm.client import JobStatus
    from hpc_bridge.store import Store
    from hpc_bridge.tes.service import TaskService

    work = tmp_path / "work"
    config = dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "storage": dev_config.storage.model_copy(update={"work_root": work, "work_retention_hours": 0})})
    job_user = config.slurm.submit_as or "root"  # whose files the job writes
    store = Store(config.database)
    service = TaskService(store, config)
    short = {"executors": [{"image": "busybox", "command": ["true"]}],
             "resources": {"cpu_cores": 1, "backend_parameters": {"time": "5"}}}
    ids = [service.create(short, owner="local") for _ in range(3)]
    big = service.create({**short, "resources": {"cpu_cores": 2, "backend_parameters": {"time": "5"}}},
                         owner="local")
    other = service.create(short, owner="someone-else")
    slurm = FakeSlurm()
    daemon = Daemon(config, store, slurm)
    daemon.cycle()

    submitted = [c[1] for c in slurm.calls if c[0] == "submit"]
    assert len(submitted) == 3  # the pack, the 2-core task, the other owner's task
    rows = {i: store.tasks.get(i) for i in [*ids, big, other]}
    pack_id = rows[ids[0]].pack_id
    assert pack_id and all(rows[i].pack_id == pack_id for i in ids)
    assert rows[big].pack_id is None and rows[other].pack_id is None
    job = rows[ids[0]].job_id  # the shared job's id
    assert job and all(rows[i].job_id == job for i in ids)
    launcher = work / ".packs" / pack_id / "pack.sh"
    assert str(launcher) in submitted
    text = launcher.read_text()
    assert f"ids=({' '.join(ids)} )" in text and f"workdirs=({' '.join(f'{work}/{i}' for i in ids)} )" in text

    # The shared job runs: the first task's step has started, the others wait for their turn.
    job_writes(work / ids[0] / "record.jsonl", _record(START, {"event": "executor_start", "executor": 0}),
               job_user)
    slurm.jobs = [JobStatus(job, "RUNNING", "None", "hpc-bridge-pack", f"hpc-bridge-pack:{pack_id}", None, None)]
    daemon.cycle()
    assert [store.tasks.get(i).state for i in ids] == ["RUNNING", "QUEUED", "QUEUED"]

    # Cancelling the running task cancels its step; the waiting one gets a marker: the job goes on.
    for task_id in ids[:2]:
        store.tasks.request_cancel(task_id)
    daemon.cycle()
    assert ("cancel", [f"{job}.2"]) in slurm.calls
    assert not any(c[0] == "cancel" and job in c[1] for c in slurm.calls)
    assert (work / ".packs" / pack_id / "cancel" / ids[1]).exists()
    assert not (work / ".packs" / pack_id / "cancel" / ids[2]).exists()

    job_writes(work / ids[0] / "record.jsonl", _record(START, {"event": "executor_start", "executor": 0},
                                                       {"event": "step_end", "exit_code": 137}), job_user)
    job_writes(work / ids[1] / "record.jsonl", _record({"event": "skipped"}), job_user)
    job_writes(work / ids[2] / "record.jsonl", _record(*DONE), job_user)
    slurm.jobs = [JobStatus(job, "COMPLETED", "None", "hpc-bridge-pack", f"hpc-bridge-pack:{pack_id}", 0, 0)]
    daemon.cycle()
    assert [store.tasks.get(i).state for i in ids] == ["CANCELED", "CANCELED", "COMPLETE"]

    # The pack's directory goes with the last of its tasks' work areas; a pack of another service
    # on the same work root (unknown to this store) stays, its job may still be pending.
    foreign = work / ".packs" / "pack-of-another-service"
    foreign.mkdir()
    for task_id in [big, other]:
        store.tasks.update(task_id, state="COMPLETE", end_time="2000-01-01T00:00:00Z")
    daemon.clean_work_areas()
    assert not (work / ".packs" / pack_id).exists()
    assert foreign.is_dir()


def test_tasks_handed_back_share_a_new_pack_then_go_alone(dev_config: SiteConfig, tmp_path: Path) -> None:
    from hpc_bridge.daemon import Daemon
    from hpc_bridge.slurm.client import JobStatus
    from hpc_bridge.store import Store
    from hpc_bridge.tes.service import TaskService

    work = tmp_path / "work"
    config = dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite", "storage": dev_config.storage.model_copy(update={"work_root": work})})
    job_user = config.slurm.submit_as or "root"
    store = Store(config.database)
    service = TaskService(store, config)
    body = {"executors": [{"image": "busybox", "command": ["true"]}], "resources": {"cpu_cores": 1}}
    ids = [service.create(body, owner="local") for _ in range(4)]  # no time limit: packed all the same
    slurm = FakeSlurm()
    daemon = Daemon(config, store, slurm)
    daemon.cycle()
    rows = [store.tasks.get(i) for i in ids]
    job, pack_id = rows[0].job_id, rows[0].pack_id
    assert pack_id and all(r.job_id == job and r.pack_id == pack_id for r in rows)
    assert len([c for c in slurm.calls if c[0] == "submit"]) == 1

    # The first step ran long: the launcher handed the other three back (one of them with a stale
    # line from an earlier shared job, which must not count).
    job_writes(work / ids[0] / "record.jsonl", _record(START, {"event": "executor_start", "executor": 0}),
               job_user)
    for task_id in ids[1:3]:
        job_writes(work / task_id / "record.jsonl", _record({"event": "returned", "job_id": job}), job_user)
    job_writes(work / ids[3] / "record.jsonl", _record({"event": "returned", "job_id": "99999"}), job_user)
    slurm.jobs = [JobStatus(job, "RUNNING", "None", "hpc-bridge-pack", f"hpc-bridge-pack:{pack_id}", None, None)]
    daemon.cycle()
    rows = [store.tasks.get(i) for i in ids]
    assert [r.state for r in rows] == ["RUNNING", "QUEUED", "QUEUED", "QUEUED"]
    assert [r.job_id for r in rows] == [job, None, None, job] and rows[1].pack_id is None
    assert any(f"handed back by Slurm job {job}" in line for line in rows[1].system_logs)

    daemon.cycle()  # submitted again at once, the two together: most tasks are short
    submits = [c[1] for c in slurm.calls if c[0] == "submit"]
    assert len(submits) == 2 and submits[1].endswith("pack.sh")
    rows = [store.tasks.get(i) for i in ids]
    second, new_pack = rows[1].job_id, rows[1].pack_id
    assert second not in (None, job) and rows[2].job_id == second and new_pack not in (None, pack_id)
    assert rows[1].submit_attempts == 2

    # Handed back once more: each goes alone now, so a run of long tasks is not handed on and on.
    for task_id in ids[1:3]:
        job_writes(work / task_id / "record.jsonl", _record({"event": "returned", "job_id": job},
                                                            {"event": "returned", "job_id": second}), job_user)
    slurm.jobs.append(JobStatus(second, "RUNNING", "None", "hpc-bridge-pack", f"hpc-bridge-pack:{new_pack}",
                                None, None))
    daemon.cycle()
    assert any("as a job of its own" in line for line in store.tasks.get(ids[1]).system_logs)
    daemon.cycle()
    again = [c[1] for c in slurm.calls if c[0] == "submit"][2:]
    assert sorted(again) == sorted(str(work / i / "job.sh") for i in ids[1:3])
    rows = [store.tasks.get(i) for i in ids]
    assert rows[1].pack_id is None and rows[1].job_id != rows[2].job_id and rows[1].submit_attempts == 3
