"""One contract, two clusters: what the daemon relies on of Slurm holds for the fake its unit tests
use (`tests/fake_slurm.py`) and for the real dev cluster through `CliSlurmClient`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from hpc_bridge.config import SiteConfig
from hpc_bridge.slurm.client import CliSlurmClient, JobStatus, SlurmClient, SlurmError

from ..fake_slurm import FakeSlurm

ALIVE = {"PENDING", "CONFIGURING", "RUNNING"}


@pytest.fixture(params=["fake", "dev cluster"])
def cluster(request: pytest.FixtureRequest, dev_config: SiteConfig) -> tuple[SlurmClient, str]:
    """(client, the Unix user its jobs run as)."""
    user = dev_config.slurm.submit_as or "root"
    if request.param == "fake":
        return FakeSlurm(user=user), user
    client: CliSlurmClient = request.getfixturevalue("slurm")
    return client, user


def script(directory: Path, name: str, *options: str) -> Path:
    path = directory / f"{name}.sh"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --comment=hpc-bridge:{name}",
             f"#SBATCH --output={directory}/{name}.out", "#SBATCH --time=2",
             *(f"#SBATCH --{o}" for o in options), "sleep 60", ""]
    path.write_text("\n".join(lines))
    return path


def find(client: SlurmClient, job_id: str) -> JobStatus | None:
    return next((job for job in client.queue() if job.job_id == job_id), None)


def eventually(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_submit_queue_cancel(cluster: tuple[SlurmClient, str], job_dir: Path) -> None:
    client, user = cluster
    assert client.ping()
    name = f"contract-{uuid.uuid4().hex[:8]}"
    first = client.submit(script(job_dir, name), workdir=job_dir)
    second = client.submit(script(job_dir, name + "-b"), workdir=job_dir)
    try:
        assert first.isdigit() and second.isdigit() and first != second
        job = find(client, first)
        assert job is not None, "a submitted job is in the queue"
        assert (job.name, job.comment, job.user) == (name, f"hpc-bridge:{name}", user)
        assert job.state in ALIVE
        client.cancel([first])
        assert eventually(lambda: (j := find(client, first)) is None or j.state.startswith("CANCELLED"))
        other = find(client, second)
        assert other is not None and other.state in ALIVE  # only the cancelled job ended
    finally:
        client.cancel([first, second])


def test_a_job_slurm_cannot_run_is_refused_at_submission(cluster: tuple[SlurmClient, str],
                                                         job_dir: Path) -> None:
    client, _ = cluster
    with pytest.raises(SlurmError) as refused:
        client.submit(script(job_dir, f"contract-{uuid.uuid4().hex[:8]}", "mem=100T"), workdir=job_dir)
    assert not refused.value.unavailable  # a refusal, not an outage: the task fails, no retry
