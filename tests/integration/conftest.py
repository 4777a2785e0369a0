"""Integration tests run against the real dev cluster (`dev/cluster up`, done by `make test`).

A missing cluster is a failure, not a skip: these tests are the proof that the product works.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest
import yaml

from hpc_bridge.config import SiteConfig
from hpc_bridge.slurm.client import CliSlurmClient, JobStatus
from tests.procs import terminate

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def slurm(dev_config: SiteConfig) -> CliSlurmClient:
    client = CliSlurmClient(bin_dir=dev_config.slurm.bin_dir, submit_as=dev_config.slurm.submit_as)
    if not client.ping():
        pytest.fail("the dev cluster is not running: start it with `dev/cluster up` (make test does)")
    if not os.access(dev_config.apptainer.binary, os.X_OK):
        pytest.fail(f"apptainer not found at {dev_config.apptainer.binary}: run `dev/cluster install`")
    return client


@pytest.fixture()
def job_dir(dev_config: SiteConfig) -> Iterator[Path]:
    """A fresh directory on the shared work root, owned by the unprivileged job user."""
    user = pwd.getpwnam(dev_config.slurm.submit_as or "root")
    path = dev_config.storage.work_root / f"it-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def data(dev_config: SiteConfig) -> Iterator[Path]:
    """A fresh directory inside the data root, owned by the job user (outputs are written as it)."""
    user = pwd.getpwnam(dev_config.slurm.submit_as or "root")
    path = dev_config.storage.data_roots[0] / f"it-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def wait_for_job(slurm: CliSlurmClient) -> Callable[[str, float], JobStatus]:
    def wait(job_id: str, timeout: float = 60.0) -> JobStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = next((j for j in slurm.queue() if j.job_id == job_id), None)
            if status and status.state in FINISHED:
                return status
            time.sleep(0.5)
        pytest.fail(f"job {job_id} did not finish within {timeout}s")

    return wait


class ServerProcess:
    """`hpc-bridge serve` as a real process (API + daemon) on its own database and port."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config_path.with_suffix(".log")

    def spawn(self) -> subprocess.Popen[bytes]:
        """The server process; subclasses change how (another user, another interpreter)."""
        exe = Path(sys.executable).parent / "hpc-bridge"
        with open(self.log, "ab") as out:
            return subprocess.Popen([str(exe), "serve", "--config", str(self.config_path),
                                     "--port", str(self.port)], stdout=out, stderr=out)

    def start(self) -> Self:
        """Spawn, then wait until service-info answers (30 s, or the process ended: fail)."""
        self.proc = self.spawn()
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ga4gh/tes/v1/service-info", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start:\n{self.log.read_text()}")
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(config: SiteConfig, directory: Path, **overrides: object) -> Path:
    """A copy of the dev config with its own database (and any section overridden)."""
    data = config.model_dump(mode="json")
    data["database"] = str(directory / "hpc-bridge.sqlite")
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
def server_factory(dev_config: SiteConfig, tmp_path: Path, slurm: CliSlurmClient) -> Iterator[
        Callable[..., ServerProcess]]:
    """Start servers on a fresh database; every one still running is stopped afterwards."""
    started: list[ServerProcess] = []

    def make(**overrides: object) -> ServerProcess:
        server = ServerProcess(write_config(dev_config, tmp_path, **overrides), free_port())
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture()
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


@pytest.fixture()
def tes_client(server: ServerProcess):
    import tes

    return tes.HTTPClient(server.url, timeout=10)


def slurm_runs(db: Path, task_ids: list[str], slurm: CliSlurmClient, work_root: Path) -> dict[str, int]:
    """How many times Slurm ran each task (the `job_start` lines its script left in its record, one
    per run as a job or a job step), checked against the Slurm jobs that carry the task: its own job
    by comment, or a shared pack job by the launcher that lists it (any pack job listing it counts,
    even one the store no longer points at)."""
    import sqlite3

    from hpc_bridge.slurm.pack import PACK_DIR, pack_id_from_comment
    from hpc_bridge.tes.jobspec import task_id_from_comment

    conn = sqlite3.connect(db, timeout=30)
    try:
        workdirs = dict(conn.execute("SELECT id, workdir FROM tasks").fetchall())
    finally:
        conn.close()
    wanted = set(task_ids)
    jobs: dict[str, int] = dict.fromkeys(task_ids, 0)
    for job in slurm.queue():
        if (task_id := task_id_from_comment(job.comment)) in wanted:
            jobs[task_id] += 1
        elif (pack_id := pack_id_from_comment(job.comment)) is not None:
            launcher = work_root / PACK_DIR / pack_id / "pack.sh"
            for line in launcher.read_text().splitlines() if launcher.exists() else []:
                if line.startswith("ids=("):  # the launcher's members: ids=(ID ID ... )
                    for task_id in wanted.intersection(line.removeprefix("ids=(").rstrip(")").split()):
                        jobs[task_id] += 1
    events = {task_id: [json.loads(line).get("event") for line in
                        Path(workdirs[task_id], "record.jsonl").read_text().splitlines()]
              for task_id in task_ids}
    # A pack job skips a task cancelled before its turn, or hands it back to run elsewhere: it
    # carried the task but did not run it.
    carried = {task_id: e.count("job_start") + e.count("skipped") + e.count("returned")
               for task_id, e in events.items()}
    assert jobs == carried, f"Slurm jobs per task {jobs} != runs (or skips) recorded by the tasks {carried}"
    return {task_id: e.count("job_start") for task_id, e in events.items()}
