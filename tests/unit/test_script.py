"""Rendering of slurm_templates/task.sh.j2, including running the rendered script with bash."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hpc_bridge.containers.apptainer import UnsafeValue
from hpc_bridge.slurm.script import (
    ExecutorScript,
    JobScript,
    render,
    sbatch_value,
    shell_quote,
)

from ..conftest import ROOT

TEMPLATES = [ROOT / "slurm_templates"]


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "record.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("value", ["a b", "x\ny", "$(id)", "--x;y", "'", ""])
def test_sbatch_value_refuses_anything_but_plain_tokens(value: str) -> None:
    with pytest.raises(UnsafeValue):
        sbatch_value(value)


def test_sbatch_value_accepts_slurm_syntax() -> None:
    for value in ("1-00:00:00", "gpu:a100:2", "debug", "4096M", "task-abc_1.x", "/scratch/x/out"):
        assert sbatch_value(value) == value


def test_shell_quote_refuses_nul() -> None:
    with pytest.raises(UnsafeValue):
        shell_quote("a\0b")


def test_bad_option_names_are_refused() -> None:
    job = JobScript(name="t", workdir="/w", executors=[], options=[("mem\n#SBATCH --x", "1")])
    with pytest.raises(UnsafeValue):
        render(job, TEMPLATES)


def test_rendered_script_runs_hostile_argv_literally(tmp_path: Path) -> None:
    """The script is real bash: hostile strings must arrive as single literal arguments."""
    canary = tmp_path / "canary"
    hostile = ["$(touch " + str(canary) + ")", "`touch " + str(canary) + "`", "a'b\"c", "x\ny; z", "*"]
    job = JobScript(
        name="t1", workdir=str(tmp_path), options=[("mem", "100M"), ("exclusive", None)],
        executors=[ExecutorScript(argv=["printf", "[%s]\n", *hostile])],
    )
    script = tmp_path / "job.sh"
    script.write_text(render(job, TEMPLATES))
    text = script.read_text()
    assert "#SBATCH --mem=100M\n" in text and "#SBATCH --exclusive\n" in text
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not canary.exists()
    out = (tmp_path / "executor-0.stdout").read_text()
    assert out == "".join(f"[{h}]\n" for h in hostile)
    events = [r["event"] for r in _records(tmp_path)]
    assert events == ["job_start", "executor_start", "executor_end", "job_end"]


def test_failing_executor_stops_the_job_unless_ignored(tmp_path: Path) -> None:
    job = JobScript(name="t2", workdir=str(tmp_path), executors=[
        ExecutorScript(argv=["sh", "-c", "exit 4"], ignore_error=True),
        ExecutorScript(argv=["sh", "-c", "echo second; exit 5"], stdout=str(tmp_path / "second.txt")),
        ExecutorScript(argv=["touch", str(tmp_path / "third-ran")]),
    ])
    script = tmp_path / "job.sh"
    script.write_text(render(job, TEMPLATES))
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path)
    assert proc.returncode == 5
    assert (tmp_path / "second.txt").read_text() == "second\n"
    assert not (tmp_path / "third-ran").exists()
    ends = [(r["executor"], r["exit_code"]) for r in _records(tmp_path) if r["event"] == "executor_end"]
    assert ends == [(0, 4), (1, 5)]
    assert _records(tmp_path)[-1] == {**_records(tmp_path)[-1], "event": "job_end", "exit_code": 5}


@pytest.mark.parametrize("last", ["exit 0", "exit 6"])
def test_scratch_is_made_for_the_executors_and_removed_at_the_end(tmp_path: Path, last: str) -> None:
    scratch = tmp_path / "scratch dir"
    job = JobScript(name="t3", workdir=str(tmp_path), scratch=str(scratch), executors=[
        ExecutorScript(argv=["sh", "-c", f"test -d '{scratch}' && echo x > '{scratch}/f' && {last}"])])
    script = tmp_path / "job.sh"
    script.write_text(render(job, TEMPLATES))
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path)
    assert proc.returncode == int(last.split()[1])
    assert [r["exit_code"] for r in _records(tmp_path) if r["event"] == "executor_end"] == [proc.returncode]
    assert not scratch.exists()


def test_site_template_dir_overrides_the_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "task.sh.j2").write_text("#!/bin/sh\n# site {{ job.name | sbatch }}\n")
    job = JobScript(name="t3", workdir="/w", executors=[])
    assert render(job, [tmp_path, *TEMPLATES]) == "#!/bin/sh\n# site t3\n"


def test_redirection_through_a_planted_symlink_is_refused(tmp_path: Path) -> None:
    """Executor 0 plants a symlink in its volume; executor 1's stdout must not follow it out."""
    work = tmp_path / "work"
    (work / "volumes" / "0").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    job = JobScript(name="t4", workdir=str(work), executors=[
        ExecutorScript(argv=["ln", "-s", str(outside), str(work / "volumes/0/out")]),
        ExecutorScript(argv=["echo", "overwritten"], stdout=str(work / "volumes/0/out")),
    ])
    script = work / "job.sh"
    script.write_text(render(job, TEMPLATES))
    proc = subprocess.run(["bash", str(script)], cwd=work)
    assert proc.returncode == 126
    assert outside.read_text() == "precious\n"
    from hpc_bridge.slurm.record import parse_record

    record = parse_record((work / "record.jsonl").read_text())
    assert record.refusal and "executor 1 stdout" in record.refusal and record.finished


