"""The loop that owns every side effect: submit queued tasks, watch their jobs, finish them.

One cycle = one `squeue` for all jobs, whatever their number; then each active task's state is
derived from that snapshot plus, where Slurm alone cannot tell, the job's own record file. The
same snapshot adopts jobs a previous daemon submitted but did not get to record (crash between
`sbatch` and the store update), so a restart never submits a task twice. Exactly one daemon runs
per database: `DaemonLock` guards it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import pwd
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO

from hpc_bridge.config import ConfigError, SiteConfig
from hpc_bridge.containers.apptainer import UnsafeValue
from hpc_bridge.containers.cache import ImageCache, PullError
from hpc_bridge.containers.images import RegistryImage
from hpc_bridge.lifecycle import ACTIVE
from hpc_bridge.slurm import pack
from hpc_bridge.slurm.client import JobStatus, SlurmClient, SlurmError
from hpc_bridge.slurm.record import JobRecord, file_refusal, parse_record
from hpc_bridge.slurm.script import JobScript, render
from hpc_bridge.slurm.states import map_state, member_state, still_active
from hpc_bridge.staging import http
from hpc_bridge.staging.paths import within
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.staging.workarea import WorkArea, status_dir, status_root
from hpc_bridge.store import Store, TaskRow
from hpc_bridge.store.runs import RunStore
from hpc_bridge.store.tasks import iso, now_iso
from hpc_bridge.tes.jobspec import (
    Download,
    InvalidTask,
    JobPlan,
    job_name,
    plan_job,
    task_id_from_comment,
)
from hpc_bridge.tes.models import State, Task

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class Prepared:
    """A task ready for Slurm: its batch script on disk, and what the script was rendered from."""

    row: TaskRow
    script: Path
    job: JobScript


class DaemonLock:
    """An exclusive lock file next to the database; a second daemon cannot take it."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".daemon.lock")
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


MAX_RECORD_BYTES = 4 * 1024 * 1024


class JobFileRefused(Exception):
    """A file where the job writes that the daemon will not read; the message says which and why."""


def _open_job_file(path: str, base: str, owner_uid: int) -> BinaryIO | None:
    """Open a file the job wrote under `base` (its work area or status directory) for the daemon,
    which may be root: walked to from `base` without following a symlink, and only the job user's
    own single-link regular file (`file_refusal`). None: no such file (yet)."""
    area = WorkArea(Path(base))
    try:
        fd = area.open_read(area.relative(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JobFileRefused(f"{path}: {exc.strerror or exc}; not read") from None
    fh = os.fdopen(fd, "rb")
    if (reason := file_refusal(os.fstat(fd), owner_uid)) is not None:
        fh.close()
        raise JobFileRefused(f"{path}: {reason}; not read")
    return fh


def read_record(workdir: str | None, owner_uid: int) -> JobRecord | None:
    """None when there is no record (yet); JobFileRefused when it is not the job's own file; other
    I/O errors propagate (retried next cycle). Its size is capped."""
    if not workdir:
        return None
    fh = _open_job_file(f"{workdir}/record.jsonl", workdir, owner_uid)
    if fh is None:
        return None
    with fh:
        return parse_record(fh.read(MAX_RECORD_BYTES).decode(errors="replace"))


def _tail(path: str, workdir: str, limit: int, owner_uid: int) -> str:
    """The end of an executor's output, checked as the record is (JobFileRefused)."""
    fh = _open_job_file(path, workdir, owner_uid)
    if fh is None:
        return ""
    with fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - limit))
        return fh.read().decode(errors="replace")


