"""Images and downloads a task needs before its job can be written: fetched in the background, the
task staying QUEUED with a system log line saying what is being prepared."""

from __future__ import annotations

import os
import shutil
import stat
from concurrent.futures import Future, ThreadPoolExecutor

from hpc_bridge.containers.cache import ImageCache, PullError
from hpc_bridge.containers.images import RegistryImage
from hpc_bridge.daemon.context import Context
from hpc_bridge.staging import drs
from hpc_bridge.staging.schemes import Schemes, TransferError
from hpc_bridge.staging.workarea import WorkArea, WorkAreaError
from hpc_bridge.store import TaskRow
from hpc_bridge.tes.jobspec import Download, JobPlan


class Stager:
    def __init__(self, ctx: Context, schemes: Schemes) -> None:
        self._ctx = ctx
        self._schemes = schemes
        self.images = ImageCache(ctx.config.apptainer)
        # Image pulls and downloads can take minutes: their own pool, so submissions go on meanwhile.
        self._pool = ThreadPoolExecutor(ctx.config.apptainer.pull_parallelism + 2, "hpc-bridge-stage")
        self._staging: dict[str, Future[None]] = {}

    def busy(self, task_id: str) -> bool:
        return (future := self._staging.get(task_id)) is not None and not future.done()

    def close(self) -> None:
        """The daemon is stopping: object-store downloads give up (their next cycle starts them
        again) and nothing queued starts."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, task_id: str) -> None:
        self._staging.pop(task_id, None)

    def ready(self, row: TaskRow, area: WorkArea, plan: JobPlan) -> bool:
        """True once the task's images are in the cache and its downloads are in its work area.
        A failed staging fails the task; one the daemon's stop cut short does not (the next daemon
        stages again)."""
        if self._ctx.stop.is_set():
            return False
        pulls = [img for img in plan.pulls if not self.images.is_cached(img)]
        downloads = [d for d in plan.downloads if not area.exists(area.relative(d.dest))]
        future = self._staging.get(row.id)
        if future is None:
            if not pulls and not downloads:
                return True
            lines = [*(f"preparing image {img.reference} (pulling {img.pull_uri} into the image cache)"
                       for img in pulls), *(f"downloading input {d.url}" for d in downloads)]
            # The work area is known from now on, so it is cleaned up even if staging fails.
            self._ctx.store.tasks.update(row.id, workdir=str(area.path), add_logs=lines, message=lines[0])
            future = self._pool.submit(self._stage, row, area, pulls, downloads)
            future.add_done_callback(lambda _: self._ctx.wake.set())
            self._staging[row.id] = future
            return False
        if not future.done():
            return False
        del self._staging[row.id]
        exc = future.exception()
        if exc is None:
            return True
        if isinstance(exc, (PullError, TransferError)):
            self._ctx.fail(row, str(exc))
        else:
            self._ctx.fail(row, f"internal error while preparing inputs: {type(exc).__name__}: {exc}")
        return False

    def _stage(self, row: TaskRow, area: WorkArea, pulls: list[RegistryImage],
               downloads: list[Download]) -> None:
        metrics = self._ctx.metrics
        for image in pulls:
            try:
                self.images.ensure(image)
            except PullError:
                if metrics is not None:
                    metrics.image_pulls.labels("error").inc()
                raise
            if metrics is not None:
                metrics.image_pulls.labels("ok").inc()
        if not downloads:
            return
        # Downloaded into a directory only the daemon can reach, then renamed into the work area.
        private = self._ctx.config.storage.work_root / ".staging" / row.id
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(private)  # one left by someone else would let them swap what move_in chowns
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise WorkAreaError(f"{private} is not the daemon's own private directory; refusing to stage there")
        try:
            area.create()
            for i, item in enumerate(downloads):
                temp = private / str(i)
                if item.drs is not None:
                    drs.download(item.drs, temp, self._ctx.config.storage.http)
                else:
                    self._schemes.for_url(item.url).download(item.url, temp, item.type, row.owner,
                                                             stop=self._ctx.stop)
                if metrics is not None:
                    metrics.staged_bytes.labels("in").inc(_size(temp))
                area.move_in(temp, area.relative(item.dest))
        finally:
            shutil.rmtree(private, ignore_errors=True)


def _size(path: os.PathLike[str]) -> int:
    """A download's bytes: a file, or a directory's files (an s3 prefix)."""
    if not os.path.isdir(path):
        return os.lstat(path).st_size
    return sum(os.lstat(os.path.join(root, name)).st_size for root, _, names in os.walk(path) for name in names)
