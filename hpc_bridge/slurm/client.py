"""The only place that talks to Slurm: its command-line tools, called with argv lists (never a shell).

The CLI is used rather than pyslurm because the CLI is stable across Slurm releases while pyslurm
is tied to one major version. Everything here takes and returns plain values, so the rest of the
code never parses Slurm output, and unit tests can swap the command runner for a fake.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Runner = Callable[..., subprocess.CompletedProcess[str]]
TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

# One squeue call covers every job; '|' ends each field. Comment is last because it is free text.
# UserName: a comment is free text anyone who can sbatch may set; the job's user is Slurm's own.
_QUEUE_FIELDS = ("JobID", "State", "Reason", "exit_code", "Name", "UserName", "Comment")
_QUEUE_FORMAT = ",".join(f"{field}:|" for field in _QUEUE_FIELDS)


class SlurmError(Exception):
    """A Slurm command failed; `unavailable` means the controller could not be reached (retry later)."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class JobStatus:
    """What the controller knows of one job. `exit_code`/`signal` are meaningful once it has ended;
    `user` is the Unix user Slurm runs it as (empty when unknown)."""

    job_id: str
    state: str
    reason: str
    name: str
    comment: str
    exit_code: int | None
    signal: int | None
    user: str = ""


class SlurmClient(Protocol):
    """What the daemon asks of Slurm: as the service's job user, or (`*_as_user`) through the root
    helper as a task's own Unix user."""

    def submit(self, script: Path, *, workdir: Path) -> str: ...

    def submit_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> str: ...

    def cancel_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None: ...

    def clean_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None: ...

    def queue(self, users: Sequence[str] = ()) -> list[JobStatus]: ...

    def cancel(self, job_ids: Sequence[str]) -> None: ...

    def ping(self) -> bool: ...


def parse_queue(output: str) -> list[JobStatus]:
    """Parse `squeue -O` output produced with `_QUEUE_FORMAT` (pure, for tests)."""
    jobs = []
    for line in output.splitlines():
        if not line.strip():
            continue
        job_id, state, reason, raw_exit, name, user, rest = line.split("|", 6)
        comment = rest[:-1] if rest.endswith("|") else rest
        exit_code = signal = None
        if raw_exit.strip().isdigit():
            status = int(raw_exit)
            exit_code, signal = status >> 8, status & 0x7F
        jobs.append(JobStatus(job_id.strip(), state.strip(), reason.strip(), name.strip(),
                              "" if comment.strip() == "(null)" else comment.strip(), exit_code, signal,
                              user.strip()))
    return jobs


def _is_unreachable(stderr: str) -> bool:
    text = stderr.lower()
    return any(s in text for s in ("unable to contact slurm controller", "connection refused",
                                   "socket timed out", "communication connection failure",
                                   "slurm_load_jobs error: unable", "zero bytes were transmitted"))


