"""One cwltool job, reduced to plain values (`ToolRun`) -> the TES task that runs it (pure).

Staging follows the TES data model: every staged file or directory is a read-only `file://` input
bound at its container path (zero copy), including InitialWorkDir entries inside the output
directory (Apptainer nests those binds; the engine puts the originals back after collection).
What a read-only bind cannot do is done by a first "staging" executor in the tool's own image,
a POSIX `sh` script: writable entries (`cp`), directories to create (`mkdir`), and paths Apptainer
cannot bind (`,` or `:` in them), which are reached through a bind of their nearest safe parent
directory and linked or copied into place. The tool's executor always comes last; the whole
output directory is the task's one DIRECTORY output.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema_salad.ref_resolver import file_uri

from hpc_bridge.containers.apptainer import UnsafeValue, check_bind_path
from hpc_bridge.cwl.remote import is_remote

STAGE_ROOT = "/var/lib/cwl/.hpc-bridge"  # container dir of indirect binds (never a stg* name)
OCI_RUNSCRIPT = "/.singularity.d/runscript"
WRITABLE_TYPES = {"WritableFile", "WritableDirectory", "CreateWritableFile"}


class Unsupported(ValueError):
    """A job this engine cannot turn into a TES task; the message says why."""


@dataclass(frozen=True)
class Entry:
    """A staged path-mapper entry: `resolved` is a host path, the contents of a Create* file, or
    `_:...` for a directory literal; `target` is its path in the container."""

    resolved: str
    target: str
    type: str


@dataclass
class ToolRun:
    """What the TES task needs from a cwltool job (all paths but host_outdir are container paths)."""

    name: str
    image: str
    command: list[str]
    outdir: str
    tmpdir: str
    host_outdir: str
    env: dict[str, str] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    stdin: str | None = None
    stdout: str | None = None  # relative to outdir, as in CWL
    stderr: str | None = None
    cores: float = 1
    ram_mib: float = 256
    disk_mib: float = 0
    timelimit: int | None = None  # seconds; None or 0: none
    collect_on_failure: bool = False  # non-zero successCodes: outputs are needed whatever the exit
    entrypoint: bool = False  # an image from Docker: its ENTRYPOINT comes first, as with `docker run`


@dataclass
class TaskPlan:
    body: dict[str, Any]
    tool_index: int  # which executor is the tool (0, or 1 after a staging executor)

    def key_material(self) -> dict[str, Any]:
        """The task minus what differs between two runs of the same job (name, output URL)."""
        body = {k: v for k, v in self.body.items() if k not in ("name", "outputs", "tags")}
        return {"task": body, "outdir": self.body["outputs"][0]["path"], "tool_index": self.tool_index}


def safe(path: str) -> bool:
    try:
        check_bind_path(path)
    except UnsafeValue:
        return False
    return True


def within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def slurm_minutes(seconds: int) -> str:
    """Slurm's time limit (whole minutes) for a ToolTimeLimit; the engine enforces the exact limit,
    this is the backstop (one minute of slack for the job's own start and output collection)."""
    return str(math.ceil(seconds / 60) + 1)


class _Stager:
    def __init__(self, run: ToolRun, literal: Callable[[str], str], empty_dir: str) -> None:
        self.run, self.literal, self.empty_dir = run, literal, empty_dir
        self.inputs: list[dict[str, str]] = []
        self.volumes: list[str] = []
        self.mkdirs: list[str] = []
        self.ops: list[str] = []
        self.mounts: dict[str, str] = {}  # host dir -> container dir of an indirect bind

    def writable_place(self, path: str) -> bool:
        return any(within(path, base) for base in (self.run.outdir, self.run.tmpdir, *self.volumes))

    def bind(self, host: str, target: str, ftype: str) -> None:
        self.inputs.append({"url": file_uri(host), "path": target, "type": ftype})

    def indirect(self, host: str, ftype: str) -> str:
        """The container path of `host` through a bind of its nearest bindable ancestor."""
        anc = host
        while not safe(anc):
            anc = posixpath.dirname(anc)
            if anc == "/":
                raise Unsupported(f"{host!r}: no parent directory can be bound into the container")
        if anc not in self.mounts:
            self.mounts[anc] = f"{STAGE_ROOT}/{len(self.mounts)}"
            self.bind(anc, self.mounts[anc], ftype if anc == host else "DIRECTORY")
        return self.mounts[anc] + host[len(anc):]

    def make_parent(self, target: str) -> None:
        parent = posixpath.dirname(target)
        if not self.writable_place(parent):
            if not safe(parent) or parent == "/":
                raise Unsupported(f"{target!r}: cannot stage a file there (its directory cannot be "
                                  "made writable)")
            self.volumes.append(parent)
        self.mkdirs.append(parent)

    def add(self, entry: Entry, has_children: bool) -> None:
        kind, target = entry.type, entry.target
        writable = kind in WRITABLE_TYPES
        if is_remote(entry.resolved):  # a TES input by its URL: the service fetches it, never the engine
            if writable or not safe(target):
                raise Unsupported(f"{entry.resolved}: a remote input is staged read-only at a plain path only "
                                  f"(not {target!r}{', writable' if writable else ''})")
            self.inputs.append({"url": entry.resolved, "path": target,
                                "type": "DIRECTORY" if kind.endswith("Directory") else "FILE"})
            return
        if kind in ("CreateFile", "CreateWritableFile"):
            host, ftype = self.literal(entry.resolved), "FILE"
        elif entry.resolved.startswith("_:"):  # a directory literal: its entries create it ...
            if writable or (not has_children and not safe(target)):
                self.make_parent(target)
                self.mkdirs.append(target)
            elif not has_children:  # ... unless it is empty
                self.bind(self.empty_dir, target, "DIRECTORY")
            return
        else:
            host, ftype = entry.resolved, "DIRECTORY" if kind.endswith("Directory") else "FILE"
        if not writable and safe(host) and safe(target):
            self.bind(host, target, ftype)
            return
        source = self.indirect(host, ftype)
        self.make_parent(target)
        q_src, q_tgt = shlex.quote(source), shlex.quote(target)
        if writable:
            self.ops.append(f"cp -pR {q_src} {q_tgt}")
            self.ops.append(f"chmod -R u+w {q_tgt}")
        else:
            self.ops.append(f"ln -s {q_src} {q_tgt}")

    def script(self) -> str | None:
        if not (self.mkdirs or self.ops):
            return None
        dirs = sorted(set(self.mkdirs), key=lambda p: (p.count("/"), p))
        lines = ["set -e", *(f"mkdir -p {shlex.quote(d)}" for d in dirs), *self.ops]
        return "\n".join(lines) + "\n"


def dedup(entries: list[Entry]) -> list[Entry]:
    """One entry per container path (a later InitialWorkDir entry wins), in order."""
    by_target: dict[str, Entry] = {}
    for entry in entries:
        by_target.pop(entry.target, None)
        by_target[entry.target] = entry
    return list(by_target.values())


def plan_task(run: ToolRun, *, literal: Callable[[str], str], empty_dir: str) -> TaskPlan:
    """`literal(contents)` gives the host path of a file with those contents (made by the engine,
    content-addressed); `empty_dir` is an empty host directory. Raises Unsupported."""
    stager = _Stager(run, literal, empty_dir)
    entries = dedup(run.entries)
    targets = [e.target for e in entries]
    for entry in entries:
        children = any(t != entry.target and within(t, entry.target) for t in targets)
        stager.add(entry, children)

    env = {k: v for k, v in run.env.items() if k != "HOME"}
    executors: list[dict[str, Any]] = []
    script = stager.script()
    if script is not None:
        executors.append({"image": run.image, "command": ["/bin/sh", "-c", script], "workdir": run.outdir})
    # Apptainer refuses HOME in the environment; CWL wants it to be the output directory.
    command = ["env", f"HOME={run.outdir}", *run.command]
    if run.entrypoint:
        # Apptainer's runscript of an OCI image runs ENTRYPOINT + arguments the way Docker does;
        # SINGULARITY_NO_EVAL keeps it from passing the arguments through a shell again.
        command[2:2] = [OCI_RUNSCRIPT]
        env["SINGULARITY_NO_EVAL"] = "1"
    tool: dict[str, Any] = {"image": run.image, "command": command, "workdir": run.outdir, "env": env}
    if run.stdin:
        tool["stdin"] = run.stdin
    for stream in ("stdout", "stderr"):
        if (value := getattr(run, stream)) is not None:
            tool[stream] = posixpath.join(run.outdir, value)
    if run.collect_on_failure:
        tool["ignore_error"] = True
    executors.append(tool)

    resources: dict[str, Any] = {"cpu_cores": max(1, math.ceil(run.cores)),
                                 "ram_gb": round(max(run.ram_mib, 1) / 1024, 6)}
    if run.disk_mib > 0:
        resources["disk_gb"] = round(run.disk_mib / 1024, 6)
    if run.timelimit:
        resources["backend_parameters"] = {"time": slurm_minutes(run.timelimit)}
    body: dict[str, Any] = {
        "name": f"cwl {run.name}"[:200],
        "executors": executors,
        "inputs": stager.inputs,
        "outputs": [{"name": "outdir", "path": run.outdir, "url": file_uri(run.host_outdir),
                     "type": "DIRECTORY"}],
        "resources": resources,
    }
    if stager.volumes:
        body["volumes"] = sorted(set(stager.volumes))
    return TaskPlan(body=body, tool_index=len(executors) - 1)


def job_key(plan: TaskPlan, stamps: dict[str, Any]) -> str:
    """The identity of a fully resolved job: its task (command, env, image, binds, resources) and
    the state of every input (`stamps`: input URL -> checksum or size and mtime)."""
    material = {**plan.key_material(), "stamps": stamps}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
