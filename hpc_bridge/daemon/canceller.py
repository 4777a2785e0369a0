"""Cancels the user asked for, sent once per job: a task's own job through its launcher, a packed
task's job step (or, before its turn, a marker its launcher script skips it by)."""

from __future__ import annotations

from hpc_bridge.daemon.context import Context
from hpc_bridge.slurm.client import JobStatus
from hpc_bridge.slurm.states import still_active
from hpc_bridge.store import TaskRow


class Canceller:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._steps: list[str] = []
        self._own: list[TaskRow] = []

    def consider(self, row: TaskRow, status: JobStatus | None) -> None:
        """Note what this cycle must cancel for `row`; `send` does it."""
        if not (row.cancel_requested and status is not None and still_active(status.state)):
            return
        if row.pack_id:
            self._steps.extend(self._packed(row))
        elif (row.job_id or "") not in self._ctx.cancel_sent:
            self._own.append(row)

    def send(self) -> None:
        """One scancel for the service's jobs and steps, one helper call per per-user task. What was
        noted is dropped first: a cancel that fails is noted again by the next cycle."""
        steps, own = self._steps, self._own
        self._steps, self._own = [], []
        launchers = self._ctx.launchers
        launchers.service.cancel([row for row in own if not row.run_as], steps=steps)
        launchers.helper.cancel([row for row in own if row.run_as])

    def _packed(self, row: TaskRow) -> list[str]:
        """A packed task is cancelled alone: its step if it runs, else a marker so that the launcher
        skips it (both, when it starts in between: the next cycle sees its step)."""
        ctx = self._ctx
        record, _ = ctx.record(row)
        if record is not None and record.finished:
            return []
        if record is not None and record.step_id:
            step = f"{row.job_id}.{record.step_id}"
            return [] if step in ctx.cancel_sent else [step]
        if row.id not in ctx.cancel_sent:
            ctx.launchers.service.work_area(ctx.pack_dir(row.pack_id or "")).write(f"cancel/{row.id}", "")
            ctx.cancel_sent.add(row.id)
        return []
