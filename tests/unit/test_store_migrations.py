"""Schema migrations: a new database gets every one; an older one is brought forward without losing
a row, whatever state a development version left it in."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlite_utils

from hpc_bridge.store import Store
from hpc_bridge.store.db import MIGRATIONS, SCHEMA_VERSION


def _at(path: Path, version: int, *extra_run_columns: str) -> None:
    """A database as hpc-bridge at `version` left it, with one task and one run, and any run
    columns a development version added early."""
    db = sqlite_utils.Database(path)
    for v in range(1, version + 1):
        MIGRATIONS[v](db)
    for column in extra_run_columns:
        db.table("runs").add_column(column, str)
    db.execute(f"PRAGMA user_version = {version}")
    db.execute("INSERT INTO runs (id, owner, state, created_at, updated_at, request, tags, run_dir, workflow) "
               "VALUES ('r1', 'local', 'COMPLETE', 'now', 'now', '{}', '{}', '/runs/r1', 'wf.cwl')")
    db.conn.commit()
    db.close()


def _columns(store: Store, table: str) -> set[str]:
    return set(store.db.table(table).columns_dict)


def test_a_new_database_has_the_latest_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"grants", "cleaned_at", "run_as"} <= _columns(store, "runs")
    assert {"resolved", "pack_id"} <= _columns(store, "tasks")


@pytest.mark.parametrize("early", [(), ("grants",), ("grants", "cleaned_at")])
def test_a_v8_database_from_any_development_version_is_brought_forward(tmp_path: Path,
                                                                        early: tuple[str, ...]) -> None:
    _at(tmp_path / "db.sqlite", 8, *early)
    store = Store(tmp_path / "db.sqlite")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"grants", "cleaned_at"} <= _columns(store, "runs")
    assert [r["id"] for r in store.db.query("SELECT id FROM runs")] == ["r1"]  # nothing lost


def test_a_database_newer_than_this_hpc_bridge_is_refused(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "db.sqlite")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this hpc-bridge"):
        Store(tmp_path / "db.sqlite").db  # noqa: B018 - opening it migrates
