"""Work areas of tasks that ended more than the retention time ago are removed (outputs live in the
data roots and are never touched), and with a pack's last work area its launcher directory."""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime, timedelta

from hpc_bridge.daemon.context import Context
from hpc_bridge.slurm.client import SlurmError
from hpc_bridge.staging.paths import within
from hpc_bridge.store.tasks import iso, now_iso

log = logging.getLogger(__name__)


class Janitor:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def clean_work_areas(self) -> int:
        """Returns how many were removed."""
        ctx = self._ctx
        hours = ctx.config.storage.work_retention_hours
        if hours is None:
            return 0
        cutoff = iso(datetime.now(UTC) - timedelta(hours=hours))
        root = os.path.realpath(ctx.config.storage.work_root)
        removed = 0
        packs: set[str] = set()
        for row in ctx.store.tasks.due_for_cleanup(cutoff):
            workdir = os.path.realpath(row.workdir or "")
            if workdir == root or not within(workdir, root):
                log.error("task %s: work area %s is outside %s; not removing it", row.id, workdir, root)
                ctx.store.tasks.update(row.id, cleaned_at=now_iso())
                continue
            try:
                ctx.launchers.for_row(row).clean(row, workdir)
            except SlurmError as exc:
                log.warning("task %s: could not remove work area %s as %s, retrying later: %s",
                            row.id, workdir, row.run_as, exc)
                continue
            shutil.rmtree(workdir, ignore_errors=True)  # never follows symlinks planted inside
            if os.path.exists(workdir):
                log.warning("task %s: could not remove work area %s, retrying later", row.id, workdir)
                continue
            ctx.store.tasks.update(row.id, cleaned_at=now_iso(),
                                   add_logs=[f"work area removed {hours:g} h after the task ended"])
            removed += 1
            if row.pack_id:
                packs.add(row.pack_id)
        self._clean_pack_dirs(packs)
        return removed

    def _clean_pack_dirs(self, packs: set[str]) -> None:
        """Only packs of this store's tasks: another service on the same work root (or a test server)
        has packs this one knows nothing of, and removing one fails its pending job."""
        for pack_id in packs - self._ctx.store.tasks.packs_in_use():
            directory = self._ctx.pack_dir(pack_id)
            if not directory.is_symlink():
                shutil.rmtree(directory, ignore_errors=True)
