"""The monitor's pure part: a task row, its job's Slurm status and its record -> what to store."""

from __future__ import annotations

import json
from typing import Any

from hpc_bridge.daemon.monitor import assess, needs_record, quiet
from hpc_bridge.slurm.client import JobStatus
from hpc_bridge.slurm.record import parse_record
from hpc_bridge.store.tasks import TaskRow

NOW = "2026-01-02T00:00:00.000000Z"


def row(**fields: Any) -> TaskRow:
    base: dict[str, Any] = dict(
        seq=1, id="t", owner="o", name=None, state="QUEUED", created_at="", updated_at="",
        task={"executors": [{"image": "busybox", "command": ["true"]}]}, tags={}, job_id="7", workdir="/w",
        cancel_requested=0, submit_attempts=1, next_attempt_at=0.0, start_time=None, end_time=None,
        executor_logs=[], system_logs=[], streams=[], outputs=[], cleaned_at=None, run_as=None, pack_id=None)
    return TaskRow(**{**base, **fields})


def status(state: str, reason: str = "None") -> JobStatus:
    return JobStatus("7", state, reason, "tes-t", "hpc-bridge:t", 0, 0, "hpcb")


def record(*events: dict[str, Any]) -> str:
    return "".join(json.dumps({"time": "2026-01-01T00:00:00.000Z", **e}) + "\n" for e in events)


DONE = record({"event": "job_start", "job_id": "7"}, {"event": "executor_start", "executor": 0},
              {"event": "executor_end", "executor": 0, "exit_code": 0},
              {"event": "output", "output": 0, "url": "file:///d/a", "path": "/o/a", "size_bytes": "1"},
              {"event": "output_warning", "output": 1, "message": "skipped symlink /o/l"},
              {"event": "job_end", "exit_code": 0})


def test_a_pending_job_is_queued_with_its_reason_and_no_record_is_read() -> None:
    verdict = assess(row(), status("PENDING", "Priority"), None, None, NOW)
    assert (verdict.state, verdict.message, verdict.logs) == ("QUEUED", "Slurm: job pending (Priority)",
                                                            ["Slurm: job pending (Priority)"])
    assert not needs_record(status("PENDING")) and needs_record(status("RUNNING")) and needs_record(None)


def test_a_finished_job_completes_with_its_outputs_warnings_and_times() -> None:
    verdict = assess(row(state="RUNNING"), status("COMPLETED"), parse_record(DONE), None, NOW)
    assert verdict.state == "COMPLETE" and verdict.terminal and not verdict.unconfirmed
    assert verdict.changes == {"start_time": "2026-01-01T00:00:00.000Z", "end_time": "2026-01-01T00:00:00.000Z",
                               "outputs": [{"url": "file:///d/a", "path": "/o/a", "size_bytes": "1"}]}
    assert verdict.logs == [] and verdict.warnings == ["output 1: skipped symlink /o/l"]


def test_the_end_time_is_never_later_than_the_daemons_clock() -> None:
    """The record's clock is the job's: a node ahead of us must not postpone retention."""
    ahead = "".join(line.replace("2026-01-01", "2099-01-01") if '"job_end"' in line else line
                    for line in DONE.splitlines(keepends=True))
    verdict = assess(row(state="RUNNING"), status("COMPLETED"), parse_record(ahead), None, NOW)
    assert verdict.changes["end_time"] == NOW


def test_a_job_gone_without_a_full_record_is_an_unconfirmed_system_error() -> None:
    started = parse_record(record({"event": "job_start", "job_id": "7"}))
    verdict = assess(row(state="RUNNING"), None, started, None, NOW)
    assert verdict.state == "SYSTEM_ERROR" and verdict.unconfirmed
    assert not assess(row(state="RUNNING"), None, parse_record(DONE), None, NOW).unconfirmed


def test_a_refused_record_is_said_and_a_requested_cancel_wins_while_the_job_runs() -> None:
    verdict = assess(row(state="RUNNING", cancel_requested=1), status("RUNNING"), None, "record.jsonl: 2 links",
                     NOW)
    assert verdict.state == "CANCELING" and verdict.logs == ["record.jsonl: 2 links"]


def test_a_running_job_of_a_running_task_is_quiet_unless_something_may_change() -> None:
    assert quiet(row(state="RUNNING"), status("RUNNING"))
    assert not quiet(row(state="RUNNING", cancel_requested=1), status("RUNNING"))
    assert not quiet(row(state="RUNNING", pack_id="p"), status("RUNNING"))
    assert not quiet(row(state="INITIALIZING"), status("RUNNING"))
