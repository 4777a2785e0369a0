"""A Pulsar-shaped task over HTTP Basic, through the real server, Slurm and Apptainer, with py-tes as
its users run it: stage-in, tool and stage-out executors sharing one volume; a second Basic account
and an unauthenticated caller cannot see it."""

from __future__ import annotations

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
