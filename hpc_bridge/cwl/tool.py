"""cwltool's extension points: the tool class built for every CommandLineTool (LoadingContext.
construct_tool_object), whose job runner is `TesJob`, and a path mapper with stable staging names.

`TesJob.run` does what cwltool's own job does around a local process, with a TES task instead:
set up, stage (as TES inputs), run and wait, relink InitialWorkDir entries, collect outputs on the
host, call back. The task's state decides the outcome faithfully: the tool's exit code (from the
executor log) against successCodes/temporaryFailCodes/permanentFailCodes; an infrastructure
failure (SYSTEM_ERROR) is recorded as such, so the run ends SYSTEM_ERROR rather than blaming the
tool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import MutableSequence
from typing import TYPE_CHECKING, Any, cast

from cwltool.command_line_tool import CommandLineTool
from cwltool.context import LoadingContext, RuntimeContext
from cwltool.errors import UnsupportedRequirement, WorkflowException
from cwltool.job import JobBase, relink_initialworkdir
from cwltool.pathmapper import MapperEnt, PathMapper
from cwltool.process import Process
from cwltool.utils import bytes2str_in_dicts
from cwltool.workflow import default_make_tool
from ruamel.yaml.comments import CommentedMap

from hpc_bridge.cwl.remote import is_remote
from hpc_bridge.cwl.tasks import RunCanceled, url_path
from hpc_bridge.cwl.taskspec import (
    Entry,
    TaskPlan,
    ToolRun,
    Unsupported,
    job_key,
    plan_task,
)
from hpc_bridge.errors import BadRequest
from hpc_bridge.tes.models import State

if TYPE_CHECKING:
    from hpc_bridge.cwl.state import EngineState

log = logging.getLogger("hpc_bridge.cwl")


class TesRuntimeContext(RuntimeContext):
    """A RuntimeContext that carries the engine's state to every job (copies keep it)."""

    def __init__(self, kwargs: dict[str, Any] | None = None) -> None:
        self.hpcb: EngineState | None = None
        super().__init__(kwargs)


class StablePathMapper(PathMapper):
    """cwltool's mapper with staging directories named after what they hold instead of a random
    uuid, so the same job gets the same command line (and job key) in a resumed run."""

    def setup(self, referenced_files: MutableSequence[Any], basedir: str) -> None:
        for fob in referenced_files:
            stagedir = self.stagedir
            if self.separateDirs:
                stagedir = os.path.join(self.stagedir, "stg" + _identity(fob)[:24])
            self.visit(fob, stagedir, basedir, copy=bool(fob.get("writable", False)), staged=True)

    def visit(self, obj: Any, stagedir: str, basedir: str, copy: bool = False, staged: bool = False) -> None:
        """A remote File keeps its URL (cwl/remote.py): cwltool would download an http(s) one here,
        on the login node, outside the site's policy."""
        location = obj["location"]
        if obj.get("class") != "File" or not is_remote(location):
            super().visit(obj, stagedir, basedir, copy=copy, staged=staged)
            return
        if location in self._pathmap:
            return
        target = os.path.join(obj.get("dirname") or stagedir, obj["basename"])
        self._pathmap[location] = MapperEnt(location, target, "WritableFile" if copy else "File", staged)
        self.visitlisting(obj.get("secondaryFiles", []), stagedir, basedir, copy=copy, staged=staged)


