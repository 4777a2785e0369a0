"""Tenancy through the real server, Slurm and Apptainer: tokens from a local OIDC issuer, two users
and an admin; another user's task does not exist for you, whatever you try with it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from hpc_bridge.config import SiteConfig
from hpc_bridge.staging.areas import owner_key

from ..oidc import Issuer, claims, jwk, token
from .conftest import ServerProcess

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}


@pytest.fixture(scope="module")
def keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


@pytest.fixture
def idp(keys: list[rsa.RSAPrivateKey]) -> Iterator[Issuer]:
    server = Issuer()
    server.jwks = {"keys": [jwk(keys[0], "k1")]}
    yield server
    server.close()


class User:
    def __init__(self, server: ServerProcess, idp: Issuer, key: rsa.RSAPrivateKey, sub: str,
                 kid: str = "k1", **extra: Any) -> None:
        self.base = f"{server.url}/ga4gh/tes/v1"
        self.headers = {"Authorization": "Bearer " + token(key, claims(idp, sub=sub, **extra), kid=kid)}

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.base + path, headers=self.headers, timeout=10, **kwargs)

    def create(self, script: str, **fields: Any) -> str:
        resp = self.post(script, **fields)
        assert resp.status_code == 200, resp.text
        return resp.json()["id"]

    def post(self, script: str, **fields: Any) -> requests.Response:
        body = {"name": "tenancy", "executors": [{"image": "busybox", "command": ["sh", "-c", script]}],
                **fields}
        return self.call("POST", "/tasks", json=body)

    def wait(self, task_id: str, states: set[str], timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.call("GET", f"/tasks/{task_id}?view=FULL").json()
            if task["state"] in states:
                return task
            time.sleep(0.3)
        pytest.fail(f"task {task_id} not in {states} after {timeout}s")


@pytest.fixture
def areas(dev_config: SiteConfig) -> Iterator[Path]:
    """A data-root directory holding this test's owner areas (made by the jobs, as the job user),
    a read-only shared area and a writable one."""
    base = dev_config.storage.data_roots[0] / f"it-areas-{uuid.uuid4().hex[:10]}"
    job_user = pwd.getpwnam(dev_config.slurm.submit_as or "root")
    for name, owned in (("", False), ("users", True), ("reference", False), ("exchange", True)):
        (base / name).mkdir(mode=0o755, exist_ok=True)
        if owned:
            os.chown(base / name, job_user.pw_uid, job_user.pw_gid)
    (base / "reference" / "genome.fa").write_text(">chr1\nACGT\n")
    (base / "loose.txt").write_text("in a data root, but in no one's area")
    os.chmod(base / "loose.txt", 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess], idp: Issuer, areas: Path) -> ServerProcess:
    return server_factory(auth={"mode": "jwt", "issuers": [{"issuer": idp.issuer}],
                                "admin_claim": "roles", "admin_values": ["hpc-admin"],
                                "jwks_refresh_min_interval": 1, "jwks_cache_lifespan": 3},
                          storage={"owner_areas": str(areas / "users" / "{owner}"),
                                   "shared_areas": [{"path": str(areas / "reference")},
                                                    {"path": str(areas / "exchange"), "writable": True}]})


def test_users_cannot_see_or_touch_each_others_tasks(server: ServerProcess, idp: Issuer,
                                                     keys: list[rsa.RSAPrivateKey]) -> None:
    alice, bob = User(server, idp, keys[0], "alice"), User(server, idp, keys[0], "bob")
    admin = User(server, idp, keys[0], "root-of-all", roles=["hpc-admin"])
    done = alice.create("echo secret-of-alice")
    running = bob.create("echo started; sleep 300")
    task = alice.wait(done, FINAL)
    assert task["state"] == "COMPLETE"
    assert task["logs"][0]["logs"][0]["stdout"] == "secret-of-alice\n"
    job_id = bob.wait(running, {"RUNNING"})["logs"][0]["metadata"]["slurm_job_id"]

    for view in ("MINIMAL", "BASIC", "FULL"):
        resp = bob.call("GET", f"/tasks/{done}?view={view}")
        assert resp.status_code == 404 and "secret-of-alice" not in resp.text
    assert [t["id"] for t in bob.call("GET", "/tasks?view=FULL").json()["tasks"]] == [running]
    assert "secret-of-alice" not in bob.call("GET", "/tasks?view=FULL").text
    assert alice.call("POST", f"/tasks/{running}:cancel").status_code == 404
    assert bob.call("GET", f"/tasks/{running}").json()["state"] == "RUNNING"
    assert {t["id"] for t in admin.call("GET", "/tasks").json()["tasks"]} == {done, running}

    assert bob.call("POST", f"/tasks/{running}:cancel").status_code == 200
    assert bob.wait(running, FINAL)["state"] == "CANCELED"
    queue = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format=%T"],
                           capture_output=True, text=True, check=False).stdout
    assert "RUNNING" not in queue


def test_forged_tokens_are_refused_by_the_live_server(server: ServerProcess, idp: Issuer,
                                                      keys: list[rsa.RSAPrivateKey]) -> None:
    good = User(server, idp, keys[0], "alice")
    assert good.call("GET", "/tasks").status_code == 200
    forged = [
        User(server, idp, keys[1], "alice"),                      # right kid, wrong key
        User(server, idp, keys[0], "alice", exp=int(time.time()) - 3600),
    ]
    for user in forged:
        resp = user.call("POST", "/tasks", json={"executors": [{"image": "busybox", "command": ["true"]}]})
        assert resp.status_code == 401 and resp.json()["status_code"] == 401
    assert good.call("GET", "/tasks").json()["tasks"] == []  # nothing was created by them


def test_key_rotation_is_picked_up_without_restart(server: ServerProcess, idp: Issuer,
                                                   keys: list[rsa.RSAPrivateKey]) -> None:
    old = User(server, idp, keys[0], "alice", kid="k1")
    assert old.call("GET", "/tasks").status_code == 200
    idp.jwks = {"keys": [jwk(keys[1], "k2")]}  # the issuer rotates: k1 gone, k2 new
    new = User(server, idp, keys[1], "alice", kid="k2")
    time.sleep(1.2)  # the server's jwks_refresh_min_interval
    assert new.call("GET", "/tasks").status_code == 200  # unknown kid: one refetch finds it
    time.sleep(3.2)  # jwks_cache_lifespan: the removed key is no longer trusted
    assert old.call("GET", "/tasks").status_code == 401
    assert new.call("GET", "/tasks").status_code == 200


TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: [echo, secret-of-alice]
inputs: []
outputs:
  out: {type: stdout}
"""


