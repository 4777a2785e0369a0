"""Reading what a job wrote (its record, its executors' output tails) as the daemon, which may be root.

Every file is walked to from the task's work area or status directory without following a symlink,
and read only when it is the job user's own single-link regular file: a user's link must never make
the daemon read a service file into a task's logs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

from hpc_bridge.slurm.record import JobRecord, file_refusal, parse_record
from hpc_bridge.staging.workarea import WorkArea
from hpc_bridge.store import TaskRow

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 4 * 1024 * 1024


class JobFileRefused(Exception):
    """A file where the job writes that the daemon will not read; the message says which and why."""


def _open_job_file(path: str, base: str, owner_uid: int) -> BinaryIO | None:
    """None: no such file (yet)."""
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


def read_tail(path: str, workdir: str, limit: int, owner_uid: int) -> str:
    """The end of an executor's output, checked as the record is (JobFileRefused)."""
    fh = _open_job_file(path, workdir, owner_uid)
    if fh is None:
        return ""
    with fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - limit))
        return fh.read().decode(errors="replace")


def executor_logs(row: TaskRow, record: JobRecord | None, base: str | None, owner_uid: int, limit: int,
                  tails: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """The executors' TES logs from the record (with output tails read from `base`), and a line for
    each output file that was refused, not read."""
    if record is None:
        return [], []
    out, refused = [], []
    for index, ex in sorted(record.executors.items()):
        entry: dict[str, Any] = {"exit_code": ex.exit_code if ex.exit_code is not None else -1}
        if ex.start_time:
            entry["start_time"] = ex.start_time
        if ex.end_time:
            entry["end_time"] = ex.end_time
        if tails and index < len(row.streams) and base:
            for stream in ("stdout", "stderr"):
                try:
                    entry[stream] = read_tail(row.streams[index][stream], base, limit, owner_uid)
                except JobFileRefused as exc:
                    entry[stream] = ""
                    refused.append(f"executor {index} {stream}: {exc}")
                    log.warning("task %s: executor %d %s: %s", row.id, index, stream, exc)
        out.append(entry)
    return out, refused
