"""Outputs bound for object storage: the job's collector leaves them in the work area
(`uploads/<index>`), and once the job has ended the daemon sends them, the task staying RUNNING
meanwhile. The task is COMPLETE only when every one has arrived; a failed upload makes it a
SYSTEM_ERROR naming the URL, with nothing of any of its outputs left in the store; a cancel that
stops an upload makes it CANCELED, likewise. A daemon restart mid-upload simply uploads again."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hpc_bridge.daemon.context import Context
from hpc_bridge.staging.schemes import Scheme, SchemeError, Schemes, TransferError
from hpc_bridge.staging.workarea import WorkArea
from hpc_bridge.store import TaskRow
from hpc_bridge.tes.jobspec import UPLOADS, is_tree_output, is_wildcard
from hpc_bridge.tes.models import Output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    index: int
    url: str
    directory: bool
    wildcard: bool
    scheme: Scheme


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
        self._uploads: dict[str, Future[None]] = {}
        self._stops: dict[str, threading.Event] = {}
        self._closing = False

    def uploads(self, row: TaskRow) -> list[Upload] | str:
        """The task's outputs the daemon sends (only schemes that send outputs are asked again), or
        why they cannot be (the site's settings changed since the task was accepted)."""
        found = []
        for i, raw in enumerate(row.task.get("outputs") or []):
            out = Output.model_validate(raw)
            directory = is_tree_output(out)
            try:
                scheme = self._schemes.for_url(out.url)
                if scheme.sends_outputs and scheme.output(out.url, row.owner, directory=directory) is None:
                    found.append(Upload(i, out.url, directory, is_wildcard(out.path), scheme))
            except SchemeError as exc:
                return f"output {out.url} cannot be uploaded: {exc}"
        return found

    def outcome(self, row: TaskRow) -> Outcome | None:
        """None: nothing to upload. Otherwise started on the first call, then polled."""
        if self._closing:
            return WAITING  # the daemon is stopping: the next one uploads again
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
        if exc is None:  # done before the cancel could stop it: the task finished on its own
            return Outcome(done=True)
        if stopped:
            return Outcome(done=True, error="cancelled while uploading outputs: what was sent is deleted again",
                           canceled=True)
        if isinstance(exc, TransferError):
            return Outcome(done=True, error=str(exc))
        log.error("task %s: uploading outputs failed", row.id, exc_info=exc)
        return Outcome(done=True, error=f"internal error while uploading outputs: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop every upload (the daemon is stopping): nothing it sent stays, the next daemon sends all."""
        self._closing = True
        for stop in self._stops.values():
            stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _send(self, row: TaskRow, uploads: list[Upload], stop: threading.Event) -> None:
        area = self._ctx.launchers.for_row(row).work_area(Path(row.workdir or ""))
        sent: list[tuple[Scheme, list[str]]] = []
        try:
            for item in uploads:
                rel = f"{UPLOADS}/{item.index}"
                kind = area.kind(rel)
                if kind is None:
                    if item.wildcard:  # matched nothing: the collector made nothing
                        continue
                    raise TransferError(f"cannot upload to {item.url}: the job left nothing to send")
                # An output of no declared type that turned out to be a directory goes as one, as the
                # collector logged it.
                directory = item.directory or kind == "dir"
                files = _files(area, rel, directory)
                sent.append((item.scheme, item.scheme.upload(item.url, files, row.owner, directory=directory,
                                                             stop=stop)))
        except BaseException:
            for scheme, urls in sent:
                try:
                    scheme.discard(urls, row.owner)
                except Exception:  # the upload's own error is the one to report
                    log.exception("task %s: could not remove what was uploaded", row.id)
            raise


def _files(area: WorkArea, rel: str, directory: bool) -> Iterator[tuple[str, int]]:
    """A FILE output is the file itself, never what a directory at its place holds."""
    for path, fd in area.files(rel):
        if directory or path == "":
            yield path, fd
        else:
            os.close(fd)
