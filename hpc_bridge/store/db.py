"""Opening the database: WAL, busy timeout, one connection per thread, versioned migrations.

Each thread gets its own connection because sqlite3 connections must not be shared between the
WSGI worker threads and the daemon thread; WAL lets readers run beside the daemon's short writes.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from hpc_bridge.store.tasks import TaskStore

SCHEMA_VERSION = 9


def _v1(db: sqlite_utils.Database) -> None:
    db.table("tasks").create(
        {
            "seq": int, "id": str, "owner": str, "name": str, "state": str,
            "created_at": str, "updated_at": str, "task": str, "tags": str,
            "job_id": str, "workdir": str, "cancel_requested": int,
            "submit_attempts": int, "next_attempt_at": float,
            "start_time": str, "end_time": str, "executor_logs": str, "system_logs": str,
            "streams": str,
        },
        pk="seq",
        not_null={"id", "owner", "state", "created_at", "updated_at", "task", "tags",
                  "cancel_requested", "submit_attempts", "next_attempt_at", "executor_logs",
                  "system_logs", "streams"},
        defaults={"tags": "{}", "cancel_requested": 0, "submit_attempts": 0, "next_attempt_at": 0.0,
                  "executor_logs": "[]", "system_logs": "[]", "streams": "[]"},
    )
    db.table("tasks").create_index(["id"], unique=True)
    db.table("tasks").create_index(["state"])
    db.table("tasks").create_index(["job_id"])
    db.table("events").create(
        {"seq": int, "task_id": str, "time": str, "state": str, "message": str},
        pk="seq", not_null={"task_id", "time", "state"},
    )
    db.table("events").create_index(["task_id"])


def _v2(db: sqlite_utils.Database) -> None:
    """Output file logs, and when a task's work area was removed after its retention time."""
    db.table("tasks").add_column("outputs", str, not_null_default="[]")
    db.table("tasks").add_column("cleaned_at", str)
    db.table("tasks").create_index(["cleaned_at", "end_time"])


def _v3(db: sqlite_utils.Database) -> None:
    """The Unix user a task's job runs as when the site maps identities to users (NULL: the
    service account), and an index for the per-owner queries of tenancy and limits."""
    db.table("tasks").add_column("run_as", str)
    db.table("tasks").create_index(["owner", "state"])


def _v4(db: sqlite_utils.Database) -> None:
    """WES runs and their state history (hpc_bridge/store/runs.py), and an index that finds the
    TES tasks of a run by their `wes_run_id` tag."""
    db.table("runs").create(
        {
            "seq": int, "id": str, "owner": str, "state": str, "created_at": str, "updated_at": str,
            "start_time": str, "end_time": str, "request": str, "tags": str, "run_dir": str,
            "workflow": str, "cancel_requested": int, "engine_pid": int, "engine_start": str,
            "launches": int, "exit_code": int, "outputs": str, "system_logs": str,
        },
        pk="seq",
        not_null={"id", "owner", "state", "created_at", "updated_at", "request", "tags", "run_dir",
                  "workflow", "cancel_requested", "launches", "system_logs"},
        defaults={"tags": "{}", "cancel_requested": 0, "launches": 0, "system_logs": "[]"},
    )
    db.table("runs").create_index(["id"], unique=True)
    db.table("runs").create_index(["owner", "state"])
    db.table("runs").create_index(["state"])
    db.table("run_events").create(
        {"seq": int, "run_id": str, "time": str, "state": str, "message": str},
        pk="seq", not_null={"run_id", "time", "state"},
    )
    db.table("run_events").create_index(["run_id"])
    db.execute("CREATE INDEX idx_tasks_wes_run_id ON tasks (json_extract(tags, '$.wes_run_id'))")


def _v5(db: sqlite_utils.Database) -> None:
    """The shared Slurm job ("pack") a short task runs in as a job step; NULL: a job of its own."""
    db.table("tasks").add_column("pack_id", str)
    db.table("tasks").create_index(["pack_id"])


def _v6(db: sqlite_utils.Database) -> None:
    """The Unix user a run's engine (and its tasks) runs as (NULL: the job user of service mode),
    and the digest of the run credential its current engine holds (NULL: no engine)."""
    db.table("runs").add_column("run_as", str)
    db.table("runs").add_column("engine_token", str)


def _v7(db: sqlite_utils.Database) -> None:
    """A user's list, newest first, read in index order: with (owner, state) alone SQLite sorted all
    of the owner's rows for every page (about 45 ms a page of 256 at 100k tasks, 5 ms with this)."""
    db.table("tasks").create_index(["owner", "seq"])
    db.table("runs").create_index(["owner", "seq"])


def _v8(db: sqlite_utils.Database) -> None:
    """What each `drs://` input of a task was resolved to when it was created (input index -> the
    access URL, size, checksums): the daemon reads that, not the DRS server again."""
    db.table("tasks").add_column("resolved", str, not_null_default="{}")


def _v9(db: sqlite_utils.Database) -> None:
    """The controlled-access datasets a run's Passport visas granted at its submission (its tasks'
    credential carries no visas), and when a run's directory was removed (wes.retention_hours).
    Each only where missing: for a while during development v8 added them too, so a database at v8
    may have both, one or neither."""
    runs = db.table("runs")
    if "grants" not in runs.columns_dict:
        runs.add_column("grants", str, not_null_default="[]")
    if "cleaned_at" not in runs.columns_dict:
        runs.add_column("cleaned_at", str)


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6, 7: _v7, 8: _v8, 9: _v9}


DB_MODE = 0o600


def _private(path: Path) -> None:
    """The database decides which Unix user each job runs as: only the service may read or write
    it. SQLite gives the -wal and -shm files the database file's mode, so that file is made 0600
    before SQLite ever opens it, and an older, wider one (ours) is narrowed."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, DB_MODE))
    except FileExistsError:
        pass
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.stat(name, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~DB_MODE:
            os.chmod(name, DB_MODE)


class Store:
    """Entry point of the data layer: `Store(path).tasks` is the task table's API."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private(self.path)
        self._local = threading.local()
        self._migrate()
        self.tasks = TaskStore(self)

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")  # a task whose id was returned survives power loss
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """BEGIN IMMEDIATE so that writers queue on the lock instead of failing on upgrade."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _migrate(self) -> None:
        """Read the version inside the write lock, so that two processes starting together
        cannot both apply the same migration."""
        db = self.db
        db.enable_wal()
        with self.transaction():
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise RuntimeError(f"database {self.path} has schema {current}, newer than this "
                                   f"hpc-bridge ({SCHEMA_VERSION}): upgrade hpc-bridge")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](db)
                db.execute(f"PRAGMA user_version = {version}")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
