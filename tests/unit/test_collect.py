"""Output collection on the compute node (hpc_bridge.jobside.collect), against a hostile task's files."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hpc_bridge.jobside.collect import ManifestError, collect, now, parse_manifest

from ..conftest import ROOT

SECRET = b"top secret, not for the task\n"


class Env:
    """A work area (workdir/volumes/0 bound at /out), a data root and a place outside both."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.workdir = tmp / "work"
        self.vol = self.workdir / "volumes" / "0"
        self.data = tmp / "data"
        self.outside = tmp / "outside"
        for d in (self.vol, self.data, self.outside):
            d.mkdir(parents=True)
        self.secret = self.outside / "secret.txt"
        self.secret.write_bytes(SECRET)
        self.events: list[dict[str, Any]] = []

    def output(self, path: str, dest: str, *, type: str | None = None, index: int = 0,
               wildcard: bool = False, path_prefix: str | None = None) -> dict[str, Any]:
        host = str(self.data / dest)
        return {"index": index, "type": type, "path": path, "path_prefix": path_prefix,
                "wildcard": wildcard, "bind_container": "/out", "bind_host": str(self.vol),
                "url": "file://" + host, "dest": host}

    def manifest(self, *outputs: dict[str, Any]) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "roots": [str(self.data)], "outputs": list(outputs)}

    def run(self, *outputs: dict[str, Any]) -> bool:
        self.events = []
        return collect(self.manifest(*outputs), self.events.append)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    def logs(self) -> dict[str, dict[str, Any]]:
        return {e["path"]: e for e in self.kinds("output")}

    def secret_copied(self) -> bool:
        """The secret's bytes anywhere under the data root or the work area."""
        for base in (self.data, self.workdir):
            for dirpath, _, files in os.walk(base):
                for f in files:
                    p = Path(dirpath, f)
                    if not p.is_symlink() and p.is_file() and SECRET in p.read_bytes():
                        return True
        return False


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def run_module(manifest_path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpc_bridge.jobside.collect", str(manifest_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def records(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / "record.jsonl").read_text().splitlines()]


# --- plain copies ---------------------------------------------------------------------------------

def test_file_is_copied_and_logged_with_size_as_string(env: Env) -> None:
    (env.vol / "result.txt").write_bytes(b"hello")
    assert env.run(env.output("/out/result.txt", "x/y/result.txt", type="FILE"))
    assert (env.data / "x" / "y" / "result.txt").read_bytes() == b"hello"
    [log] = env.events
    assert log["event"] == "output" and log["output"] == 0
    assert log["url"] == f"file://{env.data}/x/y/result.txt"
    assert log["path"] == "/out/result.txt"
    assert log["size_bytes"] == "5" and isinstance(log["size_bytes"], str)
    assert log["time"].endswith("Z") and len(log["time"]) == len("2026-01-01T00:00:00.000Z")


def test_time_format() -> None:
    t = now()
    assert len(t) == 24 and t[10] == "T" and t[19] == "." and t.endswith("Z")


def test_file_over_an_existing_file_replaces_it(env: Env) -> None:
    (env.vol / "a").write_bytes(b"new")
    (env.data / "a").write_bytes(b"old content")
    assert env.run(env.output("/out/a", "a", type="FILE"))
    assert (env.data / "a").read_bytes() == b"new"
    assert [p.name for p in env.data.iterdir()] == ["a"]  # no temp file left behind


def test_large_file(env: Env) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    (env.vol / "big").write_bytes(blob)
    assert env.run(env.output("/out/big", "big", type="FILE"))
    assert (env.data / "big").read_bytes() == blob
    assert env.events[0]["size_bytes"] == str(len(blob))


def test_directory_is_flattened_with_nested_dirs(env: Env) -> None:
    d = env.vol / "res"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "empty").mkdir()
    (d / "a.txt").write_bytes(b"a")
    (d / ".hidden").write_bytes(b"hh")
    (d / "sub" / "b.txt").write_bytes(b"bb")
    (d / "sub" / "deeper" / "c.txt").write_bytes(b"ccc")
    assert env.run(env.output("/out/res", "dir", type="DIRECTORY"))
    base = f"file://{env.data}/dir"
    assert {p: (e["url"], e["size_bytes"]) for p, e in env.logs().items()} == {
        "/out/res/a.txt": (base + "/a.txt", "1"),
        "/out/res/.hidden": (base + "/.hidden", "2"),
        "/out/res/sub/b.txt": (base + "/sub/b.txt", "2"),
        "/out/res/sub/deeper/c.txt": (base + "/sub/deeper/c.txt", "3"),
    }
    assert (env.data / "dir" / "sub" / "deeper" / "c.txt").read_bytes() == b"ccc"
    assert (env.data / "dir" / "empty").is_dir()
    assert len(env.events) == 4


