"""Crypt4GH through the real server, Slurm and Apptainer: outputs encrypted in the job to the
recipients a task names, `.c4gh` inputs decrypted in the job into its private directory, and no
plaintext left in the outputs, the work area or that directory afterwards, whatever the outcome."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from crypt4gh import lib
from crypt4gh.keys import c4gh, get_private_key, get_public_key

from hpc_bridge.config import SiteConfig

from .conftest import ServerProcess
from .test_crate import TWO_STEPS
from .test_staging import post, run_existing
from .test_wes import ECHO, WES, wait_state
from .test_wes import post as post_run

PLAIN_SIZE = 300_000  # several 64 KiB segments


class Keys:
    def __init__(self, directory: Path, name: str) -> None:
        self.secret_path, self.public_path = directory / f"{name}.sec", directory / f"{name}.pub"
        c4gh.generate(str(self.secret_path), str(self.public_path), None, name.encode())
        self.secret_path.chmod(0o600)
        self.secret = get_private_key(str(self.secret_path), None)
        self.public = get_public_key(str(self.public_path))

    @property
    def b64(self) -> str:
        return base64.b64encode(self.public).decode()

    def decrypt(self, path: Path) -> bytes:
        out = io.BytesIO()
        with path.open("rb") as f:
            lib.decrypt([(0, self.secret, None)], f, out)
        return out.getvalue()


def encrypt_to(public: bytes, data: bytes, path: Path) -> None:
    with path.open("wb") as out:
        lib.encrypt([(0, os.urandom(32), public)], io.BytesIO(data), out)


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Keys]:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return {name: Keys(directory, name) for name in ("site", "alice", "bob")}


@pytest.fixture()
def server(server_factory: Callable[..., ServerProcess], keys: dict[str, Keys], data: Path) -> ServerProcess:
    return server_factory(crypt4gh={"enabled": True, "secret_key": str(keys["site"].secret_path),
                                    "job_python": sys.executable,
                                    "required_roots": [str(data / "controlled")]})


def sh(script: str) -> dict:
    return {"image": "busybox", "command": ["sh", "-c", script]}


def files_containing(roots: list[Path], marker: bytes) -> list[Path]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink() and marker in path.read_bytes():
                found.append(path)
    return found


def plaintext_places(dev_config: SiteConfig, task_id: str, data: Path) -> list[Path]:
    """Everywhere a plaintext could be left: the outputs, the work area, the job's private directory."""
    private = Path(f"/tmp/hpc-bridge-{task_id}")
    return [data, dev_config.storage.work_root / task_id, *([private] if private.exists() else [])]


def test_outputs_are_encrypted_in_the_job_and_c4gh_inputs_decrypted_there(
        server: ServerProcess, keys: dict[str, Keys], data: Path, dev_config: SiteConfig) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}".encode()
    plain_input = marker + b"\n" + os.urandom(PLAIN_SIZE)
    encrypt_to(keys["site"].public, plain_input, data / "reads.bin.c4gh")
    resp = post(server, {
        "name": "c4gh",
        "inputs": [{"url": f"file://{data}/reads.bin.c4gh", "path": "/in/reads.bin"}],
        "outputs": [{"url": f"file://{data}/controlled/copy.bin", "path": "/out/copy.bin"},
                    {"url": f"file://{data}/controlled/dir", "path": "/out/dir", "type": "DIRECTORY"}],
        "executors": [sh("cp /in/reads.bin /out/copy.bin && mkdir -p /out/dir/sub && "
                         "{ head -n 1 /in/reads.bin | tr -d '\\n'; echo -OUT; } > /out/dir/sub/note.txt && "
                         "sha256sum /in/reads.bin")],
        "tags": {"crypt4gh_recipients": f"{keys['alice'].b64}, {keys['bob'].b64}"},
    })
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["id"]
    task = run_existing(server, task_id)
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    log = task["logs"][0]
    # The job read the plaintext: its executor saw the input's digest decrypted
    assert hashlib.sha256(plain_input).hexdigest() in log["logs"][0]["stdout"]
    delivered = {o["url"]: int(o["size_bytes"]) for o in log["outputs"]}
    assert delivered == {
        f"file://{data}/controlled/copy.bin.c4gh": (data / "controlled/copy.bin.c4gh").stat().st_size,
        f"file://{data}/controlled/dir/sub/note.txt.c4gh": (data / "controlled/dir/sub/note.txt.c4gh").stat().st_size,
    }
    for reader in ("alice", "bob"):
        assert keys[reader].decrypt(data / "controlled/copy.bin.c4gh") == plain_input
        assert keys[reader].decrypt(data / "controlled/dir/sub/note.txt.c4gh") == marker + b"-OUT\n"
    # Nothing else was written and no plaintext is left anywhere the job reached
    written = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    assert written == ["controlled/copy.bin.c4gh", "controlled/dir/sub/note.txt.c4gh", "reads.bin.c4gh"]
    assert files_containing(plaintext_places(dev_config, task_id, data), marker) == []
    assert not Path(f"/tmp/hpc-bridge-{task_id}").exists()


