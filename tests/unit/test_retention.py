"""WES retention: which ended runs are due, and removing their directories while keeping the record."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpc_bridge.store import Store
from hpc_bridge.store.runs import RunRow, RunStore
from hpc_bridge.wes import retention


def _run(runs: RunStore, root: Path, run_id: str, state: str, end: str | None) -> Path:
    path = root / run_id
    (path / "outputs").mkdir(parents=True)
    (path / "outputs" / "x.txt").write_text("x")
    runs.create(id=run_id, owner="local", request={}, tags={}, run_dir=str(path), workflow="wf.cwl")
    runs.update(run_id, state=state, end_time=end)
    return path


def test_only_runs_ended_long_enough_ago_lose_their_directory(tmp_path: Path) -> None:
    runs, root = RunStore(Store(tmp_path / "db.sqlite")), tmp_path / "runs"
    old = _run(runs, root, "old", "COMPLETE", "2026-12-01T00:00:00.000Z")
    recent = _run(runs, root, "recent", "EXECUTOR_ERROR", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    running = _run(runs, root, "running", "RUNNING", None)
    assert [r.id for r in retention.due(runs.in_states(["COMPLETE", "EXECUTOR_ERROR", "RUNNING"]), 24)] == ["old"]
    assert retention.retire(runs, root, 24, {os.geteuid()}) == 1
    assert not old.exists() and recent.exists() and running.exists()
    row = runs.get("old")
    assert row is not None and row.cleaned_at is not None and row.state == "COMPLETE"
    assert "run directory removed" in row.system_logs[-1]
    assert retention.retire(runs, root, 24, {os.geteuid()}) == 0  # once


def test_a_directory_the_service_does_not_own_or_outside_the_root_is_left(tmp_path: Path) -> None:
    runs, root = RunStore(Store(tmp_path / "db.sqlite")), tmp_path / "runs"
    elsewhere = _run(runs, tmp_path / "other", "x", "COMPLETE", "2026-12-01T00:00:00.000Z")
    assert retention.retire(runs, root, 1, {os.geteuid()}) == 0 and elsewhere.exists()


def test_a_per_user_runs_directory_goes_through_the_helper_and_a_failure_is_retried(tmp_path: Path) -> None:
    runs, root = RunStore(Store(tmp_path / "db.sqlite")), tmp_path / "runs"
    path = _run(runs, root, "mine", "COMPLETE", "2026-12-01T00:00:00.000Z")
    runs.update("mine", run_as="alice")
    asked: list[str] = []

    def refuse(row: RunRow) -> None:
        asked.append(row.id)
        raise RuntimeError("submit-as: refused: run mine ended less than 24 h ago")

    assert retention.retire(runs, root, 1, {os.geteuid()}, refuse) == 0
    row = runs.get("mine")
    assert asked == ["mine"] and path.exists() and row is not None and row.cleaned_at is None  # next sweep

    def remove(row: RunRow) -> None:
        asked.append(row.id)
        shutil.rmtree(row.run_dir)

    assert retention.retire(runs, root, 1, {os.geteuid()}, remove) == 1
    row = runs.get("mine")
    assert asked == ["mine", "mine"] and not path.exists() and row is not None and row.cleaned_at
    assert "run directory removed" in row.system_logs[-1]
    assert retention.retire(runs, root, 1, {os.geteuid()}, remove) == 0 and asked == ["mine", "mine"]


def test_a_site_may_keep_the_outputs_of_ended_runs(tmp_path: Path) -> None:
    runs, root = RunStore(Store(tmp_path / "db.sqlite")), tmp_path / "runs"
    path = _run(runs, root, "old", "COMPLETE", "2026-12-01T00:00:00.000Z")
    (path / "wf.cwl").write_text("cwlVersion: v1.2\n")
    (path / "tmp" / "step").mkdir(parents=True)
    (path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("not the run's")
    assert retention.retire(runs, root, 1, {os.geteuid()}, keep_outputs=True) == 1
    assert sorted(p.name for p in path.iterdir()) == ["outputs"] and (path / "outputs" / "x.txt").read_text() == "x"
    assert (tmp_path / "elsewhere" / "keep.txt").exists()  # a link is removed, never followed
    row = runs.get("old")
    assert row is not None and "emptied but for its outputs/" in row.system_logs[-1]


def test_a_lasting_refusal_leaves_the_directory_to_the_site_once(tmp_path: Path) -> None:
    runs, root = RunStore(Store(tmp_path / "db.sqlite")), tmp_path / "runs"
    path = _run(runs, root, "mine", "COMPLETE", "2026-12-01T00:00:00.000Z")
    runs.update("mine", run_as="alice")
    asked: list[str] = []

    def kept(row: RunRow) -> None:
        asked.append(row.id)
        raise retention.LeftToSite("submit-as: refused: run directories are kept here")

    assert retention.retire(runs, root, 1, {os.geteuid()}, kept) == 0
    assert retention.retire(runs, root, 1, {os.geteuid()}, kept) == 0
    row = runs.get("mine")
    assert asked == ["mine"] and path.exists() and row is not None and row.cleaned_at  # asked once
    assert "not removed" in row.system_logs[-1] and "kept here" in row.system_logs[-1]


@pytest.mark.parametrize(("code", "message", "raised"), [
    (0, "removed the run directory", None),
    (2, "submit-as: refused: run directories are kept here", retention.LeftToSite),
    (2, "submit-as: refused: run x ended less than 24 h ago", RuntimeError),  # later it will be due
    (3, "submit-as: internal error: OSError", RuntimeError),
])
def test_the_supervisor_asks_the_helper_through_sudo_with_the_run_id_only(
        tmp_path: Path, code: int, message: str, raised: type[Exception] | None) -> None:
    from hpc_bridge.runas import helper
    from hpc_bridge.runas.settings import RunAsSettings
    from hpc_bridge.wes.supervisor import HELPER_REFUSED, Supervisor

    assert HELPER_REFUSED == helper.EXIT_REFUSED
    sudo = tmp_path / "sudo"
    sudo.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\necho "{message}" >&2\nexit {code}\n')
    sudo.chmod(0o755)
    fake = SimpleNamespace(_config=SimpleNamespace(run_as=RunAsSettings(sudo=sudo, helper=Path("/h/submit-as"))))
    row = SimpleNamespace(id="0b6a3c2e-5d4f-4a7e-9c1b-2f3e4d5c6b7a")
    if raised is None:
        Supervisor._remove_as_user(fake, row)  # type: ignore[arg-type]
    else:
        with pytest.raises(raised, match=message.split(": ")[-1]):
            Supervisor._remove_as_user(fake, row)  # type: ignore[arg-type]
    assert (tmp_path / "argv").read_text().split() == ["-n", "/h/submit-as", row.id]
