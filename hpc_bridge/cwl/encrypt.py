"""A run whose outputs are encrypted (`crypt4gh_recipients`): its final outputs go through one more
TES task, so they are encrypted inside Slurm like any task's (jobside/collect.py), and every plaintext
the run left in its directory is removed at its end, whatever that end.

The step tasks carry the scrub tag (their work areas are emptied when their jobs end); their
outputs reach the engine's work area (DIR/.cwl) and cwltool gathers the final ones in DIR/outputs.
Both are the run's work area: the encryption task writes DIR/encrypted, which then replaces
DIR/outputs, and DIR/.cwl goes. The engine runs as the run's user, so these are its own files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from hpc_bridge.cwl.objects import file_objects
from hpc_bridge.tes.models import State

if TYPE_CHECKING:  # the WES service reads PARAMETER here without loading the engine's HTTP client
    from hpc_bridge.cwl.tasks import TaskRunner

log = logging.getLogger("hpc_bridge.cwl")

PARAMETER = "crypt4gh_recipients"
RECIPIENTS_TAG = "crypt4gh_recipients"  # the TES tags (tes/jobspec.py), spelled here: the engine
SCRUB_TAG = "crypt4gh_scrub"  # reaches TES over its API only
SUFFIX = ".c4gh"
PLAINTEXT = ("outputs", ".cwl")  # what a run leaves in its directory: final outputs, intermediates
ENCRYPTED = "encrypted"


def step_tags(recipients: str | None) -> dict[str, str]:
    """Tags for every step task of the run."""
    return {SCRUB_TAG: "true"} if recipients else {}


def encryption_task(run_dir: Path, recipients: str, image: str) -> dict[str, Any]:
    """The task that copies DIR/outputs into its own work area, from where its job encrypts each
    file to DIR/encrypted/NAME.c4gh (and then empties its work area)."""
    return {
        "name": "crypt4gh: encrypt the run's outputs",
        "inputs": [{"url": (run_dir / "outputs").as_uri(), "path": "/in", "type": "DIRECTORY"}],
        "outputs": [{"url": (run_dir / ENCRYPTED).as_uri(), "path": "/out", "type": "DIRECTORY"}],
        "executors": [{"image": image, "command": ["cp", "-R", "/in/.", "/out/"]}],
        "tags": {RECIPIENTS_TAG: recipients},
    }


def encrypt_outputs(runner: TaskRunner, run_dir: Path, recipients: str, image: str,
                    outputs: dict[str, Any]) -> dict[str, Any] | None:
    """The output object with every file as its `.c4gh`; None (logged) if the task failed."""
    if not (run_dir / "outputs").is_dir() or not any((run_dir / "outputs").iterdir()):
        return outputs
    task_id = runner.create(encryption_task(run_dir, recipients, image), step="crypt4gh", key="crypt4gh")
    row, _ = runner.wait(task_id)
    if row.state != State.COMPLETE:
        log.error("the task encrypting the outputs (%s) ended %s", task_id, row.state)
        return None
    shutil.rmtree(run_dir / "outputs")
    os.replace(run_dir / ENCRYPTED, run_dir / "outputs")
    return encrypted_object(outputs, run_dir / "outputs")


def encrypted_object(outputs: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Each File under `directory` renamed to its `.c4gh`, with that file's size and checksum (in
    place: the object is the engine's own copy)."""
    for obj in file_objects(outputs):
        where = obj.get("location") or obj.get("path")
        if obj["class"] != "File" or not isinstance(where, str):
            continue
        path = Path(unquote(urlsplit(where).path)) if where.startswith("file:") else Path(where)
        encrypted = path.with_name(path.name + SUFFIX)
        if not encrypted.is_relative_to(directory) or not encrypted.is_file():
            continue
        for key in ("location", "path"):
            if isinstance(obj.get(key), str):
                obj[key] += SUFFIX
        obj["basename"] = encrypted.name
        obj["nameroot"], obj["nameext"] = path.name, SUFFIX
        obj["size"] = encrypted.stat().st_size
        obj["checksum"] = "sha1$" + _sha1(encrypted)
    return outputs


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def remove_plaintext(run_dir: Path, *, keep_outputs: bool) -> None:
    """The run's intermediates, and its final outputs unless they are the encrypted ones."""
    for name in PLAINTEXT:
        if name == "outputs" and keep_outputs:
            continue
        shutil.rmtree(run_dir / name, ignore_errors=True)
    shutil.rmtree(run_dir / ENCRYPTED, ignore_errors=True)


def after_cancel(runner: TaskRunner, run_dir: Path, grace: float = 30.0) -> Callable[[], None]:
    """What a cancelled run does last: wait (up to `grace` s) for its tasks to end, so that no job
    still writes into the run's directory, then remove the plaintext."""
    def clean() -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
                not State(t.state).terminal for t in runner.client.list(tags={"wes_run_id": runner.run_id})):
            time.sleep(1)
        remove_plaintext(run_dir, keep_outputs=False)
    return clean
