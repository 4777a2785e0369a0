"""The job's own record file (`record.jsonl`, written by task.sh.j2): what happened inside the job.

Pure parsing of text, tolerant of a torn last line (the job may be killed mid-write), and the
check of any file the job wrote before the daemon reads it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from hpc_bridge.jobside import events as ev


@dataclass
class ExecutorRecord:
    start_time: str | None = None
    end_time: str | None = None
    exit_code: int | None = None


@dataclass
class JobRecord:
    job_id: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    refusal: str | None = None
    input_error: str | None = None
    executors: dict[int, ExecutorRecord] = field(default_factory=dict)
    outputs: list[dict[str, str]] = field(default_factory=list)  # TES OutputFileLog objects
    output_errors: list[str] = field(default_factory=list)
    output_warnings: list[str] = field(default_factory=list)
    collect_exit: int | None = None
    # A task packed into a shared Slurm job runs as one job step; the pack's launcher writes these.
    step_id: str | None = None
    step_exit: int | None = None  # the step's exit as srun saw it (None: not ended, or not packed)
    step_timed_out: bool = False
    skipped: bool = False  # cancelled before its turn: the launcher never started it
    returned_by: str | None = None  # the shared job that handed it back before its turn (a step ran long)
    job_ended: bool = False  # the task's own script reached its end (it was not killed)

    @property
    def started_executing(self) -> bool:
        return bool(self.executors)

    @property
    def finished(self) -> bool:
        return self.end_time is not None


def file_refusal(st: os.stat_result, owner_uid: int) -> str | None:
    """Why the daemon (the service account, or root) must not take a file found where a less
    trusted user writes (a job's record and logs, a pulled image): that user controls the directory,
    so a FIFO, a hard link to a file the user cannot read (possible with fs.protected_hardlinks=0)
    or a file of another owner would make the daemon pass on what the user may not see. None: it is
    that user's own plain file."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links (a link to another file?)"
    if st.st_uid != owner_uid:
        return f"belongs to uid {st.st_uid}, not to uid {owner_uid} who writes there"
    return None


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z")


def _time(value: object) -> str:
    if not isinstance(value, str) or not _TIME.match(value):
        raise ValueError(f"not a timestamp: {value!r}")
    return value


def parse_record(text: str) -> JobRecord:
    """The last run of the job wins: a requeued job starts a new record after its old lines.
    A line that is not a well-formed event (torn by a kill, or garbage) is skipped."""
    rec = JobRecord()
    for line in text.splitlines():
        try:
            event = json.loads(line)
            if isinstance(event, dict):
                rec = _apply(rec, event)
        except (ValueError, KeyError, TypeError):
            continue
    return rec


def _apply(rec: JobRecord, event: dict[str, Any]) -> JobRecord:
    kind = event.get("event")
    if kind == ev.JOB_START:
        step = str(event.get("step_id") or "")
        return JobRecord(job_id=str(event.get("job_id") or "") or None, start_time=_time(event["time"]),
                         step_id=step if step.isdigit() else None)
    if kind == ev.EXECUTOR_START:
        rec.executors.setdefault(int(event["executor"]), ExecutorRecord()).start_time = _time(event["time"])
    elif kind == ev.EXECUTOR_END:
        end, code = _time(event["time"]), int(event["exit_code"])
        ex = rec.executors.setdefault(int(event["executor"]), ExecutorRecord())
        ex.end_time, ex.exit_code = end, code
    elif kind == ev.JOB_END:
        rec.end_time = _time(event["time"])
        rec.job_ended = True
    elif kind == ev.JOB_SIGNAL:
        rec.end_time = rec.end_time or _time(event["time"])
    elif kind == ev.STEP_END:
        rec.end_time = rec.end_time or _time(event["time"])
        rec.step_exit = int(event["exit_code"])
        rec.step_timed_out = event.get("timed_out") is True
    elif kind == ev.RETURNED:
        rec.returned_by = str(event.get("job_id") or "") or None
    elif kind == ev.SKIPPED:
        rec.end_time = _time(event["time"])
        rec.skipped = True
    elif kind == ev.INPUT_ERROR:
        rec.input_error = f"input {int(event['input'])}: {event.get('message', 'could not be staged')}"
    elif kind == ev.OUTPUT:
        rec.outputs.append({"url": str(event["url"]), "path": str(event["path"]),
                            "size_bytes": str(int(event["size_bytes"]))})
    elif kind == ev.OUTPUT_ERROR:
        rec.output_errors.append(f"output {int(event['output'])}: {event.get('message', 'failed')}")
    elif kind == ev.COLLECT_END:
        rec.collect_exit = int(event["exit_code"])
    elif kind == ev.OUTPUT_WARNING:
        rec.output_warnings.append(f"output {int(event['output'])}: {event.get('message', '')}")
    elif kind == ev.UNSAFE_PATH:
        rec.refusal = (f"executor {int(event['executor'])} {event.get('stream', 'stream')}: the path "
                       "leads outside the task's work area (a symlink?); refused")
    return rec
