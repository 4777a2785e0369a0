"""A task's job, as one cycle sees it, to the store: `assess` (pure) turns the Slurm status and the
job's own record into an `Assessment`; `Monitor` reads what it needs and applies it."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from hpc_bridge.daemon.context import Context
from hpc_bridge.daemon.jobfiles import executor_logs
from hpc_bridge.daemon.uploader import Uploader
from hpc_bridge.lifecycle import TERMINAL
from hpc_bridge.slurm.client import JobStatus
from hpc_bridge.slurm.record import JobRecord
from hpc_bridge.slurm.states import map_state, member_state, still_active
from hpc_bridge.store import TaskRow
from hpc_bridge.store.tasks import now_iso

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Assessment:
    state: str
    message: str | None  # the state's reason, also a system log line
    logs: list[str]  # system log lines to add (the store keeps each line once)
    warnings: list[str]  # the record's output warnings, logged after any refused log file
    changes: dict[str, Any]  # start_time, end_time, outputs
    unconfirmed: bool  # a SYSTEM_ERROR the record may still contradict (wait for the grace period)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def quiet(row: TaskRow, status: JobStatus | None) -> bool:
    """Nothing new can be learnt until the job ends: spare the record read."""
    return (status is not None and status.state == "RUNNING" and row.state == "RUNNING"
            and not row.cancel_requested and not row.pack_id)


def needs_record(status: JobStatus | None) -> bool:
    return status is None or status.state not in ("PENDING", "CONFIGURING")


def assess(row: TaskRow, status: JobStatus | None, record: JobRecord | None, refused: str | None,
           now: str) -> Assessment:
    """`refused`: why the record file was not read, if it was not. `now`: the daemon's clock (the
    record's is the job's, never trusted to be later than ours)."""
    slurm_state, reason = (status.state, status.reason) if status else (None, "")
    if row.pack_id:  # the shared job's state is not the task's: its step's end is in its record
        slurm_state, reason = member_state(slurm_state, reason, record, carrier_id=row.job_id or "",
                                           cancel_requested=bool(row.cancel_requested))
    ignore = [bool(e.get("ignore_error")) for e in row.task["executors"]]
    mapped = map_state(slurm_state, reason, record, ignore_error=ignore,
                       cancel_requested=bool(row.cancel_requested))
    unconfirmed = (mapped.state == "SYSTEM_ERROR" and not (record and record.finished)
                   and (slurm_state is None or not still_active(slurm_state)))
    lines = [line for line in (refused, mapped.log) if line]
    warnings: list[str] = []
    changes: dict[str, Any] = {}
    if record and record.start_time and not row.start_time:
        changes["start_time"] = record.start_time
    if mapped.state in TERMINAL:
        changes["end_time"] = min(record.end_time, now) if record and record.end_time else now
        if record:
            warnings = list(record.output_warnings)
            changes["outputs"] = record.outputs
    return Assessment(mapped.state, mapped.log, lines, warnings, changes, unconfirmed)


class Monitor:
    def __init__(self, ctx: Context, uploader: Uploader) -> None:
        self._ctx = ctx
        self._uploader = uploader
        self._unconfirmed: dict[str, float] = {}  # task id -> when its job ended without a full record

    def update(self, row: TaskRow, status: JobStatus | None) -> None:
        ctx = self._ctx
        if quiet(row, status):
            return
        record, refused = ctx.record(row) if needs_record(status) else (None, None)
        if row.pack_id and record is not None and record.returned_by and record.returned_by == row.job_id:
            self._handed_back(row)
            return
        verdict = assess(row, status, record, refused, now_iso())
        if verdict.unconfirmed:
            first = self._unconfirmed.setdefault(row.id, time.monotonic())
            if time.monotonic() - first < ctx.config.monitor.record_grace:
                return  # the record may still be on its way through the shared filesystem
        self._unconfirmed.pop(row.id, None)
        if verdict.state == "COMPLETE" and (upload := self._uploader.outcome(row)) is not None:
            if not upload.done:
                return  # RUNNING until the outputs have reached object storage
            if upload.error:
                verdict = dataclasses.replace(verdict, state="CANCELED" if upload.canceled else "SYSTEM_ERROR",
                                              message=upload.error,
                                              logs=[*verdict.logs, upload.error],
                                              changes={**verdict.changes, "outputs": []})
        changes = dict(verdict.changes)
        lines = list(verdict.logs)
        launchers = ctx.launchers
        if verdict.terminal or (verdict.state == "RUNNING" and record):
            changes["executor_logs"], refused_tails = executor_logs(
                row, record, launchers.for_row(row).record_dir(row), launchers.job_uid(row),
                ctx.config.storage.log_tail_bytes, tails=verdict.terminal)
            lines += refused_tails
        lines += verdict.warnings
        if verdict.terminal:
            ctx.handed_back.pop(row.id, None)
            ctx.cancel_sent.difference_update({row.job_id or "", row.id})
            if record and record.step_id:
                ctx.cancel_sent.discard(f"{row.job_id}.{record.step_id}")
        added = [line for line in dict.fromkeys(lines) if line not in row.system_logs]
        if refused in added:
            log.warning("task %s: %s", row.id, refused)
        if verdict.state != row.state or changes or added:
            ctx.store.tasks.update(row.id, state=verdict.state, message=verdict.message, add_logs=added,
                                   **changes)
            if verdict.terminal and changes.get("outputs") and ctx.metrics is not None:
                # sizes the job itself wrote down: never below 0
                ctx.metrics.staged_bytes.labels("out").inc(sum(max(0, int(o["size_bytes"]))
                                                               for o in changes["outputs"]))

    def _handed_back(self, row: TaskRow) -> None:
        """A step before this task's ran long: the shared job will not start it. It is submitted
        again at once (see `Context.handed_back`), keeping its state (QUEUED) and its logs."""
        ctx = self._ctx
        ctx.handed_back[row.id] += 1
        seconds = ctx.config.slurm.packing.hand_back_seconds
        where = "with the others handed back" if ctx.handed_back[row.id] < 2 else "as a job of its own"
        line = (f"handed back by Slurm job {row.job_id}, where a task before it ran longer than {seconds} s: "
                f"submitting it again, {where}")
        ctx.store.tasks.update(row.id, job_id=None, pack_id=None, next_attempt_at=0.0, message=line,
                               add_logs=[line])
        ctx.wake.set()