def test_untyped_output_takes_whatever_the_path_is(env: Env) -> None:
    (env.vol / "d").mkdir()
    (env.vol / "d" / "f").write_bytes(b"1")
    (env.vol / "f").write_bytes(b"22")
    assert env.run(env.output("/out/d", "d"), env.output("/out/f", "f", index=1))
    assert set(env.logs()) == {"/out/d/f", "/out/f"}


def test_type_mismatch_fails(env: Env) -> None:
    (env.vol / "d").mkdir()
    (env.vol / "f").write_bytes(b"x")
    assert not env.run(env.output("/out/d", "d", type="FILE"),
                       env.output("/out/f", "f", type="DIRECTORY", index=1))
    assert [e["output"] for e in env.kinds("output_error")] == [0, 1]


def test_whole_bind_as_directory(env: Env) -> None:
    (env.vol / "f").write_bytes(b"x")
    assert env.run(env.output("/out", "all", type="DIRECTORY"))
    assert env.logs()["/out/f"]["url"] == f"file://{env.data}/all/f"


def test_missing_file_fails_but_the_others_are_still_tried(env: Env) -> None:
    (env.vol / "ok.txt").write_bytes(b"ok")
    assert not env.run(env.output("/out/missing.txt", "m", type="FILE"),
                       env.output("/out/nodir/missing.txt", "n", type="FILE", index=1),
                       env.output("/out/ok.txt", "ok", type="FILE", index=2))
    errors = env.kinds("output_error")
    assert [e["output"] for e in errors] == [0, 1]
    assert errors[0]["message"] == ("output 0 (/out/missing.txt): not found \u2014 "
                                    "the executors did not create it")
    assert (env.data / "ok").read_bytes() == b"ok"


def test_odd_file_names_are_data(env: Env) -> None:
    d = env.vol / "d"
    d.mkdir()
    odd = 'new\nline "quoted" \'single\' \\ back, ünïcødé 🙂'
    (d / odd).write_bytes(b"z")
    assert env.run(env.output("/out/d", "d", type="DIRECTORY"))
    [log] = env.events
    assert log["path"] == "/out/d/" + odd
    assert log["url"] == f"file://{env.data}/d/" + quote(odd)  # percent-encoded in the URL
    assert (env.data / "d" / odd).read_bytes() == b"z"


def test_name_that_is_not_utf8_is_skipped_with_a_warning(env: Env) -> None:
    d = env.vol / "d"
    d.mkdir()
    (d / "ok").write_bytes(b"1")
    with open(os.path.join(os.fsencode(d), b"bad\xff"), "wb") as f:
        f.write(b"2")
    assert env.run(env.output("/out/d", "d", type="DIRECTORY"))
    assert set(env.logs()) == {"/out/d/ok"}
    [warning] = env.kinds("output_warning")
    assert "bad\\xff" in warning["message"]
    json.dumps(env.events)  # every event is representable


# --- wildcards ------------------------------------------------------------------------------------

def test_wildcard_with_path_prefix(env: Env) -> None:
    for name, body in (("a.txt", b"a"), ("b.txt", b"bb"), ("c.csv", b"c"), (".h.txt", b"h")):
        (env.vol / name).write_bytes(body)
    assert env.run(env.output("/out/*.txt", "w", wildcard=True, path_prefix="/out/"))
    base = f"file://{env.data}/w"
    assert {p: e["url"] for p, e in env.logs().items()} == {
        "/out/a.txt": base + "/a.txt", "/out/b.txt": base + "/b.txt"}
    assert sorted(p.name for p in (env.data / "w").iterdir()) == ["a.txt", "b.txt"]


def test_wildcard_hidden_names_need_a_dot_pattern(env: Env) -> None:
    (env.vol / ".h.txt").write_bytes(b"h")
    assert env.run(env.output("/out/.*.txt", "w", wildcard=True, path_prefix="/out"))
    assert env.logs()["/out/.h.txt"]["url"] == f"file://{env.data}/w/.h.txt"


def test_wildcard_matching_a_directory_expands_it(env: Env) -> None:
    run = env.vol / "runs" / "run1"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "f").write_bytes(b"f")
    (env.vol / "runs" / "other").mkdir()
    assert env.run(env.output("/out/runs/run*", "w", wildcard=True, path_prefix="/out/runs/"))
    [log] = env.events
    assert log["path"] == "/out/runs/run1/sub/f"
    assert log["url"] == f"file://{env.data}/w/run1/sub/f"
    assert (env.data / "w" / "run1" / "sub" / "f").read_bytes() == b"f"