@pytest.mark.parametrize("end", ["fails", "is cancelled"])
def test_no_plaintext_outlives_a_failed_or_cancelled_job(
        server: ServerProcess, keys: dict[str, Keys], data: Path, dev_config: SiteConfig, end: str) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}".encode()
    encrypt_to(keys["site"].public, marker + b"\n", data / "in.c4gh")
    script = "cp /in/x /out/x && cp /in/x /tmp/x && " + ("exit 3" if end == "fails" else "sleep 300")
    resp = post(server, {
        "inputs": [{"url": f"file://{data}/in.c4gh", "path": "/in/x"}],
        "outputs": [{"url": f"file://{data}/out/x", "path": "/out/x"}],
        "executors": [sh(script)],
        "tags": {"crypt4gh_recipients": keys["alice"].b64},
    })
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["id"]
    workdir = dev_config.storage.work_root / task_id
    if end == "is cancelled":
        deadline = time.monotonic() + 60
        while not files_containing([workdir / "outputs"], marker):  # the plaintext exists mid-job
            assert time.monotonic() < deadline, "the executor never wrote its output"
            time.sleep(0.3)
        requests.post(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}:cancel", timeout=10).raise_for_status()
    task = run_existing(server, task_id)
    assert task["state"] == ("EXECUTOR_ERROR" if end == "fails" else "CANCELED")
    deadline = time.monotonic() + 30  # a cancelled job's script cleans up as Slurm stops it
    while (found := files_containing(plaintext_places(dev_config, task_id, data), marker)) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert found == []
    assert not Path(f"/tmp/hpc-bridge-{task_id}").exists()
    assert not (data / "out").exists()


def test_refusals_name_what_is_wrong(server: ServerProcess, keys: dict[str, Keys], data: Path) -> None:
    base = {"executors": [sh("true")]}
    plain = post(server, {**base, "outputs": [{"url": f"file://{data}/controlled/x", "path": "/out/x"}]})
    assert plain.status_code == 400 and "crypt4gh_recipients" in plain.json()["msg"]
    assert "outputs[0].url" in plain.json()["msg"]
    bad = post(server, {**base, "tags": {"crypt4gh_recipients": "not-a-key"}})
    assert bad.status_code == 400 and "tags.crypt4gh_recipients" in bad.json()["msg"]
    short = post(server, {**base, "tags": {"crypt4gh_recipients": base64.b64encode(b"x" * 16).decode()}})
    assert short.status_code == 400 and "not 32" in short.json()["msg"]