def test_users_cannot_see_or_touch_each_others_runs(server: ServerProcess, idp: Issuer,
                                                    keys: list[rsa.RSAPrivateKey]) -> None:
    """The same through WES: runs, their tasks, their log URLs and cancel."""
    alice, bob = User(server, idp, keys[0], "alice"), User(server, idp, keys[0], "bob")
    wes = f"{server.url}/ga4gh/wes/v1"
    resp = requests.post(f"{wes}/runs", headers=alice.headers, timeout=30,
                         files=[("workflow_attachment", ("tool.cwl", TOOL))],
                         data={"workflow_url": "tool.cwl", "workflow_type": "CWL",
                               "workflow_type_version": "v1.2", "workflow_params": "{}"})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    deadline = time.monotonic() + 180
    while (state := requests.get(f"{wes}/runs/{run_id}/status", headers=alice.headers,
                                 timeout=10).json()["state"]) not in {"COMPLETE", "EXECUTOR_ERROR",
                                                                      "SYSTEM_ERROR", "CANCELED"}:
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(0.5)
    assert state == "COMPLETE"
    tasks = requests.get(f"{wes}/runs/{run_id}/tasks", headers=alice.headers, timeout=10).json()["task_logs"]
    assert tasks and tasks[0]["tes_uri"]
    log_url = tasks[0]["stdout"]
    assert "secret-of-alice" in requests.get(log_url, headers=alice.headers, timeout=10).text

    for method, path in (("GET", ""), ("GET", "/status"), ("GET", "/tasks"), ("GET", f"/tasks/{tasks[0]['id']}"),
                         ("GET", "/stdout"), ("GET", "/stderr"), ("GET", "/ro-crate"), ("POST", "/cancel")):
        resp = requests.request(method, f"{wes}/runs/{run_id}{path}", headers=bob.headers, timeout=10)
        assert resp.status_code == 404, path
    resp = requests.get(log_url, headers=bob.headers, timeout=10)
    assert resp.status_code == 404 and "secret-of-alice" not in resp.text
    assert requests.get(f"{wes}/runs", headers=bob.headers, timeout=10).json()["runs"] == []
    tes_id = tasks[0]["tes_uri"].rstrip("/").rsplit("/", 1)[-1]
    assert bob.call("GET", f"/tasks/{tes_id}").status_code == 404  # the run's TES task is alice's too
    assert requests.get(f"{wes}/runs", headers={}, timeout=10).status_code == 401
    # The run's files are in the runs root, inside a data root, but only its owner's tasks reach them.
    output = requests.get(f"{wes}/runs/{run_id}", headers=alice.headers, timeout=10).json()["outputs"]["out"]
    reuse = [{"url": output["location"], "path": "/in/x", "type": "FILE"}]
    resp = bob.post("cat /in/x", inputs=reuse)
    assert resp.status_code == 400 and "outside your area" in resp.json()["msg"], resp.text
    assert alice.wait(alice.create("cat /in/x", inputs=reuse), FINAL)["logs"][0]["logs"][0]["stdout"] == \
        "secret-of-alice\n"