def test_wildcard_in_a_middle_component(env: Env) -> None:
    for sample in ("s1", "s2"):
        (env.vol / sample).mkdir()
        (env.vol / sample / "res.csv").write_bytes(sample.encode())
    (env.vol / "s3").mkdir()
    assert env.run(env.output("/out/s?/res.csv", "w", wildcard=True, path_prefix="/out/"))
    assert set(env.logs()) == {"/out/s1/res.csv", "/out/s2/res.csv"}
    assert (env.data / "w" / "s2" / "res.csv").read_bytes() == b"s2"


def test_wildcard_without_matches_is_not_an_error(env: Env) -> None:
    assert env.run(env.output("/out/*.none", "w", wildcard=True, path_prefix="/out/"),
                   env.output("/out/nodir/*.none", "w", wildcard=True, path_prefix="/out/", index=1))
    assert env.events == []


def test_wildcard_prefix_that_does_not_match_fails(env: Env) -> None:
    (env.vol / "a.txt").write_bytes(b"a")
    assert not env.run(env.output("/out/*.txt", "w", wildcard=True, path_prefix="/elsewhere/"))
    [error] = env.kinds("output_error")
    assert "path_prefix" in error["message"]
    assert not (env.data / "w").exists()


def test_wildcard_prefix_cannot_produce_dot_dot(env: Env) -> None:
    (env.vol / "x").mkdir()
    (env.vol / "x" / "...").write_bytes(b"a")
    assert not env.run(env.output("/out/x/.*", "w/v", wildcard=True, path_prefix="/out/x/."))
    assert env.kinds("output_error") and not env.kinds("output")


# --- symlinks and other things the task may plant -------------------------------------------------

def test_top_level_symlink_leading_outside_the_bind_or_nowhere_is_refused(env: Env) -> None:
    (env.vol / "link").symlink_to(env.secret)
    (env.vol / "dlink").symlink_to(env.outside)
    (env.vol / "dangling").symlink_to("missing.txt")
    assert not env.run(env.output("/out/link", "l", type="FILE"),
                       env.output("/out/dlink", "d", type="DIRECTORY", index=1),
                       env.output("/out/link", "u", index=2),
                       env.output("/out/dangling", "g", type="FILE", index=3))
    assert [e["message"] for e in env.events] == [
        "output 0 (/out/link): is a symlink leading outside the output's bind; refused",
        "output 1 (/out/dlink): is a symlink leading outside the output's bind; refused",
        "output 2 (/out/link): is a symlink leading outside the output's bind; refused",
        "output 3 (/out/dangling): is a dangling symlink; refused"]
    assert not env.secret_copied()
    assert sorted(p.name for p in env.data.iterdir()) == []


def test_top_level_symlink_inside_the_bind_is_copied_as_its_target(env: Env) -> None:
    (env.vol / "adir" / "sub").mkdir(parents=True)
    (env.vol / "adir" / "original.txt").write_bytes(b"orig")
    (env.vol / "adir" / "sub" / "g").write_bytes(b"gg")
    (env.vol / "flink").symlink_to("adir/original.txt")
    (env.vol / "dlink").symlink_to(env.vol / "adir")  # absolute, but inside the bind
    assert env.run(env.output("/out/flink", "f", type="FILE"),
                   env.output("/out/dlink", "d", type="DIRECTORY", index=1))
    f = env.data / "f"
    assert not f.is_symlink() and f.read_bytes() == b"orig"
    assert not (env.data / "d").is_symlink()
    assert (env.data / "d" / "sub" / "g").read_bytes() == b"gg"
    assert {p: e["size_bytes"] for p, e in env.logs().items()} == {
        "/out/flink": "4", "/out/dlink/original.txt": "4", "/out/dlink/sub/g": "2"}
    assert not env.kinds("output_warning")


