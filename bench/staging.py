#!/usr/bin/env python3
"""Benchmark: data staging through hpc-bridge on the real dev cluster, against raw `sbatch`.

    .venv/bin/python bench/staging.py [--repeat 5] [--jitter 2] [--size-mb 1024]

Run as root on the dev machine (`dev/cluster up`), from anywhere. Three phases, all measured in
this one run, then a summary table on stdout (progress goes to stderr):

1. Job start latency: task `creation_time` -> first executor `start_time` (FULL view) for a tiny
   `file://` input, a big one (1 GiB, or `--size-mb`) with the default `storage.file_inputs: bind`
   and the same input on a second server with `file_inputs: copy`, plus the work area's disk use
   (`du -sk`) for the big ones. Baseline: `runuser -u hpcb -- sbatch --wrap` of a script that
   writes `date +%s.%N` (its own start) and then runs `apptainer exec busybox.sif true`, from the
   sbatch call to that start.
2. Output collection: a task writing as much to /out/big.bin with a FILE output vs the same task
   with /out as a plain volume (nothing collected), POST -> COMPLETE; and the collector's own time
   (last `executor_end` -> `collect_end` in the job's record.jsonl) as a throughput.
3. Registry image: POST -> COMPLETE for a task on 127.0.0.1:5000/hpc-bridge/busybox:1.0 with a
   fresh, empty `apptainer.cache_dir` (the daemon pulls through the local registry first), then
   again on the same server (the SIF is cached).

Each case runs `--repeat` times, interleaved round by round; medians are reported. Slurm starts
jobs on its scheduler's beat (`SchedulerParameters=sched_interval=2` on the dev cluster), so a
job's start latency depends on when in that beat it is submitted, and a fixed loop can alias with
it: every submission (API or raw) is therefore preceded by a random pause of 0..`--jitter` s, so
all cases sample the beat alike. Every server is a real `hpc-bridge serve` process on its own config
and database (the machinery of bench/tes_submit.py, imported from there). Data lives in a fresh
directory under the first data root (owned by the job user), image caches beside the work root;
all of it, the work areas and the temp files are removed at the end, also on Ctrl-C / SIGTERM, and
only this run's jobs are ever cancelled.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import requests

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from tes_submit import (  # noqa: E402 - found through sys.path above
    FINAL_SLURM,
    FINAL_TES,
    ROOT,
    TES,
    Run,
    Server,
    interrupt_on_signals,
    iso_epoch,
    median,
    print_footer,
    progress,
    run,
    say,
    slurm_up,
)

from hpc_bridge.config import SiteConfig, load_config  # noqa: E402
from hpc_bridge.slurm.record import parse_record  # noqa: E402

MIB = 1024**2
GIB = 1024**3
REGISTRY_IMAGE = "127.0.0.1:5000/hpc-bridge/busybox:1.0"


class StagingRun(Run):
    """Run (temp dir, work root, servers, job clean-up) plus the data directory and image caches."""

    def __init__(self, base: SiteConfig, keep: bool, jitter: float, size_mb: int) -> None:
        super().__init__(base, keep)
        self.jitter = jitter
        self.size = size_mb * MIB  # of the big input and of the output
        self.data = base.storage.data_roots[0] / f"bench-{self.id}"
        self.extra: list[Path] = [self.data]

    def make_data_dir(self) -> Path:
        self.data.mkdir(parents=True)
        self.chown(self.data)  # outputs are written by the job user
        return self.data

    def cache_dir(self, name: str) -> Path:
        """A fresh image cache the job user can read (beside the work root, not in /tmp)."""
        path = self.base.storage.work_root.parent / f"bench-{self.id}-cache-{name}"
        self.extra.append(path)
        return path

    def settle(self, what: str) -> None:
        """Before each submission: no other submitter's job active, then a random pause (see above)."""
        self.wait_quiet(what, 120)
        time.sleep(random.uniform(0, self.jitter))

    def cleanup(self) -> None:
        first = not self._cleaned
        super().cleanup()
        if not first:
            return
        if self.keep:
            say(f"kept: {', '.join(str(p) for p in self.extra if p.exists())}")
        else:
            for path in self.extra:
                remove(path)


# -- helpers ----------------------------------------------------------------------------------

session = requests.Session()


