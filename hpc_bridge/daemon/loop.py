"""The loop that owns every side effect: submit queued tasks, watch their jobs, finish them.

One cycle = one `squeue` for all jobs, whatever their number; then each active task's state is
derived from that snapshot plus, where Slurm alone cannot tell, the job's own record file. The
same snapshot adopts jobs a previous daemon submitted but did not get to record (crash between
`sbatch` and the store update), so a restart never submits a task twice. Exactly one daemon runs
per database: `DaemonLock` guards it.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from hpc_bridge.c4gh.keys import Crypt4ghKeyError, SiteKey, load_site_key
from hpc_bridge.config import ConfigError, SiteConfig
from hpc_bridge.daemon.canceller import Canceller
from hpc_bridge.daemon.context import Context
from hpc_bridge.daemon.janitor import Janitor
from hpc_bridge.daemon.launcher import Launchers, Prepared
from hpc_bridge.daemon.monitor import Monitor
from hpc_bridge.daemon.stager import Stager
from hpc_bridge.daemon.submitter import Submitter
from hpc_bridge.daemon.uploader import Uploader
from hpc_bridge.lifecycle import ACTIVE
from hpc_bridge.metrics import Metrics
from hpc_bridge.slurm import pack
from hpc_bridge.slurm.client import JobStatus, SlurmClient, SlurmError
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.store import Store, TaskRow
from hpc_bridge.store.runs import RunStore
from hpc_bridge.store.tasks import now_iso
from hpc_bridge.tes.jobspec import task_id_from_comment

log = logging.getLogger(__name__)


class Snapshot:
    """One `squeue`, indexed the ways a cycle asks: by job id, and by the task or pack comment (a
    comment is anyone's to set: several jobs may carry the same one)."""

    def __init__(self, jobs: list[JobStatus]) -> None:
        self.by_id = {j.job_id: j for j in jobs}
        self.by_task: dict[str, list[JobStatus]] = {}
        self.by_pack: dict[str, list[JobStatus]] = {}
        for job in jobs:
            if tid := task_id_from_comment(job.comment):
                self.by_task.setdefault(tid, []).append(job)
            elif pid := pack.pack_id_from_comment(job.comment):
                self.by_pack.setdefault(pid, []).append(job)


class Daemon:
    def __init__(self, config: SiteConfig, store: Store, slurm: SlurmClient, metrics: Metrics | None = None) -> None:
        _check_run_as(config)
        pool = ThreadPoolExecutor(config.monitor.submit_parallelism, "hpc-bridge-submit")
        cancel_sent: set[str] = set()
        self._ctx = ctx = Context(config, store, slurm, pool, Launchers(config, slurm, pool, cancel_sent),
                                  threading.Event(), threading.Event(), cancel_sent,
                                  site_key=_site_key(config), metrics=metrics)
        schemes = Schemes(config, RunStore(store).owner_of)
        self.stager = Stager(ctx, schemes)
        self.submitter = Submitter(ctx, self.stager, schemes)
        self.uploader = Uploader(ctx, schemes)
        self.monitor = Monitor(ctx, self.uploader)
        self.canceller = Canceller(ctx)
        self.janitor = Janitor(ctx)
        self._last_cleanup = 0.0
        self._ignored_jobs: set[str] = set()  # jobs carrying a task's comment under another user

    def wake(self) -> None:
        self._ctx.wake.set()

    def stop(self) -> None:
        self._ctx.stop.set()
        self.stager.close()
        self.uploader.close()
        self._ctx.wake.set()

    def prepare(self, row: TaskRow) -> Prepared | None:
        return self.submitter.prepare(row)

    def clean_work_areas(self) -> int:
        return self.janitor.clean_work_areas()

    def run(self) -> None:
        ctx, mon = self._ctx, self._ctx.config.monitor
        interval = mon.min_interval
        log.info("daemon started (cycle %.1fs..%.1fs)", mon.min_interval, mon.idle_interval)
        while not ctx.stop.is_set():
            try:
                started = time.monotonic()
                busy = self.cycle()
                if ctx.metrics is not None:
                    ctx.metrics.cycles.observe(time.monotonic() - started)
                if time.monotonic() - self._last_cleanup >= mon.cleanup_interval:
                    self._last_cleanup = time.monotonic()
                    self.janitor.clean_work_areas()
            except Exception:  # a bug must not kill the loop: log it, back off, go on
                log.exception("daemon cycle failed")
                busy = False
            interval = mon.min_interval if busy else min(interval * 2, mon.idle_interval)
            ctx.wake.wait(interval)
            ctx.wake.clear()

    def cycle(self) -> bool:
        """One pass: cancel, check, create. True while jobs are in flight, or when there is nothing
        at all (then a cycle is one indexed query, and a task created by another process, a WES
        engine, is picked up within min_interval); False while tasks wait only for staging: the loop
        then backs off."""
        ctx = self._ctx
        active = ctx.store.tasks.in_states(ACTIVE)
        if not active:
            return True
        users = sorted({row.run_as for row in active if row.run_as})
        try:
            snapshot = Snapshot(ctx.slurm.queue(users) if users else ctx.slurm.queue())
        except SlurmError as exc:
            log.warning("Slurm unavailable, tasks stay as they are: %s", exc)
            return False
        busy = any(row.job_id for row in active)
        to_submit: list[TaskRow] = []
        for row in active:
            try:
                if row.job_id is None:
                    if (adopted := self._submitted_before(row, snapshot)) is not None:
                        self._adopt(row, adopted)
                    elif row.cancel_requested:
                        self.stager.forget(row.id)
                        ctx.store.tasks.update(row.id, state="CANCELED", end_time=now_iso(),
                                               message="cancelled before submission")
                    else:
                        to_submit.append(row)
                    continue
                status = snapshot.by_id.get(row.job_id)
                self.canceller.consider(row, status)
                self.monitor.update(row, status)
            except Exception:  # one task's trouble (a bug, an I/O error) must not stall the others
                log.exception("task %s: monitoring failed, retrying next cycle", row.id)
        self.canceller.send()
        return self.submitter.submit(to_submit) or busy

    def _submitted_before(self, row: TaskRow, snapshot: Snapshot) -> str | None:
        """A job a previous attempt submitted: still known to Slurm (comment: the task's, or its
        pack's, and run as the task's job user: anyone who can sbatch can write a comment), or long
        gone from the controller but recorded by the job itself in its work area."""
        user = self._ctx.launchers.for_row(row).job_user(row)
        for job in [*snapshot.by_task.get(row.id, []), *snapshot.by_pack.get(row.pack_id or "", [])]:
            if job.user == user:
                return job.job_id
            if job.job_id not in self._ignored_jobs:
                self._ignored_jobs.add(job.job_id)
                log.warning("task %s: not adopting Slurm job %s: it carries the task's comment but runs "
                            "as %r, not as %r", row.id, job.job_id, job.user, user)
        if row.submit_attempts:
            record, _ = self._ctx.record(row)
            # A job still in the snapshot was the task's only if its comment and user said so above.
            if record is not None and record.job_id and record.job_id not in snapshot.by_id:
                return record.job_id
        return None

    def _adopt(self, row: TaskRow, job_id: str) -> None:
        log.info("task %s: adopting Slurm job %s submitted before a restart", row.id, job_id)
        self._ctx.store.tasks.update(row.id, job_id=job_id,  # prepare() recorded the work dir before sbatch
                                     message=f"adopted Slurm job {job_id} after a restart")


def _site_key(config: SiteConfig) -> SiteKey | None:
    """Loaded once, at start: a key the daemon cannot use stops it here, not at the first input."""
    if not config.crypt4gh.enabled:
        return None
    try:
        return load_site_key(config.crypt4gh)
    except Crypt4ghKeyError as exc:
        raise ConfigError(str(exc)) from None


def _check_run_as(config: SiteConfig) -> None:
    settings = config.run_as
    if not settings.enabled:
        return
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me != settings.service_user:
        raise ConfigError(f"run_as.service_user is {settings.service_user!r} but the daemon runs as "
                          f"{me!r}: per-user execution needs the daemon to run as that account")
