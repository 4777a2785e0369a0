"""The launcher seam: how a task's job is submitted, cancelled and cleaned up, and where it leaves its
files. Two implementations, chosen once per task: as the service's own job user (`ServiceLauncher`), or
through the root helper as the task's own Unix user (`HelperLauncher`, `run_as` modes)."""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Protocol

from hpc_bridge.config import SiteConfig
from hpc_bridge.slurm.client import SlurmClient, SlurmError
from hpc_bridge.slurm.script import JobScript
from hpc_bridge.staging.workarea import WorkArea, status_dir, status_root
from hpc_bridge.store import TaskRow

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A task ready for Slurm: its batch script on disk, and what the script was rendered from."""

    row: TaskRow
    script: Path
    job: JobScript


def handed_over(path: Path | str) -> bool:
    """True when the path exists and is no longer the daemon's (the helper gave it to the user)."""
    try:
        return os.lstat(path).st_uid != os.geteuid()
    except FileNotFoundError:
        return False


class Launcher(Protocol):
    packs: bool  # may its tasks share one Slurm job

    def job_user(self, row: TaskRow) -> str:
        """The Unix user the task's job runs as (and whose files the daemon reads)."""

    def record_dir(self, row: TaskRow) -> str | None:
        """Where the job leaves its record and logs."""

    def adapt(self, script: JobScript, task_id: str) -> JobScript:
        """The plan's script as this launcher's jobs run it."""

    def work_area(self, path: Path) -> WorkArea: ...

    def already_written(self, workdir: Path) -> bool:
        """The work area is complete from an attempt whose sbatch did not get through."""

    def before_write(self) -> None: ...

    def submit(self, ready: Prepared) -> str: ...

    def cancel(self, rows: Sequence[TaskRow]) -> None:
        """Ask Slurm to cancel these tasks' jobs; failures are logged and retried next cycle."""

    def clean(self, row: TaskRow, workdir: str) -> None:
        """What must happen before the daemon removes the work area; SlurmError: retry later."""

    def refusal(self, row: TaskRow, exc: SlurmError) -> str: ...


class ServiceLauncher:
    """Jobs as the service's job user (`slurm.submit_as`, or the daemon's own user)."""

    packs = True

    def __init__(self, config: SiteConfig, slurm: SlurmClient, cancel_sent: set[str]) -> None:
        self._slurm = slurm
        self._cancel_sent = cancel_sent
        self._user = config.slurm.submit_as or pwd.getpwuid(os.geteuid()).pw_name
        self._owner = pwd.getpwnam(config.slurm.submit_as) if config.slurm.submit_as and os.geteuid() == 0 else None

    def job_user(self, row: TaskRow) -> str:
        return self._user

    def record_dir(self, row: TaskRow) -> str | None:
        return row.workdir

    def adapt(self, script: JobScript, task_id: str) -> JobScript:
        return script

    def work_area(self, path: Path) -> WorkArea:
        owner = self._owner
        return WorkArea(path, owner.pw_uid if owner else None, owner.pw_gid if owner else None)

    def already_written(self, workdir: Path) -> bool:
        return False

    def before_write(self) -> None:
        pass

    def submit(self, ready: Prepared) -> str:
        return self._slurm.submit(ready.script, workdir=ready.script.parent)

    def cancel(self, rows: Sequence[TaskRow], *, steps: Sequence[str] = ()) -> None:
        """One scancel for the rows' jobs and the `steps` (`JOB.STEP`: packed tasks, cancelled alone)."""
        ids = [*steps, *(row.job_id for row in rows if row.job_id)]
        if not ids:
            return
        try:
            self._slurm.cancel(ids)
            self._cancel_sent.update(ids)
        except SlurmError as exc:
            log.warning("scancel failed, retrying next cycle: %s", exc)

    def clean(self, row: TaskRow, workdir: str) -> None:
        pass

    def refusal(self, row: TaskRow, exc: SlurmError) -> str:
        return f"Slurm refused the job: {exc}"


class HelperLauncher:
    """Jobs as the task's own Unix user, through `sudo` and the root helper, one task at a time. The
    work area stays the daemon's until the helper hands it over; the record and logs go to a status
    directory the daemon can read, since the work area becomes private to the user."""

    packs = False

    def __init__(self, config: SiteConfig, slurm: SlurmClient, cancel_sent: set[str],
                 run: Callable[[Callable[[TaskRow], None], Sequence[TaskRow]], object]) -> None:
        self._config = config
        self._slurm = slurm
        self._cancel_sent = cancel_sent
        self._run = run
        self._paths = {"sudo": config.run_as.sudo, "helper": config.run_as.helper}

    def job_user(self, row: TaskRow) -> str:
        return row.run_as or ""

    def record_dir(self, row: TaskRow) -> str | None:
        return str(status_dir(self._config.storage.work_root, row.id))

    def adapt(self, script: JobScript, task_id: str) -> JobScript:
        return dataclasses.replace(script, status_dir=str(status_dir(self._config.storage.work_root, task_id)),
                                   log_tail=self._config.storage.log_tail_bytes)

    def work_area(self, path: Path) -> WorkArea:
        return WorkArea(path)

    def already_written(self, workdir: Path) -> bool:
        return handed_over(workdir)

    def before_write(self) -> None:
        status_root(self._config.storage.work_root).mkdir(mode=0o755, parents=True, exist_ok=True)

    def submit(self, ready: Prepared) -> str:
        return self._slurm.submit_as_user(ready.row.id, **self._paths)

    def cancel(self, rows: Sequence[TaskRow]) -> None:
        self._run(self._cancel_one, rows)  # one helper call per task (it acts on that task alone)

    def _cancel_one(self, row: TaskRow) -> None:
        try:
            self._slurm.cancel_as_user(row.id, **self._paths)
            self._cancel_sent.add(row.job_id or "")
        except SlurmError as exc:
            log.warning("task %s: cancelling job %s as %s failed, retrying next cycle: %s",
                        row.id, row.job_id, row.run_as, exc)

    def clean(self, row: TaskRow, workdir: str) -> None:
        if handed_over(workdir) or os.path.lexists(status_dir(self._config.storage.work_root, row.id)):
            self._slurm.clean_as_user(row.id, **self._paths)  # the user's: removed as the user

    def refusal(self, row: TaskRow, exc: SlurmError) -> str:
        return f"could not submit the job as Unix user {row.run_as}: {exc}"


class Launchers:
    """Both launchers of a daemon; `for_row` picks a task's."""

    def __init__(self, config: SiteConfig, slurm: SlurmClient, executor: Executor, cancel_sent: set[str]) -> None:
        self.service = ServiceLauncher(config, slurm, cancel_sent)
        self.helper = HelperLauncher(config, slurm, cancel_sent,
                                     lambda func, rows: list(executor.map(func, rows)))

    def for_row(self, row: TaskRow) -> Launcher:
        return self.helper if row.run_as else self.service

    def job_uid(self, row: TaskRow) -> int:
        return pwd.getpwnam(self.for_row(row).job_user(row)).pw_uid