def run_task(server: Server, task: dict, label: str, timeout: float = 300) -> tuple[dict, float]:
    """POST, poll MINIMAL every 0.1 s until final; (FULL view, seconds POST -> final state)."""
    t0 = time.time()
    resp = session.post(f"{server.url}{TES}/tasks", json=task, timeout=30)
    if resp.status_code != 200:
        raise RuntimeError(f"{label}: POST answered {resp.status_code}: {resp.text}")
    task_id = resp.json()["id"]
    while True:
        state = session.get(f"{server.url}{TES}/tasks/{task_id}", params={"view": "MINIMAL"},
                            timeout=30).json()["state"]
        if state in FINAL_TES:
            break
        if time.time() - t0 > timeout:
            raise RuntimeError(f"{label}: task {task_id} not finished after {timeout:.0f}s")
        progress(f"{label}: {state.lower()}  {time.time() - t0:.1f}s")
        time.sleep(0.1)
    elapsed = time.time() - t0
    body = session.get(f"{server.url}{TES}/tasks/{task_id}", params={"view": "FULL"}, timeout=30).json()
    if state != "COMPLETE":
        raise RuntimeError(f"{label}: task {task_id} ended {state}: {body['logs'][0].get('system_logs')}")
    return body, elapsed


def submitted_at(config: SiteConfig, task_id: str) -> float:
    """When the daemon's sbatch for the task had returned (its event in the server's own database)."""
    with sqlite3.connect(f"file:{config.database}?mode=ro", uri=True, timeout=30) as conn:
        row = conn.execute("SELECT time FROM events WHERE task_id = ? AND message LIKE "
                           "'submitted as Slurm job %' ORDER BY seq DESC LIMIT 1", (task_id,)).fetchone()
    if row is None:
        raise RuntimeError(f"task {task_id}: no 'submitted as Slurm job' event in {config.database}")
    return iso_epoch(row[0])


def du_kib(path: Path) -> int:
    return int(run(["du", "-sk", str(path)]).split()[0])