def test_inputs_are_rechecked_and_copied_in_the_job_and_outputs_collected(tmp_path: Path) -> None:
    """A bound input swapped for a symlink after planning stops the job before any executor runs;
    copies happen in the job; the collector's failure fails the job."""
    from hpc_bridge.slurm.record import parse_record
    from hpc_bridge.slurm.script import InputCheck

    data, work = tmp_path / "data", tmp_path / "work"
    (data / "dir").mkdir(parents=True)
    (data / "dir" / "f").write_text("payload")
    (work / "inputs").mkdir(parents=True)
    job = JobScript(name="t5", workdir=str(work),
                    inputs=[InputCheck(0, str(data / "dir"), "copy", str(work / "inputs/0"))],
                    executors=[ExecutorScript(argv=["cat", str(work / "inputs/0/f")])],
                    collect=["sh", "-c", "exit 3"])
    script = work / "job.sh"
    script.write_text(render(job, TEMPLATES))
    assert subprocess.run(["bash", str(script)], cwd=work).returncode == 1
    assert (work / "executor-0.stdout").read_text() == "payload"
    record = parse_record((work / "record.jsonl").read_text())
    assert record.collect_exit == 3 and record.finished

    (data / "dir").rename(data / "moved")
    os.symlink(data / "moved", data / "dir")  # same path, now a symlink: must not be read
    (work / "record.jsonl").unlink()
    assert subprocess.run(["bash", str(script)], cwd=work).returncode == 1
    record = parse_record((work / "record.jsonl").read_text())
    assert record.input_error == "input 0: changed or vanished since the task was submitted"
    assert not record.executors


def test_a_redirection_cannot_reach_the_jobs_own_files_through_its_bind(tmp_path: Path) -> None:
    """A symlink in a volume pointing back into the work area (the collector, the record) stays
    inside the work area, but not inside the volume: refused, nothing overwritten."""
    work = tmp_path / "work"
    vol = work / "volumes" / "0"
    vol.mkdir(parents=True)
    collector = work / "collect_outputs.py"
    collector.write_text("# the real collector\n")
    job = JobScript(name="t6", workdir=str(work), executors=[
        ExecutorScript(argv=["ln", "-s", "../../collect_outputs.py", str(vol / "x")]),
        ExecutorScript(argv=["echo", "import os; os.system('touch PWNED')"], stdout=str(vol / "x"),
                       roots={"stdout": str(vol)}),
    ])
    script = work / "job.sh"
    script.write_text(render(job, TEMPLATES))
    assert subprocess.run(["bash", str(script)], cwd=work).returncode == 126
    assert collector.read_text() == "# the real collector\n"
