"""Slurm state + job record -> TES state: the whole mapping table."""

from __future__ import annotations

import json

import pytest

from hpc_bridge.slurm.record import parse_record
from hpc_bridge.slurm.states import map_state, still_active

START = '{"event":"job_start","time":"2026-01-01T00:00:00.000Z","job_id":"7"}\n'


def ev(event: str, **fields: object) -> str:
    """One record line, as the batch script and the collector write them."""
    return json.dumps({"event": event, **fields, "time": "2026-01-01T00:00:00.000Z"}, separators=(",", ":")) + "\n"


def rec(*codes: int, ended: bool = True, started: int | None = None) -> str:
    lines = [START]
    for i, code in enumerate(codes):
        lines.append(f'{{"event":"executor_start","executor":{i},"time":"2026-01-01T00:00:00.000Z"}}\n')
        lines.append(f'{{"event":"executor_end","executor":{i},"time":"2026-01-01T00:00:00.000Z","exit_code":{code}}}\n')
    if started is not None:
        lines.append(f'{{"event":"executor_start","executor":{started},"time":"2026-01-01T00:00:00.000Z"}}\n')
    if ended:
        last = next((c for c in reversed(codes) if c), 0)
        lines.append(f'{{"event":"job_end","time":"2026-01-01T00:00:00.000Z","exit_code":{last}}}\n')
    return "".join(lines)


@pytest.mark.parametrize(
    ("slurm", "reason", "record", "ignore", "cancel", "expected", "log_part"),
    [
        ("PENDING", "None", None, [False], False, "QUEUED", None),
        ("PENDING", "Resources", None, [False], False, "QUEUED", "pending (Resources)"),
        ("PENDING", "PartitionConfig", None, [False], False, "QUEUED", "PartitionConfig"),
        ("REQUEUED", "None", None, [False], False, "QUEUED", None),
        ("CONFIGURING", "None", None, [False], False, "INITIALIZING", None),
        ("RUNNING", "None", None, [False], False, "INITIALIZING", None),
        ("RUNNING", "None", rec(ended=False), [False], False, "INITIALIZING", None),
        ("RUNNING", "None", rec(ended=False, started=0), [False], False, "RUNNING", None),
        ("SUSPENDED", "None", None, [False], False, "PAUSED", "suspended"),
        ("COMPLETED", "None", rec(0), [False], False, "COMPLETE", None),
        ("COMPLETED", "None", rec(0, 0), [False, False], False, "COMPLETE", None),
        ("COMPLETED", "None", None, [False], False, "SYSTEM_ERROR", "without a record"),
        ("COMPLETED", "None", rec(0), [False, False], False, "SYSTEM_ERROR", "executor 1 did not run"),
        ("FAILED", "NonZeroExitCode", rec(3), [False], False, "EXECUTOR_ERROR", "code 3"),
        ("COMPLETED", "None", rec(4, 0), [True, False], False, "COMPLETE", None),
        ("OUT_OF_MEMORY", "None", rec(ended=False, started=0), [False], False, "EXECUTOR_ERROR", "memory"),
        ("TIMEOUT", "None", rec(ended=False, started=0), [False], False, "EXECUTOR_ERROR", "time limit"),
        ("NODE_FAIL", "None", None, [False], False, "SYSTEM_ERROR", "NODE_FAIL"),
        ("BOOT_FAIL", "None", None, [False], False, "SYSTEM_ERROR", "BOOT_FAIL"),
        ("DEADLINE", "None", None, [False], False, "SYSTEM_ERROR", "DEADLINE"),
        ("PREEMPTED", "None", None, [False], False, "PREEMPTED", "preempted"),
        ("PENDING", "None", None, [False], True, "CANCELING", None),
        ("RUNNING", "None", None, [False], True, "CANCELING", None),
        ("CANCELLED", "None", None, [False], True, "CANCELED", None),
        ("CANCELLED", "None", None, [False], False, "SYSTEM_ERROR", "outside hpc-bridge"),
        (None, "", rec(0), [False], False, "COMPLETE", None),
        (None, "", rec(2), [False], False, "EXECUTOR_ERROR", "code 2"),
        (None, "", None, [False], False, "SYSTEM_ERROR", "left the queue"),
        (None, "", rec(ended=False, started=0), [False], False, "SYSTEM_ERROR", "left the queue before"),
        (None, "", None, [False], True, "CANCELED", None),
    ],
)
def test_mapping(slurm: str | None, reason: str, record: str | None, ignore: list[bool], cancel: bool,
                 expected: str, log_part: str | None) -> None:
    mapped = map_state(slurm, reason, parse_record(record) if record is not None else None,
                       ignore_error=ignore, cancel_requested=cancel)
    assert mapped.state == expected
    if log_part is None:
        assert mapped.log is None
    else:
        assert mapped.log and log_part in mapped.log