def test_symlink_in_a_tree_to_a_file_in_the_bind_is_copied_as_a_regular_file(env: Env) -> None:
    # CWL conformance test legal_symlink: `ln -s adir/original.txt symlink.txt` in the output directory
    (env.vol / "adir").mkdir()
    text = b"Who's gonna drive you home\n"
    (env.vol / "adir" / "original.txt").write_bytes(text)
    (env.vol / "symlink.txt").symlink_to("adir/original.txt")
    (env.vol / "adir" / "up.txt").symlink_to("../adir/./original.txt")
    (env.vol / "abs.txt").symlink_to(env.vol / "adir" / "original.txt")
    (env.vol / "chain.txt").symlink_to("symlink.txt")
    assert env.run(env.output("/out", "out", type="DIRECTORY"))
    for name in ("symlink.txt", "adir/up.txt", "abs.txt", "chain.txt", "adir/original.txt"):
        copy = env.data / "out" / name
        assert not copy.is_symlink() and copy.is_file() and copy.read_bytes() == text, name
    logs = env.logs()
    assert logs["/out/symlink.txt"]["size_bytes"] == "27" == str(len(text))
    assert logs["/out/symlink.txt"]["url"] == f"file://{env.data}/out/symlink.txt"
    assert len(logs) == 5 and not env.kinds("output_warning")


def test_symlink_in_a_tree_to_a_directory_in_the_bind_is_copied(env: Env) -> None:
    (env.vol / "real" / "sub").mkdir(parents=True)
    (env.vol / "real" / "a").write_bytes(b"a")
    (env.vol / "real" / "sub" / "b").write_bytes(b"bb")
    d = env.vol / "d"
    d.mkdir()
    (d / "linked").symlink_to("../real")
    assert env.run(env.output("/out/d", "d", type="DIRECTORY"))
    copy = env.data / "d" / "linked"
    assert copy.is_dir() and not copy.is_symlink()
    assert (copy / "a").read_bytes() == b"a" and (copy / "sub" / "b").read_bytes() == b"bb"
    assert {p: e["url"] for p, e in env.logs().items()} == {
        "/out/d/linked/a": f"file://{env.data}/d/linked/a",
        "/out/d/linked/sub/b": f"file://{env.data}/d/linked/sub/b"}
    assert not env.kinds("output_warning")


def test_symlink_loops_in_a_tree_are_cut(env: Env) -> None:
    d = env.vol / "d"
    (d / "sub").mkdir(parents=True)
    (d / "f").write_bytes(b"f")
    (d / "sub" / "up").symlink_to("..")
    (d / "self").symlink_to(".")
    (d / "root").symlink_to(env.vol)  # the whole bind, which holds d again
    (env.vol / "top.txt").write_bytes(b"t")
    assert env.run(env.output("/out/d", "d", type="DIRECTORY"))
    assert set(env.logs()) == {"/out/d/f", "/out/d/root/top.txt"}
    assert sorted(e["message"].split(": ", 1)[1] for e in env.kinds("output_warning")) == [
        f"{p} leads back into a directory being copied (a symlink loop); skipped"
        for p in ("/out/d/root/d", "/out/d/self", "/out/d/sub/up")]
    copy = env.data / "d"
    assert sorted(p.name for p in copy.iterdir()) == ["f", "root", "sub"]
    assert sorted(p.name for p in (copy / "root").iterdir()) == ["top.txt"]
    assert list((copy / "sub").iterdir()) == []


def test_symlinks_in_a_tree_leading_outside_the_bind_are_skipped(env: Env) -> None:
    other = env.workdir / "volumes" / "1"
    other.mkdir()
    (other / "f").write_bytes(b"other volume")
    d = env.vol / "d"
    d.mkdir()
    (d / "real.txt").write_bytes(b"r")
    (d / "to_secret").symlink_to(env.secret)
    (d / "to_dotdot_secret").symlink_to(os.path.relpath(env.secret, d))
    (d / "to_outside_dir").symlink_to(env.outside)
    (d / "to_hostname").symlink_to("/etc/hostname")
    (d / "to_other_volume").symlink_to(other / "f")
    (d / "via_inside").symlink_to("to_secret")  # a chain that ends outside
    assert env.run(env.output("/out/d", "d", type="DIRECTORY"))
    assert set(env.logs()) == {"/out/d/real.txt"}
    assert sorted(e["message"] for e in env.kinds("output_warning")) == [
        f"output 0 (/out/d): /out/d/{n} is a symlink leading outside the output's bind; skipped"
        for n in ("to_dotdot_secret", "to_hostname", "to_other_volume", "to_outside_dir", "to_secret",
                  "via_inside")]
    assert not env.secret_copied()
    assert sorted(p.name for p in (env.data / "d").iterdir()) == ["real.txt"]


