"""A run from a Workflow (Run) RO-Crate: `POST /runs` whose `workflow_url` names an attached crate zip,
or is an https URL whose document is one (fetched like any https workflow, wes/service.py).

The crate's `mainEntity` becomes the workflow, and the recorded inputs of its run (the CreateAction
whose instrument is the workflow) its `workflow_params`, each field given in the request winning. A
value is read back from the PropertyValue this service writes (its JSON, wes/crate.py), else rebuilt
from what other producers write: File data entities that are `exampleOfWork` of a FormalParameter
(a file inside the crate is attached to the run, one outside is referenced by its URL) and plain
PropertyValues. Only the metadata file and the members the run needs are read from the zip, each
capped in size, never extracted by their own names.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

METADATA = "ro-crate-metadata.json"
PREFIX = "crate/"  # the crate's files are attached to the run under this name
ABSOLUTE = ("file://", "http://", "https://", "s3://", "drs://")
ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header


class CrateError(ValueError):
    """Not a usable crate: the message names what is wrong, for a 400."""


@dataclass(frozen=True)
class CrateRun:
    workflow: str  # the main workflow, as an attachment name
    params: dict[str, Any]
    members: dict[str, bytes] = field(default_factory=dict)  # attachment name -> content


def is_zip(path: Path) -> bool:
    """Whether a fetched document starts as a zip does: a crate, not a workflow document."""
    with open(path, "rb") as handle:
        return handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def read_crate(path: str, *, max_bytes: int) -> CrateRun:
    """The workflow, inputs and needed files of the crate zip at `path`."""
    try:
        with zipfile.ZipFile(path) as archive:
            graph = _graph(_member(archive, METADATA, max_bytes))
            root = graph.get("./")
            main_id = _id(root.get("mainEntity")) if root else None
            if not main_id:
                raise CrateError("the crate names no mainEntity (the workflow to run)")
            members = {PREFIX + _name(main_id): _member(archive, _name(main_id), max_bytes)}
            params: dict[str, Any] = {}
            for name, value in _recorded(graph, main_id).items():
                params[name] = _value(value, graph, archive, members, max_bytes)
    except zipfile.BadZipFile as exc:
        raise CrateError(f"not a zip file: {exc}") from None
    except (zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as exc:
        # ZIP64 off, an unknown compression, an encrypted member, a truncated or corrupt stream
        raise CrateError(f"the zip cannot be read: {exc}") from None
    return CrateRun(workflow=PREFIX + _name(main_id), params=params, members=members)


def _member(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CrateError(f"{name!r} is not in the crate") from None
    if info.file_size > max_bytes:
        raise CrateError(f"{name!r} is {info.file_size} bytes, more than the {max_bytes} allowed")
    with archive.open(info) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # the header lied
        raise CrateError(f"{name!r} is more than the {max_bytes} bytes allowed")
    return data


def _graph(metadata: bytes) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(metadata)
    except ValueError as exc:
        raise CrateError(f"{METADATA} is not JSON: {exc}") from None
    items = doc.get("@graph") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise CrateError(f"{METADATA} has no @graph")
    return {str(e["@id"]): e for e in items if isinstance(e, dict) and isinstance(e.get("@id"), str)}


def _id(ref: Any) -> str | None:
    if isinstance(ref, list):
        ref = ref[0] if len(ref) == 1 else None
    return str(ref["@id"]) if isinstance(ref, dict) and isinstance(ref.get("@id"), str) else None


def _ids(refs: Any) -> list[str]:
    items = refs if isinstance(refs, list) else [refs]
    return [i for i in (_id(r) for r in items) if i]


def _types(entity: dict[str, Any]) -> set[str]:
    kind = entity.get("@type")
    return {str(k) for k in kind} if isinstance(kind, list) else {str(kind)}


def _name(ident: str) -> str:
    """A crate-relative member name: no absolute URL, no escape from the crate."""
    name = ident.split("#", 1)[0]
    path = PurePosixPath(name)
    if not name or name.startswith(ABSOLUTE) or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise CrateError(f"{ident!r} is not a file inside the crate")
    return str(path)


def _recorded(graph: dict[str, dict[str, Any]], main_id: str) -> dict[str, list[dict[str, Any]]]:
    """Parameter name -> the entities its run recorded, from the CreateAction that ran the workflow."""
    action = next((e for e in graph.values() if "CreateAction" in _types(e) and _id(e.get("instrument")) == main_id),
                  None)
    if action is None:
        return {}
    names: dict[str, list[dict[str, Any]]] = {}
    for ident in _ids(action.get("object")):
        entity = graph.get(ident, {"@id": ident})
        for param_id in _ids(entity.get("exampleOfWork")):
            param = graph.get(param_id, {})
            name = str(param.get("name") or param_id.rsplit("/", 1)[-1])
            names.setdefault(name, []).append(entity)
    return names


def _value(entities: list[dict[str, Any]], graph: dict[str, dict[str, Any]], archive: zipfile.ZipFile,
           members: dict[str, bytes], max_bytes: int) -> Any:
    ours = [e for e in entities if "PropertyValue" in _types(e) and e.get("encodingFormat") == "application/json"]
    if ours:
        try:
            return json.loads(str(ours[0].get("value")))
        except ValueError:
            raise CrateError(f"{ours[0]['@id']!r}: its value is not JSON") from None
    values: list[Any] = []
    for entity in entities:
        if "File" in _types(entity) or "Dataset" in _types(entity):
            kind = "File" if "File" in _types(entity) else "Directory"
            ident = str(entity["@id"])
            if ident.startswith(ABSOLUTE):
                values.append({"class": kind, "location": ident})
            elif kind == "File":
                name = _name(ident)
                members[PREFIX + name] = _member(archive, name, max_bytes)
                values.append({"class": "File", "location": PREFIX + name})
            else:
                raise CrateError(f"{ident!r}: a directory inside the crate cannot be an input yet")
        elif "PropertyValue" in _types(entity):
            values.append(entity.get("value"))
    return values[0] if len(values) == 1 else values
