#!/usr/bin/env python3
"""Benchmark: an N-way CWL scatter of a trivial tool through hpc-bridge (WES -> TES -> Slurm ->
Apptainer) versus `toil-cwl-runner --batchSystem slurm` on the same cluster, in the same run.

    .venv/bin/python bench/scatter.py [--n 100] [--skip-toil] [--skip-unpacked] [--sleeper 300]

Run as root on the dev machine with the cluster up. Bridge: a fresh `hpc-bridge serve` (own database
and work root) receives the workflow through `hpc-bridge-cwl-runner`, which submits over the WES API,
waits and copies the outputs; the clock covers that one command. It runs twice: with the site's
packing (the tool declares no ToolTimeLimit, as most tools do not), and with packing off, one
Slurm job per scatter element. Then once more, packed, with the middle element sleeping
`--sleeper` seconds: how much later the others end than in the plain packed run, and how fast the
tasks its pack handed back were submitted and started elsewhere (that run is cancelled as soon
as the others have ended). Toil: `toil-cwl-runner` from its own venv (`.venv-toil`, made with
`pip install 'toil[cwl]==9.6.0'` on first use: Toil pins its own cwltool, and the pin keeps a new
Toil release from changing the comparison or breaking CI's tiny run), with `--no-container` (it has
no Apptainer support for the local registry), its job store and work dir on the shared /srv. Slurm
jobs used are counted from job ids: a marker job submitted just before and just after each side
brackets every job id Slurm handed out in between. Outputs of both are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from tes_submit import Run, iso_epoch, print_footer, progress, say  # noqa: E402

from hpc_bridge.config import SiteConfig, load_config  # noqa: E402
from hpc_bridge.slurm.record import parse_record  # noqa: E402
from tests.procs import terminate  # noqa: E402

WORKFLOW = ROOT / "bench" / "workflows" / "scatter.cwl"
APART = ROOT / "bench" / "workflows" / "scatter_apart.cwl"
TOIL_VENV = ROOT / ".venv-toil"
TOIL = "toil[cwl]==9.6.0"  # the version of the README's figures


def marker_job() -> int:
    """A held job's id, cancelled at once: Slurm ids are sequential, so two markers bracket a run."""
    out = subprocess.run(["sbatch", "--parsable", "--hold", "--job-name=bench-marker", "--wrap=true"],
                         capture_output=True, text=True, check=True).stdout
    job_id = out.strip().split(";")[0]
    subprocess.run(["scancel", job_id], check=False)
    return int(job_id)


def check_outputs(result: dict, n: int, where: str) -> None:
    outs = result.get("outs") or []
    if len(outs) != n:
        raise SystemExit(f"{where}: expected {n} outputs, got {len(outs)}")
    texts = sorted(Path(o["path"] if "path" in o else o["location"].removeprefix("file://")).read_text()
                   for o in outs)
    if texts != sorted(f"m{i}\n" for i in range(n)):
        raise SystemExit(f"{where}: wrong output contents")


def timed(argv: list[str], env: dict[str, str], n: int, who: str) -> dict:
    """Run one side to the end: its wall time, the Slurm job ids handed out meanwhile, its checked outputs."""
    before = marker_job()
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - start
    after = marker_job()
    if proc.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    check_outputs(json.loads(proc.stdout), n, who)
    return {"wall": wall, "jobs": after - before - 1}


RUNNER = Path(sys.executable).parent / "hpc-bridge-cwl-runner"


def makespan(config: SiteConfig, skip: str | None = None) -> float:
    """First task created -> last task ended, in the server's own store (tasks whose command
    mentions `skip` left out of the end)."""
    with sqlite3.connect(config.database) as conn:
        rows = conn.execute("SELECT created_at, end_time, task FROM tasks").fetchall()
    ends = [iso_epoch(end) for _, end, body in rows if end and not (skip and skip in body)]
    return max(ends) - min(iso_epoch(created) for created, _, _ in rows)


def bridge(run_: Run, job: Path, n: int, *, packing: bool) -> dict:
    name = "scatter-packed" if packing else "scatter-unpacked"
    server, config = run_.server(name, slurm={"packing": {"enabled": packing}})
    outdir = run_.tmp / f"{name}-out"
    env = {**os.environ, "HPC_BRIDGE_URL": server.url}
    result = timed([str(RUNNER), "--quiet", "--outdir", str(outdir), str(WORKFLOW), str(job)], env, n, "bridge")
    return {**result, "makespan": makespan(config)}


