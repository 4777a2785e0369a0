"""Snakemake 9 with its TES executor plugin and S3 storage plugin, unmodified and installed from
dev/clients/snakemake.lock, against `hpc-bridge serve` on the dev cluster and a real S3-compatible
server on loopback. The jobs run `snakemake` inside docker.io/snakemake/snakemake:v9.27.1 (the
plugin's default image; dev/images builds a stand-in from the same lock), which fetches and stores
every file in S3 itself.

What the plugin does that a user should know (README, "Real clients"): it runs every job in that one
image, whatever a rule's `container:` says; it writes the storage credentials into each task's
script (`inputs[0].content`); and after a failed job it reaches for `$GITHUB_WORKSPACE/funnel.log`
(leftover debug code), which ends the run with a KeyError, still with exit status 1.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.s3server import S3Server

from .conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "dev" / "clients" / "snakemake.lock"
VENV = ROOT / ".venv-snakemake"
IMAGE = "snakemake/snakemake:v9.27.1"
BUCKET = "snakemake-runs"
SNAKEFILE = """
SAMPLES = ["a", "b", "c"]

localrules: all

rule all:
    input: "gathered.txt"

rule part:
    output: "parts/{s}.txt"
    container: "docker://debian:stable-slim"
    shell: "%s"

rule gather:
    input: expand("parts/{s}.txt", s=SAMPLES)
    output: "gathered.txt"
    container: "docker://debian:stable-slim"
    shell: "cat {input} > {output}"
"""
PART = "echo part-{wildcards.s} > {output}"
FAILING_PART = "test {wildcards.s} != b && echo part-{wildcards.s} > {output}"
HANG = 600  # far above a run's ~1 minute: beyond this the client is hanging


@pytest.fixture(scope="module")
def snakemake() -> Path:
    """The client, in its own venv made from the lock (again when the lock changes)."""
    stamp = VENV / f".lock-{hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]}"
    if not stamp.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(VENV)], check=True)  # as make's PYTHON
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "--require-hashes", "--no-deps",
                        "-r", str(LOCK)], check=True)
        stamp.touch()
    return VENV / "bin" / "snakemake"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def run_workflow(snakemake: Path, s3: S3Server, server: ServerProcess, workdir: Path, part: str,
                 prefix: str) -> subprocess.CompletedProcess[str]:
    workdir.mkdir()
    (workdir / "Snakefile").write_text(SNAKEFILE % part)
    argv = [str(snakemake), "--executor", "tes", "--tes-url", f"{server.url}/ga4gh/tes", "--jobs", "3",
            "--seconds-between-status-checks", "2", "--default-storage-provider", "s3",
            "--default-storage-prefix", f"s3://{BUCKET}/{prefix}", "--storage-s3-endpoint-url", s3.url]
    env = dict(os.environ, SNAKEMAKE_STORAGE_S3_ACCESS_KEY=s3.access_key,
               SNAKEMAKE_STORAGE_S3_SECRET_KEY=s3.secret_key)
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=HANG)


def tasks(server: ServerProcess) -> dict[str, dict]:
    body = requests.get(f"{server.url}/ga4gh/tes/v1/tasks?view=BASIC", timeout=10).json()
    return {t["name"]: t for t in body["tasks"]}


def test_fan_out_and_gather_through_tes_and_s3(snakemake: Path, s3: S3Server, tmp_path: Path,
                                               server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    done = run_workflow(snakemake, s3, server, tmp_path / "wf", PART, "ok")
    assert done.returncode == 0, done.stderr[-4000:]
    client = s3.client()
    body = client.get_object(Bucket=BUCKET, Key="ok/gathered.txt")["Body"].read()
    assert body == b"part-a\npart-b\npart-c\n"
    ran = tasks(server)
    assert sorted(ran) == ["snakejob.gather.1.sh", *(f"snakejob.part.{i}.sh" for i in (2, 3, 4))], ran
    assert {t["state"] for t in ran.values()} == {"COMPLETE"}
    assert {t["executors"][0]["image"] for t in ran.values()} == {IMAGE}  # rules' `container:` ignored
    # The plugin put the storage secret into each task's script: only the FULL view (the owner's) shows it.
    assert s3.secret_key not in str(ran)


def test_a_failing_rule_fails_the_workflow_without_hanging(snakemake: Path, s3: S3Server, tmp_path: Path,
                                                           server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    started = time.monotonic()
    failed = run_workflow(snakemake, s3, server, tmp_path / "wf", FAILING_PART, "failing")
    assert failed.returncode != 0, failed.stderr[-4000:]
    assert time.monotonic() - started < 300
    ran = tasks(server)
    states = {name: t["state"] for name, t in ran.items()}
    assert sorted(states.values()) == ["COMPLETE", "COMPLETE", "EXECUTOR_ERROR"], states
    assert "snakejob.gather.1.sh" not in states  # never started: its input is missing
    failed_task = next(t for t in ran.values() if t["state"] == "EXECUTOR_ERROR")
    full = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{failed_task['id']}?view=FULL", timeout=10).json()
    assert "Error in rule part" in full["logs"][0]["logs"][0]["stderr"]
