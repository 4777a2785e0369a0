#!/usr/bin/env python3
"""Benchmark: scale figures of the API and the daemon (many stored tasks, many active tasks).

    .venv/bin/python bench/scale.py [--tasks 100000] [--active 10000] [--samples 1000]

Run as root on the dev machine (`dev/cluster up`), from anywhere. Three phases, then a summary
table on stdout (progress goes to stderr):

1. API latency with N stored tasks. A fresh SQLite database (own copy of the site config, temp
   dir) is filled with N tasks through the store layer in one transaction: the rows and `events`
   TaskService.create and the daemon would have written for a trivial busybox task with a name and
   tags, most of them ended (COMPLETE, some EXECUTOR_ERROR / SYSTEM_ERROR / CANCELED), 1 % QUEUED
   with their retry deferred (`next_attempt_at` far ahead, as after an unreachable Slurm): the daemon
   lists and checks them every cycle but submits none. Then a real `hpc-bridge serve` (API + daemon)
   on that database answers GET /tasks/{id}, list pages of 256 (first and following, MINIMAL and
   BASIC) and a few POSTs over one keep-alive session; p50/p99 per endpoint. The POSTed tasks do
   reach Slurm, as held jobs (the `#SBATCH --hold` template override of tes_submit.py), and are
   cancelled through the API right after.
2. SQLite file size: the database after the fill, WAL checkpointed, per 100k tasks.
3. Daemon cycle time and RSS with M active tasks: `Daemon(config, Store, CliSlurmClient)` in this
   process submits M tasks as real held jobs (PENDING, JobHeldUser: nothing runs), then steady
   monitoring cycles are timed, and this process's RSS is read before the daemon exists and after
   its cycles. M is capped to what Slurm's MaxJobCount leaves room for.

Only jobs this run submitted are cancelled (by job id, found by the task id in their comment), never
`scancel -u`; Ctrl-C or SIGTERM stops the server and the daemon, cancels this run's jobs and removes
its temporary files. The machinery (Run, Server, progress, the held template) is tes_submit.py's.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import resource
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from tes_submit import (  # noqa: E402 - found through sys.path above
    FINAL_TES,
    OWNER,
    ROOT,
    TES,
    Run,
    Server,
    check_job_user,
    free_port,
    held_overrides,
    interrupt_on_signals,
    median,
    print_footer,
    progress,
    run,
    say,
    slurm_up,
    timed_cycle,
)

from hpc_bridge.config import SiteConfig, load_config  # noqa: E402
from hpc_bridge.daemon import Daemon  # noqa: E402
from hpc_bridge.lifecycle import ACTIVE  # noqa: E402
from hpc_bridge.slurm.client import CliSlurmClient  # noqa: E402
from hpc_bridge.store import Store  # noqa: E402
from hpc_bridge.store.tasks import iso  # noqa: E402
from hpc_bridge.tes.models import Task  # noqa: E402
from hpc_bridge.tes.service import SERVER_FIELDS  # noqa: E402

PAGE = 256
# The ended tasks' mix; ACTIVE_SHARE of all stored tasks are QUEUED with a deferred retry.
ENDED_MIX = {"COMPLETE": 0.90, "EXECUTOR_ERROR": 0.05, "SYSTEM_ERROR": 0.02, "CANCELED": 0.02}
ACTIVE_SHARE = 0.01
SPAN_DAYS = 30  # stored tasks were created over the last month
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC).timestamp()  # a retry time the daemon never reaches
FAKE_JOB_BASE = 90_000_000  # job ids of ended tasks: far above the dev cluster's real ones
CHUNK = 5000  # rows per insert_all call (all in one transaction)
JOB_MARGIN = 500  # jobs left free under MaxJobCount for other submitters
PURGE_WAIT_S = 420.0  # longer than the dev cluster's MinJobAge (300 s)
STEADY_CYCLES = 5
STALL_S = 120.0  # submission without a new job id for this long: stop and measure what there is
PROJECTS = ("rnaseq", "variants", "qc", "assembly", "imaging")
Rows = tuple[dict[str, Any], list[dict[str, Any]]]  # a task row and its events


# -- rows as the service writes them ------------------------------------------------------------

def task_body(i: int, name: str = "scale") -> dict[str, Any]:
    """What a client POSTs: a trivial busybox task with a name and tags (also the POSTs' body)."""
    return {"name": f"{name}-{i:06d}",
            "executors": [{"image": "busybox", "command": ["sh", "-c", f"echo task {i}"]}],
            "resources": {"cpu_cores": 1, "ram_gb": 0.5},
            "tags": {"project": PROJECTS[i % len(PROJECTS)], "sample": f"s{i:06d}"}}


def stamp(epoch: float) -> str:
    return iso(datetime.fromtimestamp(epoch, UTC))


class Filler:
    """Task rows and their `events` as TaskService.create and the daemon leave them, for a bulk insert.

    Every body goes through the Task model and the same dump as TaskService.create, so the stored
    document is byte for byte what a POST would store."""

    def __init__(self, config: SiteConfig, seed: int) -> None:
        self.work_root = config.storage.work_root
        self.retention_h = config.storage.work_retention_hours
        self.rng = random.Random(seed)
        self.states = list(ENDED_MIX)
        self.weights = list(ENDED_MIX.values())

    def document(self, i: int) -> dict[str, Any]:
        return Task.model_validate(task_body(i)).model_dump(mode="json", exclude_none=True,
                                                            exclude=set(SERVER_FIELDS))

    def rows(self, i: int, created: float, state: str, *, deferred: bool) -> Rows:
        """One task row and its events. `state` QUEUED: not submitted yet (deferred: retry far ahead)."""
        doc = self.document(i)
        task_id = str(uuid.uuid4())  # never a seeded one: Slurm may still list an earlier run's job by it
        row: dict[str, Any] = {
            "id": task_id, "owner": OWNER, "name": doc["name"], "state": state,
            "created_at": stamp(created), "updated_at": stamp(created), "task": json.dumps(doc),
            "tags": json.dumps(doc["tags"]), "cancel_requested": 0, "submit_attempts": 0,
            "next_attempt_at": FAR_FUTURE if deferred else 0.0, "executor_logs": "[]",
            "system_logs": "[]", "streams": "[]", "outputs": "[]",
        }
        events = [{"task_id": task_id, "time": stamp(created), "state": "QUEUED", "message": "created"}]
        if state == "QUEUED":
            return row, events
        job_id = str(FAKE_JOB_BASE + i)
        workdir = self.work_root / task_id
        submitted = created + self.rng.uniform(0.02, 1.0)
        start = submitted + self.rng.uniform(0.3, 5.0)
        end = start + self.rng.uniform(0.2, 120.0)
        logs: list[str] = []
        executor_logs: list[dict[str, Any]] = []
        if state in ("COMPLETE", "EXECUTOR_ERROR"):
            failed = state == "EXECUTOR_ERROR"
            executor_logs = [{"exit_code": 1 if failed else 0, "start_time": stamp(start + 0.01),
                              "end_time": stamp(end - 0.01), "stdout": "" if failed else f"task {i}\n",
                              "stderr": "sh: error: input not found\n" if failed else ""}]
            if failed:
                logs.append("executor 0 exited with code 1")
        elif state == "SYSTEM_ERROR":
            logs.append("Slurm job left the queue before the task finished")
        events.append({"task_id": task_id, "time": stamp(submitted), "state": "QUEUED",
                       "message": f"submitted as Slurm job {job_id}"})
        if state == "CANCELED":
            events.append({"task_id": task_id, "time": stamp(start), "state": "CANCELING",
                           "message": "cancel requested"})
            row["cancel_requested"] = 1
        else:
            events.append({"task_id": task_id, "time": stamp(start), "state": "RUNNING", "message": None})
        events.append({"task_id": task_id, "time": stamp(end), "state": state, "message": logs[0] if logs else None})
        row.update({
            "job_id": job_id, "workdir": str(workdir), "submit_attempts": 1,
            "start_time": stamp(start) if state != "CANCELED" else None, "end_time": stamp(end),
            "updated_at": stamp(end), "executor_logs": json.dumps(executor_logs),
            "streams": json.dumps([{"stdout": f"{workdir}/executor-0.stdout",
                                    "stderr": f"{workdir}/executor-0.stderr"}]),
        })
        if self.retention_h is not None and end + self.retention_h * 3600 < time.time():
            # The janitor removed its work area long ago: nothing for the server's janitor to do.
            logs.append(f"work area removed {self.retention_h:g} h after the task ended")
            row["cleaned_at"] = stamp(end + self.retention_h * 3600)
            row["updated_at"] = row["cleaned_at"]
        row["system_logs"] = json.dumps(logs)
        return row, events

    def stored(self, n: int) -> Iterator[Rows]:
        """N tasks created over the last SPAN_DAYS in order: ended ones in the mix, ACTIVE_SHARE deferred."""
        now = time.time()
        span = SPAN_DAYS * 86400.0
        for i in range(n):
            created = now - span + span * i / n
            if self.rng.random() < ACTIVE_SHARE:
                yield self.rows(i, created, "QUEUED", deferred=True)
            else:
                yield self.rows(i, created, self.rng.choices(self.states, self.weights)[0], deferred=False)

    def queued(self, n: int) -> Iterator[Rows]:
        """N tasks just POSTed: QUEUED, due for submission."""
        now = time.time()
        for i in range(n):
            yield self.rows(i, now - 1.0 + i * 1e-5, "QUEUED", deferred=False)


def fill(store: Store, rows: Iterator[Rows], n: int,
         label: str) -> tuple[Counter[str], float]:
    """Insert through the store's own connection (sqlite-utils, one BEGIN IMMEDIATE transaction):
    N POSTs would cost N fsyncs and hours. Returns (states, seconds)."""
    states: Counter[str] = Counter()
    t0 = time.monotonic()
    with store.transaction() as db:
        tasks, events = db.table("tasks"), db.table("events")
        done = 0
        while done < n:
            task_rows: list[dict[str, Any]] = []
            event_rows: list[dict[str, Any]] = []
            for row, evs in (next(rows) for _ in range(min(CHUNK, n - done))):
                task_rows.append(row)
                event_rows.extend(evs)
                states[row["state"]] += 1
            tasks.insert_all(task_rows, batch_size=1000)
            events.insert_all(event_rows, batch_size=2000)
            done += len(task_rows)
            elapsed = time.monotonic() - t0
            progress(f"[{label}] storing tasks {done}/{n}  ({done / elapsed:.0f}/s)")
    elapsed = time.monotonic() - t0
    progress.done()
    say(f"[{label}] stored {n} tasks in one transaction in {elapsed:.1f}s ({n / elapsed:.0f}/s): "
        + ", ".join(f"{s} {c}" for s, c in states.most_common()))
    return states, elapsed


# -- measuring ---------------------------------------------------------------------------------

def percentile(values: list[float], pct: float) -> float:
    """Nearest rank: the smallest sample with pct % of them at or below it (p99 of 50 is the max)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS (current) and VmHWM (peak) of a process, in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def reset_peak() -> bool:
    """Reset this process's VmHWM (Linux: `5` into clear_refs), so the peak read later is the
    daemon's, not the fill's or an earlier phase's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def db_size(store: Store, n: int) -> dict[str, Any]:
    """File size after a full checkpoint (the -wal emptied into the file), split by dbstat."""
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = store.path
    wal = Path(f"{path}-wal")
    total = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    parts: Counter[str] = Counter()
    try:
        owner = {name: table for name, table in store.db.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')")}
        indexes = {name for (name,) in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        for name, size in store.db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            if table.startswith("sqlite_autoindex"):
                table = owner.get(table, table)
            parts[f"{table} indexes" if name in indexes or name.startswith("sqlite_autoindex") else table] += size
    except sqlite3.OperationalError:  # SQLite built without dbstat
        parts.clear()
    return {"n": n, "bytes": total, "per_100k": total * 100_000 / n, "parts": dict(parts)}


# -- phase 1 and 2: API latency and file size with N stored tasks ---------------------------------

class Sampler:
    """Timed requests over one keep-alive session; every answer is checked, so errors fail the run."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.times: dict[str, list[float]] = {}

    def call(self, label: str | None, method: str, path: str, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        resp = self.session.request(method, f"{self.url}{TES}{path}", timeout=60, **kwargs)
        elapsed = time.perf_counter() - t0
        if resp.status_code != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        if label is not None:
            self.times.setdefault(label, []).append(elapsed)
        return resp.json()


def sample_ids(path: Path, k: int) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM tasks ORDER BY random() LIMIT ?", [k])]


def phase_api(run_: Run, n: int, samples: int, posts: int, phases: set[str]) -> tuple[dict | None, dict]:
    config_path, config = run_.config("api", **held_overrides(run_))
    store = Store(config.database)
    states, fill_s = fill(store, Filler(config, seed=n).stored(n), n, "fill")
    size = db_size(store, n)
    size["fill_s"] = fill_s
    store.close()
    say(f"[size] {size['bytes'] / 1e6:.1f} MB for {n} tasks -> {size['per_100k'] / 1e6:.1f} MB per 100k")
    if "api" not in phases:
        return None, size
    server = Server(config_path, free_port())
    run_.servers.append(server)
    server.start()
    assert server.proc is not None
    say(f"[api] hpc-bridge serve on {server.url} (pid {server.proc.pid}), {n} stored tasks")
    api = Sampler(server.url)
    ids = sample_ids(config.database, samples)
    minimal, basic = {"view": "MINIMAL"}, {"view": "BASIC"}
    for task_id in ids[:20]:  # warm-up: connections, caches, first imports; not counted
        api.call(None, "GET", f"/tasks/{task_id}", params=basic)
        api.call(None, "GET", "/tasks", params={"page_size": PAGE, **basic})
    # Every page once, MINIMAL, following next_page_token: the tokens of the sampled pages below.
    tokens: list[str] = []
    params: dict[str, Any] = {"page_size": PAGE, **minimal}
    seen = 0
    t0 = time.monotonic()
    while True:
        body = api.call("walk", "GET", "/tasks", params=params)
        seen += len(body["tasks"])
        if not (token := body.get("next_page_token")):
            break
        tokens.append(token)
        params = {"page_size": PAGE, "page_token": token, **minimal}
        progress(f"[api] walking all pages: {seen}/{n} tasks")
    walk_s = time.monotonic() - t0
    progress.done()
    if seen != n:
        raise RuntimeError(f"walking the list gave {seen} tasks, not {n}")
    say(f"[api] walked all {len(tokens) + 1} pages of {PAGE} (MINIMAL) in {walk_s:.1f}s")
    rng = random.Random(samples)
    for i in range(samples):  # interleaved, so a slow spell of the machine hits every endpoint alike
        api.call("get_minimal", "GET", f"/tasks/{ids[i % len(ids)]}", params=minimal)
        api.call("get_basic", "GET", f"/tasks/{ids[-1 - i % len(ids)]}", params=basic)
        for view, name in ((minimal, "minimal"), (basic, "basic")):
            first = api.call(f"list_first_{name}", "GET", "/tasks", params={"page_size": PAGE, **view})
            page = api.call(f"list_next_{name}", "GET", "/tasks",
                            params={"page_size": PAGE, "page_token": rng.choice(tokens), **view})
            if len(first["tasks"]) != PAGE or not page["tasks"]:
                raise RuntimeError(f"list: {len(first['tasks'])} tasks on the first page, {len(page['tasks'])} next")
        progress(f"[api] sample {i + 1}/{samples}")
    progress.done()
    posted: list[str] = []
    for i in range(posts):  # last: these tasks make the server's daemon submit (held) jobs
        posted.append(api.call("post", "POST", "/tasks", json=task_body(i, "scale-post"))["id"])
        progress(f"[api] POST {i + 1}/{posts}")
    progress.done()
    memory = proc_memory(server.proc.pid)
    # Cancel the POSTed tasks by id through the API; the daemon scancels their held jobs.
    time.sleep(1.0)  # let the daemon submit them first, so the cancel is a real scancel
    for task_id in posted:
        api.call(None, "POST", f"/tasks/{task_id}:cancel", json={})
    deadline = time.monotonic() + 120
    left = list(posted)
    while left and time.monotonic() < deadline:
        left = [t for t in left if api.call(None, "GET", f"/tasks/{t}", params=minimal)["state"] not in FINAL_TES]
        progress(f"[api] cancelling the {posts} POSTed tasks: {len(left)} not ended yet")
        time.sleep(0.5)
    progress.done()
    if left:
        say(f"[api] warning: {len(left)} POSTed tasks not ended 120 s after their cancel")
    server.stop()
    result = {"n": n, "samples": samples, "posts": posts, "states": dict(states), "times": api.times,
              "walk_s": walk_s, "pages": len(tokens) + 1, "server_memory": memory}
    for label, values in api.times.items():
        say(f"[api] {label}: p50 {percentile(values, 50) * 1000:.1f} ms, p99 {percentile(values, 99) * 1000:.1f} ms")
    result["cleanup_s"] = run_.drain("api")
    return result, size


# -- phase 3: daemon cycle and RSS with M active tasks -------------------------------------------

def slurm_room() -> tuple[int | None, int, int]:
    """(MaxJobCount, jobs the controller holds now, of which ended ones it keeps for MinJobAge):
    every user's jobs count against MaxJobCount, ended ones until they are purged."""
    found = re.search(r"^MaxJobCount\s*=\s*(\d+)", run(["scontrol", "show", "config"]), re.MULTILINE)
    known = len(run(["squeue", "-h", "--states=all", "-o", "%i"], check=False).split())
    active = len(run(["squeue", "-h", "-o", "%i"], check=False).split())
    return (int(found[1]) if found else None), known, max(0, known - active)


def room_for(wanted: int) -> tuple[int, str | None]:
    """How many held jobs fit under MaxJobCount with JOB_MARGIN left free, and a note if fewer than
    `wanted`. Ended jobs (e.g. a previous run's, cancelled) are purged after MinJobAge: while they
    keep out more than a tenth of what would fit, wait for them (up to PURGE_WAIT_S)."""
    t0 = time.monotonic()
    while True:
        max_jobs, known, ended = slurm_room()
        if max_jobs is None:
            return wanted, None
        room = max(0, max_jobs - known - JOB_MARGIN)
        later = max(0, max_jobs - (known - ended) - JOB_MARGIN)
        if room >= 0.9 * min(wanted, later) or time.monotonic() - t0 > PURGE_WAIT_S:
            break
        progress(f"[cycle] waiting for Slurm to purge {ended} ended jobs (MinJobAge) to make room under "
                 f"MaxJobCount {max_jobs}: room for {room} of {min(wanted, later)}, {time.monotonic() - t0:.0f}s")
        time.sleep(5)
    progress.done()
    if room >= wanted:
        return wanted, None
    return room, (f"Slurm's MaxJobCount is {max_jobs} and the controller holds {known} jobs now (every user's, "
                  f"{ended} of them ended, kept for MinJobAge): --active {wanted} capped to {room}, "
                  f"leaving {JOB_MARGIN} free")


class ScaleRun(Run):
    """Run plus the in-process daemons, stopped (their sbatch pool drained) before any clean-up."""

    def __init__(self, base: SiteConfig, keep: bool) -> None:
        super().__init__(base, keep)
        self.daemons: list[Daemon] = []

    def stop_daemons(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
            # An interrupted cycle may have sbatch calls queued in the pool: cancel them and wait for
            # those in flight, so that no job of this run appears after the clean-up looked.
            daemon._ctx.pool.shutdown(wait=True, cancel_futures=True)
        self.daemons.clear()

    def cleanup(self) -> None:
        self.stop_daemons()
        super().cleanup()


def unsubmitted(store: Store) -> int:
    return int(store.db.execute("SELECT count(*) FROM tasks WHERE state = 'QUEUED' AND job_id IS NULL")
               .fetchone()[0])


def phase_cycle(run_: ScaleRun, wanted: int) -> dict:
    m, note = room_for(wanted)
    if note:
        say(f"[cycle] NOTE: {note}")
    if m < 1:
        raise RuntimeError(f"no room in Slurm for held jobs: {note}")
    _, config = run_.config("cycle", **held_overrides(run_))
    store = Store(config.database)
    fill(store, Filler(config, seed=m).queued(m), m, "cycle")
    gc.collect()
    baseline = proc_memory()
    peak_reset = reset_peak()
    client = CliSlurmClient(bin_dir=config.slurm.bin_dir, submit_as=config.slurm.submit_as,
                            timeout=config.slurm.command_timeout)
    daemon = Daemon(config, store, client)
    run_.daemons.append(daemon)
    # Submission: as many cycles as it takes (monitor.submit_batch sbatch each).
    submit_cycles: list[tuple[Counter[str], float]] = []
    t0 = time.monotonic()
    last_progress, last_left = t0, m
    while (left := unsubmitted(store)) > 0:
        if left < last_left:
            last_progress, last_left = time.monotonic(), left
        elif time.monotonic() - last_progress > STALL_S:
            say(f"[cycle] warning: no new Slurm job for {STALL_S:.0f}s, {left} tasks unsubmitted: "
                "measuring the jobs there are")
            break
        submit_cycles.append(timed_cycle(daemon, client))
        done, elapsed = m - unsubmitted(store), time.monotonic() - t0
        rate = done / elapsed if elapsed else 0.0
        eta = f", about {(m - done) / rate:.0f}s to go" if rate else ""
        progress(f"[cycle] submitting held jobs: {done}/{m} in {elapsed:.0f}s ({rate:.1f}/s{eta})",
                 force=len(submit_cycles) % 10 == 0)
    submit_s = max(time.monotonic() - t0, 1e-6)
    progress.done()
    submitted = int(store.db.execute("SELECT count(*) FROM tasks WHERE job_id IS NOT NULL").fetchone()[0])
    say(f"[cycle] {submitted} held jobs submitted in {submit_s:.1f}s ({len(submit_cycles)} cycles, "
        f"{submitted / submit_s:.1f} jobs/s)")
    first = timed_cycle(daemon, client)
    steady = []
    for i in range(STEADY_CYCLES):
        steady.append(timed_cycle(daemon, client))
        progress(f"[cycle] steady cycle {i + 1}/{STEADY_CYCLES}: {steady[-1][1] * 1000:.0f} ms")
    progress.done()
    after = proc_memory()
    usage_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Where a steady cycle's time goes: the one squeue, and reading the active rows.
    t1 = time.perf_counter()
    squeue_rows = len(client.queue())
    squeue_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    active_rows = len(store.tasks.in_states(ACTIVE))
    load_s = time.perf_counter() - t1
    held = int(store.db.execute("SELECT count(*) FROM tasks WHERE state = 'QUEUED' AND job_id IS NOT NULL "
                                "AND system_logs LIKE '%JobHeldUser%'").fetchone()[0])
    states = Counter(dict(store.db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()))
    # A restarted daemon on the same store: its first cycle, with nothing cached.
    restarted = Daemon(config, store, client)
    run_.daemons.append(restarted)
    restart = timed_cycle(restarted, client)
    run_.stop_daemons()
    store.close()
    result = {
        "wanted": wanted, "m": m, "note": note, "submitted": submitted, "held": held,
        "states": dict(states), "submit_s": submit_s, "submit_cycles": len(submit_cycles),
        "submit_batch": config.monitor.submit_batch, "parallelism": config.monitor.submit_parallelism,
        "first": first, "steady": steady, "steady_s": median([t for _, t in steady]), "restart": restart,
        "squeue_s": squeue_s, "squeue_rows": squeue_rows, "load_s": load_s, "active_rows": active_rows,
        "baseline": baseline["VmRSS"], "current": after["VmRSS"],
        "peak": after["VmHWM"] if peak_reset else usage_peak, "peak_reset": peak_reset,
    }
    say(f"[cycle] {m} active: first cycle {first[1] * 1000:.0f} ms, steady {result['steady_s'] * 1000:.0f} ms, "
        f"restarted daemon's first {restart[1] * 1000:.0f} ms; RSS {baseline['VmRSS']:.0f} MiB before the "
        f"daemon, {after['VmRSS']:.0f} MiB after, peak {result['peak']:.0f} MiB")
    result["cleanup_s"] = run_.drain("cycle", timeout=600)
    return result


# -- report --------------------------------------------------------------------------------------

def report(env: dict, api: dict | None, size: dict | None, cyc: dict | None) -> None:
    line = "=" * 100
    print(line)
    print(f"hpc-bridge scale benchmark  ({env['when']}, {env['slurm']}, {env['cpus']} CPUs, "
          f"run time {env['elapsed']:.0f}s)")
    print(line)
    if api:
        n, active = api["n"], api["states"].get("QUEUED", 0)
        print(f"1. API latency with {n} stored tasks ({active} QUEUED with a deferred retry, the rest ended)")
        print("   a real `hpc-bridge serve` (API + daemon), one keep-alive session, endpoints interleaved")
        print(f"   {'endpoint':<54}{'samples':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        rows = [("GET /tasks/{id} view=MINIMAL (random ids)", "get_minimal"),
                ("GET /tasks/{id} view=BASIC (random ids)", "get_basic"),
                (f"GET /tasks?page_size={PAGE} view=MINIMAL, first page", "list_first_minimal"),
                (f"GET /tasks?page_size={PAGE} view=MINIMAL, next pages", "list_next_minimal"),
                (f"GET /tasks?page_size={PAGE} view=BASIC, first page", "list_first_basic"),
                (f"GET /tasks?page_size={PAGE} view=BASIC, next pages", "list_next_basic"),
                ("POST /tasks (trivial busybox task)", "post")]
        for label, key in rows:
            values = api["times"].get(key, [])
            print(f"   {label:<54}{len(values):>8}{percentile(values, 50) * 1000:>9.1f}"
                  f"{percentile(values, 99) * 1000:>9.1f}{max(values, default=float('nan')) * 1000:>9.1f}")
        print(f"   next pages: random ones of the {api['pages']} pages (page_token from one walk of the whole "
              f"list, which took {api['walk_s']:.1f}s)")
        mem = api["server_memory"]
        print(f"   hpc-bridge serve after the requests: RSS {mem['VmRSS']:.0f} MiB, peak {mem['VmHWM']:.0f} MiB")
        worst = max(percentile(api["times"][k], 99) for _, k in rows[:6]) * 1000
        verdict = "met" if worst < 20 else "NOT met"
        if n < 100_000:
            verdict += f" here, but N={n} is below the target's 100k"
        print(f"   target p99 < 20 ms (GET task, list page {PAGE}) at 100k stored tasks: worst p99 "
              f"{worst:.1f} ms: {verdict}")
        print()
    if size:
        print("2. SQLite file size after the fill (WAL checkpointed into the file)")
        print(f"   {'database file:':<30}{size['bytes'] / 1e6:>10.1f} MB for {size['n']} tasks "
              f"(stored in {size['fill_s']:.1f}s)")
        print(f"   {'per 100k tasks:':<30}{size['per_100k'] / 1e6:>10.1f} MB   "
              f"({size['bytes'] / size['n']:.0f} bytes per task)")
        parts = sorted(((b, name) for name, b in size["parts"].items() if b >= size["bytes"] / 100), reverse=True)
        if parts:  # dbstat: pages per table and per table's indexes (the rest is under 1 % each)
            print("   of which: " + ", ".join(f"{name} {b / size['bytes']:.0%}" for b, name in parts))
        print()
    if cyc:
        print(f"3. Daemon cycle with {cyc['m']} active tasks: in-process Daemon, real jobs held "
              "(#SBATCH --hold, JobHeldUser), one per task (packing off)")
        if cyc["note"]:
            print(f"   NOTE: {cyc['note']}")
        print(f"   {'submission: tasks -> held jobs':<46}{cyc['submitted']:>7} jobs in {cyc['submit_s']:.1f} s "
              f"({cyc['submitted'] / cyc['submit_s']:.1f} jobs/s, {cyc['submit_cycles']} cycles of at most "
              f"{cyc['submit_batch']} sbatch, {cyc['parallelism']} at a time)")
        print(f"   {'cycle':<46}{'ms':>7}   Slurm calls")
        first_calls, first_s = cyc["first"]
        print(f"   {'first cycle after the last submission':<46}{first_s * 1000:>7.0f}   {dict(first_calls)}")
        times = [t for _, t in cyc["steady"]]
        print(f"   {'steady cycle, median of ' + str(len(times)) + ':':<46}{cyc['steady_s'] * 1000:>7.0f}   "
              f"{dict(cyc['steady'][-1][0])}   (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
        restart_calls, restart_s = cyc["restart"]
        print(f"   {'restarted daemon, first cycle:':<46}{restart_s * 1000:>7.0f}   {dict(restart_calls)}")
        print(f"   {'  of a cycle: one squeue --states=all:':<46}{cyc['squeue_s'] * 1000:>7.0f}   "
              f"({cyc['squeue_rows']} rows)")
        print(f"   {'  of a cycle: reading the active rows:':<46}{cyc['load_s'] * 1000:>7.0f}   "
              f"({cyc['active_rows']} rows)")
        print(f"   tasks: {cyc['held']} QUEUED on a held job (JobHeldUser recorded); states {cyc['states']}")
        print(f"   {'RSS of this process (the daemon runs in it)':<46}{'MiB':>7}")
        print(f"   {'  before the Daemon was created:':<46}{cyc['baseline']:>7.0f}")
        print(f"   {'  after its cycles (current):':<46}{cyc['current']:>7.0f}   "
              f"(+{cyc['current'] - cyc['baseline']:.0f} MiB over the baseline)")
        peak_what = "peak since the Daemon was created:" if cyc["peak_reset"] else "peak of the process (ru_maxrss):"
        print(f"   {'  ' + peak_what:<46}{cyc['peak']:>7.0f}")
        ok_cycle = "met" if cyc["steady_s"] <= 2 else "NOT met"
        ok_rss = "met" if cyc["peak"] < 150 else "NOT met"
        print(f"   targets at 10k active: steady cycle <= 2 s: {ok_cycle}; RSS < 150 MB (peak): {ok_rss}"
              + ("" if cyc["m"] >= 10_000 else f" (measured at M={cyc['m']})"))
        print()
    print_footer(env, line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="stored tasks for phases api/size (default 100000)")
    parser.add_argument("--active", type=int, default=10_000,
                        help="active tasks (held jobs) for phase cycle (default 10000, capped to MaxJobCount)")
    parser.add_argument("--samples", type=int, default=1000, help="requests per GET endpoint (default 1000)")
    parser.add_argument("--posts", type=int, default=50, help="POST /tasks samples (default 50; they reach Slurm)")
    parser.add_argument("--config", type=Path, default=ROOT / "site_config" / "dev.yaml",
                        help="base site config (default site_config/dev.yaml)")
    parser.add_argument("--phases", default="api,size,cycle", help="comma-separated subset of api,size,cycle")
    parser.add_argument("--keep", action="store_true", help="keep temp configs, databases, logs, work dirs")
    args = parser.parse_args()
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if unknown := phases - {"api", "size", "cycle"}:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.tasks <= 2 * PAGE:
        parser.error(f"--tasks must be more than {2 * PAGE} (a first page and following ones)")
    if args.active < 1 or args.samples < 1 or args.posts < 1:
        parser.error("--active, --samples and --posts must be at least 1")
    base = load_config(args.config)
    check_job_user(parser, base)
    if not slurm_up():
        return 1
    run_ = ScaleRun(base, args.keep)
    interrupt_on_signals()
    t_start = time.time()
    api = size = cyc = None
    try:
        say(f"scale benchmark run {run_.id}: tasks={args.tasks}, active={args.active}, samples={args.samples}, "
            f"temp {run_.tmp}, work {run_.work}")
        if phases & {"api", "size"}:
            api, size = phase_api(run_, args.tasks, args.samples, args.posts, phases)
            if "size" not in phases:
                size = None
        if "cycle" in phases:
            cyc = phase_cycle(run_, args.active)
    except KeyboardInterrupt:
        progress.done()
        say("interrupted: stopping the server and the daemon, cancelling this run's jobs")
        run_.cleanup()
        return 130
    finally:
        run_.cleanup()
    env = {"when": datetime.now().strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
           "slurm": run(["sinfo", "--version"], check=False).strip(), "elapsed": time.time() - t_start,
           "foreign": len(run_.foreign_seen)}
    report(env, api, size, cyc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
