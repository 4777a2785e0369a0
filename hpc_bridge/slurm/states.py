"""Slurm job state + the job's own record -> TES state (pure; the one place this mapping lives).

Slurm alone cannot say whether a task succeeded: a COMPLETED job only means the batch script
exited 0. The job's record says which executors ran and how they ended, so both are needed.
Returns plain strings, so this module does not depend on the TES models.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpc_bridge.slurm.record import JobRecord

QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}
PAUSED_STATES = {"SUSPENDED", "STOPPED"}
SYSTEM_FAILURES = {"NODE_FAIL": "the node running the job failed",
                   "BOOT_FAIL": "the node could not boot",
                   "DEADLINE": "the job reached its deadline before it could run"}
LIMIT_FAILURES = {"OUT_OF_MEMORY": "the task ran out of memory (Slurm OUT_OF_MEMORY): raise resources.ram_gb",
                  "TIMEOUT": "the task reached its time limit (Slurm TIMEOUT): raise the 'time' backend parameter"}
# Every pending reason (Priority, Resources, PartitionConfig, ...) is logged once, so a user can see
# why a task waits; these two only mean "no reason given".
NO_REASON = {"None", ""}


def _base(slurm_state: str | None) -> str | None:
    """'CANCELLED by 0' -> 'CANCELLED'; None stays None (the job is gone from the controller)."""
    return slurm_state.split()[0].rstrip("+") if slurm_state else None


def still_active(slurm_state: str) -> bool:
    """True while the job holds or waits for resources (a cancel still has something to stop)."""
    return _base(slurm_state) in QUEUED_STATES | RUNNING_STATES | PAUSED_STATES | {"CONFIGURING"}


@dataclass(frozen=True)
class Mapped:
    state: str
    log: str | None = None


def map_state(slurm_state: str | None, reason: str, record: JobRecord | None, *,
              ignore_error: list[bool], cancel_requested: bool) -> Mapped:
    """`slurm_state` None means the job is no longer known to the controller.

    A requested cancel wins while the job is alive; once it has ended, a job that still finished
    on its own keeps its real outcome, anything else is CANCELED.
    """
    state = _base(slurm_state)
    if cancel_requested:
        if still_active(slurm_state or ""):
            return Mapped("CANCELING")
        if state in ("CANCELLED", None) and not (record and record.finished):
            return Mapped("CANCELED")
    if state in QUEUED_STATES:
        log = None if reason in NO_REASON else f"Slurm: job pending ({reason})"
        return Mapped("QUEUED", log)
    if state == "CONFIGURING":
        return Mapped("INITIALIZING")
    if state in RUNNING_STATES:
        return Mapped("RUNNING" if record and record.started_executing else "INITIALIZING")
    if state in PAUSED_STATES:
        return Mapped("PAUSED", f"Slurm: job {state.lower()}")
    if state == "PREEMPTED":
        return Mapped("PREEMPTED", "Slurm: job preempted")
    if state in SYSTEM_FAILURES:
        return Mapped("SYSTEM_ERROR", f"Slurm {state}: {SYSTEM_FAILURES[state]}")
    if state in LIMIT_FAILURES:
        return Mapped("EXECUTOR_ERROR", LIMIT_FAILURES[state])
    if state in ("CANCELLED", "REVOKED"):
        if cancel_requested:
            return Mapped("CANCELED")
        return Mapped("SYSTEM_ERROR", "Slurm: the job was cancelled outside hpc-bridge (scancel or admin)")
    # COMPLETED, FAILED, or gone from the queue: the job's own record decides.
    return _from_record(state, record, ignore_error)


def _from_record(state: str | None, record: JobRecord | None, ignore_error: list[bool]) -> Mapped:
    if record is None or record.start_time is None:
        what = "left the queue" if state is None else f"ended {state}"
        return Mapped("SYSTEM_ERROR", f"Slurm job {what} without a record of running the task")
    if record.refusal:
        return Mapped("EXECUTOR_ERROR", record.refusal)
    if record.input_error:
        return Mapped("SYSTEM_ERROR", record.input_error)
    for index, ignore in enumerate(ignore_error):
        ex = record.executors.get(index)
        if ex is None or ex.exit_code is None:
            if record.finished or state is not None:
                return Mapped("SYSTEM_ERROR", f"executor {index} did not run to the end"
                              + (f" (job {state})" if state else ""))
            return Mapped("SYSTEM_ERROR", "Slurm job left the queue before the task finished")
        if ex.exit_code != 0 and not ignore:
            return Mapped("EXECUTOR_ERROR", f"executor {index} exited with code {ex.exit_code}")
    if record.output_errors:
        return Mapped("SYSTEM_ERROR", "output collection failed: " + "; ".join(record.output_errors))
    if record.collect_exit:
        return Mapped("SYSTEM_ERROR", f"the output collector failed (exit code {record.collect_exit}; "
                                      "see slurm.out in the work area)")
    return Mapped("COMPLETE")


def member_state(carrier_state: str | None, carrier_reason: str, record: JobRecord | None, *,
                 carrier_id: str, cancel_requested: bool) -> tuple[str | None, str]:
    """The Slurm state a task packed into a shared job would have had as a job of its own, from the
    shared job's state and the task's record, so `map_state` can judge it like any other task.

    The shared job keeps running after one of its tasks ended, and waits while one of its tasks has
    not had its turn yet; the record (its step's end, written by the pack's launcher) tells these apart.
    """
    if record is not None and record.finished:
        if record.skipped:
            return "CANCELLED", ""
        if record.step_timed_out:
            return "TIMEOUT", ""
        if not record.job_ended and record.step_exit not in (None, 0):  # its step was killed
            return ("CANCELLED" if cancel_requested else "FAILED"), ""
        return None, ""  # over: the record alone decides
    base = _base(carrier_state)
    if base in RUNNING_STATES and (record is None or record.start_time is None):
        return "PENDING", f"waiting for its turn in Slurm job {carrier_id}"
    return carrier_state, carrier_reason
