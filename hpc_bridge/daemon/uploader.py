"""Outputs bound for object storage: the job's collector leaves them in the work area
(`uploads/<index>`), and once the job has ended the daemon sends them, the task staying RUNNING
meanwhile. The task is COMPLETE only when every one has arrived; a failed upload makes it a
SYSTEM_ERROR naming the URL. A daemon restart mid-upload simply uploads again."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hpc_bridge.daemon.context import Context
from hpc_bridge.staging.schemes import SchemeError, Schemes, TransferError
from hpc_bridge.store import TaskRow
from hpc_bridge.tes.jobspec import UPLOADS, is_tree_output
from hpc_bridge.tes.models import Output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    index: int
    url: str
    directory: bool


@dataclass(frozen=True)
class Outcome:
    done: bool
    error: str | None = None
    canceled: bool = False  # stopped by the user's cancel: nothing of it is left in the store


WAITING = Outcome(done=False)


class Uploader:
    def __init__(self, ctx: Context, schemes: Schemes) -> None:
        self._ctx = ctx
        self._schemes = schemes
        self._pool = ThreadPoolExecutor(2, "hpc-bridge-upload")
        self._uploads: dict[str, Future[int]] = {}
        self._stops: dict[str, threading.Event] = {}

    def uploads(self, row: TaskRow) -> list[Upload] | str:
        """The task's outputs the daemon sends, or why they cannot be (the site's settings changed)."""
        found = []
        for i, raw in enumerate(row.task.get("outputs") or []):
            out = Output.model_validate(raw)
            directory = is_tree_output(out)
            try:
                if self._schemes.for_url(out.url).output(out.url, row.owner, directory=directory) is None:
                    found.append(Upload(i, out.url, directory))
            except SchemeError as exc:
                return f"output {out.url} cannot be uploaded: {exc}"
        return found

    def outcome(self, row: TaskRow) -> Outcome | None:
        """None: nothing to upload. Otherwise started on the first call, then polled."""
        uploads = self.uploads(row)
        if isinstance(uploads, str):
            return Outcome(done=True, error=uploads)
        if not uploads:
            return None
        future = self._uploads.get(row.id)
        if future is None:
            self._ctx.store.tasks.update(row.id, add_logs=[f"uploading output {u.url}" for u in uploads],
                                         message="uploading outputs")
            stop = self._stops[row.id] = threading.Event()
            future = self._pool.submit(self._send, row, uploads, stop)
            future.add_done_callback(lambda _: self._ctx.wake.set())
            self._uploads[row.id] = future
        if row.cancel_requested:
            self._stops[row.id].set()
        if not future.done():
            return WAITING
        del self._uploads[row.id]
        stopped = self._stops.pop(row.id).is_set()
        exc = future.exception()
        if stopped:
            return Outcome(done=True, error="cancelled while uploading outputs: what was sent is deleted again",
                           canceled=True)
        if exc is None:
            return Outcome(done=True)
        if isinstance(exc, TransferError):
            return Outcome(done=True, error=str(exc))
        log.error("task %s: uploading outputs failed", row.id, exc_info=exc)
        return Outcome(done=True, error=f"internal error while uploading outputs: {type(exc).__name__}: {exc}")

    def _send(self, row: TaskRow, uploads: list[Upload], stop: threading.Event) -> int:
        area = self._ctx.launchers.for_row(row).work_area(Path(row.workdir or ""))
        sent = 0
        for item in uploads:
            rel = f"{UPLOADS}/{item.index}"
            if not area.exists(rel):  # a wildcard that matched nothing: the collector made nothing
                continue
            files = area.files(rel) if item.directory else _top_only(area.files(rel))
            sent += self._schemes.for_url(item.url).upload(item.url, files, row.owner, directory=item.directory,
                                                           stop=stop)
        return sent


def _top_only(files: Iterator[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """A FILE output is the file itself, never what a directory at its place holds."""
    for path, fd in files:
        if path == "":
            yield path, fd
        else:
            os.close(fd)