def _identity(fob: Any) -> str:
    """A file's location, or for a literal (`_:` location, random per load) its contents."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items()
                    if not (k == "location" and str(v).startswith("_:"))}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    text = json.dumps(strip(fob), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def make_tool(toolpath_object: CommentedMap, loadingContext: LoadingContext) -> Process:
    """LoadingContext.construct_tool_object: CommandLineTools become TesCommandLineTools."""
    if isinstance(toolpath_object, dict) and toolpath_object.get("class") == "CommandLineTool":
        return TesCommandLineTool(toolpath_object, loadingContext)
    return default_make_tool(toolpath_object, loadingContext)


class TesCommandLineTool(CommandLineTool):
    def make_job_runner(self, runtimeContext: RuntimeContext) -> type[JobBase]:
        # cwltool's choice also puts the default container in as a DockerRequirement, so that
        # job() treats every tool as containerized (container paths, host output directory).
        super().make_job_runner(runtimeContext)
        return TesJob


def process_status(rcode: int, success: list[int], temporary: list[int], permanent: list[int]) -> str:
    """CWL's reading of an exit code (the same precedence as cwltool's)."""
    if rcode in success:
        return "success"
    if rcode in temporary:
        return "temporaryFail"
    if rcode in permanent:
        return "permanentFail"
    return "success" if rcode == 0 else "permanentFail"


class TesJob(JobBase):
    """One CommandLineTool job = one TES task."""

    def _required_env(self) -> dict[str, str]:
        return {"HOME": self.builder.outdir, "TMPDIR": self.builder.tmpdir}

    def _setup(self, runtimeContext: RuntimeContext) -> None:
        """cwltool's set-up, whose check that every staged input is a local file skips the remote
        ones (they are TES inputs by URL)."""
        remote = [(key, entry) for key, entry in self.pathmapper.items()
                  if entry.staged and is_remote(entry.resolved)]
        for key, entry in remote:
            self.pathmapper.update(key, entry.resolved, entry.target, entry.type, False)
        try:
            super()._setup(runtimeContext)
        finally:
            for key, entry in remote:
                self.pathmapper.update(key, *entry)

    def run(self, runtimeContext: RuntimeContext, tmpdir_lock: threading.Lock | None = None) -> None:
        engine = cast("EngineState", getattr(runtimeContext, "hpcb", None))
        if engine is None:
            raise WorkflowException("TesJob needs a TesRuntimeContext with the engine state")
        outputs: dict[str, Any] = {}
        status = "permanentFail"
        try:
            self._setup(runtimeContext)
            plan = plan_task(self._tool_run(runtimeContext, engine), literal=engine.literal,
                             empty_dir=engine.empty_dir)
            key = job_key(plan, engine.stamps(plan))
            row, timed_out = engine.execute(plan, key=key, step=self.name, timelimit=self.timelimit)
            self.outdir = url_path(row.task["outputs"][0]["url"])  # a reused task's own directory
            status, rcode = self._outcome(row, plan, timed_out, engine)
            if row.state == State.COMPLETE:
                if self.generatemapper is not None:
                    if self.inplace_update:
                        self._write_back(engine)
                    relink_initialworkdir(self.generatemapper, self.outdir, self.builder.outdir,
                                          inplace_update=self.inplace_update)
                outputs = cast(dict[str, Any], bytes2str_in_dicts(self.collect_outputs(self.outdir, rcode)))
        except RunCanceled as exc:
            status = "permanentFail"
            log.warning("[job %s] %s", self.name, exc)
        except Unsupported as exc:
            status = "permanentFail"
            log.error("[job %s] cannot run here: %s", self.name, exc)
        except (UnsupportedRequirement, WorkflowException) as exc:
            status = "permanentFail"
            log.error("[job %s] job error:\n%s", self.name, exc)
        except BadRequest as exc:  # the job as written cannot run here (inputs, limits, image name)
            status = "permanentFail"
            log.error("[job %s] the TES task was refused: %s", self.name, exc.message)
        except Exception as exc:  # an engine or service failure, not the tool's
            status = "permanentFail"
            engine.system_error(f"[job {self.name}] {type(exc).__name__}: {exc}")
            log.exception("[job %s] engine error", self.name)
        if status != "success":
            log.warning("[job %s] completed %s", self.name, status)
        else:
            log.info("[job %s] completed success", self.name)
        if runtimeContext.workflow_eval_lock is None:
            raise WorkflowException("runtimeContext.workflow_eval_lock must not be None")
        if self.output_callback:
            with runtimeContext.workflow_eval_lock:
                self.output_callback(outputs, status)

    def _write_back(self, engine: EngineState) -> None:
        """InplaceUpdateRequirement: the job changed copies of its writable entries (a TES input
        is never writable); put the changes back into the originals, for the later steps. Only
        files of this run are changed: anything else keeps its original contents."""
        outdir = self.builder.outdir.rstrip("/") + "/"
        for _, vol in self.generatemapper.items_exclude_children():  # type: ignore[union-attr]
            if vol.type not in ("WritableFile", "WritableDirectory") or not vol.staged \
                    or vol.resolved.startswith("_:") or not vol.target.startswith(outdir):
                continue
            changed = os.path.join(self.outdir, vol.target[len(outdir):])
            if not engine.in_run(vol.resolved):
                log.warning("[job %s] in-place update of %s not written back: it is not a file of "
                            "this run", self.name, vol.resolved)
            elif os.path.isfile(changed) and not os.path.islink(changed):
                shutil.copyfile(changed, vol.resolved)
            elif os.path.isdir(changed) and not os.path.islink(changed):
                shutil.rmtree(vol.resolved)
                shutil.copytree(changed, vol.resolved, symlinks=True)

    def _tool_run(self, runtimeContext: RuntimeContext, engine: EngineState) -> ToolRun:
        docker, _ = self.get_requirement("DockerRequirement")
        image = engine.default_image
        if docker is not None:
            image = str(docker.get("dockerPull") or docker.get("dockerImageId") or "")
            if not image:
                raise UnsupportedRequirement("DockerRequirement: only dockerPull (or dockerImageId "
                                             "naming a registry image) is supported here")
        command = [str(a) for a in self.command_line]
        env = dict(self.environment)
        if runtimeContext.secret_store is not None:
            command = cast(list[str], runtimeContext.secret_store.retrieve(command))  # type: ignore[arg-type]
            env = cast(dict[str, str], runtimeContext.secret_store.retrieve(env))  # type: ignore[arg-type]
        if not command:
            raise WorkflowException("Cannot run a CommandLineTool that produces an empty command line")
        mappers = [self.pathmapper, *([self.generatemapper] if self.generatemapper else [])]
        for mapper in mappers:  # literals become read-only host files (relinked after the job)
            for key, e in list(mapper.items()):
                if e.type == "CreateFile" and e.staged:
                    contents = e.resolved
                    if runtimeContext.secret_store is not None:
                        contents = cast(str, runtimeContext.secret_store.retrieve(contents))
                    mapper.update(key, engine.literal(contents), e.target, "File", e.staged)
        entries = [Entry(e.resolved, e.target, str(e.type)) for mapper in mappers
                   for _, e in mapper.items() if e.staged]
        resources = self.builder.resources
        engine.prepare_outdir(self.outdir)
        return ToolRun(
            name=self.name, image=image, command=command, env=env,
            outdir=self.builder.outdir, tmpdir=self.builder.tmpdir, host_outdir=self.outdir,
            entries=entries, stdin=self.stdin, stdout=self.stdout, stderr=self.stderr,
            cores=float(resources.get("cores", 1)), ram_mib=float(resources.get("ram", 256)),
            disk_mib=float(resources.get("tmpdirSize", 0)) + float(resources.get("outdirSize", 0)),
            timelimit=self.timelimit or None,
            collect_on_failure=any(code != 0 for code in self.successCodes),
            entrypoint=engine.from_docker(image))

    def _outcome(self, row: Any, plan: TaskPlan, timed_out: bool, engine: EngineState) -> tuple[str, int]:
        """(CWL process status, the tool's exit code) from the finished task."""
        logs = row.executor_logs
        rcode = logs[plan.tool_index].get("exit_code", -1) if len(logs) > plan.tool_index else -1
        state = State(row.state)
        where = f"TES task {row.id}" + (f" (Slurm job {row.job_id})" if row.job_id else "")
        if timed_out:
            log.error("[job %s] exceeded its time limit of %s s; %s stopped", self.name, self.timelimit, where)
            return "permanentFail", rcode
        if state == State.COMPLETE:
            status = process_status(rcode, list(self.successCodes), list(self.temporaryFailCodes),
                                    list(self.permanentFailCodes))
            if status != "success":
                log.warning("[job %s] exited with status: %d", self.name, rcode)
                self._log_tails(row, plan)
            return status, rcode
        if state == State.EXECUTOR_ERROR:
            if len(logs) > plan.tool_index:
                status = process_status(rcode, [], list(self.temporaryFailCodes),
                                        list(self.permanentFailCodes))
                log.warning("[job %s] exited with status: %d (%s)", self.name, rcode, where)
            else:
                status = "permanentFail"
                log.error("[job %s] staging the inputs failed in %s", self.name, where)
            for line in [x for x in row.system_logs if not x.startswith("Slurm: job pending")][-3:]:
                log.warning("[job %s] %s", self.name, line)
            self._log_tails(row, plan)
            return status, rcode
        message = "; ".join(row.system_logs[-3:]) or state.value
        engine.system_error(f"[job {self.name}] {where} ended {state.value}: {message}")
        log.error("[job %s] %s ended %s: %s", self.name, where, state.value, message)
        return "permanentFail", rcode

    def _log_tails(self, row: Any, plan: TaskPlan) -> None:
        for index, entry in enumerate(row.executor_logs):
            for stream in ("stderr", "stdout"):
                text = (entry.get(stream) or "").strip()
                if text:
                    what = "tool" if index == plan.tool_index else "staging"
                    log.warning("[job %s] %s %s (tail):\n%s", self.name, what, stream, text[-4000:])
