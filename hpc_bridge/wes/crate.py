"""A WES run's Provenance Run Crate 0.5 (Workflow Run RO-Crate), built with ro-crate-py from what the
service already holds: the run's record, each of its TES tasks (command, image, times, exit code,
files, Slurm job) and what the engine recorded in the run directory (the packed workflow and the
files' SHA-256, cwl/provenance.py).

The crate is built on request, owner-only like the run. Data files are referenced by URL, with the
size and checksum the engine computed with the user's own rights, and the service reads no file of
the user's but those two small records (opened without following links, size-capped) -- unless the
site puts the run's output files in the zip (`wes.crate_outputs: include`): those under the run
directory's outputs/ are then opened the same way (regular files only) and streamed into the zip,
hashed as written, up to a total cap. Each step's image carries the SHA-256 of the SIF it ran (the
site's file, read by the service, containers/digest.py).

Every step is a TES task with its own state, so the crate has per-step provenance that engines run
as opaque jobs cannot give. The workflow-run terms are defined inline rather than by the context
URL (w3id.org/ro/terms/workflow-run/context), so a crate validates offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

from rocrate.model.contextentity import ContextEntity
from rocrate.model.entity import Entity
from rocrate.model.person import Person
from rocrate.model.softwareapplication import SoftwareApplication
from rocrate.rocrate import ROCrate

from hpc_bridge.containers.digest import SifDigest
from hpc_bridge.cwl.objects import file_locations
from hpc_bridge.lifecycle import UNSUCCESSFUL
from hpc_bridge.store import TaskRow
from hpc_bridge.store.runs import RunRow
from hpc_bridge.wes import trs
from hpc_bridge.wes.attachments import open_beneath

PROVENANCE_PROFILE = "https://w3id.org/ro/wfrun/provenance/0.5"  # the richest of the profiles it meets
PROFILES = (
    ("https://w3id.org/ro/wfrun/process/0.5", "Process Run Crate", "0.5"),
    ("https://w3id.org/ro/wfrun/workflow/0.5", "Workflow Run Crate", "0.5"),
    (PROVENANCE_PROFILE, "Provenance Run Crate", "0.5"),
    ("https://w3id.org/workflowhub/workflow-ro-crate/1.0", "Workflow RO-Crate", "1.0"),
)
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
WFRUN_TERMS = ("ContainerImage", "DockerImage", "SIFImage", "containerImage", "registry", "tag", "sha256",
               "resourceUsage", "ParameterConnection", "connection", "sourceParameter", "targetParameter")
COMPLETED = "http://schema.org/CompletedActionStatus"
FAILED = "http://schema.org/FailedActionStatus"
ACTIVE = "http://schema.org/ActiveActionStatus"
MAX_RECORD_BYTES = 16 * 1024 * 1024  # packed.cwl, provenance.json: the engine's, written as the user
CHUNK = 1 << 20
# CWL types -> FormalParameter additionalType (Workflow Run Crate 0.5)
_TYPES = {"File": "File", "Directory": "Dataset", "string": "Text", "int": "Integer", "long": "Integer",
          "float": "Float", "double": "Float", "boolean": "Boolean"}


@dataclass(frozen=True)
class RunRecords:
    """What the engine left in the run directory for the crate."""

    packed: str | None = None  # the packed workflow (JSON), or None if it could not be packed
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # location -> {sha256, size}
    engine: dict[str, str] = field(default_factory=dict)  # name, version
    inputs: tuple[str, ...] = ()  # the File locations of the run's inputs, as the engine resolved them
    params: dict[str, Any] = field(default_factory=dict)  # the job order the engine ran


def read_records(run_dir: str) -> RunRecords:
    """The engine's records, read without following links and capped in size: they are the user's."""
    packed = _read(run_dir, "packed.cwl")
    try:
        prov = json.loads(_read(run_dir, "provenance.json") or "{}")
    except ValueError:
        prov = {}
    if not isinstance(prov, dict):
        prov = {}
    files = {k: v for k, v in _mapping(prov.get("files")).items()
             if isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)}
    engine = {k: str(v) for k, v in _mapping(prov.get("engine")).items() if k in ("name", "version")}
    listed = prov.get("inputs")
    inputs = tuple(i for i in listed if isinstance(i, str)) if isinstance(listed, list) else ()
    params: dict[str, Any] = prov["params"] if isinstance(prov.get("params"), dict) else {}
    return RunRecords(packed=packed, files=files, engine=engine, inputs=inputs, params=params)


def _read(run_dir: str, name: str) -> str | None:
    opened = _open_regular(run_dir, name)
    if opened is None:
        return None
    with os.fdopen(opened[0], "rb") as handle:
        data = handle.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        return None
    return data.decode("utf-8", errors="replace")


def _open_regular(run_dir: str, name: str) -> tuple[int, int] | None:
    """(descriptor, size) of a regular file beneath the run directory, the user's: opened without
    following links; None for anything else there (a link, a directory or a FIFO in its place)."""
    try:
        fd = open_beneath(run_dir, name)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info.st_size


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _no_sif(reference: str) -> SifDigest | None:
    return None


@dataclass(frozen=True)
class CrateContext:
    """The service's side of the story: who it is, how its URLs look, what it knows of the images."""

    service_name: str
    service_version: str
    service_url: str  # the WES base URL
    agent: str | None  # the owner's identity as the site shows it (None: anonymous)
    sif_digest: Callable[[str], SifDigest | None] = _no_sif  # an image reference -> its SIF's digest now
    include_max_bytes: int | None = None  # output bytes the zip may hold (None: outputs referenced)


