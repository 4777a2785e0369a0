"""What the daemon's parts share: settings, store, Slurm, the launchers and the job files' reader."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hpc_bridge.c4gh.keys import SiteKey
from hpc_bridge.config import SiteConfig
from hpc_bridge.daemon.jobfiles import JobFileRefused, read_record
from hpc_bridge.daemon.launcher import Launchers
from hpc_bridge.metrics import Metrics
from hpc_bridge.slurm import pack
from hpc_bridge.slurm.client import SlurmClient
from hpc_bridge.slurm.record import JobRecord
from hpc_bridge.store import Store, TaskRow

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Context:
    config: SiteConfig
    store: Store
    slurm: SlurmClient
    pool: ThreadPoolExecutor  # sbatch and helper calls, a few at a time
    launchers: Launchers
    wake: threading.Event
    stop: threading.Event
    cancel_sent: set[str]  # job ids, JOB.STEP ids and task ids (skip markers) already cancelled
    # How often a pack handed each task back (a step before its turn ran long): once, it shares a new
    # pack with the others handed back (most are short: a new pack runs them at once); twice, it goes
    # alone, so a run of long tasks costs at most two hand-backs each. Kept in memory only: after a
    # restart the count starts again, which at worst costs a task one more hand-back.
    handed_back: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    site_key: SiteKey | None = None  # Crypt4GH: opens the headers of `.c4gh` inputs, in this process alone
    metrics: Metrics | None = None

    def fail(self, row: TaskRow, message: str) -> None:
        """SYSTEM_ERROR, unless the user already asked to cancel: then the task is simply CANCELED."""
        log.warning("task %s: %s", row.id, message)
        self.store.tasks.fail(row.id, message)

    def record(self, row: TaskRow) -> tuple[JobRecord | None, str | None]:
        """The job's record and, when its file is refused, why (a line for the task's system logs)."""
        try:
            return read_record(self.launchers.for_row(row).record_dir(row), self.launchers.job_uid(row)), None
        except JobFileRefused as exc:
            return None, str(exc)

    def pack_dir(self, pack_id: str) -> Path:
        return self.config.storage.work_root / pack.PACK_DIR / pack_id