def test_dangling_symlinks_in_a_tree_are_skipped(env: Env) -> None:
    d = env.vol / "d"
    d.mkdir()
    (d / "real.txt").write_bytes(b"r")
    (d / "missing").symlink_to("nothing.txt")
    (d / "missing_dir").symlink_to("nodir/nothing.txt")
    (d / "through_a_file").symlink_to("real.txt/x")
    (d / "loop_a").symlink_to("loop_b")
    (d / "loop_b").symlink_to("loop_a")
    assert env.run(env.output("/out/d", "d", type="DIRECTORY"))
    assert set(env.logs()) == {"/out/d/real.txt"}
    assert sorted(e["message"].split(": ", 1)[1] for e in env.kinds("output_warning")) == [
        "/out/d/loop_a is a symlink loop; skipped", "/out/d/loop_b is a symlink loop; skipped",
        "/out/d/missing is a dangling symlink; skipped", "/out/d/missing_dir is a dangling symlink; skipped",
        "/out/d/through_a_file is a dangling symlink; skipped"]
    assert sorted(p.name for p in (env.data / "d").iterdir()) == ["real.txt"]


def test_symlinks_matched_by_a_wildcard_are_skipped(env: Env) -> None:
    (env.vol / "a.txt").write_bytes(b"a")
    (env.vol / "s.txt").symlink_to(env.secret)
    (env.vol / "sdir").symlink_to(env.outside)
    assert env.run(env.output("/out/s*", "w", wildcard=True, path_prefix="/out/"),
                   env.output("/out/*/secret.txt", "v", wildcard=True, path_prefix="/out/", index=1),
                   env.output("/out/*.txt", "t", wildcard=True, path_prefix="/out/", index=2))
    assert set(env.logs()) == {"/out/a.txt"}
    # a symlink is never descended into, even where glob would: each one matched is reported
    assert sorted((e["output"], e["message"].split(": ", 1)[1]) for e in env.kinds("output_warning")) == [
        (0, "/out/s.txt is a symlink; skipped"), (0, "/out/sdir is a symlink; skipped"),
        (1, "/out/s.txt is a symlink; skipped"), (1, "/out/sdir is a symlink; skipped"),
        (2, "/out/s.txt is a symlink; skipped")]
    assert not env.secret_copied()


def test_parent_component_symlink_cannot_lead_outside(env: Env) -> None:
    (env.vol / "sub").symlink_to(env.outside)
    assert not env.run(env.output("/out/sub/secret.txt", "a", type="FILE"),
                       env.output("/out/sub", "b", type="DIRECTORY", index=1),
                       env.output("/out/sub/*.txt", "c", wildcard=True, path_prefix="/out/", index=2))
    assert [e["output"] for e in env.kinds("output_error")] == [0, 1, 2]
    assert "outside" in env.events[0]["message"]
    assert not env.secret_copied()


def test_parent_symlink_into_the_rest_of_the_work_area_is_refused(env: Env) -> None:
    other = env.workdir / "volumes" / "1"
    other.mkdir()
    (other / "f").write_bytes(b"other volume")
    (env.vol / "sub").symlink_to(other)
    assert not env.run(env.output("/out/sub/f", "a", type="FILE"))
    assert not (env.data / "a").exists()


def test_parent_symlink_staying_inside_the_bind_is_followed(env: Env) -> None:
    (env.vol / "real").mkdir()
    (env.vol / "real" / "f").write_bytes(b"f")
    (env.vol / "latest").symlink_to("real")
    assert env.run(env.output("/out/latest/f", "a", type="FILE"))
    assert env.logs()["/out/latest/f"]["size_bytes"] == "1"


def test_bind_outside_the_work_area_is_refused(env: Env) -> None:
    out = env.output("/out/secret.txt", "a", type="FILE")
    out["bind_host"] = str(env.outside)
    assert not env.run(out)
    assert not env.secret_copied()


def test_fifo_is_skipped_without_hanging(env: Env) -> None:
    d = env.vol / "d"
    d.mkdir()
    os.mkfifo(d / "fifo")
    (d / "f").write_bytes(b"f")
    os.mkfifo(env.vol / "top.fifo")
    manifest = env.workdir / "outputs.json"
    manifest.write_text(json.dumps(env.manifest(
        env.output("/out/d", "d", type="DIRECTORY"),
        env.output("/out/*.fifo", "w", wildcard=True, path_prefix="/out/", index=1),
        env.output("/out/top.fifo", "t", index=2))))
    proc = run_module(manifest, timeout=30)
    assert proc.returncode == 1, proc.stderr
    events = records(env.workdir)
    assert [(e["event"], e["output"]) for e in events] == [
        ("output", 0), ("output_warning", 0), ("output_warning", 1), ("output_error", 2)]
    assert "FIFO" in events[1]["message"]
    assert sorted(p.name for p in (env.data / "d").iterdir()) == ["f"]


# --- destinations ---------------------------------------------------------------------------------