def build(run: RunRow, tasks: Sequence[TaskRow], records: RunRecords, ctx: CrateContext) -> bytes:
    """The crate as a zip, in memory."""
    out = io.BytesIO()
    write(run, tasks, records, ctx, out)
    return out.getvalue()


def write(run: RunRow, tasks: Sequence[TaskRow], records: RunRecords, ctx: CrateContext, out: IO[bytes]) -> None:
    """The crate as a zip into `out` (seekable): the output files first when the site includes them,
    streamed and hashed as written, then the metadata that describes them and the packed workflow."""
    with tempfile.TemporaryDirectory(prefix="hpcb-crate-") as tmp, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        included = _include(run, archive, ctx.include_max_bytes)
        crate = _crate(run, tasks, records, ctx, Path(tmp), included)
        written = Path(tmp) / "crate"
        crate.write(written)
        for path in sorted(written.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(written).as_posix())


@dataclass
class _Included:
    """The run's output files in the zip (location -> member name, SHA-256, size) and those left
    out (location -> why)."""

    files: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)


def _include(run: RunRow, archive: zipfile.ZipFile, cap: int | None) -> _Included:
    """The run's output files (its output object's Files under the run directory's outputs/, the
    user's) streamed into the zip under the same relative name while their total stays within `cap`;
    each opened beneath the run directory without following links, regular files only."""
    included = _Included()
    if cap is None:
        return included
    total = 0
    members: dict[str, tuple[str, str, int]] = {}
    for location in dict.fromkeys(file_locations(run.outputs or {})):
        member = _output_member(run.run_dir, location)
        if member is None:
            continue
        if member in members:
            included.files[location] = members[member]
            continue
        opened = _open_regular(run.run_dir, member)
        if opened is None:
            included.left[location] = "Not in the zip: not a regular file beneath the run directory"
            continue
        fd, size = opened
        if total + size > cap:
            os.close(fd)
            included.left[location] = (f"Not in the zip: with it the run's output files would be more "
                                       f"than the {cap} bytes this service puts in a crate")
            continue
        with os.fdopen(fd, "rb") as handle:
            sha256, written = _copy(handle, archive, member, size)
        total += written
        included.files[location] = members[member] = (member, sha256, written)
    return included


def _output_member(run_dir: str, location: str) -> str | None:
    """`outputs/...` for a local location under the run directory's outputs/, else None."""
    parts = urlsplit(location)
    if parts.scheme not in ("", "file") or parts.netloc not in ("", "localhost"):
        return None
    path = unquote(parts.path)
    prefix = run_dir.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    member = "/".join(part for part in path[len(prefix):].split("/") if part)
    return member if member.startswith("outputs/") else None


