"""Task and run states: the sets every part of the service asks about, and the one rule for writing a
task's state. Stdlib only, so the store, the daemon, the WES layer and the engine all share it; the root
helper, which imports nothing of the project, keeps a copy that `tests/unit/test_lifecycle.py` compares.
"""

from __future__ import annotations

# A task that may still change on its own: what a daemon write must not put back over a cancel.
LIVE = frozenset({"QUEUED", "INITIALIZING", "RUNNING", "PAUSED"})
# What may still hold a Slurm job, and counts against a user's active-task limit.
ACTIVE = LIVE | {"CANCELING"}
# TES states a task never leaves.
TERMINAL = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})
# WES run states a run never leaves (WES has no PREEMPTED).
RUN_FINAL = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"})
# Ended without success: a task, or a run (a crate's FailedActionStatus).
UNSUCCESSFUL = TERMINAL - {"COMPLETE"}


def next_state(current: str, proposed: str, *, cancel_requested: bool) -> str:
    """The state a write may store, given the row's state inside the write transaction.

    A terminal state is final (a late write computed from an older row cannot revive or re-judge
    the task), and a write computed before the API recorded a cancel cannot undo it: a live state
    then becomes CANCELING.
    """
    if current in TERMINAL:
        return current
    if cancel_requested and proposed in LIVE:
        return "CANCELING"
    return proposed


def failure_state(*, cancel_requested: bool) -> str:
    """What a task that cannot go on becomes: CANCELED when its user already asked for that."""
    return "CANCELED" if cancel_requested else "SYSTEM_ERROR"
