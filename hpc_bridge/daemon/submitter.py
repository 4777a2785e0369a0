"""Queued tasks to Slurm jobs: plan, work area, batch script, then sbatch through the task's launcher;
tasks of one owner and shape share one job (packing) where their launcher allows it, except those
packs handed back twice."""

from __future__ import annotations

import json
import logging
import time
import uuid

from hpc_bridge.c4gh.headers import HeaderError, session_keys
from hpc_bridge.containers.apptainer import UnsafeValue
from hpc_bridge.daemon.context import Context
from hpc_bridge.daemon.launcher import Prepared
from hpc_bridge.daemon.stager import Stager
from hpc_bridge.slurm import pack
from hpc_bridge.slurm.client import SlurmError
from hpc_bridge.slurm.script import render
from hpc_bridge.staging.drs import Resolved
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.store import TaskRow
from hpc_bridge.tes.jobspec import DECRYPT_SPEC, InvalidTask, JobPlan, job_name, plan_job
from hpc_bridge.tes.models import Task

log = logging.getLogger(__name__)


class Submitter:
    def __init__(self, ctx: Context, stager: Stager, schemes: Schemes) -> None:
        self._ctx = ctx
        self._stager = stager
        self._schemes = schemes

    def submit(self, rows: list[TaskRow]) -> bool:
        """Submit what is due, several sbatch at a time; True if anything was due."""
        ctx = self._ctx
        now = time.time()
        due = [r for r in rows if r.next_attempt_at <= now and not self._stager.busy(r.id)]
        batch = due[: ctx.config.monitor.submit_batch]
        ready = [p for p in ctx.pool.map(self._prepare_one, batch) if p is not None]
        packing = ctx.config.slurm.packing
        packable: list[Prepared] = []
        groups: list[list[Prepared]] = []
        for p in ready:  # alone: a launcher that cannot pack, or a task packs handed back twice
            if ctx.launchers.for_row(p.row).packs and ctx.handed_back[p.row.id] < 2:
                packable.append(p)
            else:
                groups.append([p])
        if packing.enabled:
            groups += pack.group(packable, key=lambda p: (p.row.owner, tuple(p.job.options)),
                                 options=lambda p: p.job.options, settings=packing)
        else:
            groups += [[p] for p in packable]
        list(ctx.pool.map(self._submit_group, groups))
        if len(due) > len(batch):
            ctx.wake.set()  # more are waiting: no pause before the next batch
        return bool(batch)

    def _prepare_one(self, row: TaskRow) -> Prepared | None:
        """None when the task is not ready (staging), cannot run (failed) or was cancelled meanwhile."""
        try:
            if self._ctx.stop.is_set() or (ready := self.prepare(row)) is None:
                return None
        except Exception as exc:  # a bug or an unforeseen input: fail this task, not the daemon
            log.exception("task %s: preparing the job failed", row.id)
            self._ctx.fail(row, f"internal error while submitting: {type(exc).__name__}: {exc}")
            return None
        now = self._ctx.store.tasks.get(row.id)
        if now is None or now.cancel_requested:
            return None  # cancelled while being prepared: the next cycle makes it CANCELED
        return ready

    def _submit_group(self, group: list[Prepared]) -> None:
        rows = [p.row for p in group]
        try:
            if len(group) == 1:
                self._submit_one(group[0])
            else:
                self._submit_pack(group)
        except Exception as exc:  # a bug or an unforeseen input: fail these tasks, not the daemon
            log.exception("tasks %s: submission failed", ", ".join(r.id for r in rows))
            for row in rows:
                self._ctx.fail(row, f"internal error while submitting: {type(exc).__name__}: {exc}")

    def prepare(self, row: TaskRow) -> Prepared | None:
        """Everything before sbatch: plan, work area, script, and the store told where the job's
        files will be. None when the task is not staged yet, or cannot run (it is then failed)."""
        ctx = self._ctx
        config = ctx.config
        if config.run_as.enabled and not row.run_as:  # fail closed: never the service account
            ctx.fail(row, f"cannot run task: run_as.mode is {config.run_as.mode!r} and the task "
                          "has no Unix user (created before per-user execution was turned on?)")
            return None
        launcher = ctx.launchers.for_row(row)
        workdir = config.storage.work_root / row.id
        try:
            plan = plan_job(Task.model_validate(row.task), task_id=row.id, workdir=str(workdir),
                            config=config, schemes=self._schemes, owner=row.owner,
                            limits=config.limits.for_owner(row.owner),
                            resolved={int(i): Resolved.from_json(r) for i, r in row.resolved.items()})
            plan.script = launcher.adapt(plan.script, row.id)
            script_text = render(plan.script, config.template_search_path)
        except (InvalidTask, UnsafeValue) as exc:  # valid at POST, not any more (site config changed)
            ctx.fail(row, f"cannot run task: {exc}")
            return None
        script = workdir / "job.sh"
        if not launcher.already_written(workdir):
            area = launcher.work_area(workdir)
            if not self._stager.ready(row, area, plan):
                return None
            if plan.decrypts:
                try:
                    plan.files[f"{workdir}/{DECRYPT_SPEC}"] = self._decrypt_spec(plan)
                except HeaderError as exc:
                    ctx.fail(row, f"cannot run task: {exc}")
                    return None
            try:
                launcher.before_write()
                area.create()
                for directory in plan.directories:
                    area.make_dirs(area.relative(directory))
                for name, content in plan.files.items():
                    area.write(area.relative(name), content)
                area.write("job.sh", script_text)
                area.hand_over()
            except OSError as exc:
                ctx.fail(row, f"cannot prepare work directory {workdir}: {exc}")
                return None
        streams = [dict(zip(("stdout", "stderr"), plan.script.log_paths(i), strict=True))
                   for i in range(len(plan.script.executors))]
        ctx.store.tasks.update(row.id, workdir=str(workdir), streams=streams, add_logs=plan.warnings,
                               submit_attempts=row.submit_attempts + 1)
        return Prepared(row, script, plan.script)

    def _decrypt_spec(self, plan: JobPlan) -> str:
        """What the job's decryption step needs: each `.c4gh` input's session keys, read here from
        its header with the site's key (which the job never gets)."""
        site = self._ctx.site_key
        entries = []
        for item in plan.decrypts:
            if site is None:
                raise HeaderError(f"input {item.index}: the site has no Crypt4GH secret key any more")
            try:
                keys = session_keys(item.source, site)
            except HeaderError as exc:
                raise HeaderError(f"input {item.index} ({item.source}) {exc}") from None
            except OSError as exc:
                raise HeaderError(f"input {item.index} ({item.source}) cannot be read: {exc.strerror}") from None
            entries.append({"index": item.index, "source": item.source, "offset": keys.offset,
                            "keys": list(keys.keys), "dest": item.dest})
        return json.dumps({"record": plan.script.record_path, "inputs": entries})

    def _submit_one(self, ready: Prepared) -> None:
        row = ready.row
        try:
            job_id = self._ctx.launchers.for_row(row).submit(ready)
        except SlurmError as exc:
            self._refused([row], exc)
            return
        self._ctx.store.tasks.update(row.id, job_id=job_id, pack_id=None,
                                     message=f"submitted as Slurm job {job_id}")
        self._ctx.handed_back.pop(row.id, None)

    def _submit_pack(self, group: list[Prepared]) -> None:
        """One Slurm job for the group, each task a step of it. The pack id is stored with the tasks
        before sbatch, so a restart adopts the job by its comment as it adopts a task's own."""
        ctx = self._ctx
        pack_id = str(uuid.uuid4())
        directory = ctx.pack_dir(pack_id)
        first = group[0]
        members = [pack.Member(task_id=p.row.id, name=job_name(p.row.id), workdir=p.job.workdir,
                               record=p.job.record_path, output=f"{p.job.record_dir}/slurm.out")
                   for p in group]
        seconds = ctx.config.slurm.packing.hand_back_seconds
        script = pack.PackScript(pack_id=pack_id, directory=str(directory), members=members,
                                 options=pack.pack_options(first.job.options, len(group), seconds),
                                 step_time=pack.time_option(first.job.options), hand_back_seconds=seconds)
        text = render(script, ctx.config.template_search_path, "pack.sh.j2")
        for p in group:
            ctx.store.tasks.update(p.row.id, pack_id=pack_id)
        area = ctx.launchers.service.work_area(directory)
        area.create()
        area.make_dirs("cancel")
        area.write("pack.sh", text)
        area.hand_over()
        try:
            job_id = ctx.slurm.submit(directory / "pack.sh", workdir=directory)
        except SlurmError as exc:
            self._refused([p.row for p in group], exc)
            return
        for p in group:
            ctx.store.tasks.update(p.row.id, job_id=job_id, message=f"submitted as a step of Slurm job "
                                   f"{job_id}, shared with {len(group) - 1} other tasks")

    def _refused(self, rows: list[TaskRow], exc: SlurmError) -> None:
        ctx = self._ctx
        for row in rows:
            if exc.unavailable:
                # Not less than the command timeout: a timed-out sbatch may still have been
                # accepted, and the next squeue must get a chance to show (and adopt) it.
                delay = min(ctx.config.monitor.retry_max_delay,
                            max(ctx.config.slurm.command_timeout, 2.0 ** row.submit_attempts))
                ctx.store.tasks.update(row.id, next_attempt_at=time.time() + delay)
                log.warning("task %s: Slurm unavailable, retrying in %.0fs: %s", row.id, delay, exc)
            else:
                ctx.fail(row, ctx.launchers.for_row(row).refusal(row, exc))
