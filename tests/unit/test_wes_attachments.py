"""Attachment names, writes and the no-symlink opener (hpc_bridge/wes/attachments.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from hpc_bridge.wes.attachments import (
    AttachmentError,
    Attachments,
    check_name,
    open_beneath,
)


@pytest.mark.parametrize("name", ["tool.cwl", "a/b/c.txt", "sub dir/ü.txt", "a:b,c.txt", "C:x", ".hidden",
                                  "x" * 255, "..x", "a/...", "~/x"])
def test_plain_relative_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/../b", "a/..", ".", "./a", "a/./b", "a//b", "a/",
                                  "/abs", "//host/share", "a\\b", "..\\x", "a\x00b",
                                  "a\nb", "a\x7f", "x" * 256, "a/" * 2049, "\udc80"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(AttachmentError):
        check_name(name)


def test_files_are_written_once_inside_and_capped(tmp_path: Path) -> None:
    att = Attachments(tmp_path / "att")
    att.create()
    assert att.add("a/b.txt", io.BytesIO(b"12345"), max_bytes=10, max_total=12) == 5
    assert (tmp_path / "att" / "a" / "b.txt").read_bytes() == b"12345"
    # private: the service's, then the run user's and the service group's (the root helper)
    assert oct((tmp_path / "att" / "a" / "b.txt").stat().st_mode & 0o777) == "0o640"
    assert oct((tmp_path / "att" / "a").stat().st_mode & 0o777) == "0o750"
    with pytest.raises(AttachmentError, match="twice"):
        att.add("a/b.txt", io.BytesIO(b"x"), max_bytes=10, max_total=12)
    with pytest.raises(AttachmentError, match="10 bytes"):
        att.add("big", io.BytesIO(b"x" * 11), max_bytes=10, max_total=100)
    with pytest.raises(AttachmentError, match="12 bytes"):
        att.add("c", io.BytesIO(b"x" * 8), max_bytes=10, max_total=12)
    assert not (tmp_path / "att" / "big").exists() and not (tmp_path / "att" / "c").exists()
    assert att.names == ["a/b.txt"] and att.total == 5


def test_a_symlink_in_the_way_is_never_followed(tmp_path: Path) -> None:
    """The directory is the service's own, but should anything plant a link, writes stay inside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    att = Attachments(tmp_path / "att")
    att.create()
    os.symlink(outside, tmp_path / "att" / "d")
    os.symlink(outside / "f", tmp_path / "att" / "f")
    with pytest.raises(AttachmentError):
        att.add("d/x", io.BytesIO(b"x"), max_bytes=10, max_total=10)
    with pytest.raises(AttachmentError):
        att.add("f", io.BytesIO(b"x"), max_bytes=10, max_total=10)
    assert list(outside.iterdir()) == []
    with pytest.raises(AttachmentError, match="not one of the attached files"):
        att.resolve("d", what="workflow_url")


def test_resolve_names_attachments_only(tmp_path: Path) -> None:
    att = Attachments(tmp_path / "att")
    att.create()
    att.add("wf/main.cwl", io.BytesIO(b"x"), max_bytes=10, max_total=10)
    assert att.resolve("wf/main.cwl", what="w") == (str(tmp_path / "att" / "wf" / "main.cwl"), False)
    assert att.resolve("./wf", what="w") == (str(tmp_path / "att" / "wf"), True)
    for bad in ("wf/other.cwl", "../att/wf/main.cwl", "/etc/passwd", ""):
        with pytest.raises(AttachmentError, match="^w: "):
            att.resolve(bad, what="w")


def test_open_beneath_refuses_symlinks_anywhere(tmp_path: Path) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "f").write_text("ok")
    (tmp_path / "secret").write_text("secret")
    os.symlink(tmp_path / "secret", tmp_path / "root" / "a" / "link")
    os.symlink(tmp_path, tmp_path / "root" / "up")
    fd = open_beneath(str(tmp_path / "root"), "a/f")
    with os.fdopen(fd) as f:
        assert f.read() == "ok"
    for rel in ("a/link", "up/secret", "a/../../secret", "missing"):
        with pytest.raises(OSError):
            os.close(open_beneath(str(tmp_path / "root"), rel))
