"""A Slurm client for unit tests of the daemon: it records what the daemon asks and answers `queue`
with the jobs a test puts in `jobs`. Per-user calls succeed as the root helper would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpc_bridge.slurm.client import JobStatus


class FakeSlurm:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.jobs: list[JobStatus] = []

    def submit(self, script: Path, *, workdir: Path) -> str:
        self.calls.append(("submit", str(script)))
        return "1"

    def submit_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> str:
        self.calls.append(("submit_as_user", task_id, str(sudo), str(helper)))
        return "77"

    def cancel_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None:
        self.calls.append(("cancel_as_user", task_id))

    def clean_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None:
        self.calls.append(("clean_as_user", task_id))

    def cancel(self, job_ids: Sequence[str]) -> None:
        self.calls.append(("cancel", list(job_ids)))

    def queue(self, users: Sequence[str] = ()) -> list[JobStatus]:
        self.calls.append(("queue", list(users)))
        return self.jobs

    def ping(self) -> bool:
        return True