def _copy(handle: IO[bytes], archive: zipfile.ZipFile, name: str, size: int) -> tuple[str, int]:
    """At most `size` bytes (the file's size when opened: one that grows meanwhile is cut there)
    into the zip member `name`: (their SHA-256, their count). Stored, not deflated: outputs are
    mostly compressed already (BAM, gzip), and deflating a GiB of those takes some 20 s of the
    login node's CPU per request, storing it about one."""
    digest = hashlib.sha256()
    written = 0
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type, info.external_attr = zipfile.ZIP_STORED, 0o644 << 16
    with archive.open(info, "w", force_zip64=True) as member:
        while written < size and (chunk := handle.read(min(CHUNK, size - written))):
            digest.update(chunk)
            member.write(chunk)
            written += len(chunk)
    return digest.hexdigest(), written


def _crate(run: RunRow, tasks: Sequence[TaskRow], records: RunRecords, ctx: CrateContext, tmp: Path,
           included: _Included) -> ROCrate:
    crate = ROCrate(version="1.1")  # the 0.5 run profiles build on RO-Crate 1.1
    crate.metadata.extra_terms.update({term: WFRUN + term for term in WFRUN_TERMS})
    request = run.request
    crate.name = f"Workflow run {run.id}"
    crate.description = f"Provenance of WES run {run.id} of {request.get('workflow_url', 'a workflow')}" + (
        f". {len(included.left)} of its output files are referenced by URL, not in the zip: see their "
        "description" if included.left else "")
    crate.datePublished = run.end_time or run.updated_at
    crate.root_dataset["license"] = "https://spdx.org/licenses/CC-BY-4.0"  # the crate's metadata
    for uri, name, version in PROFILES:
        crate.add(ContextEntity(crate, uri, properties={"@type": "CreativeWork", "name": name,
                                                        "version": version}))
    crate.root_dataset["conformsTo"] = [{"@id": uri} for uri, _, _ in PROFILES]

    graph = _processes(records.packed)
    main_doc = tmp / "packed.cwl"
    main_doc.write_text(records.packed or json.dumps({"cwlVersion": "v1.2", "class": "Workflow"}))
    workflow = crate.add_workflow(str(main_doc), dest_path="packed.cwl", main=True, lang="cwl", properties={
        "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
        "name": str(request.get("workflow_url") or "workflow"), "encodingFormat": "application/json"})
    if (origin := _trs_origin(crate, str(request.get("workflow_url") or ""))) is not None:
        workflow["isBasedOn"] = origin
    main = graph.get("#main") or next(iter(graph.values()), {})
    params = _Params(crate)
    workflow["input"] = params.declare("main", main.get("inputs"))
    workflow["output"] = params.declare("main", main.get("outputs"))

    steps = _steps(crate, graph, main, params, workflow)
    agent = crate.add(Person(crate, "#agent", properties={"name": ctx.agent or "anonymous"}))
    files = _Files(crate, records.files, included)
    failed = run.state in UNSUCCESSFUL
    run_props: dict[str, Any] = {
        "name": f"Run {run.id} of {workflow['name']}", "agent": agent,
        "startTime": run.start_time or run.created_at, "actionStatus": _status(run.state)}
    if run.end_time:
        run_props["endTime"] = run.end_time
    if failed:
        run_props["error"] = _run_error(run)
    inputs = _inputs(crate, files, workflow["input"], records.params or request.get("workflow_params") or {})
    outputs = files.values(run.outputs or {})
    wf_action = crate.add_action(workflow, identifier=f"#run-{run.id}", object=_one(inputs),
                                 result=_one(outputs), properties=run_props)

    images: dict[tuple[str, str | None], Entity] = {}
    controls: list[Entity] = []
    mentions: list[Entity] = [wf_action]
    for task in tasks:
        name = next(iter(steps)) if not main.get("steps") else _step_name(task, steps)
        step = steps.get(name)
        tool = step["workExample"] if step is not None else crate.add(
            SoftwareApplication(crate, f"#tool-{name}", properties={"name": name}))
        action = crate.add_action(tool, identifier=f"#task-{task.id}", object=_one(files.task_inputs(task)),
                                  result=_one(files.task_outputs(task)),
                                  properties=_task_props(crate, task, agent, images, ctx))
        mentions.append(action)
        if step is not None:
            controls.append(crate.add(ContextEntity(crate, f"#control-{task.id}", properties={
                "@type": "ControlAction", "name": f"orchestrate {name}", "instrument": step,
                "object": action, "actionStatus": _status(task.state)})))

    engine = crate.add(SoftwareApplication(crate, "#engine", properties={
        "name": records.engine.get("name", "cwltool"), "version": records.engine.get("version", "unknown")}))
    bridge = crate.add(SoftwareApplication(crate, "#service", properties={
        "name": ctx.service_name, "version": ctx.service_version, "url": ctx.service_url}))
    organize: dict[str, Any] = {
        "@type": "OrganizeAction", "name": f"{engine['name']} in {ctx.service_name}", "instrument": engine,
        "agent": bridge, "result": wf_action, "startTime": run_props["startTime"],
        "actionStatus": run_props["actionStatus"]}
    if controls:
        organize["object"] = controls
    if run.end_time:
        organize["endTime"] = run.end_time
    if failed:
        organize["error"] = run_props["error"]
    crate.add(ContextEntity(crate, f"#organize-{run.id}", properties=organize))
    crate.root_dataset["mentions"] = mentions
    return crate


