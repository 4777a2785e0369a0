"""The task table: rows in, rows out, every state change recorded in `events` in the same transaction."""

from __future__ import annotations

import base64
import builtins
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hpc_bridge.lifecycle import ACTIVE, TERMINAL, failure_state, next_state

if TYPE_CHECKING:
    from sqlite_utils.db import Table

    from hpc_bridge.store.db import Store

_JSON_COLUMNS = ("task", "tags", "executor_logs", "system_logs", "streams", "outputs", "resolved")
MAX_SEQ = 2**63 - 1  # SQLite's largest INTEGER


class ActiveLimitReached(Exception):
    """The owner already has `limit` active tasks; nothing was written."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} active tasks")
        self.limit = limit


def iso(moment: datetime) -> str:
    """The one timestamp format of the store (UTC, microseconds): its strings sort by time."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return iso(datetime.now(UTC))


@dataclass
class TaskRow:
    seq: int
    id: str
    owner: str
    name: str | None
    state: str
    created_at: str
    updated_at: str
    task: dict[str, Any]
    tags: dict[str, str]
    job_id: str | None
    workdir: str | None
    cancel_requested: int
    submit_attempts: int
    next_attempt_at: float
    start_time: str | None
    end_time: str | None
    executor_logs: list[dict[str, Any]]
    system_logs: list[str]
    streams: list[dict[str, str]]
    outputs: list[dict[str, str]]
    cleaned_at: str | None
    run_as: str | None
    pack_id: str | None
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)  # input index -> staging/drs.Resolved

    @classmethod
    def from_db(cls, row: dict[str, Any]) -> TaskRow:
        return cls(**{k: json.loads(v) if k in _JSON_COLUMNS else v for k, v in row.items()})


@dataclass(frozen=True)
class TaskFilter:
    owner: str | None = None
    name_prefix: str | None = None
    state: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # (key, value) pairs, all must match; "" = any value


def encode_token(seq: int, kind: str = "t") -> str:
    """A page token: the `seq` a page continues from, marked with the table's `kind` letter."""
    return base64.urlsafe_b64encode(f"{kind}{seq}".encode()).decode().rstrip("=")