def remove(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


def sh(script: str, **fields: object) -> dict:
    return {"image": "busybox", "command": ["sh", "-c", script], **fields}


def size_text(size: int) -> str:
    """The big file's size as the labels show it: 1 GiB for the default, MiB for a smaller one."""
    return f"{size // GIB} GiB" if size % GIB == 0 else f"{size // MIB} MiB"


def stats(values: list[float]) -> str:
    return f"{median(values):>8.2f}s{min(values):>8.2f}s{max(values):>8.2f}s"


# -- phase 1: job start latency with file:// inputs -------------------------------------------

def raw_start(run_: StagingRun, config: SiteConfig, sif: Path, n: int) -> tuple[float, float]:
    """`sbatch --wrap` as the job user: (sbatch call -> job's own `date`, of which the sbatch call)."""
    workdir = run_.work / "raw" / str(n)
    workdir.mkdir(parents=True)
    run_.chown(workdir)
    wrap = f"date +%s.%N > {workdir}/start && {config.apptainer.binary} --quiet exec {sif} true"
    prefix = ["runuser", "-u", run_.user.pw_name, "--"] if run_.user and os.geteuid() == 0 else []
    argv = [*prefix, "sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm.out",
            "--job-name=bench-staging-raw"]
    if config.slurm.default_partition:
        argv.append(f"--partition={config.slurm.default_partition}")
    run_.settle("inputs")
    t0 = time.time()
    job_id = run([*argv, "--wrap", wrap]).strip().split(";", 1)[0]
    t_submitted = time.time()
    run_.raw_jobs.add(job_id)
    while True:
        state = run(["squeue", "-h", "-j", job_id, "--states=all", "-o", "%T"], check=False).strip()
        if state in FINAL_SLURM:
            break
        if time.time() - t0 > 300:
            raise RuntimeError(f"raw job {job_id} not finished after 300s")
        progress(f"[inputs] raw job {job_id}: {state.lower() or '?'}  {time.time() - t0:.1f}s")
        time.sleep(0.1)
    if state != "COMPLETED":
        raise RuntimeError(f"raw job {job_id} ended {state}: {(workdir / 'slurm.out').read_text()}")
    started = float((workdir / "start").read_text())
    remove(workdir)
    return started - t0, t_submitted - t0


def staging_in_job(workdir: Path) -> float:
    """job_start -> first executor_start in the job's own record: what the job does before the task
    runs (input checks, and the copy in copy mode), free of Slurm's scheduling beat."""
    rec = parse_record((workdir / "record.jsonl").read_text())
    first = rec.executors.get(0)
    if not rec.start_time or not first or not first.start_time:
        raise RuntimeError(f"no job_start / executor_start in {workdir}/record.jsonl")
    return iso_epoch(first.start_time) - iso_epoch(rec.start_time)


def phase_inputs(run_: StagingRun, repeat: int) -> dict:
    data = run_.data
    tiny, big = data / "tiny.txt", data / "big.bin"
    tiny.write_text("x\n")
    t0 = time.monotonic()
    run(["fallocate", "-l", str(run_.size), str(big)])
    if big.stat().st_blocks * 512 < run_.size:
        raise RuntimeError(f"{big} is sparse: fallocate did not reserve its blocks")
    say(f"[inputs] {big} ({run_.size} bytes, allocated on disk) in {time.monotonic() - t0:.1f}s")
    bind, bind_cfg = run_.server("inputs-bind")
    copy, copy_cfg = run_.server("inputs-copy", storage={"file_inputs": "copy"})
    sif = next((d / "busybox.sif" for d in bind_cfg.apptainer.image_dirs if (d / "busybox.sif").is_file()),
               None)
    if sif is None:
        raise RuntimeError("busybox.sif not found in apptainer.image_dirs: run `dev/cluster install`")

    def task(path: Path) -> dict:
        return {"name": "bench-staging", "inputs": [{"url": path.as_uri(), "path": "/in/data"}],
                "executors": [sh("stat -c %s /in/data")]}

    cases = {"tiny": (bind, bind_cfg, tiny), "bind": (bind, bind_cfg, big), "copy": (copy, copy_cfg, big)}
    out: dict = {k: {"start": [], "submit": [], "in_job": []} for k in (*cases, "raw")}
    out["du_bind"], out["du_copy"] = [], []
    for i in range(repeat):
        for name, (server, config, path) in cases.items():
            run_.settle("inputs")
            body, _ = run_task(server, task(path), f"[inputs] round {i + 1}/{repeat}: {name}")
            stdout = body["logs"][0]["logs"][0].get("stdout", "").strip()
            if stdout != str(path.stat().st_size):
                raise RuntimeError(f"{name}: the job saw {stdout!r} bytes, not {path.stat().st_size}")
            created = iso_epoch(body["creation_time"])
            out[name]["start"].append(iso_epoch(body["logs"][0]["logs"][0]["start_time"]) - created)
            out[name]["submit"].append(submitted_at(config, body["id"]) - created)
            workdir = config.storage.work_root / body["id"]
            out[name]["in_job"].append(staging_in_job(workdir))
            if name in ("bind", "copy"):
                out[f"du_{name}"].append(du_kib(workdir))
            remove(workdir)  # a copy mode work area holds the big input: do not let them pile up
        start, submit = raw_start(run_, bind_cfg, sif, i)
        out["raw"]["start"].append(start)
        out["raw"]["submit"].append(submit)
        out["raw"]["in_job"].append(0.0)  # its `date` is the first thing the job does
        progress.done()
        big_text = size_text(run_.size)
        say(f"[inputs] round {i + 1}/{repeat}: start latency raw {start:.2f}s, tiny "
            f"{out['tiny']['start'][-1]:.2f}s, {big_text} bind {out['bind']['start'][-1]:.2f}s "
            f"({out['du_bind'][-1]} KiB in the work area), {big_text} copy {out['copy']['start'][-1]:.2f}s "
            f"({out['du_copy'][-1]} KiB)")
    bind.stop()
    copy.stop()
    remove(big)
    remove(tiny)
    run_.drain("inputs")
    return out


# -- phase 2: output collection ----------------------------------------------------------------

def job_seconds(workdir: Path) -> float:
    """job_start -> job_end in the job's own record: the job's run time, without any polling lag."""
    rec = parse_record((workdir / "record.jsonl").read_text())
    if not rec.start_time or not rec.end_time:
        raise RuntimeError(f"no job_start / job_end in {workdir}/record.jsonl")
    return iso_epoch(rec.end_time) - iso_epoch(rec.start_time)


def collector_seconds(workdir: Path) -> float:
    """Last executor_end -> collect_end in the job's record (the collector's run, python start incl.)."""
    text = (workdir / "record.jsonl").read_text()
    rec = parse_record(text)
    ends = [e.end_time for e in rec.executors.values() if e.end_time]
    collect_end = None
    for line in text.splitlines():  # parse_record keeps the exit code, not the time
        if '"collect_end"' in line:
            match = re.search(r'"time":"([^"]+)"', line)
            collect_end = match.group(1) if match else None
    if not ends or not collect_end:
        raise RuntimeError(f"no executor_end / collect_end in {workdir}/record.jsonl")
    return iso_epoch(collect_end) - max(iso_epoch(t) for t in ends)


def phase_outputs(run_: StagingRun, repeat: int) -> dict:
    server, config = run_.server("outputs")
    write = sh(f"dd if=/dev/zero of=/out/big.bin bs=1M count={run_.size // MIB} 2>/dev/null")
    out: dict = {"with": [], "without": [], "job_with": [], "job_without": [], "collect": []}
    for i in range(repeat):
        dest = run_.data / f"out-{i}.bin"
        variants = {
            "without": {"name": "bench-staging", "volumes": ["/out"], "executors": [write]},
            "with": {"name": "bench-staging", "executors": [write],
                     "outputs": [{"path": "/out/big.bin", "url": dest.as_uri(), "type": "FILE"}]},
        }
        for name, task in variants.items():
            run_.settle("outputs")
            body, elapsed = run_task(server, task, f"[outputs] round {i + 1}/{repeat}: {name} outputs")
            out[name].append(elapsed)
            workdir = config.storage.work_root / body["id"]
            out[f"job_{name}"].append(job_seconds(workdir))
            if name == "with":
                size = dest.stat().st_size
                if size != run_.size or body["logs"][0]["outputs"][0]["size_bytes"] != str(run_.size):
                    raise RuntimeError(f"output {dest} has {size} bytes, not {run_.size}")
                out["collect"].append(collector_seconds(workdir))
                remove(dest)
            remove(workdir)
        progress.done()
        say(f"[outputs] round {i + 1}/{repeat}: without outputs {out['without'][-1]:.2f}s (job "
            f"{out['job_without'][-1]:.2f}s), with a {size_text(run_.size)} FILE output "
            f"{out['with'][-1]:.2f}s (job {out['job_with'][-1]:.2f}s, collector {out['collect'][-1]:.2f}s)")
    server.stop()
    run_.drain("outputs")
    return out


# -- phase 3: registry image, cold and warm cache ----------------------------------------------

def phase_registry(run_: StagingRun, repeat: int) -> dict:
    task = {"name": "bench-staging", "executors": [{"image": REGISTRY_IMAGE, "command": ["true"]}]}
    out: dict = {"cold": [], "warm": [], "pull": [], "submit_cold": [], "submit_warm": []}
    for i in range(repeat):
        cache = run_.cache_dir(str(i))
        server, config = run_.server(f"registry-{i}", apptainer={"cache_dir": str(cache),
                                                           "insecure_registries": ["127.0.0.1:5000"]})
        for name in ("cold", "warm"):
            run_.settle("registry")
            body, elapsed = run_task(server, task, f"[registry] round {i + 1}/{repeat}: {name} cache")
            out[name].append(elapsed)
            out[f"submit_{name}"].append(submitted_at(config, body["id"]) - iso_epoch(body["creation_time"]))
        server.stop()
        pulls = re.findall(r"pulled image \S+ into \S+ in ([0-9.]+)s", server.log.read_text())
        if len(pulls) != 1:
            raise RuntimeError(f"expected one pull in {server.log}, found {len(pulls)}")
        out["pull"].append(float(pulls[0]))
        remove(cache)
        progress.done()
        say(f"[registry] round {i + 1}/{repeat}: cold {out['cold'][-1]:.2f}s (pull {out['pull'][-1]:.1f}s), "
            f"warm {out['warm'][-1]:.2f}s")
    run_.drain("registry")
    return out


# -- report -------------------------------------------------------------------------------------

def report(env: dict, inp: dict, outp: dict, reg: dict) -> None:
    line = "=" * 104
    n = env["repeat"]
    big = size_text(env["size"])
    print(line)
    print(f"hpc-bridge staging benchmark  ({env['when']}, {env['slurm']}, {env['cpus']} CPUs, "
          f"repeat={n}, size {big}, jitter 0..{env['jitter']:g}s, run time {env['elapsed']:.0f}s)")
    print(line)
    raw = median(inp["raw"]["start"])
    print(f"1. Job start latency (medians of {n}; TES: creation_time -> first executor start_time, FULL view)")
    print(f"   {'case':<46}{'median':>9}{'min':>9}{'max':>9}{'/ raw':>7}{'to sbatch':>11}"
          f"{'in job':>9}{'work area':>13}")
    rows = [("raw: sbatch --wrap -> job's own start", "raw", None),
            ("a) tiny file:// input (bind)", "tiny", None),
            (f"b) {big} file:// input, file_inputs: bind", "bind", "du_bind"),
            (f"c) {big} file:// input, file_inputs: copy", "copy", "du_copy")]
    for label, key, du in rows:
        usage = f"{int(median(inp[du])):>9} KiB" if du else ""
        print(f"   {label:<46}{stats(inp[key]['start'])}{median(inp[key]['start']) / raw:>7.2f}"
              f"{median(inp[key]['submit']):>10.2f}s{median(inp[key]['in_job']):>8.2f}s{usage:>13}")
    for label, key in (("start latency", "start"), ("in job", "in_job")):
        b_a = median(inp["bind"][key]) - median(inp["tiny"][key])
        c_b = median(inp["copy"][key]) - median(inp["bind"][key])
        print(f"   {label + ':':<15}b - a = {b_a:+.2f}s (zero copy), c - b = {c_b:+.2f}s (the copy in the job)")
    print()
    without, with_ = median(outp["without"]), median(outp["with"])
    collect = median(outp["collect"])
    print(f"2. Output collection (task writes {big} to /out/big.bin; medians of {n})")
    print(f"   {'case':<46}{'median':>9}{'min':>9}{'max':>9}")
    print(f"   {'POST -> COMPLETE, no outputs (/out a volume)':<46}{stats(outp['without'])}")
    print(f"   {'POST -> COMPLETE, one FILE output':<46}{stats(outp['with'])}")
    print(f"   {'job_start -> job_end, no outputs':<46}{stats(outp['job_without'])}")
    print(f"   {'job_start -> job_end, one FILE output':<46}{stats(outp['job_with'])}")
    print(f"   {'collector: executor_end -> collect_end':<46}{stats(outp['collect'])}"
          f"   -> {env['size'] / GIB / collect:.2f} GiB/s")
    print(f"   cost of collecting {big}: {with_ - without:+.2f}s end to end, "
          f"{median(outp['job_with']) - median(outp['job_without']):+.2f}s in the job")
    print()
    print(f"3. Registry image {REGISTRY_IMAGE} (POST -> COMPLETE, medians of {n})")
    print(f"   {'case':<46}{'median':>9}{'min':>9}{'max':>9}{'to sbatch':>18}")
    print(f"   {'cold: fresh cache_dir, pull via the registry':<46}{stats(reg['cold'])}"
          f"{median(reg['submit_cold']):>17.2f}s")
    print(f"   {'  of which the pull (server log, 0.1 s steps)':<46}{stats(reg['pull'])}")
    print(f"   {'warm: SIF already in the cache':<46}{stats(reg['warm'])}{median(reg['submit_warm']):>17.2f}s")
    print(f"   cold - warm = {median(reg['cold']) - median(reg['warm']):+.2f}s end to end, "
          f"{median(reg['submit_cold']) - median(reg['submit_warm']):+.2f}s to sbatch")
    print()
    print_footer(env, line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (default 5)")
    parser.add_argument("--jitter", type=float, default=2.0,
                        help="random pause before each submission, 0..JITTER s (default 2: the dev "
                             "cluster's sched_interval)")
    parser.add_argument("--size-mb", type=int, default=1024,
                        help="MiB of the big input and of the output (default 1024; CI runs a tiny size)")
    parser.add_argument("--config", type=Path, default=ROOT / "site_config" / "dev.yaml",
                        help="base site config (default site_config/dev.yaml)")
    parser.add_argument("--keep", action="store_true",
                        help="keep temp configs, databases, logs, work dirs and data (for debugging)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.jitter < 0:
        parser.error("--jitter must not be negative")
    if args.size_mb < 1:
        parser.error("--size-mb must be at least 1")
    if os.geteuid() != 0:
        parser.error("run as root (fallocate in the data root, runuser to the job user, du of work areas)")
    base = load_config(args.config)
    if not base.storage.data_roots:
        parser.error(f"{args.config} has no storage.data_roots")
    if not slurm_up():
        return 1
    run_ = StagingRun(base, args.keep, args.jitter, args.size_mb)
    interrupt_on_signals()
    t_start = time.time()
    try:
        say(f"staging benchmark run {run_.id}: repeat={args.repeat}, size {size_text(run_.size)}, "
            f"data {run_.data}, temp {run_.tmp}, work {run_.work}")
        run_.make_data_dir()
        inp = phase_inputs(run_, args.repeat)
        outp = phase_outputs(run_, args.repeat)
        reg = phase_registry(run_, args.repeat)
    except KeyboardInterrupt:
        progress.done()
        say("interrupted: stopping the servers, cancelling this run's jobs, removing its files")
        run_.cleanup()
        return 130
    finally:
        run_.cleanup()
    env = {"when": datetime.now().strftime("%Y-%m-%d %H:%M"), "repeat": args.repeat, "cpus": os.cpu_count(),
           "slurm": run(["sinfo", "--version"], check=False).strip(), "elapsed": time.time() - t_start,
           "jitter": args.jitter, "size": run_.size, "foreign": len(run_.foreign_seen)}
    report(env, inp, outp, reg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