def test_torn_record_line_is_ignored() -> None:
    record = parse_record(rec(0, ended=False) + '{"event":"job_e')
    assert record.start_time == "2026-01-01T00:00:00.000Z" and not record.finished
    assert record.executors[0].exit_code == 0


def test_still_active() -> None:
    assert still_active("PENDING") and still_active("RUNNING") and still_active("SUSPENDED")
    assert not still_active("COMPLETED") and not still_active("CANCELLED by 0")


def test_a_requeued_job_starts_a_fresh_record() -> None:
    first_run = rec(ended=False, started=0) + ev("job_signal", signal="TERM")
    record = parse_record(first_run + START)
    assert not record.finished and not record.started_executing
    mapped = map_state("RUNNING", "None", record, ignore_error=[False], cancel_requested=False)
    assert mapped.state == "INITIALIZING"


@pytest.mark.parametrize(("slurm", "record", "expected"), [
    ("SUSPENDED", None, "CANCELING"),
    ("CONFIGURING", None, "CANCELING"),
    ("COMPLETED", rec(0), "COMPLETE"),          # it finished before the cancel reached it
    ("FAILED", rec(2), "EXECUTOR_ERROR"),
    (None, rec(ended=False, started=0), "CANCELED"),
])
def test_a_requested_cancel_wins_while_alive_but_not_over_a_real_outcome(
        slurm: str | None, record: str | None, expected: str) -> None:
    parsed = parse_record(record) if record else None
    assert map_state(slurm, "None", parsed, ignore_error=[False], cancel_requested=True).state == expected


def test_refused_redirection_is_an_executor_error() -> None:
    text = START + '{"event":"unsafe_path","executor":1,"stream":"stdout","time":"2026-01-01T00:00:00.000Z"}\n' \
        + '{"event":"job_end","time":"2026-01-01T00:00:00.000Z","exit_code":126}\n'
    mapped = map_state("FAILED", "None", parse_record(text), ignore_error=[False, False],
                       cancel_requested=False)
    assert mapped.state == "EXECUTOR_ERROR" and "executor 1 stdout" in mapped.log


def test_outputs_and_their_failures_come_from_the_record() -> None:
    outputs = (ev("output", output=0, url="file:///d/a", path="/o/a", size_bytes="12")
               + ev("output_warning", output=1, message="skipped symlink /o/l"))
    ok = parse_record(rec(0, ended=False) + outputs + ev("collect_end", exit_code=0) + ev("job_end", exit_code=0))
    assert ok.outputs == [{"url": "file:///d/a", "path": "/o/a", "size_bytes": "12"}]
    assert ok.output_warnings == ["output 1: skipped symlink /o/l"]
    assert map_state("COMPLETED", "None", ok, ignore_error=[False], cancel_requested=False).state == "COMPLETE"

    missing = parse_record(rec(0, ended=False)
                           + ev("output_error", output=2, message="not found")
                           + '{"event":"collect_end","time":"2026-01-01T00:00:00.000Z","exit_code":1}\n'
                           + '{"event":"job_end","time":"2026-01-01T00:00:00.000Z","exit_code":1}\n')
    mapped = map_state("FAILED", "None", missing, ignore_error=[False], cancel_requested=False)
    assert mapped.state == "SYSTEM_ERROR" and "output 2: not found" in (mapped.log or "")

    crashed = parse_record(rec(0, ended=False) + ev("collect_end", exit_code=127) + ev("job_end", exit_code=1))
    mapped = map_state("FAILED", "None", crashed, ignore_error=[False], cancel_requested=False)
    assert mapped.state == "SYSTEM_ERROR" and "exit code 127" in (mapped.log or "")


def test_an_input_that_changed_since_submission_is_a_system_error() -> None:
    text = START + ev("input_error", input=1, message="changed or vanished") + ev("job_end", exit_code=1)
    mapped = map_state("FAILED", "None", parse_record(text), ignore_error=[False], cancel_requested=False)
    assert mapped.state == "SYSTEM_ERROR" and mapped.log == "input 1: changed or vanished"