def test_each_owner_reaches_only_their_own_files(server: ServerProcess, idp: Issuer, areas: Path,
                                                 keys: list[rsa.RSAPrivateKey]) -> None:
    """Service mode, one Unix user for every job: the owner areas are what keeps users apart."""
    alice, bob = User(server, idp, keys[0], "alice"), User(server, idp, keys[0], "bob")
    alice_area = areas / "users" / owner_key(f"{idp.issuer}#alice")
    info = requests.get(f"{server.url}/ga4gh/tes/v1/service-info", headers=alice.headers, timeout=10).json()
    assert alice_area.as_uri() in info["storage"] and (areas / "reference").as_uri() in info["storage"]
    assert not any("/users/bob-" in s for s in info["storage"])

    out = {"path": "/out/result.txt", "url": (alice_area / "result.txt").as_uri(), "type": "FILE"}
    done = alice.create("echo secret-of-alice > /out/result.txt", outputs=[out])
    assert alice.wait(done, FINAL)["state"] == "COMPLETE"
    assert (alice_area / "result.txt").read_text() == "secret-of-alice\n"

    steal = {"url": (alice_area / "result.txt").as_uri(), "path": "/in/x", "type": "FILE"}
    resp = bob.post("cat /in/x", inputs=[steal])
    assert resp.status_code == 400 and "outside your area" in resp.json()["msg"]
    assert "secret-of-alice" not in resp.text
    overwrite = {**out, "path": "/out/result.txt"}
    resp = bob.post("echo bob > /out/result.txt", outputs=[overwrite])
    assert resp.status_code == 400 and "outputs[0].url" in resp.json()["msg"]
    loose = {"url": (areas / "loose.txt").as_uri(), "path": "/in/x", "type": "FILE"}
    assert bob.post("cat /in/x", inputs=[loose]).status_code == 400  # in a data root, no one's area
    to_reference = {"path": "/out/f", "url": (areas / "reference" / "f").as_uri(), "type": "FILE"}
    assert bob.post("echo > /out/f", outputs=[to_reference]).status_code == 400  # shared, read-only

    genome = {"url": (areas / "reference" / "genome.fa").as_uri(), "path": "/in/genome.fa", "type": "FILE"}
    exchange = {"path": "/out/f", "url": (areas / "exchange" / "note.txt").as_uri(), "type": "FILE"}
    reads = bob.create("cat /in/genome.fa; echo from-bob > /out/f", inputs=[genome], outputs=[exchange])
    task = bob.wait(reads, FINAL)
    assert task["state"] == "COMPLETE" and task["logs"][0]["logs"][0]["stdout"] == ">chr1\nACGT\n"
    assert (areas / "exchange" / "note.txt").read_text() == "from-bob\n"
    # A writable shared area never has a file replaced, not even by its own writer's next task.
    again = alice.create("echo from-alice > /out/f", outputs=[exchange])
    task = alice.wait(again, FINAL)
    assert task["state"] == "SYSTEM_ERROR"
    assert "never replaces" in " ".join(task["logs"][0].get("system_logs", []))
    assert (areas / "exchange" / "note.txt").read_text() == "from-bob\n"
    # Bob's own area works for Bob, as Alice's did for her.
    bob_area = areas / "users" / owner_key(f"{idp.issuer}#bob")
    mine = bob.create("echo b > /out/f", outputs=[{**exchange, "url": (bob_area / "f").as_uri()}])
    assert bob.wait(mine, FINAL)["state"] == "COMPLETE" and (bob_area / "f").read_text() == "b\n"