def test_an_input_not_encrypted_for_the_site_is_a_system_error_naming_it(
        server: ServerProcess, keys: dict[str, Keys], data: Path) -> None:
    encrypt_to(keys["alice"].public, b"for alice only\n", data / "other.c4gh")
    resp = post(server, {"inputs": [{"url": f"file://{data}/other.c4gh", "path": "/in/x"}],
                         "executors": [sh("cat /in/x")]})
    assert resp.status_code == 200, resp.text
    task = run_existing(server, resp.json()["id"])
    assert task["state"] == "SYSTEM_ERROR"
    assert any("input 0" in line and "not encrypted for this site" in line
               for line in task["logs"][0]["system_logs"]), task["logs"][0]["system_logs"]


def test_decrypt_false_passes_the_file_as_it_is(server: ServerProcess, keys: dict[str, Keys], data: Path) -> None:
    encrypt_to(keys["site"].public, b"x\n", data / "keep.c4gh")
    resp = post(server, {"inputs": [{"url": f"file://{data}/keep.c4gh", "path": "/in/keep.c4gh"}],
                         "executors": [sh("head -c 8 /in/keep.c4gh")], "tags": {"crypt4gh_decrypt": "false"}})
    task = run_existing(server, resp.json()["id"])
    assert task["state"] == "COMPLETE" and task["logs"][0]["logs"][0]["stdout"] == "crypt4gh"


def test_a_wes_run_with_encrypted_outputs_and_a_c4gh_input(
        server: ServerProcess, keys: dict[str, Keys], data: Path, dev_config: SiteConfig) -> None:
    """Two steps: the first reads a `.c4gh` input (decrypted in its job), the second the first's
    output; the run's final output is Crypt4GH for the recipient, and no plaintext of the input or
    of any step's output is left in the run's directory or in its tasks' work areas."""
    marker = f"marker-{uuid.uuid4().hex}"
    encrypt_to(keys["site"].public, f"hello {marker}\n".encode(), data / "text.txt.c4gh")
    (data / "extra.txt").write_text("and more\n")
    resp = post_run(server.url, {"wf.cwl": TWO_STEPS, "tools/echo.cwl": ECHO}, workflow_url="wf.cwl",
                    workflow_params={"text": {"class": "File", "location": f"file://{data}/text.txt.c4gh"},
                                     "extra": {"class": "File", "location": f"file://{data}/extra.txt"}},
                    workflow_engine_parameters={"crypt4gh_recipients": keys["alice"].b64})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    state = wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}, timeout=300)
    run_dir = dev_config.wes.root(dev_config.storage.data_roots) / run_id
    assert state == "COMPLETE", (run_dir / "stderr.log").read_text()
    result = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()["outputs"]["result"]
    assert result["location"].endswith("/upper.txt.c4gh") and result["basename"] == "upper.txt.c4gh"
    served = requests.get(f"{server.url}{WES}/runs/{run_id}/outputs", params={"location": result["location"]},
                          timeout=10)
    assert served.status_code == 200 and result["size"] == len(served.content)
    encrypted = Path(result["path"])
    assert encrypted.read_bytes() == served.content
    assert keys["alice"].decrypt(encrypted) == f"HELLO {marker.upper()}\nAND MORE\nand more\n".encode()
    assert sorted(p.name for p in (run_dir / "outputs").rglob("*") if p.is_file()) == ["upper.txt.c4gh"]
    tasks = requests.get(f"{server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]
    assert len(tasks) == 3  # two steps and the encryption
    places = [run_dir, *(dev_config.storage.work_root / t["id"] for t in tasks)]
    for text in (marker, marker.upper()):
        assert files_containing(places, text.encode()) == []
    assert not any(Path(f"/tmp/hpc-bridge-{t['id']}").exists() for t in tasks)


def test_a_wes_run_asking_for_encryption_is_checked_at_submission(server: ServerProcess) -> None:
    resp = post_run(server.url, {"wf.cwl": "cwlVersion: v1.2\nclass: Workflow\ninputs: {}\noutputs: {}\nsteps: {}\n"},
                    workflow_url="wf.cwl", workflow_params={},
                    workflow_engine_parameters={"crypt4gh_recipients": "AAAA"})
    assert resp.status_code == 400 and "workflow_engine_parameters.crypt4gh_recipients" in resp.json()["msg"]
