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
    """12 tasks: both cycle steps (10 and N active tasks) are measured, as at the full N=500."""
    out = run_bench("tes_submit.py", "--n", "12", "--latency-runs", "1")
    tasks, seconds, rate = figures(out, "API: POST /tasks -> daemon sbatch")
    assert tasks == 12 and seconds > 0 and rate > 0
    assert figures(out, "raw: runuser")[0] == 12
    assert figures(out, "ratio API / raw:")[0] > 0
    assert re.search(r"^\s+10\s+\d+\s+squeue \d+", out, re.MULTILINE), out
    assert re.search(r"^\s+12\s+\d+\s+squeue \d+", out, re.MULTILINE), out
    assert len(figures(out, "API: POST -> state COMPLETE")) == 4  # median, min, max, seen after job end
    assert len(figures(out, "raw: sbatch -> squeue COMPLETED")) == 4


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


def test_s3_transfer_tiny(slurm: CliSlurmClient) -> None:
    out = run_bench("s3_transfer.py", "--size-mib", "4", "--runs", "1")
    download, upload = figures(out, "in  (download)"), figures(out, "out (upload)")
    assert all(v > 0 for v in download + upload)
    assert figures(out, "task in + cp + out through Slurm:")[0] > 0