class Daemon:
    def __init__(self, config: SiteConfig, store: Store, slurm: SlurmClient) -> None:
        self.config = config
        self.store = store
        self.slurm = slurm
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancel_sent: set[str] = set()
        self._pool = ThreadPoolExecutor(config.monitor.submit_parallelism, "hpc-bridge-submit")
        # Image pulls and downloads can take minutes: their own pool, so submissions go on meanwhile.
        self._stager = ThreadPoolExecutor(config.apptainer.pull_parallelism + 2, "hpc-bridge-stage")
        self._staging: dict[str, Future[None]] = {}
        self.schemes = Schemes(config, RunStore(store).owner_of)
        self.images = ImageCache(config.apptainer)
        self._last_cleanup = 0.0
        self._unconfirmed: dict[str, float] = {}  # task id -> when its job ended without a full record
        self._job_user = pwd.getpwnam(config.slurm.submit_as) if config.slurm.submit_as else None
        # Whom the service's own jobs (every task not run as its own user) belong to in Slurm.
        self._service_user = config.slurm.submit_as or pwd.getpwuid(os.geteuid()).pw_name
        self._ignored_jobs: set[str] = set()  # jobs carrying a task's comment under another user
        self._check_run_as()

    # -- the loop ---------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        mon = self.config.monitor
        interval = mon.min_interval
        log.info("daemon started (cycle %.1fs..%.1fs)", mon.min_interval, mon.idle_interval)
        while not self._stop.is_set():
            try:
                busy = self.cycle()
                if time.monotonic() - self._last_cleanup >= mon.cleanup_interval:
                    self._last_cleanup = time.monotonic()
                    self.clean_work_areas()
            except Exception:  # a bug must not kill the loop: log it, back off, go on
                log.exception("daemon cycle failed")
                busy = False
            interval = mon.min_interval if busy else min(interval * 2, mon.idle_interval)
            self._wake.wait(interval)
            self._wake.clear()

    def cycle(self) -> bool:
        """One pass. True while jobs are in flight, or when there is nothing at all (then a cycle is
        one indexed query, and a task created by another process, a WES engine, is picked up
        within min_interval); False while tasks wait only for staging: the loop then backs off."""
        active = self.store.tasks.in_states(ACTIVE)
        if not active:
            return True
        users = sorted({row.run_as for row in active if row.run_as})
        try:
            jobs = self.slurm.queue(users) if users else self.slurm.queue()
        except SlurmError as exc:
            log.warning("Slurm unavailable, tasks stay as they are: %s", exc)
            return False
        by_id = {j.job_id: j for j in jobs}
        by_task: dict[str, list[JobStatus]] = {}
        by_pack: dict[str, list[JobStatus]] = {}
        for job in jobs:  # a comment is anyone's to set: several jobs may carry the same one
            if tid := task_id_from_comment(job.comment):
                by_task.setdefault(tid, []).append(job)
            elif pid := pack.pack_id_from_comment(job.comment):
                by_pack.setdefault(pid, []).append(job)
        busy = any(row.job_id for row in active)
        to_cancel: list[str] = []
        to_cancel_as_user: list[TaskRow] = []
        to_submit: list[TaskRow] = []
        for row in active:
            try:
                if row.job_id is None:
                    adopted = self._submitted_before(row, by_id, by_task, by_pack)
                    if adopted is not None:
                        self._adopt(row, adopted)
                    elif row.cancel_requested:
                        self._staging.pop(row.id, None)
                        self.store.tasks.update(row.id, state=State.CANCELED, end_time=now_iso(),
                                                message="cancelled before submission")
                    else:
                        to_submit.append(row)
                    continue
                status = by_id.get(row.job_id)
                if row.cancel_requested and status is not None and still_active(status.state) \
                        and row.pack_id:
                    to_cancel.extend(self._cancel_packed(row))
                elif row.cancel_requested and status is not None and still_active(status.state) \
                        and row.job_id not in self._cancel_sent:
                    if row.run_as:
                        to_cancel_as_user.append(row)
                    else:
                        to_cancel.append(row.job_id)
                self._update(row, status)
            except Exception:  # one task's trouble (a bug, an I/O error) must not stall the others
                log.exception("task %s: monitoring failed, retrying next cycle", row.id)
        if to_cancel:
            try:
                self.slurm.cancel(to_cancel)
                self._cancel_sent.update(to_cancel)
            except SlurmError as exc:
                log.warning("scancel failed, retrying next cycle: %s", exc)
        # One helper call per task (it acts on that task alone), a few at a time.
        list(self._pool.map(self._cancel_as_user, to_cancel_as_user))
        return self._submit(to_submit) or busy

    def _cancel_packed(self, row: TaskRow) -> list[str]:
        """A packed task is cancelled alone: its step if it runs, else a marker so that the launcher
        skips it (both, when it starts in between: the next cycle sees its step). Returns the steps
        to scancel."""
        record, _ = self._record(row)
        if record is not None and record.finished:
            return []
        if record is not None and record.step_id:
            step = f"{row.job_id}.{record.step_id}"
            return [] if step in self._cancel_sent else [step]
        if row.id not in self._cancel_sent:
            directory = self._pack_dir(row.pack_id or "")
            self._work_area(directory, row).write(f"cancel/{row.id}", "")
            self._cancel_sent.add(row.id)
        return []

    def _cancel_as_user(self, row: TaskRow) -> None:
        try:
            self.slurm.cancel_as_user(row.id, sudo=self.config.run_as.sudo, helper=self.config.run_as.helper)
            self._cancel_sent.add(row.job_id or "")
        except SlurmError as exc:
            log.warning("task %s: cancelling job %s as %s failed, retrying next cycle: %s",
                        row.id, row.job_id, row.run_as, exc)

    # -- submission -------------------------------------------------------------------------

    def _submitted_before(self, row: TaskRow, by_id: dict[str, JobStatus],
                          by_task: dict[str, list[JobStatus]],
                          by_pack: dict[str, list[JobStatus]]) -> str | None:
        """A job a previous attempt submitted: still known to Slurm (comment: the task's, or its
        pack's, and run as the task's job user: anyone who can sbatch can write a comment), or long
        gone from the controller but recorded by the job itself in its work area."""
        user = row.run_as or self._service_user
        for job in [*by_task.get(row.id, []), *by_pack.get(row.pack_id or "", [])]:
            if job.user == user:
                return job.job_id
            if job.job_id not in self._ignored_jobs:
                self._ignored_jobs.add(job.job_id)
                log.warning("task %s: not adopting Slurm job %s: it carries the task's comment but runs "
                            "as %r, not as %r", row.id, job.job_id, job.user, user)
        if row.submit_attempts:
            record, _ = self._record(row)
            # A job still in the snapshot was the task's only if its comment and user said so above.
            if record is not None and record.job_id and record.job_id not in by_id:
                return record.job_id
        return None

    def _submit(self, rows: list[TaskRow]) -> bool:
        """Submit what is due, several sbatch at a time; True if anything was due."""
        now = time.time()
        due = [r for r in rows if r.next_attempt_at <= now
               and not ((f := self._staging.get(r.id)) is not None and not f.done())]
        batch = due[: self.config.monitor.submit_batch]
        ready = [p for p in self._pool.map(self._prepare_one, batch) if p is not None]
        packing = self.config.slurm.packing
        if packing.enabled:
            groups = pack.group(ready, key=lambda p: (p.row.owner, p.row.run_as, tuple(p.job.options)),
                                options=lambda p: p.job.options, settings=packing)
        else:
            groups = [[p] for p in ready]
        list(self._pool.map(self._submit_group, groups))
        if len(due) > len(batch):
            self._wake.set()  # more are waiting: no pause before the next batch
        return bool(batch)

    def _prepare_one(self, row: TaskRow) -> Prepared | None:
        """None when the task is not ready (staging), cannot run (failed) or was cancelled meanwhile."""
        try:
            if self._stop.is_set() or (ready := self.prepare(row)) is None:
                return None
        except Exception as exc:  # a bug or an unforeseen input: fail this task, not the daemon
            log.exception("task %s: preparing the job failed", row.id)
            self._fail(row, f"internal error while submitting: {type(exc).__name__}: {exc}")
            return None
        now = self.store.tasks.get(row.id)
        if now is None or now.cancel_requested:
            return None  # cancelled while being prepared: the next cycle makes it CANCELED
        return ready

    def _submit_group(self, group: list[Prepared]) -> None:
        rows = [p.row for p in group]
        try:
            if len(group) == 1 or rows[0].run_as:  # the helper submits one task of one user at a time
                for ready in group:
                    self._try_submit(ready)
            else:
                self._submit_pack(group)
        except Exception as exc:  # a bug or an unforeseen input: fail these tasks, not the daemon
            log.exception("tasks %s: submission failed", ", ".join(r.id for r in rows))
            for row in rows:
                self._fail(row, f"internal error while submitting: {type(exc).__name__}: {exc}")

    def prepare(self, row: TaskRow) -> Prepared | None:
        """Everything before sbatch: plan, work area, script, and the store told where the job's
        files will be. None when the task is not staged yet, or cannot run (it is then failed)."""
        if self.config.run_as.enabled and not row.run_as:  # fail closed: never the service account
            self._fail(row, f"cannot run task: run_as.mode is {self.config.run_as.mode!r} and the task "
                            "has no Unix user (created before per-user execution was turned on?)")
            return None
        workdir = self.config.storage.work_root / row.id
        try:
            plan = plan_job(Task.model_validate(row.task), task_id=row.id, workdir=str(workdir),
                            config=self.config, schemes=self.schemes, owner=row.owner,
                            limits=self.config.limits.for_owner(row.owner))
            if row.run_as:  # the work area will be private to the user: record and logs go apart
                plan.script = self._with_status_dir(plan.script, row.id)
            script_text = render(plan.script, self.config.template_search_path)
        except (InvalidTask, UnsafeValue) as exc:  # valid at POST, not any more (site config changed)
            self._fail(row, f"cannot run task: {exc}")
            return None
        script = workdir / "job.sh"
        if row.run_as and self._handed_over(workdir):
            pass  # complete: the helper took it over in an attempt whose sbatch did not get through
        else:
            area = self._work_area(workdir, row)
            if not self._staged(row, area, plan):
                return None
            try:
                if row.run_as:
                    status_root(self.config.storage.work_root).mkdir(mode=0o755, parents=True,
                                                                     exist_ok=True)
                area.create()
                for directory in plan.directories:
                    area.make_dirs(area.relative(directory))
                for name, content in plan.files.items():
                    area.write(area.relative(name), content)
                area.write("job.sh", script_text)
                area.hand_over()
            except OSError as exc:
                self._fail(row, f"cannot prepare work directory {workdir}: {exc}")
                return None
        streams = [dict(zip(("stdout", "stderr"), plan.script.log_paths(i), strict=True))
                   for i in range(len(plan.script.executors))]
        self.store.tasks.update(row.id, workdir=str(workdir), streams=streams, add_logs=plan.warnings,
                                submit_attempts=row.submit_attempts + 1)
        return Prepared(row, script, plan.script)

    def _staged(self, row: TaskRow, area: WorkArea, plan: JobPlan) -> bool:
        """True once the task's images are in the cache and its downloads are in its work area.
        Until then the task stays QUEUED, with a system log line saying what is being prepared."""
        pulls = [img for img in plan.pulls if not self.images.is_cached(img)]
        downloads = [d for d in plan.downloads if not area.is_file(area.relative(d.dest))]
        future = self._staging.get(row.id)
        if future is None:
            if not pulls and not downloads:
                return True
            lines = [*(f"preparing image {img.reference} (pulling {img.pull_uri} into the image cache)"
                       for img in pulls), *(f"downloading input {d.url}" for d in downloads)]
            # The work area is known from now on, so it is cleaned up even if staging fails.
            self.store.tasks.update(row.id, workdir=str(area.path), add_logs=lines, message=lines[0])
            future = self._stager.submit(self._stage, row.id, area, pulls, downloads)
            future.add_done_callback(lambda _: self._wake.set())
            self._staging[row.id] = future
            return False
        if not future.done():
            return False
        del self._staging[row.id]
        exc = future.exception()
        if exc is None:
            return True
        if isinstance(exc, (PullError, http.DownloadError)):
            self._fail(row, str(exc))
        else:
            self._fail(row, f"internal error while preparing inputs: {type(exc).__name__}: {exc}")
        return False

    def _stage(self, task_id: str, area: WorkArea, pulls: list[RegistryImage],
               downloads: list[Download]) -> None:
        for image in pulls:
            self.images.ensure(image)
        if not downloads:
            return
        # Downloaded into a directory only the daemon can reach, then renamed into the work area.
        private = self.config.storage.work_root / ".staging" / task_id
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            area.create()
            for i, item in enumerate(downloads):
                temp = private / str(i)
                http.download(item.url, temp, self.config.storage.http)
                area.move_in(temp, area.relative(item.dest))
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _try_submit(self, ready: Prepared) -> None:
        row = ready.row
        try:
            if row.run_as:
                job_id = self.slurm.submit_as_user(row.id, sudo=self.config.run_as.sudo,
                                                   helper=self.config.run_as.helper)
            else:
                job_id = self.slurm.submit(ready.script, workdir=ready.script.parent)
        except SlurmError as exc:
            self._refused([row], exc)
            return
        self.store.tasks.update(row.id, job_id=job_id, pack_id=None,
                                message=f"submitted as Slurm job {job_id}")

    def _submit_pack(self, group: list[Prepared]) -> None:
        """One Slurm job for the group, each task a step of it. The pack id is stored with the tasks
        before sbatch, so a restart adopts the job by its comment as it adopts a task's own."""
        pack_id = str(uuid.uuid4())
        directory = self._pack_dir(pack_id)
        first = group[0]
        members = [pack.Member(task_id=p.row.id, name=job_name(p.row.id), workdir=p.job.workdir,
                               record=p.job.record_path, output=f"{p.job.record_dir}/slurm.out")
                   for p in group]
        script = pack.PackScript(pack_id=pack_id, directory=str(directory), members=members,
                                 options=pack.pack_options(first.job.options, len(group)),
                                 step_time=pack.time_option(first.job.options))
        text = render(script, self.config.template_search_path, "pack.sh.j2")
        for p in group:
            self.store.tasks.update(p.row.id, pack_id=pack_id)
        area = self._work_area(directory, first.row)
        area.create()
        area.make_dirs("cancel")
        area.write("pack.sh", text)
        area.hand_over()
        try:
            job_id = self.slurm.submit(directory / "pack.sh", workdir=directory)
        except SlurmError as exc:
            self._refused([p.row for p in group], exc)
            return
        for p in group:
            self.store.tasks.update(p.row.id, job_id=job_id, message=f"submitted as a step of Slurm job "
                                    f"{job_id}, shared with {len(group) - 1} other short tasks")

    def _refused(self, rows: list[TaskRow], exc: SlurmError) -> None:
        for row in rows:
            if exc.unavailable:
                # Not less than the command timeout: a timed-out sbatch may still have been
                # accepted, and the next squeue must get a chance to show (and adopt) it.
                delay = min(self.config.monitor.retry_max_delay,
                            max(self.config.slurm.command_timeout, 2.0 ** row.submit_attempts))
                self.store.tasks.update(row.id, next_attempt_at=time.time() + delay)
                log.warning("task %s: Slurm unavailable, retrying in %.0fs: %s", row.id, delay, exc)
            elif row.run_as:
                self._fail(row, f"could not submit the job as Unix user {row.run_as}: {exc}")
            else:
                self._fail(row, f"Slurm refused the job: {exc}")

    def _pack_dir(self, pack_id: str) -> Path:
        return self.config.storage.work_root / pack.PACK_DIR / pack_id

    def _adopt(self, row: TaskRow, job_id: str) -> None:
        log.info("task %s: adopting Slurm job %s submitted before a restart", row.id, job_id)
        self.store.tasks.update(row.id, job_id=job_id,  # prepare() recorded the work dir before sbatch
                                message=f"adopted Slurm job {job_id} after a restart")

    def _work_area(self, workdir: Path, row: TaskRow) -> WorkArea:
        """A per-user task's area stays the daemon's until the helper hands it over."""
        user = self._job_user if os.geteuid() == 0 and not row.run_as else None
        return WorkArea(workdir, user.pw_uid if user else None, user.pw_gid if user else None)

    # -- per-user execution -------------------------------------------------------------------

    def _check_run_as(self) -> None:
        settings = self.config.run_as
        if not settings.enabled:
            return
        me = pwd.getpwuid(os.geteuid()).pw_name
        if me != settings.service_user:
            raise ConfigError(f"run_as.service_user is {settings.service_user!r} but the daemon runs as "
                              f"{me!r}: per-user execution needs the daemon to run as that account")

    def _with_status_dir(self, script: JobScript, task_id: str) -> JobScript:
        return dataclasses.replace(script, status_dir=str(status_dir(self.config.storage.work_root, task_id)),
                                   log_tail=self.config.storage.log_tail_bytes)

    def _job_uid(self, row: TaskRow) -> int:
        """Whose files the task's job writes: its own Unix user's, or the service's job user's."""
        return pwd.getpwnam(row.run_as or self._service_user).pw_uid

    def _record(self, row: TaskRow) -> tuple[JobRecord | None, str | None]:
        """The job's record and, when its file is refused, why (a line for the task's system logs)."""
        try:
            return read_record(self._record_dir(row), self._job_uid(row)), None
        except JobFileRefused as exc:
            return None, str(exc)

    def _record_dir(self, row: TaskRow) -> str | None:
        """Where a task's job leaves its record and logs: the work area, or for a per-user task
        its status directory (the work area is private to the user)."""
        if row.run_as:
            return str(status_dir(self.config.storage.work_root, row.id))
        return row.workdir

    @staticmethod
    def _handed_over(path: Path | str) -> bool:
        """True when the path exists and is no longer the daemon's (the helper gave it to the user)."""
        try:
            return os.lstat(path).st_uid != os.geteuid()
        except FileNotFoundError:
            return False

    def _fail(self, row: TaskRow, message: str) -> None:
        """SYSTEM_ERROR, unless the user already asked to cancel: then the task is simply CANCELED."""
        log.warning("task %s: %s", row.id, message)
        self.store.tasks.fail(row.id, message)

    # -- monitoring -------------------------------------------------------------------------

    def _update(self, row: TaskRow, status: JobStatus | None) -> None:
        if status is not None and status.state == "RUNNING" and row.state == State.RUNNING \
                and not row.cancel_requested and not row.pack_id:
            return  # nothing new until the job ends: spare the record read
        needs_record = status is None or status.state not in ("PENDING", "CONFIGURING")
        record, refused = self._record(row) if needs_record else (None, None)
        new_lines = [refused] if refused else []
        slurm_state, reason = (status.state, status.reason) if status else (None, "")
        if row.pack_id:  # the shared job's state is not the task's: its step's end is in its record
            slurm_state, reason = member_state(slurm_state, reason, record, carrier_id=row.job_id or "",
                                               cancel_requested=bool(row.cancel_requested))
        ignore = [bool(e.get("ignore_error")) for e in row.task["executors"]]
        mapped = map_state(slurm_state, reason, record, ignore_error=ignore,
                           cancel_requested=bool(row.cancel_requested))
        if mapped.state == State.SYSTEM_ERROR and not (record and record.finished) \
                and (slurm_state is None or not still_active(slurm_state)):
            first = self._unconfirmed.setdefault(row.id, time.monotonic())
            if time.monotonic() - first < self.config.monitor.record_grace:
                return  # the record may still be on its way through the shared filesystem
        self._unconfirmed.pop(row.id, None)
        terminal = State(mapped.state).terminal
        new_lines += [mapped.log] if mapped.log else []
        changes: dict[str, Any] = {}
        if record and record.start_time and not row.start_time:
            changes["start_time"] = record.start_time
        if terminal:
            now = now_iso()  # the record's clock is the job's: never later than ours (retention)
            changes["end_time"] = min(record.end_time, now) if record and record.end_time else now
            changes["executor_logs"], refused_tails = self._executor_logs(row, record)
            new_lines += refused_tails
            if record:
                new_lines += record.output_warnings
                changes["outputs"] = record.outputs
            self._cancel_sent.discard(row.job_id or "")
            self._cancel_sent.discard(row.id)
            if record and record.step_id:
                self._cancel_sent.discard(f"{row.job_id}.{record.step_id}")
        elif mapped.state == State.RUNNING and record:
            changes["executor_logs"], _ = self._executor_logs(row, record, tails=False)
        added = [line for line in dict.fromkeys(new_lines) if line not in row.system_logs]
        if refused in added:
            log.warning("task %s: %s", row.id, refused)
        if mapped.state != row.state or changes or added:
            self.store.tasks.update(row.id, state=mapped.state, message=mapped.log, add_logs=added, **changes)

    # -- work areas ---------------------------------------------------------------------------

    def clean_work_areas(self) -> int:
        """Remove the work areas of tasks that ended more than the retention time ago (outputs
        live in the data roots and are never touched). Returns how many were removed."""
        hours = self.config.storage.work_retention_hours
        if hours is None:
            return 0
        cutoff = iso(datetime.now(UTC) - timedelta(hours=hours))
        root = os.path.realpath(self.config.storage.work_root)
        removed = 0
        packs: set[str] = set()
        for row in self.store.tasks.due_for_cleanup(cutoff):
            workdir = os.path.realpath(row.workdir or "")
            if workdir == root or not within(workdir, root):
                log.error("task %s: work area %s is outside %s; not removing it", row.id, workdir, root)
                self.store.tasks.update(row.id, cleaned_at=now_iso())
                continue
            if row.run_as and (self._handed_over(workdir)
                               or os.path.lexists(status_dir(self.config.storage.work_root, row.id))):
                try:  # the user's: removed as the user, by the helper
                    self.slurm.clean_as_user(row.id, sudo=self.config.run_as.sudo,
                                             helper=self.config.run_as.helper)
                except SlurmError as exc:
                    log.warning("task %s: could not remove work area %s as %s, retrying later: %s",
                                row.id, workdir, row.run_as, exc)
                    continue
            shutil.rmtree(workdir, ignore_errors=True)  # never follows symlinks planted inside
            if os.path.exists(workdir):
                log.warning("task %s: could not remove work area %s, retrying later", row.id, workdir)
                continue
            self.store.tasks.update(row.id, cleaned_at=now_iso(),
                                    add_logs=[f"work area removed {hours:g} h after the task ended"])
            removed += 1
            if row.pack_id:
                packs.add(row.pack_id)
        self._clean_pack_dirs(packs)
        return removed

    def _clean_pack_dirs(self, packs: set[str]) -> None:
        """A pack's directory (launcher, slurm.out, cancel markers) goes with its last work area.
        Only packs of this store's tasks: another service on the same work root (or a test server)
        has packs this one knows nothing of, and removing one fails its pending job."""
        for pack_id in packs - self.store.tasks.packs_in_use():
            directory = self._pack_dir(pack_id)
            if not directory.is_symlink():
                shutil.rmtree(directory, ignore_errors=True)

    def _executor_logs(self, row: TaskRow, record: JobRecord | None,
                       tails: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
        """The executors' TES logs, and a line for each output file that was refused, not read."""
        if record is None:
            return [], []
        out, refused = [], []
        limit = self.config.storage.log_tail_bytes
        for index, ex in sorted(record.executors.items()):
            entry: dict[str, Any] = {"exit_code": ex.exit_code if ex.exit_code is not None else -1}
            if ex.start_time:
                entry["start_time"] = ex.start_time
            if ex.end_time:
                entry["end_time"] = ex.end_time
            if tails and index < len(row.streams) and (base := self._record_dir(row)):
                for stream in ("stdout", "stderr"):
                    try:
                        entry[stream] = _tail(row.streams[index][stream], base, limit, self._job_uid(row))
                    except JobFileRefused as exc:
                        entry[stream] = ""
                        refused.append(f"executor {index} {stream}: {exc}")
                        log.warning("task %s: executor %d %s: %s", row.id, index, stream, exc)
            out.append(entry)
        return out, refused