def test_symlink_at_the_destination_name_is_replaced_not_followed(env: Env) -> None:
    (env.vol / "f").write_bytes(b"task data")
    (env.data / "f").symlink_to(env.secret)
    d = env.vol / "d"
    d.mkdir()
    (d / "g").write_bytes(b"task data")
    (env.data / "d").mkdir()
    (env.data / "d" / "g").symlink_to(env.secret)
    assert env.run(env.output("/out/f", "f", type="FILE"), env.output("/out/d", "d", index=1))
    assert env.secret.read_bytes() == SECRET
    for p in (env.data / "f", env.data / "d" / "g"):
        assert not p.is_symlink() and p.read_bytes() == b"task data"


def test_destination_outside_the_roots_is_refused(env: Env) -> None:
    (env.vol / "f").write_bytes(b"x")
    out = env.output("/out/f", "f", type="FILE")
    out["dest"] = str(env.outside / "f")
    dotdot = env.output("/out/f", "f", type="FILE", index=1)
    dotdot["dest"] = str(env.data / ".." / "outside" / "g")
    assert not env.run(out, dotdot)
    assert [e["output"] for e in env.kinds("output_error")] == [0, 1]
    assert "outside the allowed data roots" in env.events[0]["message"]
    assert sorted(p.name for p in env.outside.iterdir()) == ["secret.txt"]


def test_destination_parent_symlink_leading_outside_is_refused(env: Env) -> None:
    (env.vol / "f").write_bytes(b"x")
    (env.data / "proj").symlink_to(env.outside)
    assert not env.run(env.output("/out/f", "proj/f", type="FILE"))
    assert sorted(p.name for p in env.outside.iterdir()) == ["secret.txt"]


def test_destination_that_is_a_directory_fails(env: Env) -> None:
    (env.vol / "f").write_bytes(b"x")
    (env.data / "f").mkdir()
    assert not env.run(env.output("/out/f", "f", type="FILE"))
    assert "exists as a directory" in env.kinds("output_error")[0]["message"]


def test_directory_where_a_file_exists_fails_for_that_subtree(env: Env) -> None:
    d = env.vol / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_bytes(b"x")
    (d / "ok").write_bytes(b"ok")
    (env.data / "d").mkdir()
    (env.data / "d" / "sub").write_bytes(b"in the way")
    assert not env.run(env.output("/out/d", "d", type="DIRECTORY"))
    assert set(env.logs()) == {"/out/d/ok"}
    assert len(env.kinds("output_error")) == 1


# --- manifest and the module entry point ----------------------------------------------------------

@pytest.mark.parametrize("bad", [
    [], {"workdir": "rel", "roots": ["/d"], "outputs": []},
    {"workdir": "/w", "roots": [], "outputs": []},
    {"workdir": "/w", "roots": ["/d"], "outputs": [{"index": "0"}]},
    {"workdir": "/w", "roots": ["/d"], "outputs": [{"index": True}]},
])
def test_bad_manifest(bad: object) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(bad)


def test_bad_output_type_in_manifest(env: Env) -> None:
    out = env.output("/out/f", "f", type="LINK")
    with pytest.raises(ManifestError):
        collect(env.manifest(out), env.events.append)


def test_module_writes_the_record_and_exits_1_on_a_failed_output(env: Env) -> None:
    (env.vol / "ok.txt").write_bytes(b"ok\n")
    (env.workdir / "record.jsonl").write_text('{"event":"job_start"}\n')
    manifest = env.workdir / "outputs.json"
    manifest.write_text(json.dumps(env.manifest(
        env.output("/out/ok.txt", "ok.txt", type="FILE"),
        env.output("/out/missing.txt", "missing.txt", type="FILE", index=1))))
    proc = run_module(manifest)
    assert proc.returncode == 1
    assert "not found" in proc.stderr
    events = records(env.workdir)
    assert [e["event"] for e in events] == ["job_start", "output", "output_error"]
    assert events[1]["size_bytes"] == "3" and events[2]["output"] == 1


def test_module_exits_0_when_all_succeed_and_2_on_a_bad_manifest(env: Env) -> None:
    (env.vol / "ok.txt").write_bytes(b"ok")
    manifest = env.workdir / "outputs.json"
    manifest.write_text(json.dumps(env.manifest(env.output("/out/ok.txt", "ok.txt", type="FILE"))))
    assert run_module(manifest).returncode == 0
    manifest.write_text("{not json")
    assert run_module(manifest).returncode == 2
    manifest.write_text(json.dumps({"workdir": str(env.workdir), "roots": "x", "outputs": []}))
    assert run_module(manifest).returncode == 2
    assert [e["event"] for e in records(env.workdir)] == ["output"]