class CliSlurmClient:
    """SlurmClient over `sbatch`, `squeue`, `scancel` and `scontrol`.

    `submit_as` names the Unix user jobs belong to: when the daemon runs as root (dev cluster) the
    submission goes through `runuser`, so jobs never run as root; otherwise it must be the daemon's
    own user.
    """

    def __init__(self, *, bin_dir: Path | None = None, submit_as: str | None = None,
                 timeout: float = 30.0, runner: Runner = subprocess.run) -> None:
        self._bin_dir = bin_dir
        self._timeout = timeout
        self._run = runner
        self._submit_prefix = _submit_prefix(submit_as)
        self._user = submit_as or pwd.getpwuid(os.geteuid()).pw_name
        self.calls: Counter[str] = Counter()  # commands run, by name: what the benchmarks report
        # Told of every command: (name, seconds, succeeded); metrics.Metrics.slurm_call in a service.
        self.observer: Callable[[str, float, bool], None] | None = None

    def _cmd(self, name: str) -> str:
        return str(self._bin_dir / name) if self._bin_dir else name

    def _call(self, argv: list[str], *, as_job_user: bool = False) -> str:
        name = Path(argv[0]).name
        self.calls[name] += 1
        env = None
        if as_job_user:
            argv = [*self._submit_prefix, *argv]
            env = job_env(self._user)
        started = time.monotonic()
        try:
            proc = self._run(argv, capture_output=True, text=True, timeout=self._timeout, check=False,
                             stdin=subprocess.DEVNULL, env=env)
        except FileNotFoundError as exc:
            self._observe(name, started, False)
            raise SlurmError(f"command not found: {exc.filename or argv[0]}", unavailable=True) from exc
        except subprocess.TimeoutExpired as exc:
            self._observe(name, started, False)
            raise SlurmError(f"{name} timed out after {self._timeout:g}s",
                             unavailable=True) from exc
        self._observe(name, started, proc.returncode == 0)
        if proc.returncode != 0:
            stderr = proc.stderr.strip()
            raise SlurmError(f"{name} failed ({proc.returncode}): {stderr}",
                             unavailable=_is_unreachable(stderr))
        return proc.stdout

    def _observe(self, name: str, started: float, ok: bool) -> None:
        if self.observer is not None:
            self.observer(name, time.monotonic() - started, ok)

    def submit(self, script: Path, *, workdir: Path) -> str:
        """Submit a batch script; returns the job id. The script's own #SBATCH lines carry the options."""
        out = self._call([self._cmd("sbatch"), "--parsable", f"--chdir={workdir}", str(script)],
                         as_job_user=True)
        job_id = out.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch returned no job id: {out.strip()!r}")
        return job_id

    def queue(self, users: Sequence[str] = ()) -> list[JobStatus]:
        """Every job of the job user (and of `users`: those per-user tasks run as) the controller
        still knows, finished ones included, in one call whatever the count (other users' jobs are
        left out: on a real cluster they are most)."""
        names = ",".join(dict.fromkeys([self._user, *users]))
        return parse_queue(self._call([self._cmd("squeue"), "--noheader", "--states=all",
                                       f"--user={names}", f"--Format={_QUEUE_FORMAT}"]))

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self._call([self._cmd("scancel"), *job_ids])

    # -- per-user execution: `sudo -n HELPER TASK_ID`; the helper acts on the task's stored state --

    def submit_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> str:
        """Submit a task whose job runs as its own Unix user; returns the job id."""
        out = self._helper(task_id, sudo, helper)
        job_id = out.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise SlurmError(f"the submit helper returned no job id: {out.strip()!r}")
        return job_id

    def cancel_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None:
        """Cancel the job of a task being cancelled, as the task's Unix user."""
        self._helper(task_id, sudo, helper)

    def clean_as_user(self, task_id: str, *, sudo: Path, helper: Path) -> None:
        """Remove an ended task's work area (the user's, private) as that user."""
        self._helper(task_id, sudo, helper)

    def _helper(self, task_id: str, sudo: Path, helper: Path) -> str:
        if not TASK_ID.match(task_id):
            raise SlurmError(f"not a task id: {task_id!r}")
        return self._call([str(sudo), "-n", str(helper), task_id])

    def ping(self) -> bool:
        try:
            self._call([self._cmd("scontrol"), "ping"])
        except SlurmError:
            return False
        return True


def job_env(user: str) -> dict[str, str]:
    """All that `sbatch` passes on to the job (its default is --export=ALL): never the daemon's own
    environment, which may hold the site's credentials (AWS_* for object storage, tokens)."""
    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        home = "/"
    env = {"PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin", "HOME": home, "USER": user,
           "LOGNAME": user, "LANG": "C.UTF-8"}
    if "SLURM_CONF" in os.environ:  # a site's non-default Slurm configuration
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return env


def _submit_prefix(submit_as: str | None) -> list[str]:
    if submit_as is None:
        return []
    if os.geteuid() == 0:
        return ["runuser", "-u", submit_as, "--"]
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me != submit_as:
        raise SlurmError(f"configured to submit as {submit_as!r} but running as {me!r} (not root)")
    return []
