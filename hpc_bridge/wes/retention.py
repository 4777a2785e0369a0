"""WES run directories are removed `wes.retention_hours` after their run ended: the run's record (its
request, state, logs, outputs object) stays, with a system log line saying the directory is gone.

A run still live, or ended more recently, is never touched. The directory belongs to the run's Unix
user once its engine started: the service removes it when that is the service itself or its job
account (`slurm.submit_as`, service mode); a per-user run's (`run_as` modes) is removed through the
root helper, as that user (`remove_as_user`), and a failure is retried at the next sweep. Removal
never follows a symlink (shutil.rmtree on Linux works from directory descriptors), and the directory
must still be the run's own entry under the runs root.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hpc_bridge.lifecycle import RUN_FINAL
from hpc_bridge.store.runs import RunRow, RunStore
from hpc_bridge.store.tasks import now_iso

log = logging.getLogger(__name__)
OUTPUTS = "outputs"  # where the engine puts a run's final outputs (cwl/engine.py: --outdir)


class LeftToSite(Exception):
    """The root helper refused for a reason time will not change: the directory stays, for the site."""


def due(rows: list[RunRow], hours: float, now: datetime | None = None) -> list[RunRow]:
    """Ended runs whose end lies more than `hours` back and whose directory was not removed yet (pure)."""
    cutoff = (now or datetime.now(UTC)) - timedelta(hours=hours)
    return [row for row in rows if row.state in RUN_FINAL and row.end_time is not None and row.cleaned_at is None
            and datetime.fromisoformat(row.end_time.replace("Z", "+00:00")) < cutoff]


def retire(runs: RunStore, root: Path, hours: float, owners: set[int],
           remove_as_user: Callable[[RunRow], None] | None = None, keep_outputs: bool = False) -> int:
    """Remove the due run directories (those of `owners`' uids, and per-user runs' through
    `remove_as_user`, which raises when it could not); with `keep_outputs`, all but their
    `outputs/`. The number removed."""
    removed = 0
    what = "emptied but for its outputs/" if keep_outputs else "removed"
    for row in due(runs.in_states(RUN_FINAL), hours):
        path = Path(row.run_dir)
        if path.parent != root:
            log.warning("run %s: its directory %s is not under the runs root %s: left alone", row.id, path, root)
            runs.update(row.id, cleaned_at=now_iso())
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and row.run_as and remove_as_user is not None:
            try:
                remove_as_user(row)
            except LeftToSite as exc:
                log.warning("run %s: %s left for the site to remove: %s", row.id, path, exc)
                runs.update(row.id, cleaned_at=now_iso())
                runs.add_system_log(row.id, f"run directory not removed (wes.retention_hours): {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - logged; tried again at the next sweep
                log.warning("run %s: removing %s as %s failed: %s", row.id, path, row.run_as, exc)
                continue
            st = None  # gone
            removed += 1
        elif st is not None and (not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners or row.run_as):
            log.warning("run %s: %s is not a directory of this service's (the run's user owns it): "
                        "left for the site to remove", row.id, path)
            runs.update(row.id, cleaned_at=now_iso())
            continue
        if st is not None:
            _remove(path, keep=OUTPUTS if keep_outputs else None)
            removed += 1
        runs.update(row.id, cleaned_at=now_iso())
        runs.add_system_log(row.id, f"run directory {what} {hours:g} hours after the run ended "
                                    "(wes.retention_hours); this record stays")
    return removed


def _remove(path: Path, keep: str | None) -> None:
    """The directory, or with `keep` everything in it but that entry (symlinks removed, never followed)."""
    if keep is None:
        shutil.rmtree(path)
        return
    for entry in os.scandir(path):
        if entry.name == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