def test_absurdly_deep_tree_fails_below_the_limit_without_crashing(env: Env) -> None:
    from hpc_bridge.jobside.collect import MAX_DEPTH
    deep = env.vol / "d"
    deep.mkdir()
    (deep / "top").write_bytes(b"t")
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(MAX_DEPTH + 5):  # by descriptor: the full path would exceed PATH_MAX
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    assert not env.run(env.output("/out/d", "d", type="DIRECTORY"))
    assert set(env.logs()) == {"/out/d/top"}
    [error] = env.kinds("output_error")
    assert f"deeper than {MAX_DEPTH}" in error["message"]


def test_destination_inside_the_source_is_not_copied_into_itself(env: Env) -> None:
    (env.vol / "d").mkdir()
    (env.vol / "d" / "f").write_bytes(b"f")
    out = env.output("/out/d", "x", type="DIRECTORY")
    out["dest"] = str(env.vol / "d" / "copy")
    manifest = env.manifest(out)
    manifest["roots"] = [str(env.tmp)]
    events: list[dict[str, Any]] = []
    assert collect(manifest, events.append)
    assert [e["event"] for e in events] == ["output_warning", "output"]
    assert (env.vol / "d" / "copy" / "f").read_bytes() == b"f"


# --- directories the job user may enter but not list (mode 0711) ----------------------------------

class UserEnv:
    """As `Env`, but owned for an unprivileged user who may pass through, not list, data/A (0711, root's).

    Made under a fresh /tmp directory (0711): pytest's own tmp_path is private to root.
    """

    def __init__(self, base: Path, user: pwd.struct_passwd) -> None:
        self.uid, self.gid = user.pw_uid, user.pw_gid
        self.workdir, self.vol, self.data = base / "work", base / "work" / "volumes" / "0", base / "data"
        self.vol.mkdir(parents=True)
        for d in (self.workdir, self.workdir / "volumes", self.vol):
            os.chown(d, self.uid, self.gid)
        self.workdir.chmod(0o700)
        self.traverse_only = self.data / "A"
        self.traverse_only.mkdir(parents=True)
        self.traverse_only.chmod(0o711)  # root's: the user may enter it but not list (nor O_RDONLY) it
        self.dest = self.traverse_only / "B"
        self.dest.mkdir()
        os.chown(self.dest, self.uid, self.gid)

    def file(self, rel: str, content: bytes) -> None:
        path = self.vol / rel
        for parent in reversed(path.relative_to(self.vol).parents[:-1]):
            d = self.vol / parent
            d.mkdir(exist_ok=True)
            os.chown(d, self.uid, self.gid)
        path.write_bytes(content)
        os.chown(path, self.uid, self.gid)

    def output(self, path: str, dest: str, **kw: Any) -> dict[str, Any]:
        host = str(self.dest / dest)
        return {"index": 0, "type": None, "path_prefix": None, "wildcard": False, **kw, "path": path,
                "bind_container": "/out", "bind_host": str(self.vol), "url": "file://" + host, "dest": host}

    def collect_as_user(self, *outputs: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
        """collect() in a forked child that dropped to the user, as the batch script runs it."""
        manifest = {"workdir": str(self.workdir), "roots": [str(self.data)],
                    "outputs": [dict(o, index=i) for i, o in enumerate(outputs)]}
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            status = 3
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
                events: list[dict[str, Any]] = []
                ok = collect(manifest, events.append)
                with os.fdopen(write, "w") as out:
                    json.dump({"ok": ok, "events": events}, out)
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(write)
        with os.fdopen(read) as f:
            text = f.read()
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0, "the child failed (see its traceback above)"
        result = json.loads(text)
        return result["ok"], result["events"]


@pytest.fixture
def user_env() -> Iterator[UserEnv]:
    if os.geteuid() != 0:
        pytest.skip("needs root (as in `make test`): the test chowns directories to an unprivileged user "
                    "and runs the collector as that user in a child process")
    try:
        user = pwd.getpwnam("hpcb")  # the dev cluster's job user, else any unprivileged one
    except KeyError:
        user = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="hpcb-collect-"))
    try:
        base.chmod(0o711)
        yield UserEnv(base, user)
    finally:
        shutil.rmtree(base)


