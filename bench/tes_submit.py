#!/usr/bin/env python3
"""Benchmark: TES submission through hpc-bridge vs raw `sbatch`, on the real dev cluster.

    .venv/bin/python bench/tes_submit.py [--n 500] [--latency-runs 5] [--clients 4]

Run as root on the dev machine (`dev/cluster up`), from anywhere. Three phases, all measured in
this one run, then a summary table on stdout (progress goes to stderr):

1. Submission throughput. A real `hpc-bridge serve` (API + daemon, separate process) on a fresh
   database and a free loopback port receives N trivial tasks (busybox, `true`) over HTTP; the clock
   runs from the first POST until the API shows a Slurm job id for every task. Then N `sbatch
   --parsable` calls of the very script the daemon renders, as the job user (`runuser -u hpcb --`),
   in a plain loop. The jobs run (they are trivial); only submission is timed. After each phase the
   benchmark cancels its own leftover jobs and waits until none of them is active.
2. Slurm commands per monitoring cycle, with 10 and with N active tasks. The daemon runs in this
   process (`Daemon(config, Store, CliSlurmClient)`) with a site template override (the mechanism
   `slurm.template_dirs` offers every site) that adds `#SBATCH --hold`: the jobs are real, stay
   PENDING (JobHeldUser) and keep their tasks QUEUED, so the cycles are monitoring-only. The counts
   are diffs of `CliSlurmClient.calls`. The phase ends by cancelling all N tasks through the TES
   service, which also shows how many `scancel` calls one cycle needs for N cancellations.
3. Latency of one task, POST -> COMPLETE via the API (GET every 0.1 s), against a raw `sbatch` of the
   same script -> COMPLETED in `squeue` (every 0.1 s), interleaved, medians reported.

Only jobs this run submitted are ever cancelled (found by job id or by the task id in their Slurm
comment), so other users of the cluster (e.g. a concurrent `make test`) are left alone. Ctrl-C or
SIGTERM stops the server, cancels this run's jobs and removes its temporary files.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc_bridge.auth import NO_AUTH_IDENTITY  # noqa: E402
from hpc_bridge.config import PACKAGE_DIR, SiteConfig, load_config  # noqa: E402
from hpc_bridge.daemon import Daemon  # noqa: E402
from hpc_bridge.slurm.client import CliSlurmClient  # noqa: E402
from hpc_bridge.slurm.pack import pack_id_from_comment  # noqa: E402
from hpc_bridge.slurm.record import parse_record  # noqa: E402
from hpc_bridge.slurm.script import render  # noqa: E402
from hpc_bridge.staging.schemes import Schemes  # noqa: E402
from hpc_bridge.store import Store  # noqa: E402
from hpc_bridge.tes.jobspec import plan_job, task_id_from_comment  # noqa: E402
from hpc_bridge.tes.models import Task  # noqa: E402
from hpc_bridge.tes.service import TaskService  # noqa: E402
from tests.procs import terminate  # noqa: E402

TASK = {"name": "bench", "executors": [{"image": "busybox", "command": ["true"]}]}
TES = "/ga4gh/tes/v1"
OWNER = NO_AUTH_IDENTITY.owner  # the dev config has no authentication: every task is "local"'s
FINAL_TES = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
FINAL_SLURM = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
               "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}


# -- small helpers ----------------------------------------------------------------------------

class Progress:
    """One overwritten status line on a terminal; an occasional plain line otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._open = False

    def __call__(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= 0.1:
                sys.stderr.write("\r\033[K" + text)
                sys.stderr.flush()
                self._open = True
                self._last = now
        elif force or now - self._last >= 5:
            print(text, file=sys.stderr, flush=True)
            self._last = now

    def done(self, text: str | None = None) -> None:
        if self._open:
            sys.stderr.write("\r\033[K")
            self._open = False
        if text:
            print(text, file=sys.stderr, flush=True)
        self._last = 0.0


progress = Progress()


def say(text: str) -> None:
    progress.done(text)


def iso_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(argv: list[str], *, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the run's resources and their clean-up -----------------------------------------------------

class Server:
    """`hpc-bridge serve` as a real process (API + daemon) on its own config, database and port."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = config_path.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        exe = Path(sys.executable).parent / "hpc-bridge"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(exe), "serve", "--config", str(self.config_path),
                                          "--port", str(self.port)], stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.url}{TES}/service-info", timeout=2).raise_for_status()
                return self
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start:\n{self.log.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        terminate(self.proc)


class Run:
    """Everything this benchmark creates, so that exit (normal, error, Ctrl-C) can undo it."""

    def __init__(self, base: SiteConfig, keep: bool) -> None:
        self.base = base
        self.keep = keep
        self.id = uuid.uuid4().hex[:8]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"hpcb-bench-{self.id}-"))
        self.work = base.storage.work_root / f"bench-{self.id}"
        self.user = pwd.getpwnam(base.slurm.submit_as) if base.slurm.submit_as else None
        self.servers: list[Server] = []
        self.databases: list[Path] = []
        self.raw_jobs: set[str] = set()
        self.foreign_seen: set[str] = set()
        self._cleaned = False

    # configs

    def config(self, name: str, **overrides: object) -> tuple[Path, SiteConfig]:
        """A copy of the base config with its own database and work root (and any overrides)."""
        data = self.base.model_dump(mode="json")
        data["database"] = str(self.tmp / f"{name}.sqlite")
        data["storage"] = {**data["storage"], "work_root": str(self.work / name)}
        for key, value in overrides.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) else value
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        self.databases.append(self.tmp / f"{name}.sqlite")
        return path, load_config(path)

    def server(self, name: str, **overrides: object) -> tuple[Server, SiteConfig]:
        path, config = self.config(name, **overrides)
        server = Server(path, free_port())
        self.servers.append(server)
        return server.start(), config

    # raw jobs

    def raw_script(self, config: SiteConfig) -> Path:
        """The exact script the daemon would submit for TASK, in a work dir owned by the job user."""
        task_id = str(uuid.uuid4())
        workdir = config.storage.work_root / task_id
        plan = plan_job(Task.model_validate(TASK), task_id=task_id, workdir=str(workdir), config=config,
                        schemes=Schemes(config), owner=OWNER)
        workdir.mkdir(parents=True, mode=0o700)
        script = workdir / "job.sh"
        script.write_text(render(plan.script, config.template_search_path))
        made = [Path(d) for d in plan.directories]  # e.g. the executors' scratch /tmp
        for directory in made:
            directory.mkdir(parents=True, mode=0o700)
        for path in (workdir, script, *made):
            self.chown(path)
        return script

    def sbatch(self, script: Path) -> str:
        prefix = ["runuser", "-u", self.user.pw_name, "--"] if self.user and os.geteuid() == 0 else []
        out = run([*prefix, "sbatch", "--parsable", f"--chdir={script.parent}", str(script)])
        job_id = out.strip().split(";", 1)[0]
        self.raw_jobs.add(job_id)
        return job_id

    def chown(self, path: Path) -> None:
        if self.user and os.geteuid() == 0:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    # this run's jobs in Slurm

    def my_task_ids(self) -> set[str]:
        """This run's task ids and the ids of the packs (shared jobs) that carry any of them."""
        ids: set[str] = set()
        for db in self.databases:
            if db.exists():
                with sqlite3.connect(db, timeout=30) as conn:
                    for task_id, pack_id in conn.execute("SELECT id, pack_id FROM tasks"):
                        ids.update(filter(None, (task_id, pack_id)))
        return ids

    def active_jobs(self) -> tuple[list[str], int]:
        """(this run's jobs Slurm still holds or runs, number of other active jobs of the job user)."""
        user = ["-u", self.user.pw_name] if self.user else ["--me"]
        out = run(["squeue", "-h", *user, "-o", "%i|%k"], check=False)
        tasks = self.my_task_ids()
        mine, foreign = [], 0
        for line in out.splitlines():
            job_id, _, comment = line.partition("|")
            comment = comment.strip()
            if job_id in self.raw_jobs or (task_id_from_comment(comment) or pack_id_from_comment(comment)) in tasks:
                mine.append(job_id)
            else:
                foreign += 1
                self.foreign_seen.add(job_id)
        return mine, foreign

    def drain(self, what: str, timeout: float = 300) -> float:
        """scancel this run's active jobs, wait until Slurm holds none of them; returns seconds."""
        t0 = time.monotonic()
        cancelled: set[str] = set()
        while True:
            mine, foreign = self.active_jobs()
            if not mine:
                break
            todo = [j for j in mine if j not in cancelled]
            for i in range(0, len(todo), 500):
                run(["scancel", *todo[i:i + 500]], check=False)
            cancelled.update(todo)
            elapsed = time.monotonic() - t0
            progress(f"[{what}] cleaning up: {len(mine)} of this run's jobs still active "
                     f"({foreign} other jobs of the job user), {elapsed:.0f}s")
            if elapsed > timeout:
                say(f"[{what}] warning: {len(mine)} jobs still active after {timeout:.0f}s")
                break
            time.sleep(0.5)
        progress.done()
        return time.monotonic() - t0

    def wait_quiet(self, what: str, timeout: float) -> float:
        """Wait (up to `timeout`) until no other job of the job user is active: a 2-CPU node shared
        with someone's `make test` would otherwise measure their jobs, not ours."""
        t0 = time.monotonic()
        while True:
            _, foreign = self.active_jobs()
            elapsed = time.monotonic() - t0
            if not foreign:
                break
            if elapsed > timeout:
                say(f"[{what}] warning: {foreign} job(s) of other submitters still active after "
                    f"{timeout:.0f}s: measuring anyway")
                break
            progress(f"[{what}] waiting for {foreign} active job(s) of other submitters "
                     f"to finish, {elapsed:.0f}s")
            time.sleep(1)
        progress.done()
        return time.monotonic() - t0

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        for server in self.servers:
            server.stop()
        try:
            self.drain("exit", timeout=120)
        except Exception as exc:  # noqa: BLE001 - clean-up goes on
            say(f"warning: could not cancel this run's jobs: {exc}")
        if self.keep:
            say(f"kept: {self.tmp} (configs, databases, server logs) and {self.work}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.work, ignore_errors=True)


# -- phase 1: submission throughput -----------------------------------------------------------

def count_with_job_id(session: requests.Session, url: str) -> tuple[int, int, int]:
    """(tasks, tasks with a Slurm job id, tasks that ended without one) in one BASIC list call."""
    body = session.get(f"{url}{TES}/tasks", params={"view": "BASIC", "page_size": 2047}, timeout=60).json()
    tasks = body["tasks"]
    with_id = failed = 0
    for t in tasks:
        if (t.get("logs") or [{}])[0].get("metadata", {}).get("slurm_job_id"):
            with_id += 1
        elif t["state"] in FINAL_TES:
            failed += 1
    return len(tasks), with_id, failed


def post_tasks(url: str, n: int, clients: int, what: str) -> tuple[list[str], float]:
    """POST n trivial tasks from `clients` keep-alive threads: (their ids, the time the first started)."""
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                resp = session.post(f"{url}{TES}/tasks", json=TASK, timeout=60)
                resp.raise_for_status()
                with lock:
                    ids.append(resp.json()["id"])
            except Exception as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(exc))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.1)
            progress(f"[{what}] POST {len(ids)}/{n}  {time.time() - t0:.1f}s")
    if errors:
        raise RuntimeError(f"{len(errors)} POSTs failed, first: {errors[0]}")
    return ids, t0


def phase_api(run_: Run, n: int, clients: int) -> dict:
    run_.wait_quiet("api", 300)
    server, config = run_.server("api")
    say(f"[api] server {server.url} (pid {server.proc.pid}), database {config.database}")
    _, t0 = post_tasks(server.url, n, clients, "api")
    t_posted = time.time()
    # Submission is in creation order: poll the newest task cheaply, then confirm all in bulk.
    session = requests.Session()
    deadline = time.monotonic() + max(120.0, n * 0.5)
    with_id = failed = 0
    while time.monotonic() < deadline:
        newest = session.get(f"{server.url}{TES}/tasks",
                             params={"view": "BASIC", "page_size": 1}, timeout=30).json()["tasks"][0]
        has_id = (newest.get("logs") or [{}])[0].get("metadata", {}).get("slurm_job_id")
        if has_id or newest["state"] in FINAL_TES:
            total, with_id, failed = count_with_job_id(session, server.url)
            if with_id + failed >= n:
                break
        progress(f"[api] all {n} posted after {t_posted - t0:.1f}s; waiting until every task has a "
                 f"job id (newest task: {'submitted' if has_id else 'not yet'})  {time.time() - t0:.1f}s")
        time.sleep(0.1)
    t_done = time.time()
    progress.done()
    server.stop()
    with sqlite3.connect(config.database) as conn:
        stamps = [iso_epoch(r[0]) for r in conn.execute(
            "SELECT time FROM events WHERE message LIKE 'submitted as %Slurm job %'")]
        first_created = iso_epoch(conn.execute("SELECT min(created_at) FROM tasks").fetchone()[0])
    if with_id < n:
        say(f"[api] warning: only {with_id}/{n} tasks got a job id ({failed} ended without one)")
    result = {
        "n": n, "with_job_id": with_id, "failed": failed, "clients": clients,
        "post_s": t_posted - t0, "total_s": t_done - t0,
        "post_rate": n / (t_posted - t0), "rate": with_id / (t_done - t0),
        "server_s": (max(stamps) - first_created) if stamps else float("nan"),
    }
    result["server_rate"] = len(stamps) / result["server_s"] if stamps else float("nan")
    say(f"[api] {n} POSTs in {result['post_s']:.2f}s ({result['post_rate']:.0f}/s); every task had a "
        f"job id {result['total_s']:.2f}s after the first POST -> {result['rate']:.1f} tasks/s "
        f"(server-side, first create -> last sbatch: {result['server_s']:.2f}s)")
    result["cleanup_s"] = run_.drain("api")
    return result


def phase_raw(run_: Run, n: int) -> dict:
    _, config = run_.config("raw")
    run_.wait_quiet("raw", 300)
    scripts = []
    for i in range(n):
        scripts.append(run_.raw_script(config))
        progress(f"[raw] preparing scripts {i + 1}/{n} (not timed)")
    t0 = time.time()
    for i, script in enumerate(scripts):
        run_.sbatch(script)
        progress(f"[raw] sbatch {i + 1}/{n}  {time.time() - t0:.1f}s")
    elapsed = time.time() - t0
    progress.done()
    result = {"n": n, "total_s": elapsed, "rate": n / elapsed}
    say(f"[raw] {n} x `runuser -u {config.slurm.submit_as} -- sbatch --parsable` in {elapsed:.2f}s "
        f"-> {result['rate']:.1f} jobs/s")
    result["cleanup_s"] = run_.drain("raw")
    return result


# -- phase 1b: a burst run to the end ----------------------------------------------------------

def phase_burst(run_: Run, n: int, clients: int) -> dict:
    """N trivial tasks, POST -> every task COMPLETE, against N raw `sbatch` of the same scripts ->
    every job done: what packing (no length declared) buys a burst, end to end."""
    run_.wait_quiet("burst", 300)
    server, config = run_.server("burst")
    ids, t0 = post_tasks(server.url, n, clients, "burst")
    session = requests.Session()
    states: Counter[str] = Counter()

    def tasks_ended() -> int:
        states.clear()
        states.update(t["state"] for t in session.get(f"{server.url}{TES}/tasks", params={
            "view": "MINIMAL", "page_size": 2047}, timeout=60).json()["tasks"])
        return sum(states[s] for s in FINAL_TES)

    api_s = wait_all("burst: API tasks", n, tasks_ended, t0)
    server.stop()
    if states["COMPLETE"] != n:
        raise RuntimeError(f"[burst] not every task completed: {dict(states)}")
    with sqlite3.connect(config.database) as conn:
        jobs = conn.execute("SELECT count(DISTINCT job_id) FROM tasks").fetchone()[0]
    say(f"[burst] API: {n} tasks COMPLETE {api_s:.1f}s after the first POST, in {jobs} Slurm jobs")
    run_.drain("burst")

    _, raw_config = run_.config("burst-raw")
    run_.wait_quiet("burst-raw", 300)
    scripts = [run_.raw_script(raw_config) for _ in range(n)]
    t0 = time.time()
    job_ids = [run_.sbatch(script) for script in scripts]

    def jobs_ended() -> int:
        out = run(["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", "%T"], check=False)
        return sum(1 for line in out.split() if line in FINAL_SLURM)

    raw_s = wait_all("burst: raw jobs", n, jobs_ended, t0)
    say(f"[burst] raw: {n} jobs done {raw_s:.1f}s after the first sbatch")
    run_.drain("burst-raw")
    return {"n": n, "api_s": api_s, "raw_s": raw_s, "jobs": jobs,
            "max_tasks": config.slurm.packing.max_tasks if config.slurm.packing.enabled else 1}


# -- phase 2: Slurm commands per monitoring cycle -----------------------------------------------

def held_template_dir(run_: Run) -> Path:
    """A site template override: the shipped task.sh.j2 plus `#SBATCH --hold` (jobs stay PENDING)."""
    shipped = next(p / "task.sh.j2" for p in (PACKAGE_DIR / "slurm_templates",
                                              PACKAGE_DIR.parent / "slurm_templates")
                   if (p / "task.sh.j2").is_file())
    first, rest = shipped.read_text().split("\n", 1)
    directory = run_.tmp / "templates-held"
    directory.mkdir(exist_ok=True)
    (directory / "task.sh.j2").write_text(f"{first}\n#SBATCH --hold\n{rest}")
    return directory


def timed_cycle(daemon: Daemon, client: CliSlurmClient) -> tuple[Counter[str], float]:
    before = Counter(client.calls)
    t0 = time.perf_counter()
    daemon.cycle()
    elapsed = time.perf_counter() - t0
    after = Counter(client.calls)
    after.subtract(before)
    return +after, elapsed


def held_overrides(run_: Run) -> dict[str, Any]:
    """Jobs stay PENDING (held) and each task is its own job: packing would put tasks into a
    launcher job the held template does not cover, and that job would run."""
    return {"slurm": {"template_dirs": [str(held_template_dir(run_))], "packing": {"enabled": False}}}


def phase_cycles(run_: Run, n: int) -> dict:
    _, config = run_.config("cycle", **held_overrides(run_))
    store = Store(config.database)
    client = CliSlurmClient(bin_dir=config.slurm.bin_dir, submit_as=config.slurm.submit_as,
                            timeout=config.slurm.command_timeout)
    daemon = Daemon(config, store, client)
    service = TaskService(store, config)
    steps = sorted({min(10, n), n})
    out: dict = {"steps": [], "submit_batch": config.monitor.submit_batch}
    created = 0
    for target in steps:
        while created < target:
            service.create(dict(TASK), OWNER)
            created += 1
            progress(f"[cycle] creating tasks {created}/{target}")
        submit_cycles: list[tuple[Counter[str], float]] = []
        while any(r.job_id is None for r in store.tasks.in_states(["QUEUED"])):
            submit_cycles.append(timed_cycle(daemon, client))
            progress(f"[cycle] submission cycle {len(submit_cycles)} for {target} tasks")
        first = timed_cycle(daemon, client)   # records "Slurm: job pending (JobHeldUser)" once per task
        steady = [timed_cycle(daemon, client) for _ in range(3)]
        progress.done()
        rows = store.tasks.in_states(["QUEUED"])
        snapshot = len(client.queue())
        client.calls["squeue"] -= 1  # that call was ours, not the daemon's
        held = sum(1 for r in rows if r.job_id and any("JobHeldUser" in s for s in r.system_logs))
        step = {
            "active": target, "queued_tasks": len(rows), "held_jobs": held, "squeue_rows": snapshot,
            "submit_cycles": [(dict(c), t) for c, t in submit_cycles],
            "first_monitor": (dict(first[0]), first[1]),
            "steady": dict(steady[-1][0]), "steady_s": median([t for _, t in steady]),
        }
        out["steps"].append(step)
        sub_calls = sum((c for c, _ in submit_cycles), Counter())
        say(f"[cycle] {target} active tasks ({held} jobs held, squeue lists {snapshot} jobs): "
            f"{len(submit_cycles)} submission cycle(s) with {dict(sub_calls)} in "
            f"{sum(t for _, t in submit_cycles):.2f}s; first monitoring cycle {dict(first[0])} in "
            f"{first[1] * 1000:.0f} ms; steady monitoring cycle {step['steady']} in "
            f"{step['steady_s'] * 1000:.0f} ms")
    # Cancel all N through the TES service: how many scancel calls does the daemon need?
    for row in store.tasks.in_states(["QUEUED"]):
        service.cancel(row.id, OWNER)
    cancel_cycles = []
    t0 = time.monotonic()
    while store.tasks.in_states(["CANCELING"]) and time.monotonic() - t0 < 120:
        cancel_cycles.append(timed_cycle(daemon, client))
        progress(f"[cycle] cancel cycle {len(cancel_cycles)}")
        time.sleep(0.2)
    progress.done()
    canceled = len(store.tasks.in_states(["CANCELED"]))
    out["cancel_cycles"] = [(dict(c), t) for c, t in cancel_cycles]
    out["canceled"] = canceled
    say(f"[cycle] cancelled {created} tasks via the TES service: " + "; ".join(
        f"cycle {i + 1}: {dict(c)} in {t * 1000:.0f} ms" for i, (c, t) in enumerate(cancel_cycles))
        + f" -> {canceled} CANCELED")
    store.close()
    out["cleanup_s"] = run_.drain("cycle")
    return out


# -- phase 3: latency ---------------------------------------------------------------------------

def record_end(workdir: Path) -> float | None:
    try:
        rec = parse_record((workdir / "record.jsonl").read_text())
    except OSError:
        return None
    return iso_epoch(rec.end_time) if rec.end_time else None


def wait_until(check: Callable[[], str | None], timeout: float, label: str) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        state = check()
        if state is not None:
            return state
        progress(f"[latency] {label}  {time.monotonic() - t0:.1f}s")
        time.sleep(0.1)
    raise RuntimeError(f"{label}: not finished after {timeout:.0f}s")


def phase_latency(run_: Run, runs: int) -> dict:
    server, config = run_.server("latency")
    _, raw_config = run_.config("latency-raw")
    session = requests.Session()
    api, raw, api_lag, raw_lag = [], [], [], []
    for i in range(runs):
        run_.wait_quiet("latency", 120)
        # API: POST -> COMPLETE
        t0 = time.time()
        task_id = session.post(f"{server.url}{TES}/tasks", json=TASK, timeout=30).json()["id"]

        def api_state(task_id: str = task_id) -> str | None:
            state = session.get(f"{server.url}{TES}/tasks/{task_id}", params={"view": "MINIMAL"},
                                timeout=30).json()["state"]
            return state if state in FINAL_TES else None

        state = wait_until(api_state, 300, f"run {i + 1}/{runs}: API task {task_id[:8]}")
        t1 = time.time()
        if state != "COMPLETE":
            raise RuntimeError(f"API task {task_id} ended {state}")
        api.append(t1 - t0)
        end = record_end(config.storage.work_root / task_id)
        if end:
            api_lag.append(t1 - end)
        # raw: sbatch -> COMPLETED
        script = run_.raw_script(raw_config)
        run_.wait_quiet("latency", 120)
        t0 = time.time()
        job_id = run_.sbatch(script)

        def raw_state(job_id: str = job_id) -> str | None:
            state = run(["squeue", "-h", "-j", job_id, "--states=all", "-o", "%T"], check=False).strip()
            return state if state in FINAL_SLURM else None

        state = wait_until(raw_state, 300, f"run {i + 1}/{runs}: raw job {job_id}")
        t1 = time.time()
        if state != "COMPLETED":
            raise RuntimeError(f"raw job {job_id} ended {state}")
        raw.append(t1 - t0)
        end = record_end(script.parent)
        if end:
            raw_lag.append(t1 - end)
        progress.done()
        say(f"[latency] run {i + 1}/{runs}: API {api[-1]:.2f}s (seen {api_lag[-1] if api_lag else 0:.2f}s "
            f"after the job's end), raw {raw[-1]:.2f}s (seen {raw_lag[-1] if raw_lag else 0:.2f}s after)")
    server.stop()
    result = {"runs": runs, "api": api, "raw": raw, "api_lag": api_lag, "raw_lag": raw_lag,
              "min_interval": config.monitor.min_interval, "idle_interval": config.monitor.idle_interval}
    result["cleanup_s"] = run_.drain("latency")
    return result


# -- report -------------------------------------------------------------------------------------

def fmt_calls(calls: dict, names: Iterable[str] = ("squeue", "sbatch", "scancel")) -> str:
    return "  ".join(f"{name} {calls.get(name, 0)}" for name in names)


def report(env: dict, api: dict | None, raw: dict | None, cyc: dict | None, lat: dict | None,
           burst: dict | None) -> None:
    line = "=" * 96
    print(line)
    print(f"hpc-bridge TES submission benchmark  ({env['when']}, {env['slurm']}, {env['cpus']} CPUs, "
          f"N={env['n']}, run time {env['elapsed']:.0f}s)")
    print(line)
    if api or raw:
        print("1. Submission throughput (first submission -> every job has a Slurm job id)")
        print(f"   {'path':<44}{'tasks':>7}{'seconds':>10}{'tasks/s':>10}")
        if api:
            print(f"   {'API: POST /tasks -> daemon sbatch':<44}{api['with_job_id']:>7}"
                  f"{api['total_s']:>10.2f}{api['rate']:>10.1f}")
            print(f"   {'  of which POSTs alone (' + str(api['clients']) + ' client threads)':<44}"
                  f"{api['n']:>7}{api['post_s']:>10.2f}{api['post_rate']:>10.1f}")
            print(f"   {'  server-side: first create -> last sbatch':<44}{api['with_job_id']:>7}"
                  f"{api['server_s']:>10.2f}{api['server_rate']:>10.1f}")
        if cyc:  # the daemon's own submission work, without HTTP or waits between cycles
            cycles = cyc["steps"][-1]["submit_cycles"]
            jobs = sum(c.get("sbatch", 0) for c, _ in cycles)
            secs = sum(t for _, t in cycles)
            if jobs:
                print(f"   {'  daemon alone: sbatch cycles of phase 2':<44}{jobs:>7}{secs:>10.2f}"
                      f"{jobs / secs:>10.1f}")
        if raw:
            print(f"   {'raw: runuser -u hpcb -- sbatch --parsable':<44}{raw['n']:>7}"
                  f"{raw['total_s']:>10.2f}{raw['rate']:>10.1f}")
        if api and raw:
            print(f"   ratio API / raw: {api['rate'] / raw['rate']:.2f}")
        print()
    if burst:
        print(f"1b. A burst of {burst['n']} trivial tasks (no time limit declared) run to the end")
        print(f"   {'path':<44}{'seconds':>10}{'Slurm jobs':>12}")
        print(f"   {'API: first POST -> every task COMPLETE':<44}{burst['api_s']:>10.1f}{burst['jobs']:>12}")
        print(f"   {'raw: first sbatch -> every job done':<44}{burst['raw_s']:>10.1f}{burst['n']:>12}")
        print(f"   ratio raw / API: {burst['raw_s'] / burst['api_s']:.2f}x faster through hpc-bridge "
              f"(slurm.packing.max_tasks={burst['max_tasks']})")
        print()
    if cyc:
        print("2. Slurm commands per daemon cycle (in-process Daemon, CliSlurmClient.calls diff)")
        print("   jobs are real but held (site template override adds '#SBATCH --hold'): tasks stay QUEUED")
        print(f"   {'active tasks':<14}{'squeue rows':>12}   {'monitoring cycle (steady)':<34}{'ms':>8}"
              f"   {'first monitoring cycle':<34}{'ms':>8}")
        for s in cyc["steps"]:
            first_calls, first_s = s["first_monitor"]
            print(f"   {s['active']:<14}{s['squeue_rows']:>12}   {fmt_calls(s['steady']):<34}"
                  f"{s['steady_s'] * 1000:>8.0f}   {fmt_calls(first_calls):<34}{first_s * 1000:>8.0f}")
        print(f"   submission cycles (submit_batch={cyc['submit_batch']}):")
        for s in cyc["steps"]:
            for i, (calls, t) in enumerate(s["submit_cycles"]):
                print(f"     -> {s['active']:>5} active, cycle {i + 1}: {fmt_calls(calls):<34}{t * 1000:>8.0f} ms")
        for i, (calls, t) in enumerate(cyc["cancel_cycles"]):
            print(f"   cancel of {cyc['steps'][-1]['active']} tasks, cycle {i + 1}: {fmt_calls(calls):<34}"
                  f"{t * 1000:>8.0f} ms")
        print()
    if lat:
        ma, mr = median(lat["api"]), median(lat["raw"])
        target = mr + 1.0 + lat["min_interval"]
        print(f"3. Latency of one trivial task ({lat['runs']} runs each, interleaved; poll every 0.1 s)")
        print(f"   {'path':<44}{'median':>9}{'min':>9}{'max':>9}   {'seen after job end (median)':>27}")
        print(f"   {'API: POST -> state COMPLETE':<44}{ma:>8.2f}s{min(lat['api']):>8.2f}s"
              f"{max(lat['api']):>8.2f}s   {median(lat['api_lag']):>26.2f}s")
        print(f"   {'raw: sbatch -> squeue COMPLETED':<44}{mr:>8.2f}s{min(lat['raw']):>8.2f}s"
              f"{max(lat['raw']):>8.2f}s   {median(lat['raw_lag']):>26.2f}s")
        print(f"   monitor.min_interval = {lat['min_interval']:g}s  (idle_interval = {lat['idle_interval']:g}s)")
        print(f"   API - raw (medians) = {ma - mr:+.2f}s; target API <= raw + 1 s + min_interval = "
              f"{target:.2f}s: {'met' if ma <= target else 'NOT met'}")
        print()
    print_footer(env, line)


def print_footer(env: dict, line: str) -> None:
    """Last lines of a report: a warning when other submitters' jobs may have disturbed it."""
    if env["foreign"]:
        print(f"note: {env['foreign']} job(s) of other submitters were active during the run "
              "(figures may be disturbed)")
    print(line)


def slurm_up() -> bool:
    """Whether the controller answers; if not, says how to start the dev cluster."""
    if run(["scontrol", "ping"], check=False).find("UP") >= 0:
        return True
    print("Slurm controller not reachable: start the dev cluster with `dev/cluster up`", file=sys.stderr)
    return False


def check_job_user(parser: argparse.ArgumentParser, base: SiteConfig) -> None:
    """Only root or the job user itself can submit as the config's job user."""
    if base.slurm.submit_as and os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != base.slurm.submit_as:
        parser.error(f"run as root or as {base.slurm.submit_as} (the config's slurm.submit_as)")


def interrupt_on_signals() -> None:
    """SIGTERM and SIGINT (even if started with SIGINT ignored) raise KeyboardInterrupt, so that a
    run's clean-up (stop servers, cancel its jobs, remove its files) runs on either."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_all(what: str, n: int, ended: Callable[[], int], t0: float) -> float:
    """Poll `ended()` every 0.2 s until it reaches n; seconds since t0."""
    while (done := ended()) < n:
        progress(f"[{what}] {done}/{n} ended  {time.time() - t0:.1f}s")
        time.sleep(0.2)
    progress.done()
    return time.time() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="tasks per throughput/cycle phase (default 500)")
    parser.add_argument("--latency-runs", type=int, default=5, help="latency runs per path (default 5)")
    parser.add_argument("--burst", type=int, default=100, help="tasks in the burst phase (default 100)")
    parser.add_argument("--clients", type=int, default=4, help="HTTP client threads for the POSTs (default 4)")
    parser.add_argument("--config", type=Path, default=ROOT / "site_config" / "dev.yaml",
                        help="base site config (default site_config/dev.yaml)")
    parser.add_argument("--phases", default="api,raw,burst,cycle,latency",
                        help="comma-separated subset of api,raw,burst,cycle,latency (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep temp configs, databases, logs, work dirs")
    args = parser.parse_args()
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if unknown := phases - {"api", "raw", "burst", "cycle", "latency"}:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.n < 1 or args.n > 2047:
        parser.error("--n must be between 1 and 2047 (one list page checks all tasks)")

    base = load_config(args.config)
    check_job_user(parser, base)
    if not slurm_up():
        return 1
    run_ = Run(base, args.keep)
    interrupt_on_signals()
    t_start = time.time()
    api = raw = cyc = lat = burst = None
    try:
        say(f"benchmark run {run_.id}: N={args.n}, temp {run_.tmp}, work {run_.work}")
        mine, foreign = run_.active_jobs()
        if foreign:
            say(f"note: {foreign} active job(s) of other submitters are in the queue")
        if "api" in phases:
            api = phase_api(run_, args.n, args.clients)
        if "raw" in phases:
            raw = phase_raw(run_, args.n)
        if "burst" in phases:
            burst = phase_burst(run_, args.burst, args.clients)
        if "cycle" in phases:
            cyc = phase_cycles(run_, args.n)
        if "latency" in phases:
            lat = phase_latency(run_, args.latency_runs)
    except KeyboardInterrupt:
        progress.done()
        say("interrupted: stopping the server and cancelling this run's jobs")
        run_.cleanup()
        return 130
    finally:
        run_.cleanup()
    env = {"when": datetime.now().strftime("%Y-%m-%d %H:%M"), "n": args.n, "cpus": os.cpu_count(),
           "slurm": run(["sinfo", "--version"], check=False).strip(), "elapsed": time.time() - t_start,
           "foreign": len(run_.foreign_seen)}
    report(env, api, raw, cyc, lat, burst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
