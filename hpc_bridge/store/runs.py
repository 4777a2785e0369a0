"""The WES runs table: rows in, rows out, every state change recorded in `run_events` in the same
transaction; and the TES tasks of a run, found through their `wes_run_id` tag (indexed in v4)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpc_bridge.lifecycle import RUN_FINAL, next_state
from hpc_bridge.store.tasks import TaskRow, now_iso
from hpc_bridge.store.tasks import decode_token as _decode_token
from hpc_bridge.store.tasks import encode_token as _encode_token

if TYPE_CHECKING:
    from sqlite_utils.db import Table

    from hpc_bridge.store.db import Store

_JSON_COLUMNS = ("request", "tags", "outputs", "system_logs", "grants")
_TASK_RUN_ID = "json_extract(tags, '$.wes_run_id')"


@dataclass
class RunRow:
    seq: int
    id: str
    owner: str
    state: str
    created_at: str
    updated_at: str
    start_time: str | None
    end_time: str | None
    request: dict[str, Any]
    tags: dict[str, str]
    run_dir: str
    workflow: str
    cancel_requested: int
    engine_pid: int | None
    engine_start: str | None
    launches: int
    exit_code: int | None
    outputs: dict[str, Any] | None
    system_logs: list[str]
    run_as: str | None = None
    engine_token: str | None = None
    grants: list[str] = field(default_factory=list)  # datasets its submission's Passport visas granted
    cleaned_at: str | None = None  # its directory removed by retention (wes/retention.py)

    @classmethod
    def from_db(cls, row: dict[str, Any]) -> RunRow:
        return cls(**{k: json.loads(v) if k in _JSON_COLUMNS and v is not None else v
                      for k, v in row.items()})


def encode_token(seq: int) -> str:
    return _encode_token(seq, "r")


def decode_token(token: str) -> int:
    """Opaque to clients; a forged or corrupt token is a ValueError (-> 400)."""
    return _decode_token(token, "r")


class ActiveRunsLimit(Exception):
    """The owner already has `limit` runs that have not ended; nothing was written."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} active runs")
        self.limit = limit


class RunStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def _table(self) -> Table:
        return self._store.db.table("runs")

    def create(self, *, id: str, owner: str, request: dict[str, Any], tags: dict[str, str],
               run_dir: str, workflow: str, run_as: str | None = None,
               max_active: int | None = None, grants: list[str] | None = None) -> RunRow:
        """`max_active` is checked in the insert's own write transaction (no race between two
        submissions of one owner)."""
        stamp = now_iso()
        with self._store.transaction() as db:
            if max_active is not None:
                marks = ",".join("?" for _ in RUN_FINAL)
                (active,) = db.execute(f"SELECT count(*) FROM runs WHERE owner = ? AND state NOT IN "
                                       f"({marks})", [owner, *RUN_FINAL]).fetchone()
                if active >= max_active:
                    raise ActiveRunsLimit(max_active)
            db.table("runs").insert({
                "id": id, "owner": owner, "state": "QUEUED", "created_at": stamp, "updated_at": stamp,
                "request": json.dumps(request), "tags": json.dumps(tags), "run_dir": run_dir,
                "workflow": workflow, "run_as": run_as, "grants": json.dumps(grants or []),
            })
            db.table("run_events").insert({"run_id": id, "time": stamp, "state": "QUEUED",
                                           "message": "created"})
        row = self.get(id)
        assert row is not None
        return row

    def get(self, run_id: str, owner: str | None = None) -> RunRow | None:
        where, params = "id = ?", [run_id]
        if owner is not None:
            where, params = where + " AND owner = ?", [*params, owner]
        rows = list(self._table.rows_where(where, params, limit=1))
        return RunRow.from_db(rows[0]) if rows else None

    def owner_of(self, run_id: str) -> str | None:
        """Whose run this is (None: no such run): a run's directory is its owner's alone."""
        row = self.get(run_id)
        return row.owner if row is not None else None

    def list(self, owner: str | None, *, before_seq: int | None, limit: int) -> list[RunRow]:
        """Newest first, keyset-paginated on `seq`: stable while runs are added."""
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        rows = self._table.rows_where(" AND ".join(clauses) or None, params, order_by="seq desc",
                                      limit=limit)
        return [RunRow.from_db(r) for r in rows]

    def in_states(self, states: Iterable[str]) -> builtins.list[RunRow]:
        states = list(states)
        marks = ",".join("?" for _ in states)
        return [RunRow.from_db(r) for r in
                self._table.rows_where(f"state IN ({marks})", states, order_by="seq")]

    def state_counts(self) -> dict[str, int]:
        return {state: count for state, count in
                self._store.db.execute("SELECT state, count(*) FROM runs GROUP BY state").fetchall()}

    def update(self, run_id: str, *, state: str | None = None, message: str | None = None,
               **fields: Any) -> str:
        """Change columns; a new state (or a message) is appended to the run's history. A live
        state computed before a cancel arrived becomes CANCELING. Returns the state written."""
        stamp = now_iso()
        values = {k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v
                  for k, v in fields.items()}
        values["updated_at"] = stamp
        with self._store.transaction() as db:
            current = db.execute("SELECT seq, state, cancel_requested FROM runs WHERE id = ?",
                                 [run_id]).fetchone()
            if current is None:
                raise KeyError(run_id)
            seq, old_state, cancel_requested = current
            if state is not None:
                state = next_state(old_state, state, cancel_requested=bool(cancel_requested))
                if old_state in RUN_FINAL:  # next_state kept it
                    values.pop("end_time", None)  # already ended: its end stays what it was
                values["state"] = state
            db.table("runs").update(seq, values)
            if (state is not None and state != old_state) or message:
                db.table("run_events").insert({"run_id": run_id, "time": stamp, "state": state or old_state,
                                               "message": message})
            return state or old_state

    def add_system_log(self, run_id: str, line: str) -> None:
        with self._store.transaction() as db:
            row = db.execute("SELECT seq, system_logs FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None:
                raise KeyError(run_id)
            db.table("runs").update(row[0], {"system_logs": json.dumps([*json.loads(row[1]), line]),
                                             "updated_at": now_iso()})

    def request_cancel(self, run_id: str) -> str:
        """Atomically mark a run for cancellation unless it already ended; returns its state."""
        with self._store.transaction() as db:
            row = db.execute("SELECT seq, state FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None:
                raise KeyError(run_id)
            seq, state = int(row[0]), str(row[1])
            if state in RUN_FINAL or state == "CANCELING":
                return state
            stamp = now_iso()
            db.table("runs").update(seq, {"cancel_requested": 1, "state": "CANCELING", "updated_at": stamp})
            db.table("run_events").insert({"run_id": run_id, "time": stamp, "state": "CANCELING",
                                           "message": "cancel requested"})
            return "CANCELING"

    def events(self, run_id: str) -> builtins.list[dict[str, Any]]:
        return list(self._store.db.table("run_events").rows_where("run_id = ?", [run_id], order_by="seq"))

    # The TES tasks of a run (created by its engine with the tag wes_run_id).

    def tasks(self, run_id: str, owner: str | None = None, *, after_seq: int | None = None,
              limit: int | None = None, states: Iterable[str] | None = None) -> builtins.list[TaskRow]:
        """In creation order (the order the engine submitted the steps), keyset on `seq`."""
        clauses: builtins.list[str] = [f"{_TASK_RUN_ID} = ?"]
        params: builtins.list[Any] = [run_id]
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if after_seq is not None:
            clauses.append("seq > ?")
            params.append(after_seq)
        if states is not None:
            states = list(states)
            clauses.append(f"state IN ({','.join('?' for _ in states)})")
            params += states
        rows = self._store.db.table("tasks").rows_where(" AND ".join(clauses), params, order_by="seq",
                                                  limit=limit)
        return [TaskRow.from_db(r) for r in rows]

    def task(self, run_id: str, task_id: str, owner: str | None = None) -> TaskRow | None:
        where, params = f"id = ? AND {_TASK_RUN_ID} = ?", [task_id, run_id]
        if owner is not None:
            where, params = where + " AND owner = ?", [*params, owner]
        rows = list(self._store.db.table("tasks").rows_where(where, params, limit=1))
        return TaskRow.from_db(rows[0]) if rows else None