def decode_token(token: str, kind: str = "t") -> int:
    """Page tokens are opaque to clients; a forged or corrupt one is a ValueError (-> 400), and so
    is a seq beyond SQLite's integers, which no query could compare (an OverflowError)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    match = re.fullmatch(rf"{kind}([0-9]{{1,19}})", raw)
    if match is None or int(match[1]) > MAX_SEQ:
        raise ValueError("invalid page_token: not one this server gave out")
    return int(match[1])


class TaskStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def _table(self) -> Table:
        return self._store.db.table("tasks")

    def create(self, *, id: str, owner: str, name: str | None, task: dict[str, Any],
               tags: dict[str, str], state: str = "QUEUED", run_as: str | None = None,
               max_active: int | None = None, resolved: dict[str, dict[str, Any]] | None = None) -> TaskRow:
        """`max_active` is checked in the same write transaction as the insert, so concurrent
        requests of one user cannot together exceed it."""
        stamp = now_iso()
        with self._store.transaction() as db:
            if max_active is not None:
                marks = ",".join("?" for _ in ACTIVE)
                (active,) = db.execute(f"SELECT count(*) FROM tasks WHERE owner = ? AND state IN ({marks})",
                                       [owner, *ACTIVE]).fetchone()
                if active >= max_active:
                    raise ActiveLimitReached(max_active)
            db.table("tasks").insert({
                "id": id, "owner": owner, "name": name, "state": state, "created_at": stamp,
                "updated_at": stamp, "task": json.dumps(task), "tags": json.dumps(tags),
                "run_as": run_as, "resolved": json.dumps(resolved or {}),
            })
            db.table("events").insert({"task_id": id, "time": stamp, "state": state, "message": "created"})
        row = self.get(id)
        assert row is not None
        return row

    def get(self, task_id: str, owner: str | None = None) -> TaskRow | None:
        where, params = "id = ?", [task_id]
        if owner is not None:
            where, params = where + " AND owner = ?", [*params, owner]
        rows = list(self._table.rows_where(where, params, limit=1))
        return TaskRow.from_db(rows[0]) if rows else None

    def list(self, flt: TaskFilter, *, before_seq: int | None, limit: int) -> list[TaskRow]:
        """Newest first, keyset-paginated on `seq` (stable under concurrent inserts)."""
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        if flt.owner is not None:
            clauses.append("owner = ?")
            params.append(flt.owner)
        if flt.name_prefix:
            clauses.append("substr(name, 1, ?) = ?")
            params += [len(flt.name_prefix), flt.name_prefix]
        if flt.state:
            clauses.append("state = ?")
            params.append(flt.state)
        for key, value in flt.tags:
            if value == "":
                clauses.append("EXISTS (SELECT 1 FROM json_each(tasks.tags) WHERE json_each.key = ?)")
                params.append(key)
            else:
                clauses.append("EXISTS (SELECT 1 FROM json_each(tasks.tags) "
                               "WHERE json_each.key = ? AND json_each.value = ?)")
                params += [key, value]
        where = " AND ".join(clauses) or None
        rows = self._table.rows_where(where, params, order_by="seq desc", limit=limit)
        return [TaskRow.from_db(r) for r in rows]

    def in_states(self, states: Iterable[str]) -> builtins.list[TaskRow]:
        states = list(states)
        marks = ",".join("?" for _ in states)
        return [TaskRow.from_db(r) for r in
                self._table.rows_where(f"state IN ({marks})", states, order_by="seq")]

    def due_for_cleanup(self, ended_before: str, limit: int = 100) -> builtins.list[TaskRow]:
        """Ended tasks whose work area still exists and whose retention time has passed."""
        rows = self._table.rows_where("cleaned_at IS NULL AND workdir IS NOT NULL AND end_time < ?",
                                      [ended_before], order_by="end_time", limit=limit)
        return [TaskRow.from_db(r) for r in rows]

    def packs_in_use(self) -> set[str]:
        """Packs with a task whose work area is still there: their launcher's directory is kept."""
        rows = self._store.db.execute("SELECT DISTINCT pack_id FROM tasks WHERE pack_id IS NOT NULL "
                                      "AND cleaned_at IS NULL").fetchall()
        return {r[0] for r in rows}

    def update(self, task_id: str, *, state: str | None = None, message: str | None = None,
               add_logs: Iterable[str] = (), **fields: Any) -> str:
        """Change columns in one write transaction and return the state stored.

        A new state goes through `lifecycle.next_state` against the row as it is now (a terminal
        task keeps its state and end time); `add_logs` appends the system log lines the row does not
        hold yet, read inside the same transaction, so no writer's lines are lost to another's. A new
        state (or a message) also appends to the task's history.
        """
        with self._store.transaction() as db:
            return self._write(db, task_id, state, message, add_logs, fields)

    def fail(self, task_id: str, message: str) -> str:
        """End a task that cannot go on: SYSTEM_ERROR, or CANCELED when its user already asked for
        that, with `message` as a system log line; decided inside the write transaction."""
        with self._store.transaction() as db:
            return self._write(db, task_id, None, message, [message], {"end_time": now_iso()}, fail=True)

    def _write(self, db: Any, task_id: str, state: str | None, message: str | None,
               add_logs: Iterable[str], fields: dict[str, Any], *, fail: bool = False) -> str:
        stamp = now_iso()
        values = {k: json.dumps(v) if k in _JSON_COLUMNS else v for k, v in fields.items()}
        values["updated_at"] = stamp
        current = db.execute("SELECT seq, state, cancel_requested, system_logs FROM tasks WHERE id = ?",
                             [task_id]).fetchone()
        if current is None:
            raise KeyError(task_id)
        seq, old_state, cancel_requested, logs_json = current
        if fail:
            state = failure_state(cancel_requested=bool(cancel_requested))
        if state is not None:
            state = next_state(old_state, state, cancel_requested=bool(cancel_requested))
            if old_state in TERMINAL:  # next_state kept it
                for outcome in ("end_time", "executor_logs", "outputs"):  # already ended: they stay
                    values.pop(outcome, None)
            values["state"] = state
        logs = json.loads(logs_json)
        added = [line for line in dict.fromkeys(add_logs) if line not in logs]
        if added:
            values["system_logs"] = json.dumps([*logs, *added])
        db.table("tasks").update(seq, values)
        if (state is not None and state != old_state) or message:
            db.table("events").insert({"task_id": task_id, "time": stamp,
                                       "state": state or old_state, "message": message})
        return state or old_state

    def request_cancel(self, task_id: str) -> str:
        """Atomically mark a task for cancellation unless it already ended; returns its state."""
        with self._store.transaction() as db:
            row = db.execute("SELECT seq, state FROM tasks WHERE id = ?", [task_id]).fetchone()
            if row is None:
                raise KeyError(task_id)
            seq, state = int(row[0]), str(row[1])
            if state in TERMINAL or state == "CANCELING":
                return state
            stamp = now_iso()
            db.table("tasks").update(seq, {"cancel_requested": 1, "state": "CANCELING", "updated_at": stamp})
            db.table("events").insert({"task_id": task_id, "time": stamp, "state": "CANCELING",
                                       "message": "cancel requested"})
            return "CANCELING"

    def events(self, task_id: str) -> builtins.list[dict[str, Any]]:
        return list(self._store.db.table("events").rows_where("task_id = ?", [task_id], order_by="seq"))