def handed_back(config: SiteConfig) -> list[tuple[float, float]]:
    """Per task a pack handed back: (returned -> submitted again, submitted again -> its job started)."""
    with sqlite3.connect(config.database) as conn:
        rows = conn.execute("SELECT id, workdir FROM tasks WHERE system_logs LIKE '%handed back by%'").fetchall()
        submitted = dict(conn.execute(
            "SELECT task_id, max(time) FROM events WHERE message LIKE 'submitted as %Slurm job %' GROUP BY task_id"))
    out = []
    for task_id, workdir in rows:
        lines = Path(workdir, "record.jsonl").read_text().splitlines()
        returned = next(json.loads(line)["time"] for line in lines if '"event":"returned"' in line)
        record = parse_record("\n".join(lines))
        if task_id in submitted and record.start_time:
            out.append((iso_epoch(submitted[task_id]) - iso_epoch(returned),
                        iso_epoch(record.start_time) - iso_epoch(submitted[task_id])))
    return out


def sleeper(run_: Run, n: int, seconds: int, *, apart: bool) -> dict:
    """The packed scatter and one long task: stopped once every other one has ended. `apart`: the long
    one asks for other resources, so it never shares a job (the baseline); else it is the scatter's
    middle element and may share a job with elements after it, which it then hands back."""
    name = "scatter-apart" if apart else "scatter-sleeper"
    server, config = run_.server(name, slurm={"packing": {"enabled": True}})
    job = run_.tmp / f"job-{name}.json"
    long_one = f"sleep-{seconds}"
    messages = [f"m{i}" for i in range(n)]
    if apart:
        workflow, inputs = APART, {"messages": messages[1:], "long": long_one}
    else:
        messages[n // 2] = long_one
        workflow, inputs = WORKFLOW, {"messages": messages}
    job.write_text(json.dumps(inputs))
    log_path = run_.tmp / f"{name}-runner.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(RUNNER), "--quiet", "--outdir", str(run_.tmp / f"{name}-out"), str(workflow),
                                 str(job)], env={**os.environ, "HPC_BRIDGE_URL": server.url}, stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while True:
            with sqlite3.connect(config.database) as conn:
                done = conn.execute("SELECT count(*) FROM tasks WHERE state = 'COMPLETE' AND task NOT LIKE ?",
                                    [f"%{long_one}%"]).fetchone()[0]
            progress(f"{name}: {done}/{n - 1} other tasks complete  {time.monotonic() - t0:.0f}s")
            if done >= n - 1:
                break
            if proc.poll() is not None or time.monotonic() - t0 > seconds:
                raise SystemExit(f"{name}: the other tasks did not all complete ({done}/{n - 1}) within "
                                 f"{seconds} s; see {log_path}")
            time.sleep(0.5)
        progress.done()
        with sqlite3.connect(config.database) as conn:
            run_ids = [r[0] for r in conn.execute("SELECT id FROM runs")]
    finally:
        terminate(proc)
    for run_id in run_ids:  # the long one has made its point
        requests.post(f"{server.url}/ga4gh/wes/v1/runs/{run_id}/cancel", timeout=30)
    back = handed_back(config)
    return {"others": makespan(config, skip=long_one), "handed_back": len(back),
            "to_submit": statistics.median(b[0] for b in back) if back else None,
            "to_start": statistics.median(b[1] for b in back) if back else None,
            "threshold": config.slurm.packing.hand_back_seconds, "cycle": config.monitor.min_interval}


def ensure_toil() -> Path:
    exe = TOIL_VENV / "bin" / "toil-cwl-runner"
    if not exe.exists():
        say(f"installing {TOIL} into .venv-toil (first use)")
        subprocess.run([sys.executable, "-m", "venv", str(TOIL_VENV)], check=True)
        subprocess.run([str(TOIL_VENV / "bin" / "pip"), "install", "--quiet", TOIL], check=True)
    return exe


