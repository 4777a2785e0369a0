"""A workflow is its user's code: the CWL engine runs with the run user's rights and no more.

Through the real server and Slurm on the dev cluster (the service runs as root there and the job
user is `hpcb`): a JavaScript expression that escapes node's `vm` reaches a process of the run's
user, which can neither open the database nor read the service's files; the run's files are
private; the engine reaches its tasks only over the TES API with its run's credential.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from hpc_bridge.config import SiteConfig

from .conftest import ServerProcess, free_port, write_config
from .test_wes import WES, post, wait_state

ESCAPE = """cwlVersion: v1.2
class: ExpressionTool
requirements:
  InlineJavascriptRequirement: {}
inputs:
  db: string
  secret: string
outputs:
  uid: int
  db_write: string
  db_read: string
  wal_read: string
  secret_read: string
expression: |
  ${
    var host = Function("return this")().constructor.constructor;
    var p = host("return process")();
    var fs = host("return require")()("fs");
    function attempt(path, flags) {
      try { fs.closeSync(fs.openSync(path, flags)); return "opened"; } catch (e) { return e.code; }
    }
    return {"uid": p.getuid(), "db_write": attempt(inputs.db, "r+"), "db_read": attempt(inputs.db, "r"),
            "wal_read": attempt(inputs.db + "-wal", "r"), "secret_read": attempt(inputs.secret, "r")};
  }
"""
STEP = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c, "id -u > uid.txt"]
inputs: []
outputs:
  uid: {type: File, outputBinding: {glob: uid.txt}}
"""


@pytest.fixture()
def service_dir() -> Iterator[Path]:
    """A directory everyone may enter, holding the service's database and a secret of the
    service: only the files' own modes keep the engine out."""
    path = Path("/var/tmp") / f"hpcb-confinement-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    secret = path / "service-key.pem"
    secret.write_text("SERVICE-SECRET-CANARY\n")
    os.chmod(secret, 0o600)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def private_server(dev_config: SiteConfig, tmp_path: Path, service_dir: Path) -> Iterator[ServerProcess]:
    config = write_config(dev_config, tmp_path, database=str(service_dir / "hpc-bridge.sqlite"))
    server = ServerProcess(config, free_port()).start()
    yield server
    server.stop()


def test_a_javascript_escape_reaches_only_the_run_users_rights(private_server: ServerProcess,
                                                                service_dir: Path) -> None:
    db = service_dir / "hpc-bridge.sqlite"
    response = post(private_server.url, {"escape.cwl": ESCAPE}, workflow_url="escape.cwl",
                    workflow_params={"db": str(db), "secret": str(service_dir / "service-key.pem")})
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    run = finished(private_server.url, run_id)
    outputs = run["outputs"]
    assert outputs["uid"] == pwd.getpwnam("hpcb").pw_uid != 0  # the job user, not root
    assert outputs["db_write"] == outputs["db_read"] == "EACCES"
    assert outputs["wal_read"] in ("EACCES", "ENOENT")
    assert outputs["secret_read"] == "EACCES"
    assert "SERVICE-SECRET-CANARY" not in json.dumps(run)


def test_the_engine_and_its_steps_run_as_the_job_user(private_server: ServerProcess) -> None:
    response = post(private_server.url, {"step.cwl": STEP}, workflow_url="step.cwl")
    run_id = response.json()["run_id"]
    run = finished(private_server.url, run_id)
    uid_file = Path(run["outputs"]["uid"]["location"].removeprefix("file://"))
    assert int(uid_file.read_text()) == pwd.getpwnam("hpcb").pw_uid
    tasks = requests.get(f"{private_server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]
    assert len(tasks) == 1 and tasks[0]["tes_uri"].endswith(tasks[0]["id"])


def finished(url: str, run_id: str) -> dict:
    """The RunLog of a run that ended COMPLETE (else the failure shows its logs)."""
    state = wait_state(url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"})
    run = requests.get(f"{url}{WES}/runs/{run_id}", timeout=10).json()
    assert state == "COMPLETE", json.dumps(run["run_log"], indent=1)
    return run


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_database_and_run_files_are_private(private_server: ServerProcess, service_dir: Path,
                                            dev_config: SiteConfig) -> None:
    response = post(private_server.url, {"step.cwl": STEP, "data/in.txt": "attached\n"},
                    workflow_url="step.cwl")
    run_id = response.json()["run_id"]
    finished(private_server.url, run_id)
    db = service_dir / "hpc-bridge.sqlite"
    for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if name.exists():
            assert mode(name) == 0o600, name
            assert os.stat(name).st_uid == os.geteuid()
    runs_root = dev_config.wes.root(dev_config.storage.data_roots)
    assert mode(runs_root) & 0o044 == 0  # nobody else may list the run ids
    run_dir = runs_root / run_id
    hpcb = pwd.getpwnam("hpcb")
    assert os.stat(run_dir).st_uid == hpcb.pw_uid and mode(run_dir) == 0o700
    for path in [run_dir / "request.json", run_dir / "stdout.log", run_dir / "stderr.log",
                 run_dir / "outputs.json", run_dir / "attachments", run_dir / "attachments" / "data" / "in.txt",
                 run_dir / "outputs"]:
        assert os.stat(path).st_uid == hpcb.pw_uid, path
        assert mode(path) & 0o007 == 0, f"{path} is open to others: {mode(path):o}"


def test_the_run_id_and_credential_are_not_in_the_engines_argv(private_server: ServerProcess) -> None:
    sleeping = STEP.replace('"id -u > uid.txt"', '"sleep 60"').replace(
        "outputs:\n  uid: {type: File, outputBinding: {glob: uid.txt}}", "outputs: []")
    run_id = post(private_server.url, {"sleep.cwl": sleeping}, workflow_url="sleep.cwl").json()["run_id"]
    wait_state(private_server.url, run_id, {"RUNNING"})
    try:
        engines = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if b"hpc_bridge.cwl" in argv:
                engines.append(pid)
                assert not any(run_id.encode() in a for a in argv)
                assert run_id.encode() not in env and b"hpcb-run." not in env
                if os.stat(f"/proc/{pid}").st_uid != 0:
                    assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("hpcb").pw_uid
        assert engines, "no engine process found"
    finally:
        requests.post(f"{private_server.url}{WES}/runs/{run_id}/cancel", timeout=10)
        wait_state(private_server.url, run_id, {"CANCELED"}, timeout=120)


def test_cancel_cascades_with_the_engine_as_another_user(private_server: ServerProcess,
                                                         server_factory: Callable[..., ServerProcess]) -> None:
    sleeping = STEP.replace('"id -u > uid.txt"', '"sleep 300"').replace(
        "outputs:\n  uid: {type: File, outputBinding: {glob: uid.txt}}", "outputs: []")
    run_id = post(private_server.url, {"sleep.cwl": sleeping}, workflow_url="sleep.cwl").json()["run_id"]
    wait_state(private_server.url, run_id, {"RUNNING"})
    requests.post(f"{private_server.url}{WES}/runs/{run_id}/cancel", timeout=10)
    assert wait_state(private_server.url, run_id, {"CANCELED"}, timeout=120) == "CANCELED"
    tasks = requests.get(f"{private_server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]
    assert tasks and all("TES state: CANCELED" in t["system_logs"] for t in tasks)
