"""Task states: the sets defined once, the one write rule, and the store's intents that apply it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_bridge import lifecycle
from hpc_bridge.config import SiteConfig
from hpc_bridge.daemon import Daemon
from hpc_bridge.runas import helper
from hpc_bridge.slurm.client import SlurmError
from hpc_bridge.store import Store
from hpc_bridge.tes.models import State
from hpc_bridge.tes.service import TaskService

from ..fake_slurm import FakeSlurm


def test_the_sets_match_the_tes_states_and_the_helpers_copy() -> None:
    assert {s.value for s in State} == lifecycle.ACTIVE | lifecycle.TERMINAL | {"UNKNOWN"}
    assert {s.value for s in State if s.terminal} == lifecycle.TERMINAL
    assert lifecycle.LIVE < lifecycle.ACTIVE and not lifecycle.ACTIVE & lifecycle.TERMINAL
    assert lifecycle.RUN_FINAL == lifecycle.TERMINAL - {"PREEMPTED"}
    assert helper.TERMINAL_STATES == lifecycle.TERMINAL  # the root helper imports nothing of ours
    assert helper.ENGINE_STATES == lifecycle.LIVE - {"QUEUED"}  # runs whose engine it may (re)start


@pytest.mark.parametrize(("current", "proposed", "cancel", "stored"), [
    ("QUEUED", "RUNNING", False, "RUNNING"),
    ("RUNNING", "COMPLETE", False, "COMPLETE"),
    ("QUEUED", "RUNNING", True, "CANCELING"),       # computed before the cancel arrived
    ("CANCELING", "INITIALIZING", True, "CANCELING"),
    ("CANCELING", "CANCELED", True, "CANCELED"),
    ("RUNNING", "EXECUTOR_ERROR", True, "EXECUTOR_ERROR"),  # the job's own verdict stands
    ("CANCELED", "SYSTEM_ERROR", False, "CANCELED"),  # terminal is final
    ("COMPLETE", "RUNNING", False, "COMPLETE"),
    ("SYSTEM_ERROR", "QUEUED", True, "SYSTEM_ERROR"),
])
def test_next_state(current: str, proposed: str, cancel: bool, stored: str) -> None:
    assert lifecycle.next_state(current, proposed, cancel_requested=cancel) == stored


def new_task(store: Store, config: SiteConfig, **extra: object) -> str:
    return TaskService(store, config).create(
        {"executors": [{"image": "busybox", "command": ["true"]}], **extra}, owner="local")


def test_log_lines_of_two_writers_are_both_kept(dev_config: SiteConfig, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    task_id = new_task(store, dev_config)
    stale = store.tasks.get(task_id)
    store.tasks.update(task_id, add_logs=["first writer"])
    store.tasks.fail(stale.id, "second writer")  # decided from the row as it is now, not `stale`
    row = store.tasks.get(task_id)
    assert row.system_logs == ["first writer", "second writer"] and row.state == "SYSTEM_ERROR"
    store.tasks.update(task_id, add_logs=["second writer", "third"])
    assert store.tasks.get(task_id).system_logs == ["first writer", "second writer", "third"]


def test_an_ended_task_keeps_its_state_end_time_and_outcome(dev_config: SiteConfig, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    task_id = new_task(store, dev_config)
    outcome = {"executor_logs": [{"exit_code": 0}], "outputs": [{"url": "file:///d/a", "path": "/o/a",
                                                                  "size_bytes": "1"}]}
    assert store.tasks.update(task_id, state="COMPLETE", end_time="2026-01-01T00:00:00.000000Z",
                              **outcome) == "COMPLETE"
    assert store.tasks.fail(task_id, "a late failure") == "COMPLETE"
    assert store.tasks.update(task_id, state="SYSTEM_ERROR", executor_logs=[], outputs=[]) == "COMPLETE"
    row = store.tasks.get(task_id)
    assert (row.state, row.end_time) == ("COMPLETE", "2026-01-01T00:00:00.000000Z")
    assert (row.executor_logs, row.outputs) == (outcome["executor_logs"], outcome["outputs"])
    assert row.system_logs == ["a late failure"]  # said, not acted on
    assert [e["state"] for e in store.tasks.events(task_id)] == ["QUEUED", "COMPLETE", "COMPLETE"]


def test_a_failure_after_a_cancel_is_canceled(dev_config: SiteConfig, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    task_id = new_task(store, dev_config)
    assert store.tasks.request_cancel(task_id) == "CANCELING"
    assert store.tasks.fail(task_id, "Slurm refused the job") == "CANCELED"


class RefusingSlurm(FakeSlurm):
    def submit(self, script: Path, *, workdir: Path) -> str:
        raise SlurmError("sbatch: error: Batch job submission failed: Invalid account")


def test_a_refused_job_keeps_the_warnings_of_its_plan(dev_config: SiteConfig, tmp_path: Path) -> None:
    """The plan's warnings are stored by prepare(); the refusal must not write back the row read before."""
    storage = dev_config.storage.model_copy(update={"work_root": tmp_path / "work"})
    config = dev_config.model_copy(update={"database": tmp_path / "db.sqlite", "storage": storage})
    store = Store(config.database)
    task_id = new_task(store, config, resources={"backend_parameters": {"colour": "blue"}})
    Daemon(config, store, RefusingSlurm()).cycle()
    row = store.tasks.get(task_id)
    assert row.state == "SYSTEM_ERROR"
    assert row.system_logs == ["backend parameter 'colour' is not supported here and was ignored",
                               "Slurm refused the job: sbatch: error: Batch job submission failed: "
                               "Invalid account"]
