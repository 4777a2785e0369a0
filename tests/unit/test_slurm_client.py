"""CliSlurmClient against a fake command runner: argv shapes, parsing and error classification."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpc_bridge.slurm.client import CliSlurmClient, SlurmError, parse_queue


class FakeRunner:
    def __init__(self, stdout: str = "", returncode: int = 0, stderr: str = "",
                 exc: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[object] = []
        self.stdout, self.returncode, self.stderr, self.exc = stdout, returncode, stderr, exc

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert kwargs.get("shell") is None, "never a shell"
        self.calls.append(argv)
        self.envs.append(kwargs.get("env"))
        if self.exc:
            raise self.exc
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, self.stderr)


def test_submit_runs_as_the_job_user_and_parses_parsable_output() -> None:
    run = FakeRunner(stdout="4242;cluster\n")
    client = CliSlurmClient(submit_as="hpcb", bin_dir=Path("/opt/slurm/bin"), runner=run)
    assert client.submit(Path("/w/job.sh"), workdir=Path("/w")) == "4242"
    assert run.calls == [["runuser", "-u", "hpcb", "--", "/opt/slurm/bin/sbatch", "--parsable",
                          "--chdir=/w", "/w/job.sh"]]


def test_sbatch_gets_a_clean_environment_not_the_daemons(monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch exports its environment to the job: the daemon's credentials must not ride along."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "site-secret")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/site.conf")
    run = FakeRunner(stdout="4242\n")
    CliSlurmClient(submit_as="root", runner=run).submit(Path("/w/job.sh"), workdir=Path("/w"))
    [env] = run.envs
    assert isinstance(env, dict) and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["USER"] == "root" and env["SLURM_CONF"] == "/etc/slurm/site.conf" and env["PATH"]


def test_submit_without_job_id_is_an_error() -> None:
    client = CliSlurmClient(runner=FakeRunner(stdout="Submitted batch job\n"))
    with pytest.raises(SlurmError, match="no job id"):
        client.submit(Path("/w/job.sh"), workdir=Path("/w"))


def test_unreachable_controller_is_flagged_unavailable() -> None:
    run = FakeRunner(returncode=1, stderr="squeue: error: Unable to contact slurm controller (connect failure)")
    with pytest.raises(SlurmError) as info:
        CliSlurmClient(runner=run).queue()
    assert info.value.unavailable


def test_rejected_submission_is_not_unavailable() -> None:
    run = FakeRunner(returncode=1, stderr="sbatch: error: invalid partition specified: nope")
    with pytest.raises(SlurmError, match="invalid partition") as info:
        CliSlurmClient(runner=run).submit(Path("/j.sh"), workdir=Path("/"))
    assert not info.value.unavailable


@pytest.mark.parametrize("exc", [FileNotFoundError("sbatch"), subprocess.TimeoutExpired("squeue", 30)])
def test_missing_or_hanging_commands_are_unavailable(exc: Exception) -> None:
    with pytest.raises(SlurmError) as info:
        CliSlurmClient(runner=FakeRunner(exc=exc)).queue()
    assert info.value.unavailable


def test_parse_queue_decodes_wait_status_and_keeps_free_text_comment() -> None:
    jobs = parse_queue("7|FAILED|NonZeroExitCode|768|hpcb-abc|hpcb|task a|b|\n"
                       "8|PENDING|Resources|0|hpcb-def|alice|(null)|\n"
                       "9|CANCELLED|None|15|x|bob|c|\n")
    assert [(j.job_id, j.state, j.reason, j.exit_code, j.signal, j.user, j.comment) for j in jobs] == [
        ("7", "FAILED", "NonZeroExitCode", 3, 0, "hpcb", "task a|b"),
        ("8", "PENDING", "Resources", 0, 0, "alice", ""),
        ("9", "CANCELLED", "None", 0, 15, "bob", "c"),
    ]


def test_queue_asks_slurm_for_each_jobs_user_before_the_free_text_comment() -> None:
    run = FakeRunner(stdout="1|RUNNING|None|0|tes-a|hpcb|hpc-bridge:a|user|x|\n")
    [job] = CliSlurmClient(submit_as="hpcb", runner=run).queue()
    assert (job.user, job.comment) == ("hpcb", "hpc-bridge:a|user|x")
    fields = next(a for a in run.calls[0] if a.startswith("--Format=")).removeprefix("--Format=").split(",")
    assert fields[-2:] == ["UserName:|", "Comment:|"]


def test_cancel_batches_ids_and_skips_empty() -> None:
    run = FakeRunner()
    client = CliSlurmClient(runner=run)
    client.cancel([])
    client.cancel(["1", "2"])
    assert run.calls == [["scancel", "1", "2"]]


def test_ping_reports_false_on_failure() -> None:
    assert CliSlurmClient(runner=FakeRunner(returncode=1, stderr="down")).ping() is False
    assert CliSlurmClient(runner=FakeRunner(stdout="UP")).ping() is True


def test_queue_is_one_call_limited_to_the_job_user() -> None:
    run = FakeRunner(stdout="1|RUNNING|None|0|tes-a|hpcb|hpc-bridge:a|\n")
    jobs = CliSlurmClient(submit_as="hpcb", runner=run).queue()
    assert [j.comment for j in jobs] == ["hpc-bridge:a"]
    assert len(run.calls) == 1 and run.calls[0][0] == "squeue"
    assert "--user=hpcb" in run.calls[0] and "--states=all" in run.calls[0]
