#!/usr/bin/env python3
"""Benchmark: data staging through hpc-bridge on the real dev cluster, against raw `sbatch`.

    .venv/bin/python bench/staging.py [--repeat 5]

Run as root on the dev machine (`dev/cluster up`), from anywhere. Three phases, all measured in
this one run, then a summary table on stdout (progress goes to stderr):

1. Job start latency: task `creation_time` -> first executor `start_time` (FULL view) for a tiny
   `file://` input, a 1 GiB input with the default `storage.file_inputs: bind` and the same input on
   a second server with `file_inputs: copy`, plus the work area's disk use (`du -sk`) for the big
   ones. Baseline: `runuser -u hpcb -- sbatch --wrap` of a script that writes `date +%s.%N` (its own
   start) and then runs `apptainer exec busybox.sif true`, from the sbatch call to that start.
2. Output collection: a task writing 1 GiB to /out/big.bin with a FILE output vs the same task
   with /out as a plain volume (nothing collected), POST -> COMPLETE; and the collector's own time
   (last `executor_end` -> `collect_end` in the job's record.jsonl) as a throughput.
3. Registry image: POST -> COMPLETE for a task on 127.0.0.1:5000/hpc-bridge/busybox:1.0 with a
   fresh, empty `apptainer.cache_dir` (the daemon pulls through the local registry first), then
   again on the same server (the SIF is cached).

Each case runs `--repeat` times (interleaved round by round), medians are reported. Every server is
a real `hpc-bridge serve` process on its own config and database (the machinery of
bench/tes_submit.py, imported from there). Data lives in a fresh directory under the first data
root (owned by the job user), image caches beside the work root; all of it, the work areas and the
temp files are removed at the end, also on Ctrl-C / SIGTERM, and only this run's jobs are cancelled.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import requests

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from tes_submit import (
    FINAL_SLURM,
    FINAL_TES,
    ROOT,
    TES,
    Run,
    Server,
    iso_epoch,
    median,
    progress,
    run,
    say,
)

from hpc_bridge.config import SiteConfig, load_config
from hpc_bridge.slurm.record import parse_record

GIB = 1024**3
REGISTRY_IMAGE = "127.0.0.1:5000/hpc-bridge/busybox:1.0"


class StagingRun(Run):
    """Run (temp dir, work root, servers, job clean-up) plus the data directory and image caches."""

    def __init__(self, base: SiteConfig, keep: bool) -> None:
        super().__init__(base, keep)
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

    def cleanup(self) -> None:
        first = not self._cleaned
        super().cleanup()
        if not first:
            return
        if self.keep:
            say(f"kept: {', '.join(str(p) for p in self.extra if p.exists())}")
        else:
            for path in self.extra:
                subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


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


def start_latency(task: dict) -> float:
    return iso_epoch(task["logs"][0]["logs"][0]["start_time"]) - iso_epoch(task["creation_time"])


def du_kib(path: Path) -> int:
    return int(run(["du", "-sk", str(path)]).split()[0])


def remove(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


def sh(script: str, **fields: object) -> dict:
    return {"image": "busybox", "command": ["sh", "-c", script], **fields}


def stats(values: list[float]) -> str:
    return f"{median(values):>8.2f}s{min(values):>8.2f}s{max(values):>8.2f}s"


# -- phase 1: job start latency with file:// inputs -------------------------------------------

def raw_start(run_: Run, config: SiteConfig, sif: Path, n: int) -> float:
    """`sbatch --wrap` as the job user; seconds from the sbatch call to the job's own `date`."""
    workdir = run_.work / "raw" / str(n)
    workdir.mkdir(parents=True)
    run_.chown(workdir)
    wrap = f"date +%s.%N > {workdir}/start && {config.apptainer.binary} --quiet exec {sif} true"
    prefix = ["runuser", "-u", run_.user.pw_name, "--"] if run_.user and os.geteuid() == 0 else []
    argv = [*prefix, "sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm.out",
            "--job-name=bench-staging-raw"]
    if config.slurm.default_partition:
        argv.append(f"--partition={config.slurm.default_partition}")
    t0 = time.time()
    job_id = run([*argv, "--wrap", wrap]).strip().split(";", 1)[0]
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
    return started - t0