def toil(run_: Run, job: Path, n: int) -> dict:
    exe = ensure_toil()
    base = Path("/srv/hpc-bridge") / f"bench-toil-{run_.id}"  # shared with the compute node
    base.mkdir(parents=True)
    try:
        env = {**os.environ, "PATH": f"{exe.parent}:{os.environ['PATH']}"}  # Toil's workers need it
        result = timed([str(exe), "--batchSystem", "slurm", "--jobStore", str(base / "js"), "--workDir",
                        str(base), "--outdir", str(base / "out"), "--no-container", "--logLevel", "WARNING",
                        str(WORKFLOW), str(job)], env, n, "toil")
        return {**result,
                "version": subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                                          check=False).stdout.strip().splitlines()[-1]}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="scatter width (default 100)")
    parser.add_argument("--skip-toil", action="store_true", help="measure the bridge only")
    parser.add_argument("--skip-unpacked", action="store_true", help="measure the bridge with packing only")
    parser.add_argument("--sleeper", type=int, default=300,
                        help="seconds the first element sleeps in the last run (default 300; 0: no such run)")
    parser.add_argument("--config", type=Path, default=ROOT / "site_config" / "dev.yaml")
    parser.add_argument("--keep", action="store_true", help="keep temp configs, databases, logs")
    args = parser.parse_args()
    run_ = Run(load_config(args.config), args.keep)
    job = run_.tmp / "job.json"
    job.write_text(json.dumps({"messages": [f"m{i}" for i in range(args.n)]}))
    started = time.time()
    try:
        say(f"bridge: {args.n}-way scatter through WES, packed")
        ours = bridge(run_, job, args.n, packing=True)
        say(f"bridge: {ours['wall']:.1f} s, {ours['jobs']} Slurm jobs")
        unpacked = None
        if not args.skip_unpacked:
            say(f"bridge: {args.n}-way scatter through WES, one Slurm job per task")
            unpacked = bridge(run_, job, args.n, packing=False)
            say(f"bridge: {unpacked['wall']:.1f} s, {unpacked['jobs']} Slurm jobs")
        theirs = None
        if not args.skip_toil:
            say(f"toil: {args.n}-way scatter with --batchSystem slurm")
            theirs = toil(run_, job, args.n)
            say(f"toil: {theirs['wall']:.1f} s, {theirs['jobs']} Slurm jobs")
        slow = apart = None
        if args.sleeper and args.n > 1:
            say(f"bridge: {args.n}-way scatter through WES, packed, the middle element sleeping {args.sleeper} s")
            slow = sleeper(run_, args.n, args.sleeper, apart=False)
            say(f"bridge: the {args.n - 1} others ended {slow['others']:.1f} s after the first task was created")
            say(f"bridge: {args.n - 1}-way scatter beside a task sleeping {args.sleeper} s in a job of its own")
            apart = sleeper(run_, args.n, args.sleeper, apart=True)
            say(f"bridge: the {args.n - 1} others ended {apart['others']:.1f} s after the first task was created")
    finally:
        run_.cleanup()
    print(f"\n{args.n}-way scatter of a trivial CWL tool, {os.cpu_count()} CPUs, same cluster, same run")
    print(f"{'':32} {'wall s':>8} {'Slurm jobs':>11}")
    print(f"{'hpc-bridge, packed (Apptainer)':32} {ours['wall']:8.1f} {ours['jobs']:11d}")
    if unpacked:
        print(f"{'hpc-bridge, unpacked (Apptainer)':32} {unpacked['wall']:8.1f} {unpacked['jobs']:11d}")
    if theirs:
        print(f"{'toil-cwl-runner (no container)':32} {theirs['wall']:8.1f} {theirs['jobs']:11d}")
        print(f"ratio bridge/toil wall time: packed {ours['wall'] / theirs['wall']:.2f}"
              + (f", unpacked {unpacked['wall'] / theirs['wall']:.2f}" if unpacked else "")
              + f" ({theirs['version']})")
    if slow and apart:
        print(f"with a task sleeping {args.sleeper} s, packed: the {args.n - 1} others ended after "
              f"{slow['others']:.1f} s when it was the scatter's middle element, "
              f"{apart['others']:.1f} s when it ran apart: "
              f"{slow['others'] - apart['others']:+.1f} s (plain run, all {args.n}: {ours['makespan']:.1f} s)")
        if slow["handed_back"]:
            print(f"  {slow['handed_back']} tasks handed back after {slow['threshold']} s; median returned -> "
                  f"submitted again {slow['to_submit']:.2f} s (daemon cycle {slow['cycle']:g} s), submitted -> "
                  f"job started {slow['to_start']:.2f} s")
        else:
            print("  no task was handed back: the long task's shared job had no task after it")
    print_footer({"foreign": len(run_.foreign_seen)}, f"total benchmark time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
