"""What the engine records for the run's crate (wes/crate.py): the workflow packed into one document,
and the size and SHA-256 of the files the run read and wrote.

It runs in the engine, as the run's own Unix user: every document is fetched through the run's
fetch policy and every file is read with the user's rights, so the service that builds the crate
never opens a user's file on the user's behalf.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cwltool import main as cwlmain
from cwltool.context import LoadingContext

from hpc_bridge.cwl.fetch import FetchPolicy, fetcher_constructor
from hpc_bridge.cwl.objects import file_locations

log = logging.getLogger("hpc_bridge.cwl")

PACKED = "packed.cwl"
PROVENANCE = "provenance.json"
CHUNK = 1 << 20
_LOCK = threading.Lock()  # the inputs are hashed in a thread beside the run, the outputs at its end


def write_packed(workflow: str, policy: FetchPolicy, run_dir: Path) -> bool:
    """`cwltool --pack` of the workflow into DIR/packed.cwl; False (logged) if it cannot be packed:
    the crate then names the workflow as submitted."""
    loading = LoadingContext()
    loading.fetcher_constructor = fetcher_constructor(policy)
    loading.relax_path_checks = True
    out = io.StringIO()
    try:
        code = cwlmain.main(argsl=["--pack", workflow], loadingContext=loading, stdout=out,
                            logger_handler=logging.NullHandler())
    except Exception as exc:  # noqa: BLE001 - provenance must never fail the run
        log.warning("could not pack the workflow for the run's crate: %s", exc)
        return False
    if code != 0:
        log.warning("could not pack the workflow for the run's crate (cwltool --pack exited %s)", code)
        return False
    _write(run_dir / PACKED, out.getvalue())
    return True


def digest(location: str) -> dict[str, Any] | None:
    """Size and SHA-256 of a local file (file: URL or path), read as the engine's user; None for
    what is not a readable local regular file."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    path = unquote(parsed.path) if parsed.scheme else location
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device: nothing to record
            return None
        sha = hashlib.sha256()
        size = 0
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "size": size}


def record(run_dir: Path, *, inputs: Any = None, outputs: Any = None, engine: dict[str, str] | None = None) -> None:
    """Merge what is known now into DIR/provenance.json: the job order and the File locations of the
    run's inputs (at the start, hashed beside the run) and outputs (at the end), as the engine resolved
    them, and each file's digest. Files are hashed first, the record is then merged under a lock."""
    lists = {key: list(dict.fromkeys(file_locations(value)))
             for key, value in (("inputs", inputs), ("outputs", outputs)) if value is not None}
    facts = {loc: found for locs in lists.values() for loc in locs if (found := digest(loc)) is not None}
    with _LOCK:
        path = run_dir / PROVENANCE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(inputs, dict):
            data["params"] = inputs  # the job order the engine got: what a run from the crate is given
        data.update(lists)
        data.setdefault("files", {}).update(facts)
        if engine:
            data["engine"] = engine
        data["packed"] = PACKED if (run_dir / PACKED).exists() else None
        _write(path, json.dumps(data, indent=1))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