def phase_inputs(run_: StagingRun, repeat: int) -> dict:
    data = run_.data
    tiny, big = data / "tiny.txt", data / "big.bin"
    tiny.write_text("x\n")
    t0 = time.monotonic()
    run(["fallocate", "-l", str(GIB), str(big)])
    if big.stat().st_blocks * 512 < GIB:
        raise RuntimeError(f"{big} is sparse: fallocate did not reserve its blocks")
    say(f"[inputs] {big} ({GIB} bytes, allocated on disk) in {time.monotonic() - t0:.1f}s")
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
    out: dict = {k: [] for k in (*cases, "raw")} | {"du_bind": [], "du_copy": []}
    for i in range(repeat):
        for name, (server, config, path) in cases.items():
            run_.wait_quiet("inputs", 120)
            body, _ = run_task(server, task(path), f"[inputs] round {i + 1}/{repeat}: {name}")
            stdout = body["logs"][0]["logs"][0].get("stdout", "").strip()
            if stdout != str(path.stat().st_size):
                raise RuntimeError(f"{name}: the job saw {stdout!r} bytes, not {path.stat().st_size}")
            out[name].append(start_latency(body))
            workdir = config.storage.work_root / body["id"]
            if name in ("bind", "copy"):
                out[f"du_{name}"].append(du_kib(workdir))
            remove(workdir)  # a copy mode work area holds 1 GiB: do not let them pile up
        run_.wait_quiet("inputs", 120)
        out["raw"].append(raw_start(run_, bind_cfg, sif, i))
        progress.done()
        say(f"[inputs] round {i + 1}/{repeat}: start latency raw {out['raw'][-1]:.2f}s, tiny "
            f"{out['tiny'][-1]:.2f}s, 1 GiB bind {out['bind'][-1]:.2f}s ({out['du_bind'][-1]} KiB in the work "
            f"area), 1 GiB copy {out['copy'][-1]:.2f}s ({out['du_copy'][-1]} KiB)")
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
    write = sh("dd if=/dev/zero of=/out/big.bin bs=1M count=1024 2>/dev/null")
    out: dict = {"with": [], "without": [], "job_with": [], "job_without": [], "collect": []}
    for i in range(repeat):
        dest = run_.data / f"out-{i}.bin"
        variants = {
            "without": {"name": "bench-staging", "volumes": ["/out"], "executors": [write]},
            "with": {"name": "bench-staging", "executors": [write],
                     "outputs": [{"path": "/out/big.bin", "url": dest.as_uri(), "type": "FILE"}]},
        }
        for name, task in variants.items():
            run_.wait_quiet("outputs", 120)
            body, elapsed = run_task(server, task, f"[outputs] round {i + 1}/{repeat}: {name} outputs")
            out[name].append(elapsed)
            workdir = config.storage.work_root / body["id"]
            out[f"job_{name}"].append(job_seconds(workdir))
            if name == "with":
                size = dest.stat().st_size
                if size != GIB or body["logs"][0]["outputs"][0]["size_bytes"] != str(GIB):
                    raise RuntimeError(f"output {dest} has {size} bytes, not {GIB}")
                out["collect"].append(collector_seconds(workdir))
                remove(dest)
            remove(workdir)
        progress.done()
        say(f"[outputs] round {i + 1}/{repeat}: without outputs {out['without'][-1]:.2f}s (job "
            f"{out['job_without'][-1]:.2f}s), with a 1 GiB FILE output {out['with'][-1]:.2f}s (job "
            f"{out['job_with'][-1]:.2f}s, collector {out['collect'][-1]:.2f}s)")
    server.stop()
    run_.drain("outputs")
    return out


# -- phase 3: registry image, cold and warm cache ----------------------------------------------

