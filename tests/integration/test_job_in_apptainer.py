"""The first real slice: a batch job rendered from slurm_templates/ runs a command inside the test SIF
with `apptainer exec` and a bind mount, as the unprivileged job user, through real Slurm."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from hpc_bridge.config import SiteConfig
from hpc_bridge.containers.apptainer import Bind, exec_argv
from hpc_bridge.slurm.script import ExecutorScript, JobScript, render

TEST_SIF = "/opt/hpc-bridge-dev/images/busybox.sif"


def _job(config: SiteConfig, job_dir: Path, name: str, command: list[str]) -> JobScript:
    argv = exec_argv(str(config.apptainer.binary), TEST_SIF, command,
                     binds=[Bind(str(job_dir / "data"), "/data")], env={"GREETING": "hello, world"})
    return JobScript(name=name, workdir=str(job_dir), comment=name,
                     options=[("mem", "64M"), ("time", "00:05:00")],
                     executors=[ExecutorScript(argv=argv)])


def _submit(config: SiteConfig, slurm, job_dir: Path, job: JobScript) -> str:
    script = job_dir / "job.sh"
    script.write_text(render(job, config.template_search_path))
    return slurm.submit(script, workdir=job_dir)


def _prepare(job_dir: Path, user: str) -> None:
    data = job_dir / "data"
    data.mkdir()
    (data / "input.txt").write_text("from the host\n")
    pw = pwd.getpwnam(user)
    for path in (data, data / "input.txt"):
        os.chown(path, pw.pw_uid, pw.pw_gid)


def test_job_runs_command_in_sif_with_bind_as_job_user(dev_config: SiteConfig, slurm, job_dir: Path,
                                                        wait_for_job) -> None:
    user = dev_config.slurm.submit_as
    _prepare(job_dir, user)
    command = ["sh", "-c", 'cat /data/input.txt; echo "$GREETING"; id -u; '
                           'echo written-inside > /data/output.txt; exit 3']
    job_id = _submit(dev_config, slurm, job_dir, _job(dev_config, job_dir, "hpcb-it-slice", command))

    status = wait_for_job(job_id)
    assert status.state == "FAILED" and status.exit_code == 3
    assert status.comment == "hpcb-it-slice"

    out = (job_dir / "executor-0.stdout").read_text().splitlines()
    assert out == ["from the host", "hello, world", str(pwd.getpwnam(user).pw_uid)]
    written = job_dir / "data" / "output.txt"
    assert written.read_text() == "written-inside\n"
    assert written.stat().st_uid == pwd.getpwnam(user).pw_uid  # not root

    records = [json.loads(line) for line in (job_dir / "record.jsonl").read_text().splitlines()]
    assert records[0]["job_id"] == job_id
    assert [(r["event"], r.get("exit_code")) for r in records[1:]] == [
        ("executor_start", None), ("executor_end", 3), ("job_end", 3)]


def test_successful_job_completes(dev_config: SiteConfig, slurm, job_dir: Path, wait_for_job) -> None:
    _prepare(job_dir, dev_config.slurm.submit_as)
    job_id = _submit(dev_config, slurm, job_dir,
                     _job(dev_config, job_dir, "hpcb-it-ok", ["cat", "/data/input.txt"]))
    status = wait_for_job(job_id)
    assert (status.state, status.exit_code) == ("COMPLETED", 0)
    assert (job_dir / "executor-0.stdout").read_text() == "from the host\n"
