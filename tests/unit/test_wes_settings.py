"""`wes:` in the site config, and the runs table of schema v4."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpc_bridge.config import ConfigError, load_config
from hpc_bridge.store import Store
from hpc_bridge.store.runs import RunStore


def write(tmp_path: Path, **sections: object) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    raw = {"auth": {"mode": "none"}, "storage": {"work_root": str(tmp_path / "work"), "data_roots": ["data"]},
           **sections}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_runs_root_defaults_to_the_first_data_root(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    assert config.wes.root(config.storage.data_roots) == tmp_path / "data" / "runs"


def test_a_relative_runs_root_is_resolved_against_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, wes={"runs_root": "data/wes", "max_parallel_runs": 2}))
    assert config.wes.runs_root == tmp_path / "data" / "wes" and config.wes.max_parallel_runs == 2


@pytest.mark.parametrize(("wes", "words"), [
    ({"runs_root": "/srv/elsewhere"}, "must lie inside one of storage.data_roots"),
    ({"runs_root": "data"}, "must lie inside one of storage.data_roots"),  # the data root itself
    ({"runs_root": "/srv/a b"}, "letters, digits"),
    ({"max_parallel_runs": 0}, "max_parallel_runs"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_wes_settings_stop_the_service(tmp_path: Path, wes: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(write(tmp_path, wes=wes))


def test_the_tasks_of_a_run_are_found_through_an_index(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] >= 4
    RunStore(store).tasks("run-1")  # the query is valid
    plan = store.db.execute("EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE "
                            "json_extract(tags, '$.wes_run_id') = ? ORDER BY seq", ["r"]).fetchall()
    assert any("idx_tasks_wes_run_id" in str(row) for row in plan), plan
