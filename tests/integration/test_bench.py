"""Every bench/ script at a tiny size, so that none of them rots unseen: each must exit 0 and print
its summary table with every figure measured (a number, not NaN). Speed is never asserted here: the
scripts measure it, at full size, against raw `sbatch` / Toil in the same run (bench/README.md)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_bridge.slurm.client import CliSlurmClient

BENCH = Path(__file__).resolve().parents[2] / "bench"
# A safety net, far above a tiny run (under a minute): a script also waits for other submitters'
# jobs to end before it measures (up to 5 minutes per phase), and scatter.py installs Toil on first use.
TIMEOUT = 900


def run_bench(script: str, *args: str) -> str:
    """The script's stdout (the summary table); its stderr (progress) is shown when it fails."""
    with subprocess.Popen([sys.executable, str(BENCH / script), *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the script stops its servers, cancels its jobs, removes its files
            try:
                out, err = proc.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"{script} {' '.join(args)} did not finish in {TIMEOUT}s:\n{err[-4000:]}")
    assert proc.returncode == 0, f"{script} {' '.join(args)} exited {proc.returncode}:\n{err[-4000:]}\n{out}"
    assert not re.search(r"\b(nan|inf)\b", out, re.IGNORECASE), f"{script}: a figure was not measured:\n{out}"
    return out


def figures(out: str, label: str) -> list[float]:
    """The numbers on the table line that starts with `label`, after the label."""
    line = next((row.strip() for row in out.splitlines() if row.strip().startswith(label)), None)
    assert line is not None, f"no line {label!r} in:\n{out}"
    values = [float(v) for v in re.findall(r"[-+]?\d+(?:\.\d+)?", line[len(label):])]
    assert values and all(math.isfinite(v) for v in values), line
    return values


def test_tes_submit_tiny(slurm: CliSlurmClient) -> None:
    """12 tasks: both cycle steps (10 and N active tasks) are measured, as at the full N=500; a burst
    of 6 runs to the end both ways."""
    out = run_bench("tes_submit.py", "--n", "12", "--latency-runs", "1", "--burst", "6")
    tasks, seconds, rate = figures(out, "API: POST /tasks -> daemon sbatch")
    assert tasks == 12 and seconds > 0 and rate > 0
    assert figures(out, "raw: runuser")[0] == 12
    assert figures(out, "ratio API / raw:")[0] > 0
    assert re.search(r"^\s+10\s+\d+\s+squeue \d+", out, re.MULTILINE), out
    assert re.search(r"^\s+12\s+\d+\s+squeue \d+", out, re.MULTILINE), out
    assert len(figures(out, "API: POST -> state COMPLETE")) == 4  # median, min, max, seen after job end
    assert len(figures(out, "raw: sbatch -> squeue COMPLETED")) == 4
    seconds, jobs = figures(out, "API: first POST -> every task COMPLETE")
    assert seconds > 0 and 1 <= jobs <= 6
    assert figures(out, "raw: first sbatch -> every job done")[1] == 6
    assert figures(out, "ratio raw / API:")[0] > 0


def test_staging_tiny(slurm: CliSlurmClient) -> None:
    """16 MiB instead of 1 GiB: every case of the three sections, and the size really used."""
    out = run_bench("staging.py", "--repeat", "1", "--jitter", "0", "--size-mb", "16")
    for label in ("raw: sbatch --wrap", "a) tiny file:// input"):
        assert len(figures(out, label)) == 6  # median, min, max, / raw, to sbatch, in job
    assert len(figures(out, "b) 16 MiB file:// input, file_inputs: bind")) == 7  # and the work area
    assert figures(out, "c) 16 MiB file:// input, file_inputs: copy")[-1] >= 16 * 1024  # KiB: a copy
    assert len(figures(out, "collector: executor_end -> collect_end")) == 4  # median, min, max, GiB/s
    assert len(figures(out, "cold: fresh cache_dir")) == 4  # median, min, max, to sbatch
    assert len(figures(out, "warm: SIF already in the cache")) == 4


def test_scatter_tiny(slurm: CliSlurmClient) -> None:
    """A 3-way scatter, bridge packed and unpacked and Toil: a Toil that cannot be installed or run
    fails this test (the comparison is the script's point), it is never skipped."""
    out = run_bench("scatter.py", "--n", "3")
    for label in ("hpc-bridge, packed (Apptainer)", "hpc-bridge, unpacked (Apptainer)",
                  "toil-cwl-runner (no container)"):
        wall, jobs = figures(out, label)
        assert wall > 0 and jobs >= 1
    ratios = re.search(r"^ratio bridge/toil wall time: packed (\S+), unpacked (\S+) \(", out, re.MULTILINE)
    assert ratios, out
    assert all(float(r) > 0 for r in ratios.groups())
    slow = re.search(r"^with a task sleeping 300 s, packed: the 2 others ended after (\S+) s when it was the "
                     r"scatter's middle element, (\S+) s when it ran apart: ", out, re.MULTILINE)
    assert slow and all(float(v) > 0 for v in slow.groups()), out
    # Whether the long task shared its job with the task after it depends on when the engine created them.
    back = re.search(r"^  (\d+) tasks handed back after \d+ s; median returned -> submitted again (\S+) s .*"
                     r"submitted -> job started (\S+) s$", out, re.MULTILINE)
    assert back or "  no task was handed back: the long task's shared job had no task after it" in out, out
    assert not back or all(float(v) >= 0 for v in back.groups())


def test_s3_transfer_tiny(slurm: CliSlurmClient) -> None:
    out = run_bench("s3_transfer.py", "--size-mib", "4", "--runs", "1")
    download, upload = figures(out, "in  (download)"), figures(out, "out (upload)")
    assert all(v > 0 for v in download + upload)
    assert figures(out, "task in + cp + out through Slurm:")[0] > 0


def test_scale_tiny(slurm: CliSlurmClient) -> None:
    """2000 stored tasks and 20 active ones instead of 100k and 10k: every endpoint, the file size,
    the cycle times and the RSS are measured, and every active task ends up on a held job."""
    out = run_bench("scale.py", "--tasks", "2000", "--active", "20", "--samples", "50")
    lists = [f"GET /tasks?page_size=256 view={view}, {page}"
             for view in ("MINIMAL", "BASIC") for page in ("first page", "next pages")]
    for label in ("GET /tasks/{id} view=MINIMAL", "GET /tasks/{id} view=BASIC", *lists):
        samples, p50, p99, most = figures(out, label)
        assert samples == 50 and 0 < p50 <= p99 <= most
    assert figures(out, "POST /tasks")[0] == 50
    megabytes, per_task = figures(out, "per 100k tasks:")
    assert megabytes > 0 and per_task > 0
    assert figures(out, "submission: tasks -> held jobs")[0] == 20
    assert figures(out, "tasks:")[0] == 20  # QUEUED on a held job, the hold reason recorded
    for label in ("first cycle after the last submission", "steady cycle, median of 5:",
                  "restarted daemon, first cycle:", "before the Daemon was created:", "after its cycles (current):"):
        assert figures(out, label)[0] >= 0
    assert re.search(r"^\s+peak .*:\s+\d+$", out, re.MULTILINE), out


def test_crate_build_tiny() -> None:
    """A 3-way scatter's crate: built, timed and valid (the script fails on a REQUIRED issue)."""
    out = run_bench("crate_build.py", "--n", "3", "--repeat", "1")
    seconds = figures(out, "crate build (median)")[0]
    assert seconds > 0 and figures(out, "roc-validator, REQUIRED")[0] > 0
    assert figures(out, "zip size")[1] > 3  # entities: at least one per task


def test_crypt4gh_outputs_tiny(slurm: CliSlurmClient) -> None:
    """One 8 MiB output collected plainly and encrypted (which the script decrypts and checks)."""
    out = run_bench("crypt4gh_outputs.py", "--size-mib", "8", "--repeat", "1")
    assert figures(out, "plain copy (collector)")[0] > 0
    assert figures(out, "encrypted (collector)")[0] > 0
    assert figures(out, "ratio encrypted / plain:")[0] > 0
    assert figures(out, "crypt4gh.lib.encrypt (reference)")[0] > 0
