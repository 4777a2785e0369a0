"""A Slurm cluster for tests of the daemon, as `tests/integration/test_slurm_contract.py` holds it to
the real one: `submit` keeps a job (its name and comment read from the script's #SBATCH lines, as
sbatch reads them), `queue` shows every job kept or put into `jobs` by a test, `cancel` ends a job
CANCELLED, `advance` moves jobs on (PENDING -> RUNNING -> COMPLETED). Every call is recorded; the
per-user calls succeed as the root helper would."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from hpc_bridge.slurm.client import JobStatus, SlurmError

NODE_MEMORY_MB = 64 * 1024  # what a job's --mem may ask for at most
_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
_NEXT = {"PENDING": "RUNNING", "RUNNING": "COMPLETED"}


class FakeSlurm:
    def __init__(self, user: str = "hpcb") -> None:
        self.user = user
        self.calls: list[tuple[object, ...]] = []
        self.jobs: list[JobStatus] = []
        self._next_id = 1

    def submit(self, script: Path, *, workdir: Path) -> str:
        self.calls.append(("submit", str(script)))
        options = dict(re.findall(r"^#SBATCH --([a-z-]+)=(.*)$", Path(script).read_text(), re.MULTILINE))
        mem = re.fullmatch(r"(\d+)([KMGT]?)", options.get("mem", "0"))
        if mem is None or int(mem[1]) * _UNITS[mem[2] or "M"] > NODE_MEMORY_MB:
            raise SlurmError("sbatch failed (1): sbatch: error: Memory specification can not be satisfied")
        job_id = str(self._next_id)
        self._next_id += 1
        self.jobs.append(JobStatus(job_id, "PENDING", "None", options.get("job-name", ""),
                                   options.get("comment", ""), None, None, self.user))
        return job_id

    def submit_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> str:
        self.calls.append(("submit_as_user", task_id, str(sudo), str(helper)))
        return "77"

    def cancel_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None:
        self.calls.append(("cancel_as_user", task_id))

    def clean_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None:
        self.calls.append(("clean_as_user", task_id))

    def cancel(self, job_ids: Sequence[str]) -> None:
        self.calls.append(("cancel", list(job_ids)))
        self._move(set(job_ids), {"PENDING": "CANCELLED", "RUNNING": "CANCELLED"})

    def queue(self, users: Sequence[str] = ()) -> list[JobStatus]:
        self.calls.append(("queue", list(users)))
        return list(self.jobs)

    def ping(self) -> bool:
        return True

    def advance(self) -> None:
        """Every job one state on, as time passes on a cluster."""
        self._move({job.job_id for job in self.jobs}, _NEXT)

    def _move(self, ids: set[str], moves: dict[str, str]) -> None:
        self.jobs = [job if job.job_id not in ids or job.state not in moves else
                     dataclasses.replace(job, state=moves[job.state],
                                         exit_code=0 if moves[job.state] == "COMPLETED" else None)
                     for job in self.jobs]
