"""cwltool's multithreaded executor without its local resource accounting: jobs run on Slurm, so
every ready job (each scatter element) is handed to a thread at once and its TES task goes to
Slurm straight away; Slurm, not this machine's cores and memory, decides what runs when."""

from __future__ import annotations

import functools
import math
import threading

from cwltool.context import RuntimeContext
from cwltool.executors import MultithreadedJobExecutor
from cwltool.utils import JobsType

_TMPDIR_LOCK = threading.Lock()


class TesExecutor(MultithreadedJobExecutor):
    def __init__(self, max_parallel: int = 64) -> None:
        # max_cores is only the number of job threads here (each mostly waits for its task).
        super().__init__(max_parallel=max_parallel)

    def select_resources(self, request: dict[str, int | float],
                         runtime_context: RuntimeContext) -> dict[str, int | float]:
        """What the job asks for at least (ResourceRequirement's *Min, CWL's defaults otherwise)."""
        result: dict[str, int | float] = {
            "cores": request["coresMin"],
            "ram": math.ceil(request["ramMin"]),
            "tmpdirSize": math.ceil(request["tmpdirMin"]),
            "outdirSize": math.ceil(request["outdirMin"]),
        }
        if "cudaDeviceCountMin" in request:
            result["cudaDeviceCount"] = request["cudaDeviceCountMin"]
        return result

    def run_job(self, job: JobsType | None, runtime_context: RuntimeContext) -> None:
        if job is not None:
            with self.pending_jobs_lock:
                self.pending_jobs.append(job)
        with self.pending_jobs_lock:
            while self.pending_jobs:
                ready = self.pending_jobs.pop(0)
                self.taskqueue.add(functools.partial(self._runner, ready, runtime_context, _TMPDIR_LOCK),
                                   runtime_context.workflow_eval_lock)