def _steps(crate: ROCrate, graph: dict[str, dict[str, Any]], main: dict[str, Any], params: _Params,
           workflow: Entity) -> dict[str, Entity]:
    """The workflow's HowToSteps by name, each with its tool (a SoftwareApplication, `workExample`).
    A run of one tool is a workflow of one step, the tool itself."""
    tools: dict[str, Entity] = {}
    steps: dict[str, Entity] = {}
    declared = main.get("steps") or [{"id": "#main/" + _local(main.get("id") or "#main"), "run": "#main"}]
    for position, step in enumerate(declared):
        step_id = _local(step.get("id"))
        name = step_id.rsplit("/", 1)[-1]
        run_ref = step.get("run")
        tool_key = _local(run_ref) if isinstance(run_ref, str) else f"{step_id}/run"
        if tool_key not in tools:
            doc = graph.get("#" + tool_key, run_ref if isinstance(run_ref, dict) else {})
            tools[tool_key] = crate.add(SoftwareApplication(crate, f"packed.cwl#{tool_key}", properties={
                "name": tool_key, "input": params.declare(tool_key, doc.get("inputs")),
                "output": params.declare(tool_key, doc.get("outputs"))}))
        steps[name] = crate.add(ContextEntity(crate, f"packed.cwl#{step_id}", properties={
            "@type": "HowToStep", "name": name, "position": str(position), "workExample": tools[tool_key]}))
    workflow["hasPart"] = list(tools.values())
    workflow["step"] = list(steps.values())
    return steps


def _inputs(crate: ROCrate, files: _Files, declared: list[Entity], params: dict[str, Any]) -> list[Entity]:
    """The run's input values, each an `exampleOfWork` of its FormalParameter: its files as data
    entities, and the whole value as a PropertyValue holding its JSON, which is what a run from this
    crate is given again (wes/fromcrate.py)."""
    by_name = {p["name"]: p for p in declared}
    out: list[Entity] = []
    for name, value in params.items():
        param = by_name.get(name)
        for entity in files.values(value):
            if param is not None:
                entity.append_to("exampleOfWork", param)
            out.append(entity)
        out.append(crate.add(ContextEntity(crate, f"#param-{quote(str(name), safe='')}", properties={
            "@type": "PropertyValue", "name": str(name), "value": json.dumps(value),
            "encodingFormat": "application/json", **({"exampleOfWork": param} if param is not None else {})})))
    return list(dict.fromkeys(out))


