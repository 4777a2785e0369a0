"""What every job of one run shares: the task runner, the run's work area, and the record of
infrastructure failures (which make the run SYSTEM_ERROR rather than EXECUTOR_ERROR).

Layout of the work area `<run dir>/.cwl/`: `out/` one host output directory per task, `literals/`
InitialWorkDir and file literals (named by their SHA-256, so a resumed run stages the same paths),
`empty/` an empty directory to bind, `tmp/` cwltool's own scratch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from hpc_bridge.config import ApptainerSettings
from hpc_bridge.containers.images import ImageError, RegistryImage, resolve_image
from hpc_bridge.cwl.client import RemoteTask
from hpc_bridge.cwl.tasks import TaskRunner, url_path
from hpc_bridge.cwl.taskspec import TaskPlan
from hpc_bridge.tes.models import State

log = logging.getLogger("hpc_bridge.cwl")


def stamp(path: str) -> Any:
    """What says an input is unchanged: size and mtime of a file, of every entry of a directory."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isdir(path):
        return [st.st_size, st.st_mtime_ns]
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files + dirs):
            full = os.path.join(root, name)
            try:
                s = os.lstat(full)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(full, path)}\0{s.st_size}\0{s.st_mtime_ns}\n".encode(
                errors="surrogateescape"))
    return ["dir", digest.hexdigest()]


class EngineState:
    """The engine runs as the run's own Unix user, the user its tasks' jobs run as: everything it
    makes below the run directory is that user's, private to it (and the service's group)."""

    def __init__(self, runner: TaskRunner, work: Path, *, default_image: str,
                 apptainer: ApptainerSettings | None = None) -> None:
        self.runner = runner
        self.apptainer = apptainer
        self.work = work
        self.default_image = default_image
        self.system_errors: list[str] = []
        self._lock = threading.Lock()
        for sub in ("out", "literals", "empty", "tmp"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.empty_dir = str(work / "empty")

    def from_docker(self, image: str) -> bool:
        """Whether `image` is pulled from a Docker registry (its SIF then has an OCI runscript);
        local SIFs have runscripts of their own, which are not ENTRYPOINTs."""
        if self.apptainer is None:
            return False
        try:
            resolved = resolve_image(image, self.apptainer)
        except ImageError:
            return False  # TES refuses the task with the reason
        return isinstance(resolved, RegistryImage) and resolved.normalized.startswith("docker://")

    def in_run(self, path: str) -> bool:
        """Whether `path` is one of this run's own files (below the run directory)."""
        real, run = os.path.realpath(path), os.path.realpath(self.work.parent)
        return os.path.commonpath([real, run]) == run

    def system_error(self, message: str) -> None:
        with self._lock:
            self.system_errors.append(message)

    def literal(self, contents: str) -> str:
        """A read-only host file with these contents, named by its hash."""
        data = contents.encode("utf-8", errors="surrogateescape")
        path = self.work / "literals" / hashlib.sha256(data).hexdigest()
        if not path.exists():
            temp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
            temp.write_bytes(data)
            os.chmod(temp, 0o440)
            os.replace(temp, path)
        return str(path)

    @staticmethod
    def prepare_outdir(path: str) -> None:
        """The job (as the same user) writes the task's outputs here."""
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def stamps(plan: TaskPlan) -> dict[str, Any]:
        return {i["url"]: stamp(url_path(i["url"])) for i in plan.body.get("inputs", [])}

    def execute(self, plan: TaskPlan, *, key: str, step: str, timelimit: int | None) -> tuple[RemoteTask, bool]:
        """Run the plan as a TES task, or reuse one from an earlier attempt of this run; block until
        it ends. Returns the final row and whether the engine stopped it at its time limit."""
        row = self.runner.find_reusable(key)
        if row is not None and row.state == State.COMPLETE:
            log.info("[job %s] reusing completed TES task %s (Slurm job %s)", step, row.id, row.job_id)
            return row, False
        if row is not None:
            log.info("[job %s] adopting TES task %s, still %s", step, row.id, row.state)
            task_id = row.id
        else:
            task_id = self.runner.create(plan.body, step=step, key=key)
            log.info("[job %s] TES task %s created", step, task_id)
        final, timed_out = self.runner.wait(task_id, timelimit=timelimit, tool_index=plan.tool_index)
        log.info("[job %s] TES task %s ended %s%s", step, task_id, final.state,
                 f" (Slurm job {final.job_id})" if final.job_id else "")
        return final, timed_out
