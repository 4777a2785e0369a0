"""The daemon against hostile users (issue 13, point 7), through the real server, Slurm and Apptainer:
hard links planted where the job writes, jobs submitted by hand with a task's comment, reserved
tags, and image pulls (whose account runs them, and a registry name that rebinds after the check)."""

from __future__ import annotations

import http.server
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hpc_bridge.config import ApptainerSettings, SiteConfig
from hpc_bridge.containers.cache import ImageCache, PullError
from hpc_bridge.containers.images import RegistryImage, resolve_image

from .conftest import ServerProcess
from .test_run_as import RunAs, as_user, runas  # noqa: F401 - runas is a fixture

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
REGISTRY_IMAGE = "127.0.0.1:5000/hpc-bridge/busybox:1.0"  # dev/cluster's local registry


def get(server: ServerProcess, task_id: str) -> dict[str, Any]:
    resp = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}", params={"view": "FULL"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait(server: ServerProcess, task_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (task := get(server, task_id))["state"] not in states:
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
    return task


def create(server: ServerProcess, body: dict[str, Any]) -> str:
    resp = requests.post(f"{server.url}/ga4gh/tes/v1/tasks", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


@pytest.fixture()
def service_file(dev_config: SiteConfig) -> Iterator[Path]:
    """A file only the service (root here) may read, on the work areas' filesystem: a hard link
    to it is what a user can plant in their work area when fs.protected_hardlinks is 0."""
    path = dev_config.storage.work_root / f".service-secret-{uuid.uuid4().hex}"
    path.write_text("SERVICE-SECRET\n")
    path.chmod(0o600)
    yield path
    path.unlink(missing_ok=True)


def test_a_hard_link_to_a_service_file_in_a_log_path_does_not_reach_the_tasks_logs(
        server: ServerProcess, dev_config: SiteConfig, service_file: Path) -> None:
    task_id = create(server, {"executors": [{"image": "busybox",
                                             "command": ["sh", "-c", "echo out; echo err >&2; sleep 8"]}]})
    wait(server, task_id, {"RUNNING"})
    workdir = dev_config.storage.work_root / task_id
    stdout, stderr = workdir / "executor-0.stdout", workdir / "executor-0.stderr"
    # As the user could (the executor keeps writing to the old, unlinked files): stdout becomes a
    # second name of the service file; stderr the only name left of another one (one link, root's).
    stdout.unlink()
    os.link(service_file, stdout)
    other = service_file.with_name(service_file.name + ".2")
    shutil.copy(service_file, other)
    stderr.unlink()
    os.link(other, stderr)
    other.unlink()

    task = wait(server, task_id, FINAL)
    assert task["state"] == "COMPLETE", task
    assert "SERVICE-SECRET" not in json.dumps(task)
    log = task["logs"][0]
    assert (log["logs"][0]["stdout"], log["logs"][0]["stderr"]) == ("", "")
    system = "\n".join(log["system_logs"])
    assert f"executor 0 stdout: {stdout}: has 2 hard links" in system, system
    assert f"executor 0 stderr: {stderr}: belongs to uid 0, not to uid " in system, system


@pytest.mark.parametrize("tag", ["wes_run_id", "cwl_job_key"])
def test_a_tes_user_cannot_set_the_tags_runs_and_reuse_go_by(server: ServerProcess, tag: str) -> None:
    body = {"executors": [{"image": "busybox", "command": ["true"]}], "tags": {tag: "someone-elses"}}
    resp = requests.post(f"{server.url}/ga4gh/tes/v1/tasks", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["msg"].startswith(f"tags.{tag}: reserved")
    listed = requests.get(f"{server.url}/ga4gh/tes/v1/tasks", params={"tag_key": tag}, timeout=30).json()
    assert listed["tasks"] == []


@pytest.fixture()
def cache_parent() -> Iterator[Path]:
    """A directory the pull account and the job user can traverse (tmp_path is root's, 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="hpcb-hardening-", dir="/var/tmp"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent)


def test_an_image_pull_runs_as_the_unprivileged_pull_account(
        server_factory: Callable[..., ServerProcess], dev_config: SiteConfig, cache_parent: Path) -> None:
    """A wrapper around apptainer records who runs `apptainer pull`: the daemon is root here."""
    puller = pwd.getpwnam(dev_config.apptainer.pull_as or "")
    record = cache_parent / "pulls"
    record.touch(mode=0o644)
    os.chown(record, puller.pw_uid, puller.pw_gid)
    wrapper = cache_parent / "apptainer"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = pull ] && echo "$(id -u) $(id -g) $(id -G)" >>{record}\n'
                       f'exec {dev_config.apptainer.binary} "$@"\n')
    wrapper.chmod(0o755)
    cache = cache_parent / "cache"
    server = server_factory(apptainer={"binary": str(wrapper), "cache_dir": str(cache)})

    task = wait(server, create(server, {"executors": [{"image": REGISTRY_IMAGE, "command": ["echo", "ok"]}]}),
                FINAL)
    assert task["state"] == "COMPLETE", task
    assert task["logs"][0]["logs"][0]["stdout"] == "ok\n"
    assert record.read_text().split("\n") == [f"{puller.pw_uid} {puller.pw_gid} {puller.pw_gid}", ""]
    # The pull account keeps nothing: the SIF and the cache are the daemon's, nothing is left over.
    [sif] = cache.glob("*.sif")
    st, top = sif.stat(), cache.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), top.st_uid, stat.S_IMODE(top.st_mode)) == (0, 0o644, 0, 0o755)
    assert not list(cache.glob(".pull-*"))


def test_a_registry_name_that_rebinds_after_the_check_is_not_reached(
        dev_config: SiteConfig, cache_parent: Path) -> None:
    """The first answer (the check before the pull) is public, every later one is the local
    registry: apptainer asks the pull's proxy, which resolves again, refuses and never connects."""
    answers: list[str] = []

    def rebinding(host: str) -> list[str]:
        answers.append(host)
        return ["93.184.215.14"] if len(answers) == 1 else ["127.0.0.1"]

    settings = ApptainerSettings(binary=dev_config.apptainer.binary, cache_dir=cache_parent / "cache",
                                 pull_as=dev_config.apptainer.pull_as)
    image = resolve_image("rebind.test:5000/hpc-bridge/busybox:1.0", settings)
    assert isinstance(image, RegistryImage)
    with pytest.raises(PullError) as caught:
        ImageCache(settings, resolver=rebinding).ensure(image)
    assert "refused by the address check: rebind.test:5000: rebind.test resolves to 127.0.0.1, not a " \
           "public address" in str(caught.value)
    assert len(answers) >= 2 and set(answers) == {"rebind.test"}  # apptainer itself resolved nothing
    assert not image.sif.exists()


class _Trickle(http.server.BaseHTTPRequestHandler):
    """An input that never finishes downloading (a byte a second): its task stays in staging."""

    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        while not self.release.wait(1):
            self.wfile.write(b"x")
            self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def trickle() -> Iterator[str]:
    _Trickle.release.clear()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/never-done"
    _Trickle.release.set()
    httpd.shutdown()


def _sbatch_as(user: str, comment: str) -> str:
    out = as_user(user, "sbatch", "--parsable", f"--comment={comment}", "--partition=debug",
                  "--output=/dev/null", "--chdir=/tmp", "--time=5", "--wrap=sleep 300")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def test_a_job_submitted_by_another_user_with_a_tasks_comment_is_not_adopted(runas: RunAs, trickle: str) -> None:
    """bob's task and alice's task wait for their input (so squeue covers both users); alice
    submits a job by hand with the comment of bob's task: it is not adopted. The same job from
    bob (the task's own user) is, so the test sees adoption work at all."""
    sections = {"storage": {"http": {"allowed_networks": ["127.0.0.0/8"]}}}
    inputs = [{"url": trickle, "path": "/in/x"}]
    runas.start(table={"local": "bob"}, **sections)
    bobs = runas.create(["true"], inputs=inputs)
    runas.start(table={"local": "alice"}, **sections)  # a new server: the same database, the other user
    alices = runas.create(["true"], inputs=inputs)
    jobs: list[str] = []
    try:
        jobs.append(forged := _sbatch_as("alice", f"hpc-bridge:{bobs}"))
        time.sleep(5)  # many daemon cycles (min_interval 0.3 s), each with alice's job in squeue
        for task_id in (bobs, alices):
            assert runas.get(task_id)["state"] == "QUEUED"
        assert "metadata" not in runas.get(bobs).get("logs", [{}])[0]
        assert runas.server is not None
        assert f"not adopting Slurm job {forged}: it carries the task's comment but runs as 'alice', not " \
               "as 'bob'" in runas.server.log.read_text()

        jobs.append(own := _sbatch_as("bob", f"hpc-bridge:{bobs}"))
        deadline = time.monotonic() + 30
        while (log := runas.get(bobs).get("logs", [{}])[0]).get("metadata", {}).get("slurm_job_id") != own:
            assert time.monotonic() < deadline, log
            time.sleep(0.3)
    finally:
        subprocess.run(["scancel", *jobs], check=False)