class _Params:
    """FormalParameters of the packed document's processes, ids as cwltool's: packed.cwl#<id>."""

    def __init__(self, crate: ROCrate) -> None:
        self._crate = crate

    def declare(self, owner: str, declared: Any) -> list[Entity]:
        out = []
        for item in declared if isinstance(declared, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            local = _local(item["id"])
            name = local.rsplit("/", 1)[-1]
            ident = f"packed.cwl#{local if '/' in local else owner + '/' + local}"
            cwl_type = item.get("type")
            optional = isinstance(cwl_type, list) and "null" in cwl_type
            out.append(self._crate.add_formal_parameter(
                name=name, additionalType=_additional_type(cwl_type), identifier=ident,
                valueRequired=not optional))
        return out


class _Files:
    """Data entities by URL, with the engine's size and SHA-256 where it recorded them, or in the zip
    with those of the bytes written there (`_include`). Never a file ro-crate-py would copy into the
    zip: a location is only ever a name here (the user chose it)."""

    def __init__(self, crate: ROCrate, digests: dict[str, dict[str, Any]], included: _Included) -> None:
        self._crate = crate
        self._digests = digests
        self._included = included
        self._added: dict[str, Entity] = {}

    def file(self, location: str, *, size: int | None = None) -> Entity:
        if location in self._added:
            return self._added[location]
        props: dict[str, Any] = {"@type": "File", "name": location.rstrip("/").rsplit("/", 1)[-1] or location}
        ident = location if _ABSOLUTE_URI.match(location) else f"#file-{quote(location, safe='')}"
        facts = self._digests.get(location)
        if location in self._included.files:
            member, sha256, written = self._included.files[location]
            ident, props["sha256"], props["contentSize"] = quote(member), sha256, str(written)
        elif facts:
            props["sha256"], props["contentSize"] = facts["sha256"], str(facts["size"])
        elif size is not None:
            props["contentSize"] = str(size)
        if location in self._included.left:
            props["description"] = self._included.left[location]
        entity = self._crate.add(ContextEntity(self._crate, ident, properties=props))
        self._crate.root_dataset.append_to("hasPart", entity)  # a data entity: the root must reach it
        self._added[location] = entity
        return entity

    def values(self, value: Any) -> list[Entity]:
        return [self.file(loc) for loc in file_locations(value)]

    def task_inputs(self, task: TaskRow) -> list[Entity]:
        return [self.file(i["url"]) for i in task.task.get("inputs") or [] if isinstance(i.get("url"), str)]

    def task_outputs(self, task: TaskRow) -> list[Entity]:
        return [self.file(o["url"], size=_int(o.get("size_bytes"))) for o in task.outputs or []
                if isinstance(o.get("url"), str)]


_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _task_props(crate: ROCrate, task: TaskRow, agent: Entity, images: dict[tuple[str, str | None], Entity],
                ctx: CrateContext) -> dict[str, Any]:
    executors = task.task.get("executors") or []
    ids = [crate.add(ContextEntity(crate, f"#task-{task.id}-tes", properties={
        "@type": "PropertyValue", "propertyID": "GA4GH TES task id", "value": task.id}))]
    if task.job_id:
        ids.append(crate.add(ContextEntity(crate, f"#task-{task.id}-slurm", properties={
            "@type": "PropertyValue", "propertyID": "Slurm job id", "value": task.job_id})))
    props: dict[str, Any] = {
        "name": f"TES task {task.id}", "agent": agent, "identifier": ids,
        "description": " && ".join(" ".join(str(a) for a in e.get("command") or []) for e in executors),
        "actionStatus": _status(task.state), "startTime": task.start_time or task.created_at}
    if task.end_time:
        props["endTime"] = task.end_time
    if task.state in UNSUCCESSFUL:
        codes = [str(e.get("exit_code")) for e in task.executor_logs if e.get("exit_code") is not None]
        props["error"] = f"{task.state}" + (f" (exit code {', '.join(codes)})" if codes else "")
    refs = [str(e.get("image")) for e in executors if e.get("image")]
    if used := _one([_image(crate, ref, _ran_sha256(ctx, ref, task), images) for ref in dict.fromkeys(refs)]):
        props["containerImage"] = used
    return props


def _ran_sha256(ctx: CrateContext, reference: str, task: TaskRow) -> str | None:
    """The SHA-256 of the SIF `reference` resolves to now, if that file is the one the task's job
    ran: unchanged (ctime) since the job started. None if it never started, or the SIF is gone or
    was replaced since (the site's image, not the one that ran)."""
    started = _ns(task.start_time)
    if started is None:
        return None
    found = ctx.sif_digest(reference)
    return found.sha256 if found is not None and found.changed_ns <= started else None


def _ns(stamp: str | None) -> int | None:
    """A store or job-record timestamp (`...T10:00:02.123Z`) in nanoseconds since the epoch."""
    try:
        when = datetime.fromisoformat(stamp or "")
    except ValueError:
        return None
    return (when.replace(tzinfo=when.tzinfo or UTC) - _EPOCH) // timedelta(microseconds=1) * 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_REFERENCE = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?:(?P<registry>[^/]+\.[^/]+|[^/]+:\d+|localhost)/)?"
                        r"(?P<name>[^:@]+)(?::(?P<tag>[^@]+))?(?:@sha256:(?P<sha256>[0-9a-f]{64}))?$")