def phase_registry(run_: StagingRun, repeat: int) -> dict:
    task = {"name": "bench-staging", "executors": [{"image": REGISTRY_IMAGE, "command": ["true"]}]}
    out: dict = {"cold": [], "warm": [], "pull": []}
    for i in range(repeat):
        cache = run_.cache_dir(str(i))
        server, _ = run_.server(f"registry-{i}", apptainer={"cache_dir": str(cache),
                                                           "insecure_registries": ["127.0.0.1:5000"]})
        for name in ("cold", "warm"):
            run_.wait_quiet("registry", 120)
            _, elapsed = run_task(server, task, f"[registry] round {i + 1}/{repeat}: {name} cache")
            out[name].append(elapsed)
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
    line = "=" * 96
    n = env["repeat"]
    print(line)
    print(f"hpc-bridge staging benchmark  ({env['when']}, {env['slurm']}, {env['cpus']} CPUs, "
          f"repeat={n}, run time {env['elapsed']:.0f}s)")
    print(line)
    raw = median(inp["raw"])
    print(f"1. Job start latency (medians of {n}; TES: creation_time -> executor start_time, FULL view)")
    print(f"   {'case':<50}{'median':>9}{'min':>9}{'max':>9}{'/ raw':>8}{'work area':>14}")
    print(f"   {'raw: sbatch --wrap -> job start (date +%s.%N)':<50}{stats(inp['raw'])}{1:>8.2f}")
    rows = [("a) tiny file:// input (bind)", "tiny", None),
            ("b) 1 GiB file:// input, file_inputs: bind", "bind", "du_bind"),
            ("c) 1 GiB file:// input, file_inputs: copy", "copy", "du_copy")]
    for label, key, du in rows:
        usage = f"{int(median(inp[du])):>10} KiB" if du else ""
        print(f"   {label:<50}{stats(inp[key])}{median(inp[key]) / raw:>8.2f}{usage:>14}")
    print(f"   b - a = {median(inp['bind']) - median(inp['tiny']):+.2f}s (zero copy); "
          f"c - b = {median(inp['copy']) - median(inp['bind']):+.2f}s (the copy inside the job)")
    print()
    without, with_ = median(outp["without"]), median(outp["with"])
    collect = median(outp["collect"])
    print(f"2. Output collection (task writes 1 GiB to /out/big.bin; POST -> COMPLETE, medians of {n})")
    print(f"   {'case':<50}{'median':>9}{'min':>9}{'max':>9}")
    print(f"   {'no outputs (/out is a volume)':<50}{stats(outp['without'])}")
    print(f"   {'one FILE output (/out/big.bin -> file://)':<50}{stats(outp['with'])}")
    print(f"   {'  in-job time, no outputs (job_start -> job_end)':<50}{stats(outp['job_without'])}")
    print(f"   {'  in-job time, FILE output (job_start -> job_end)':<50}{stats(outp['job_with'])}")
    print(f"   {'collector: executor_end -> collect_end':<50}{stats(outp['collect'])}"
          f"   -> {1 / collect:.2f} GiB/s")
    print(f"   cost of collecting 1 GiB: {with_ - without:+.2f}s end to end, "
          f"{median(outp['job_with']) - median(outp['job_without']):+.2f}s in the job")
    print()
    print(f"3. Registry image {REGISTRY_IMAGE} (POST -> COMPLETE, medians of {n})")
    print(f"   {'case':<50}{'median':>9}{'min':>9}{'max':>9}")
    print(f"   {'cold: fresh cache_dir, pulled through the registry':<50}{stats(reg['cold'])}")
    print(f"   {'  of which the pull (server log)':<50}{stats(reg['pull'])}")
    print(f"   {'warm: SIF already in the cache':<50}{stats(reg['warm'])}")
    print(f"   cold - warm = {median(reg['cold']) - median(reg['warm']):+.2f}s")
    print()
    if env["foreign"]:
        print(f"note: {env['foreign']} job(s) of other submitters were active during the run "
              "(figures may be disturbed)")
    print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (default 5)")
    parser.add_argument("--config", type=Path, default=ROOT / "site_config" / "dev.yaml",
                        help="base site config (default site_config/dev.yaml)")
    parser.add_argument("--keep", action="store_true",
                        help="keep temp configs, databases, logs, work dirs (data files are removed anyway)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    base = load_config(args.config)
    if os.geteuid() != 0:
        parser.error("run as root (fallocate in the data root, runuser to the job user, du of work areas)")
    if not base.storage.data_roots:
        parser.error(f"{args.config} has no storage.data_roots")
    if run(["scontrol", "ping"], check=False).find("UP") < 0:
        print("Slurm controller not reachable: start the dev cluster with `dev/cluster up`", file=sys.stderr)
        return 1
    run_ = StagingRun(base, args.keep)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t_start = time.time()
    try:
        say(f"staging benchmark run {run_.id}: repeat={args.repeat}, data {run_.data}, temp {run_.tmp}, "
            f"work {run_.work}")
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
           "foreign": len(run_.foreign_seen)}
    report(env, inp, outp, reg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
