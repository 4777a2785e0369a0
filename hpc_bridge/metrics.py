"""What the service tells Prometheus (`/metrics`) and a probe (`/healthz`, `/readyz`).

One registry per service process (not prometheus_client's global one, so tests can build several
apps). Task and run counts by state are read from the store at scrape time (one grouped query each),
the rest is counted where it happens: submissions in the API, Slurm commands in the Slurm client,
monitor cycles in the daemon, image pulls and staged bytes in the stager, request latency per
endpoint (the route, never the raw path: ids would make the label set unbounded).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hpc_bridge.store import Store
from hpc_bridge.tes.models import State

# Slurm calls and cycles take milliseconds to seconds; API requests a millisecond to tens of ms.
SLURM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
STATES = [s.value for s in State if s is not State.UNKNOWN]


class _StateCounts(Collector):
    """Tasks and runs by state, read from the store when scraped (every state listed, zeros too)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for table, name, what in (("tasks", "hpcbridge_tasks", "TES tasks by state"),
                                  ("runs", "hpcbridge_runs", "WES runs by state")):
            counts = dict.fromkeys(STATES, 0)
            counts.update(dict(self._store.db.execute(f"SELECT state, count(*) FROM {table} GROUP BY state")))
            family = GaugeMetricFamily(name, what, labels=["state"])
            for state, count in counts.items():
                family.add_metric([state], count)
            yield family


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCounts(store))
        r = self.registry
        self.task_submissions = Counter("hpcbridge_task_submissions", "TES tasks accepted (POST /tasks)", registry=r)
        self.run_submissions = Counter("hpcbridge_run_submissions", "WES runs accepted (POST /runs)", registry=r)
        self.slurm_commands = Histogram("hpcbridge_slurm_command_duration_seconds",
                                        "Slurm commands run (sbatch, squeue, ...) and how long each took",
                                        ["command", "outcome"], buckets=SLURM_BUCKETS, registry=r)
        self.cycles = Histogram("hpcbridge_monitor_cycle_duration_seconds", "The daemon's monitoring cycles",
                                buckets=SLURM_BUCKETS, registry=r)
        self.image_pulls = Counter("hpcbridge_image_pulls", "Registry images pulled into the SIF cache",
                                   ["outcome"], registry=r)
        self.staged_bytes = Counter("hpcbridge_staged_bytes", "Bytes staged: in, task inputs the daemon "
                                    "downloaded; out, the outputs of tasks that ended", ["direction"], registry=r)
        for direction in ("in", "out"):  # both series from the start, at 0
            self.staged_bytes.labels(direction)
        self.requests = Histogram("hpcbridge_http_request_duration_seconds", "API requests, by route",
                                  ["method", "route", "status"], buckets=REQUEST_BUCKETS, registry=r)
        self.squeue_ok: float | None = None  # monotonic times of the last squeue that answered, or failed
        self.squeue_failed: float | None = None

    def slurm_call(self, command: str, seconds: float, ok: bool) -> None:
        """The Slurm client's observer."""
        self.slurm_commands.labels(command, "ok" if ok else "error").observe(seconds)
        if command == "squeue":
            if ok:
                self.squeue_ok = time.monotonic()
            else:
                self.squeue_failed = time.monotonic()


Check = Callable[[], str | None]  # None: ready; else why not


def database_writable(store: Store) -> Check:
    def check() -> str | None:
        try:
            with store.transaction() as db:  # BEGIN IMMEDIATE: the write lock, nothing written
                db.execute("SELECT 1")
        except sqlite3.Error as exc:
            return f"the database does not take a write: {exc}"
        return None
    return check


def lock_held(held: Callable[[], bool]) -> Check:
    return lambda: None if held() else "another process holds the daemon lock: this one serves the API only"


def slurm_answers(metrics: Metrics, within: float) -> Check:
    """Not ready when squeue has failed and not answered for `within` seconds (the daemon asks only
    while tasks are active: one that has not asked at all is ready)."""
    def check() -> str | None:
        failed, ok = metrics.squeue_failed, metrics.squeue_ok
        if failed is None or (ok is not None and ok > failed):
            return None
        since = ok if ok is not None else failed
        if time.monotonic() - since <= within:
            return None
        return f"Slurm has not answered squeue for more than {within:.0f} s"
    return check
