"""The daemon's writes into a work area the job user controls: no symlink is ever followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpc_bridge.staging.workarea import WorkArea, WorkAreaError


def test_files_and_directories_are_created_and_handed_over_last(tmp_path: Path) -> None:
    area = WorkArea(tmp_path / "work" / "t1", uid=os.getuid(), gid=os.getgid())
    area.create()
    area.write("inputs/0", "content")
    area.make_dirs("volumes/0")
    area.hand_over()
    assert (area.path / "inputs" / "0").read_text() == "content"
    assert area.path.stat().st_mode & 0o777 == 0o700
    assert area.exists("inputs/0") and area.exists("volumes/0") and not area.exists("volumes/1")


@pytest.mark.parametrize("planted", ["inputs", "inputs/0"])
def test_a_planted_symlink_is_refused_not_followed(tmp_path: Path, planted: str) -> None:
    target = tmp_path / "etc"
    target.mkdir()
    (target / "passwd").write_text("root:x:0:0\n")
    area = WorkArea(tmp_path / "t1")
    area.create()
    if planted == "inputs":
        os.symlink(target, area.path / "inputs")
    else:
        (area.path / "inputs").mkdir()
        os.symlink(target / "passwd", area.path / "inputs" / "0")
    with pytest.raises(WorkAreaError):
        area.write("inputs/0", "pwned")
    assert (target / "passwd").read_text() == "root:x:0:0\n"
    assert sorted(p.name for p in target.iterdir()) == ["passwd"]
    assert not area.exists("inputs/0")


def test_a_work_area_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "t1")
    with pytest.raises(WorkAreaError):
        WorkArea(tmp_path / "t1").create()


def test_moved_in_files_land_inside(tmp_path: Path) -> None:
    area = WorkArea(tmp_path / "t1")
    area.create()
    staged = tmp_path / "download"
    staged.write_text("data")
    area.move_in(staged, area.relative(str(area.path / "inputs" / "3")))
    assert (area.path / "inputs" / "3").read_text() == "data" and not staged.exists()
    with pytest.raises(WorkAreaError):
        area.relative(str(tmp_path / "other"))
