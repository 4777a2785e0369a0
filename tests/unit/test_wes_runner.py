"""hpc-bridge-cwl-runner's pieces: what it attaches and how it names it, and how outputs are brought
into --outdir (copied, or downloaded through /runs/{id}/outputs). The whole chain runs in
tests/integration/test_wes.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from hpc_bridge.wes.runner import Outputs, RunnerError, Submission, main, workflow_files

WF = """cwlVersion: v1.2
class: Workflow
inputs:
  reads: File
  refdir: Directory
outputs: []
steps:
  s:
    run: tools/cat.cwl
    in: {f: reads}
    out: []
"""
CAT = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  InlineJavascriptRequirement:
    expressionLib: [{$include: lib.js}]
baseCommand: cat
inputs:
  f: File
  extra: {type: File, default: {class: File, location: defaults/extra.txt}}
outputs: []
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "tools" / "defaults").mkdir(parents=True)
    (root / "wf.cwl").write_text(WF)
    (root / "tools" / "cat.cwl").write_text(CAT)
    (root / "tools" / "lib.js").write_text("var x = 1;")
    (root / "tools" / "defaults" / "extra.txt").write_text("extra")
    (root / "inputs" / "ref" / "sub").mkdir(parents=True)
    (root / "inputs" / "reads 1.txt").write_text("ACGT")
    (root / "inputs" / "reads 1.txt.idx").write_text("index")  # a secondary file by pattern
    (root / "inputs" / "reads 10.txt").write_text("not a companion")
    (root / "inputs" / "ref" / "sub" / "a.fa").write_text(">a")
    (root / "jobs").mkdir()
    return root


def test_workflow_files_follow_run_include_and_defaults(project: Path) -> None:
    (project / "tools" / "defaults" / "extra.txt.2").write_text("a secondary file of the default")
    assert sorted(workflow_files(str(project / "wf.cwl"))) == sorted(
        str(project / p) for p in ("wf.cwl", "tools/cat.cwl", "tools/lib.js", "tools/defaults/extra.txt",
                                   "tools/defaults/extra.txt.2"))


def test_an_invalid_document_is_attached_alone(tmp_path: Path) -> None:
    (tmp_path / "bad.cwl").write_text("cwlVersion: v1.2\nclass: Nope\n")
    assert workflow_files(str(tmp_path / "bad.cwl")) == [str(tmp_path / "bad.cwl")]


def test_submission_attaches_job_files_with_relative_names(project: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "big.bam").write_text("bam")
    job = {"reads": {"class": "File", "location": "../inputs/reads%201.txt"},
           "refdir": {"class": "Directory", "path": "../inputs/ref"},
           "big": {"class": "File", "location": (shared / "big.bam").as_uri()},
           "web": {"class": "File", "location": "https://example.org/x.txt"},
           "literal": {"class": "File", "basename": "l.txt", "contents": "hi"}, "n": 1}
    (project / "jobs" / "job.json").write_text(json.dumps(job))
    sub = Submission(str(project / "wf.cwl"), str(project / "jobs" / "job.json"), [str(shared)])
    sub.prepare()
    assert sub.base == str(project)
    names = sorted(str(Path(p).relative_to(project)) for p in dict.fromkeys(sub.files))
    assert names == ["inputs/reads 1.txt", "inputs/reads 1.txt.idx", "inputs/ref/sub/a.fa", "tools/cat.cwl",
                     "tools/defaults/extra.txt", "tools/lib.js", "wf.cwl"]
    assert sub.params == {
        "reads": {"class": "File", "location": "./inputs/reads%201.txt"},
        "refdir": {"class": "Directory", "location": "./inputs/ref"},
        "big": {"class": "File", "location": (shared / "big.bam").as_uri()},  # shared: not uploaded
        "web": {"class": "File", "location": "https://example.org/x.txt"},
        "literal": job["literal"], "n": 1}


def test_the_tool_and_job_may_be_file_uris_as_cwltest_passes_them(project: Path) -> None:
    (project / "jobs" / "job.json").write_text(json.dumps({"n": 1}))
    sub = Submission((project / "wf.cwl").as_uri() + "#main", (project / "jobs" / "job.json").as_uri(), [])
    sub.prepare()
    assert sub.tool == str(project / "wf.cwl") and sub.fragment == "main" and sub.params == {"n": 1}
    with pytest.raises(RunnerError, match="only local files"):
        Submission("https://example.org/wf.cwl", None, [])


def test_a_missing_input_is_an_error_before_anything_is_sent(project: Path) -> None:
    (project / "jobs" / "job.yml").write_text("reads: {class: File, location: nope.txt}\n")
    sub = Submission(str(project / "wf.cwl"), str(project / "jobs" / "job.yml"), [])
    with pytest.raises(RunnerError, match="nope.txt"):
        sub.prepare()


class FakeClient:
    def __init__(self, files: dict[str, bytes | list[dict[str, str]]]) -> None:
        self.files = files
        self.calls: list[str] = []

    def call(self, method: str, path: str, **kwargs: Any):
        location = kwargs["params"]["location"]
        self.calls.append(location)
        content = self.files[location]

        class Resp:
            def __init__(self) -> None:
                self.headers = {"content-type": "application/json" if isinstance(content, list)
                                else "application/octet-stream"}

            def json(self) -> dict:
                return {"listing": content}

            def iter_content(self, size: int):
                yield content

        return Resp()


def test_outputs_are_downloaded_when_not_local_and_described_like_cwltool(tmp_path: Path) -> None:
    remote = "file:///nonexistent/run/out"
    client = FakeClient({f"{remote}/result.txt": b"42\n", f"{remote}/result.txt.idx": b"i",
                         f"{remote}/dir": [{"class": "File", "basename": "a", "location": f"{remote}/dir/a"},
                                           {"class": "Directory", "basename": "s", "location": f"{remote}/dir/s"}],
                         f"{remote}/dir/a": b"A", f"{remote}/dir/s": []})
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "result.txt").write_text("an earlier file of the same name")
    outputs = {"result": {"class": "File", "location": f"{remote}/result.txt", "basename": "result.txt",
                          "checksum": "sha1$stale", "size": 3,
                          "secondaryFiles": [{"class": "File", "location": f"{remote}/result.txt.idx"}]},
               "dir": {"class": "Directory", "location": f"{remote}/dir", "basename": "dir"},
               "list": [1, "x"], "none": None}
    result = Outputs(client, "r1", str(outdir)).relocate(outputs)  # type: ignore[arg-type]
    target = outdir / "result.txt_2"
    assert result["result"]["location"] == target.as_uri() and result["result"]["path"] == str(target)
    assert result["result"]["checksum"] == "sha1$" + hashlib.sha1(b"42\n").hexdigest()
    assert result["result"]["size"] == 3 and target.read_bytes() == b"42\n"
    assert result["result"]["secondaryFiles"][0]["basename"] == "result.txt.idx"
    assert [e["basename"] for e in result["dir"]["listing"]] == ["a", "s"]
    assert result["dir"]["listing"][1] == {"class": "Directory", "location": (outdir / "dir" / "s").as_uri(),
                                           "path": str(outdir / "dir" / "s"), "basename": "s", "listing": []}
    assert result["list"] == [1, "x"] and result["none"] is None


def test_local_outputs_are_copied(tmp_path: Path) -> None:
    (tmp_path / "run" / "d").mkdir(parents=True)
    (tmp_path / "run" / "f.txt").write_text("f")
    (tmp_path / "run" / "d" / "g").write_text("g")
    outputs = {"f": {"class": "File", "location": (tmp_path / "run" / "f.txt").as_uri()},
               "d": {"class": "Directory", "location": (tmp_path / "run" / "d").as_uri()}}
    client = FakeClient({})
    result = Outputs(client, "r", str(tmp_path / "out")).relocate(outputs)  # type: ignore[arg-type]
    assert client.calls == [] and (tmp_path / "out" / "d" / "g").read_text() == "g"
    assert result["f"]["path"] == str(tmp_path / "out" / "f.txt")


def test_a_file_named_twice_is_placed_once_and_same_names_of_others_are_kept_apart(tmp_path: Path) -> None:
    (tmp_path / "run" / "a").mkdir(parents=True)
    (tmp_path / "run" / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / "run" / d / "blurb").write_text(d)
    same = {"class": "File", "location": (tmp_path / "run" / "a" / "blurb").as_uri()}
    other = {"class": "File", "location": (tmp_path / "run" / "b" / "blurb").as_uri()}
    result = Outputs(FakeClient({}), "r", str(tmp_path / "out")).relocate(  # type: ignore[arg-type]
        {"x": [same], "y": [dict(same)], "z": other})
    assert result["x"][0]["path"] == result["y"][0]["path"] == str(tmp_path / "out" / "blurb")
    assert result["z"]["path"] == str(tmp_path / "out" / "blurb_2")
    assert (tmp_path / "out" / "blurb_2").read_text() == "b"


def test_no_server_is_exit_1_with_a_message(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quiet", "--url", "http://127.0.0.1:9", str(project / "wf.cwl")]) == 1
    assert "no answer from http://127.0.0.1:9" in capsys.readouterr().err
