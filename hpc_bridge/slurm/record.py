"""The job's own record file (`record.jsonl`, written by task.sh.j2): what happened inside the job.

Pure parsing of text, tolerant of a torn last line (the job may be killed mid-write).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


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
    exit_code: int | None = None
    signal: str | None = None
    executors: dict[int, ExecutorRecord] = field(default_factory=dict)

    @property
    def started_executing(self) -> bool:
        return bool(self.executors)

    @property
    def finished(self) -> bool:
        return self.end_time is not None


def parse_record(text: str) -> JobRecord:
    rec = JobRecord()
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = event.get("event")
        if kind == "job_start":
            rec.job_id, rec.start_time = event.get("job_id") or None, event.get("time")
        elif kind == "executor_start":
            rec.executors.setdefault(int(event["executor"]), ExecutorRecord()).start_time = event["time"]
        elif kind == "executor_end":
            ex = rec.executors.setdefault(int(event["executor"]), ExecutorRecord())
            ex.end_time, ex.exit_code = event["time"], int(event["exit_code"])
        elif kind == "job_end":
            rec.end_time, rec.exit_code = event["time"], int(event["exit_code"])
        elif kind == "job_signal":
            rec.signal = event.get("signal")
            rec.end_time = rec.end_time or event.get("time")
    return rec
