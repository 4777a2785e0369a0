"""A Pulsar-shaped task over HTTP Basic, through the real server, Slurm and Apptainer, with py-tes as
its users run it: stage-in, tool and stage-out executors sharing one volume; a second Basic account
and an unauthenticated caller cannot see it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import tes

from hpc_bridge.auth.passwords import hash_password

from .conftest import ServerProcess
from .test_tenancy import areas  # noqa: F401 - fixture

PASSWORD = "pulsar-long-secret"


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess], areas: Path) -> ServerProcess:  # noqa: F811
    users = {name: {"password_hash": hash_password(PASSWORD + name)} for name in ("pulsar", "protes")}
    return server_factory(auth={"mode": "jwt", "issuers": [], "basic_users": users},
                          storage={"owner_areas": str(areas / "users" / "{owner}")})


def test_a_pulsar_shaped_task_over_basic(server: ServerProcess) -> None:
    client = tes.HTTPClient(server.url, timeout=10, user="pulsar", password=PASSWORD + "pulsar")
    task = tes.Task(name="pulsar-job", volumes=["/pulsar"], executors=[
        tes.Executor(image="busybox", command=["sh", "-c", "echo staged > /pulsar/input.txt"]),
        tes.Executor(image="busybox", command=["sh", "-c", "tr a-z A-Z < /pulsar/input.txt > /pulsar/out.txt"]),
        tes.Executor(image="busybox", command=["cat", "/pulsar/out.txt"]),
    ])
    task_id = client.create_task(task)
    deadline = time.monotonic() + 180
    while (done := client.get_task(task_id, view="FULL")).state not in ("COMPLETE", "EXECUTOR_ERROR",
                                                                         "SYSTEM_ERROR", "CANCELED"):
        assert time.monotonic() < deadline, done.state
        time.sleep(0.5)
    assert done.state == "COMPLETE", done.logs
    assert [log.stdout for log in done.logs[0].logs] == ["", "", "STAGED\n"]

    other = tes.HTTPClient(server.url, timeout=10, user="protes", password=PASSWORD + "protes")
    assert [t.id for t in other.list_tasks().tasks or []] == []
    assert requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}", timeout=10,
                        auth=("protes", PASSWORD + "protes")).status_code == 404
    wrong = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}", timeout=10, auth=("pulsar", "nope"))
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(f"{server.url}/ga4gh/tes/v1/tasks", timeout=10,
                        auth=("nobody", PASSWORD)).status_code == 401


@pytest.fixture(scope="module")
def pulsar_python() -> Path:
    """Pulsar's client library in its own venv, made from dev/clients/pulsar.lock (again when it changes)."""
    root = Path(__file__).resolve().parents[2]
    lock, venv = root / "dev" / "clients" / "pulsar.lock", root / ".venv-pulsar"
    stamp = venv / f".lock-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    if not stamp.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--require-hashes", "--no-deps",
                        "-r", str(lock)], check=True)
        stamp.touch()
    return venv / "bin" / "python"


def drive_pulsar(python: Path, server: ServerProcess, mode: str, password: str = PASSWORD + "pulsar") -> dict:
    driver = Path(__file__).resolve().parents[1] / "clients" / "pulsar_drive.py"
    out = subprocess.run([str(python), str(driver), f"{server.url}/ga4gh/tes/", "pulsar", password, mode],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pulsars_own_client_library_runs_and_kills_a_job_over_basic(pulsar_python: Path,
                                                                     server: ServerProcess) -> None:
    """Pulsar's TES runner code (pulsar-galaxy-lib, pydantic-tes), unmodified: its task is accepted over
    Basic, its strict models parse every answer, and the statuses it derives are Galaxy's."""
    done = drive_pulsar(pulsar_python, server, "run")
    assert done["statuses"][-1] == "complete", done
    assert done["stdout"] == ["", "", "STAGED-IN\n"]
    assert done["name"].startswith("pulsar-")
    killed = drive_pulsar(pulsar_python, server, "kill")
    assert killed["statuses"][-1] == "cancelled", killed
    assert "running" in killed["statuses"]
    stored = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{killed['id']}", timeout=10,
                          auth=("pulsar", PASSWORD + "pulsar")).json()
    assert stored["state"] == "CANCELED"