def _image(crate: ROCrate, reference: str, sha256: str | None, images: dict[tuple[str, str | None], Entity]) -> Entity:
    """A ContainerImage for an executor's image reference, run as an Apptainer SIF (`sha256`: the SIF
    file's), from a registry (registry, name, tag; a digest the reference pins is in `identifier`) or
    a local file. One per reference and SIF: a SIF replaced between two tasks makes two."""
    if (reference, sha256) in images:
        return images[reference, sha256]
    props: dict[str, Any] = {"@type": "ContainerImage", "additionalType": {"@id": WFRUN + "SIFImage"},
                             "name": reference}
    match = _REFERENCE.match(reference)
    if match and not reference.startswith("/") and not reference.endswith(".sif"):
        props["registry"] = match["registry"] or "docker.io"
        props["name"] = match["name"]
        if match["tag"]:
            props["tag"] = match["tag"]
        if match["sha256"]:
            props["identifier"] = f"{props['registry']}/{match['name']}@sha256:{match['sha256']}"
    if sha256:
        props["sha256"] = sha256
    images[reference, sha256] = crate.add(ContextEntity(crate, f"#image-{len(images)}", properties=props))
    return images[reference, sha256]


def _trs_origin(crate: ROCrate, url: str) -> Entity | None:
    """The registered tool version a run from TRS ran: its TRS id and version, at its TRS URL."""
    try:
        ref = trs.parse(url)
    except trs.TrsError:
        return None
    if ref is None:
        return None
    return crate.add(ContextEntity(crate, ref.version_url, properties={
        "@type": "SoftwareSourceCode", "name": f"{ref.tool_id} {ref.version}", "identifier": ref.uri,
        "version": ref.version, "url": ref.version_url}))


def _processes(packed: str | None) -> dict[str, dict[str, Any]]:
    """The packed document's processes by id (`#main`, `#tool.cwl`, ...)."""
    try:
        doc = json.loads(packed) if packed else {}
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    graph = doc.get("$graph")
    items: list[Any] = graph if isinstance(graph, list) else [{**doc, "id": doc.get("id", "#main")}]
    return {str(p["id"]): p for p in items if isinstance(p, dict) and isinstance(p.get("id"), str)}


def _local(ref: Any) -> str:
    return str(ref or "").split("#", 1)[-1]


def _step_name(task: TaskRow, steps: dict[str, Entity]) -> str:
    """cwltool names a step's jobs after the step, `_N` added for the second and later (a scatter)."""
    name = task.tags.get("cwl_step") or task.name or task.id
    if name in steps:
        return name
    base = re.sub(r"_\d+$", "", name)
    return base if base in steps else name


def _additional_type(cwl_type: Any) -> str:
    if isinstance(cwl_type, list):
        cwl_type = next((t for t in cwl_type if t != "null"), "string")
    if isinstance(cwl_type, dict):
        if cwl_type.get("type") == "array":
            return _additional_type(cwl_type.get("items"))
        return "PropertyValue" if cwl_type.get("type") == "record" else "Text"
    if isinstance(cwl_type, str) and cwl_type.endswith("[]"):
        return _additional_type(cwl_type[:-2])
    return _TYPES.get(str(cwl_type), "Text")


def _status(state: str) -> str:
    if state == "COMPLETE":
        return COMPLETED
    if state in UNSUCCESSFUL:
        return FAILED
    return ACTIVE


def _run_error(run: RunRow) -> str:
    return f"{run.state}: " + (run.system_logs[-1] if run.system_logs else "the run did not complete")


def _one(entities: list[Entity]) -> Entity | list[Entity] | None:
    """None, the one entity, or the list: RO-Crate asks for no lists of one."""
    return entities[0] if len(entities) == 1 else entities or None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