def test_outputs_land_below_a_destination_directory_the_job_user_cannot_list(user_env: UserEnv) -> None:
    """data/A is 0711 and root's: the walk from the data root passes through it (it used to need
    O_RDONLY there and failed with "destination ... cannot be created: Permission denied")."""
    e = user_env
    e.file("result.txt", b"hello")
    e.file("res/sub/f.txt", b"in a tree")
    ok, events = e.collect_as_user(e.output("/out/result.txt", "x/y/result.txt", type="FILE"),
                                   e.output("/out/res", "tree", type="DIRECTORY"),
                                   e.output("/out/result.txt", "direct.txt", type="FILE"))
    assert ok, events
    assert (e.dest / "x" / "y" / "result.txt").read_bytes() == b"hello"
    assert (e.dest / "tree" / "sub" / "f.txt").read_bytes() == b"in a tree"
    assert (e.dest / "direct.txt").read_bytes() == b"hello"
    assert os.stat(e.dest / "x" / "y" / "result.txt").st_uid == e.uid  # written as the user
    assert sorted(os.listdir(e.dest)) == ["direct.txt", "tree", "x"]  # no temp file left behind
    assert [ev["event"] for ev in events] == ["output"] * 3


def test_sources_below_a_directory_the_job_user_cannot_list_are_collected(user_env: UserEnv) -> None:
    """A task may leave a directory of its outputs searchable but not readable (0311): a file below
    it, or a wildcard passing through it, is still collected; a wildcard that must list it is not."""
    e = user_env
    e.file("hidden/f.txt", b"f")
    e.file("hidden/sub/w1.txt", b"w1")
    (e.vol / "hidden").chmod(0o311)
    ok, events = e.collect_as_user(
        e.output("/out/hidden/f.txt", "f.txt", type="FILE"),
        e.output("/out/hidden/sub/*.txt", "w", wildcard=True, path_prefix="/out/hidden/sub"),
        e.output("/out/h*/sub/*.txt", "g", wildcard=True, path_prefix="/out"))
    assert ok, events
    assert (e.dest / "f.txt").read_bytes() == b"f"
    assert (e.dest / "w" / "w1.txt").read_bytes() == b"w1"
    assert (e.dest / "g" / "hidden" / "sub" / "w1.txt").read_bytes() == b"w1"
    ok, events = e.collect_as_user(e.output("/out/hidden/*.txt", "n", wildcard=True, path_prefix="/out"))
    assert not ok and "Permission denied" in events[0]["message"]


# --- owner areas ----------------------------------------------------------------------------------

def test_destinations_stay_inside_the_owners_areas(env: Env) -> None:
    """The plan allowed only the owner's area: a manifest aimed elsewhere in the root is refused."""
    (env.data / "mine").mkdir()
    (env.vol / "f").write_bytes(b"x")
    manifest = {**env.manifest(env.output("/out/f", "mine/f", type="FILE"),
                               env.output("/out/f", "theirs/f", type="FILE", index=1)),
                "areas": [str(env.data / "mine")]}
    env.events = []
    assert not collect(manifest, env.events.append)
    assert (env.data / "mine" / "f").read_bytes() == b"x"
    assert not (env.data / "theirs").exists()
    assert "outside the areas" in env.kinds("output_error")[0]["message"]


def test_a_shared_area_never_has_a_file_replaced(env: Env) -> None:
    shared = env.data / "exchange"
    shared.mkdir()
    (shared / "taken.txt").write_bytes(b"written by another owner")
    (env.vol / "f").write_bytes(b"mine")
    (env.vol / "d").mkdir()
    (env.vol / "d" / "taken.txt").write_bytes(b"mine too")
    (env.vol / "d" / "new.txt").write_bytes(b"new")
    manifest = {**env.manifest(env.output("/out/f", "exchange/taken.txt", type="FILE"),
                               env.output("/out/f", "exchange/fresh.txt", type="FILE", index=1),
                               env.output("/out/d", "exchange", type="DIRECTORY", index=2)),
                "areas": [str(shared)], "keep": [str(shared)]}
    env.events = []
    assert not collect(manifest, env.events.append)
    assert (shared / "taken.txt").read_bytes() == b"written by another owner"
    assert (shared / "fresh.txt").read_bytes() == b"mine"
    assert (shared / "new.txt").read_bytes() == b"new"
    errors = [e["message"] for e in env.kinds("output_error")]
    assert len(errors) == 2 and all("never replaces" in m for m in errors)
    assert not [p for p in shared.iterdir() if p.name.startswith(".hpc-bridge-")]  # no temp file left


def test_outside_a_keep_area_files_are_replaced(env: Env) -> None:
    (env.data / "old.txt").write_bytes(b"old")
    (env.vol / "f").write_bytes(b"new")
    assert env.run(env.output("/out/f", "old.txt", type="FILE"))
    assert (env.data / "old.txt").read_bytes() == b"new"
