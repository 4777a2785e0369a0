"""Integration tests run against the real dev cluster (`dev/cluster up`, done by `make test`).

A missing cluster is a failure, not a skip: these tests are the proof that the product works.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpc_bridge.config import SiteConfig
from hpc_bridge.slurm.client import CliSlurmClient, JobStatus

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
    os.chown(dev_config.storage.work_root, user.pw_uid, user.pw_gid)
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
