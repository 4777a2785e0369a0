"""A WES run's crate (wes/crate.py) from a run record, its tasks and the engine's records: it validates
at provenance-run-crate-0.5 with no REQUIRED issue (roc-validator, offline), for a finished and a failed
run, and carries what each step did; the engine's records (cwl/provenance.py) give the checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from hpc_bridge.cwl import provenance
from hpc_bridge.cwl.fetch import FetchPolicy
from hpc_bridge.store.runs import RunRow
from hpc_bridge.wes import crate

from ..crates import seeded_cache, unzip, validate
from .test_monitor import row as task_row

TOOL = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: "docker.io/library/busybox:1.36"}
baseCommand: [sh, -c]
arguments: ["tr a-z A-Z < $(inputs.text.path) > out.txt"]
inputs:
  text: File
outputs:
  out: {type: File, outputBinding: {glob: out.txt}}
"""
WORKFLOW = """cwlVersion: v1.2
class: Workflow
inputs:
  text: File
  label: string?
outputs:
  result: {type: File, outputSource: second/out}
steps:
  first: {run: shout.cwl, in: {text: text}, out: [out]}
  second: {run: shout.cwl, in: {text: first/out}, out: [out]}
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded_cache(tmp_path_factory.mktemp("validator"))


def _run(tmp_path: Path, state: str) -> tuple[RunRow, list[Any], crate.RunRecords, Path]:
    """A 2-step run as the service and the engine leave it: packed workflow and checksums in the run dir."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "shout.cwl").write_text(TOOL)
    (run_dir / "wf.cwl").write_text(WORKFLOW)
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("hello\n")
    (data / "out.txt").write_text("HELLO\n")
    assert provenance.write_packed(str(run_dir / "wf.cwl"), FetchPolicy(roots=(str(run_dir),)), run_dir)
    params = {"text": {"class": "File", "location": f"file://{data}/in.txt"}}
    outputs = {"result": {"class": "File", "location": f"file://{data}/out.txt"}} if state == "COMPLETE" else None
    provenance.record(run_dir, inputs=params, outputs=outputs, engine={"name": "cwltool", "version": "3.3"})
    run = RunRow(seq=1, id="r1", owner="iss#alice", state=state, created_at="2026-12-06T10:00:00.000000Z",
                 updated_at="2026-12-06T10:01:00.000000Z", start_time="2026-12-06T10:00:01.000000Z",
                 end_time="2026-12-06T10:01:00.000000Z",
                 request={"workflow_url": "wf.cwl", "workflow_type": "CWL", "workflow_type_version": "v1.2",
                          "workflow_params": params},
                 tags={}, run_dir=str(run_dir), workflow=str(run_dir / "wf.cwl"), cancel_requested=0,
                 engine_pid=None, engine_start=None, launches=1, exit_code=0 if state == "COMPLETE" else 3,
                 outputs=outputs, system_logs=["the engine ended: step second failed"] if state != "COMPLETE" else [])
    mid = f"file://{tmp_path}/work/t1/out.txt"
    tasks = [
        task_row(id="t1", state="COMPLETE", job_id="101", tags={"wes_run_id": "r1", "cwl_step": "first"},
                 task={"executors": [{"image": "docker.io/library/busybox:1.36", "command": ["sh", "-c", "tr"]}],
                       "inputs": [{"url": f"file://{data}/in.txt", "path": "/in.txt"}]},
                 outputs=[{"url": mid, "path": "/out.txt", "size_bytes": "6"}], start_time="2026-12-06T10:00:02Z",
                 end_time="2026-12-06T10:00:10Z", executor_logs=[{"exit_code": 0}]),
        task_row(id="t2", state=state if state != "COMPLETE" else "COMPLETE", job_id="102",
                 tags={"wes_run_id": "r1", "cwl_step": "second"},
                 task={"executors": [{"image": "docker.io/library/busybox:1.36", "command": ["sh", "-c", "tr"]}],
                       "inputs": [{"url": mid, "path": "/in.txt"}]},
                 start_time="2026-12-06T10:00:12Z", end_time="2026-12-06T10:00:20Z",
                 executor_logs=[{"exit_code": 0 if state == "COMPLETE" else 2}]),
    ]
    return run, tasks, crate.read_records(str(run_dir)), data


CTX = crate.CrateContext(service_name="hpc-bridge", service_version="0.1.0",
                         service_url="http://127.0.0.1:8000/ga4gh/wes/v1", agent="alice")


@pytest.mark.parametrize("state", ["COMPLETE", "EXECUTOR_ERROR"])
def test_a_runs_crate_validates_as_a_provenance_run_crate(tmp_path: Path, cache: Path, state: str) -> None:
    run, tasks, records, data = _run(tmp_path, state)
    directory = unzip(crate.build(run, tasks, records, CTX), tmp_path / "crate")
    issues = validate(directory, cache)
    assert issues == [], [(i.identifier, i.message) for i in issues]

    graph = {e["@id"]: e for e in json.loads((directory / "ro-crate-metadata.json").read_text())["@graph"]}
    root = graph["./"]
    assert {c["@id"] for c in root["conformsTo"]} == {uri for uri, _, _ in crate.PROFILES}
    assert root["mainEntity"] == {"@id": "packed.cwl"}
    assert (directory / "packed.cwl").exists()
    wf_run = graph["#run-r1"]
    status = "CompletedActionStatus" if state == "COMPLETE" else "FailedActionStatus"
    assert wf_run["actionStatus"].endswith(status) and ("error" in wf_run) == (state != "COMPLETE")
    steps = [graph[f"#task-{t}"] for t in ("t1", "t2")]
    assert [graph[s["instrument"]["@id"]]["@type"] for s in steps] == ["SoftwareApplication"] * 2
    ids = {graph[i["@id"]]["propertyID"]: graph[i["@id"]]["value"] for i in steps[0]["identifier"]}
    assert ids == {"GA4GH TES task id": "t1", "Slurm job id": "101"}
    image = graph[steps[0]["containerImage"]["@id"]]
    assert (image["registry"], image["name"], image["tag"]) == ("docker.io", "library/busybox", "1.36")
    controls = [e for e in graph.values() if e.get("@type") == "ControlAction"]
    assert sorted(graph[c["instrument"]["@id"]]["name"] for c in controls) == ["first", "second"]
    organize = next(e for e in graph.values() if e.get("@type") == "OrganizeAction")
    assert organize["result"] == {"@id": "#run-r1"} and graph[organize["instrument"]["@id"]]["version"] == "3.3"
    # The checksums are the files' (computed by the engine, as the run's user).
    source = graph[f"file://{data}/in.txt"]
    assert source["sha256"] == hashlib.sha256(b"hello\n").hexdigest() and source["contentSize"] == "6"
    if state == "COMPLETE":
        assert graph[f"file://{data}/out.txt"]["sha256"] == hashlib.sha256(b"HELLO\n").hexdigest()
        assert wf_run["result"] == {"@id": f"file://{data}/out.txt"}


def test_a_broken_crate_does_not_validate(tmp_path: Path, cache: Path) -> None:
    """The check can fail: without the OrganizeAction's result the profile's MUST is broken."""
    run, tasks, records, _ = _run(tmp_path, "COMPLETE")
    directory = unzip(crate.build(run, tasks, records, CTX), tmp_path / "crate")
    meta = directory / "ro-crate-metadata.json"
    doc = json.loads(meta.read_text())
    for entity in doc["@graph"]:
        if entity.get("@type") == "OrganizeAction":
            del entity["result"]
    meta.write_text(json.dumps(doc))
    assert "provenance-run-crate-0.5_8.2" in {i.identifier for i in validate(directory, cache)}


def test_the_engines_records_are_read_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("not the user's")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "packed.cwl").symlink_to(tmp_path / "secret")
    (tmp_path / "run" / "provenance.json").write_text("[1, 2]")
    assert crate.read_records(str(tmp_path / "run")) == crate.RunRecords()


def test_odd_records_in_the_users_run_dir_are_no_records(tmp_path: Path) -> None:
    """The run dir is the user's: a directory in a record's place, or fields of the wrong kind."""
    (tmp_path / "packed.cwl").mkdir()
    (tmp_path / "provenance.json").write_text(json.dumps({"files": [1], "engine": "x", "inputs": "y"}))
    assert crate.read_records(str(tmp_path)) == crate.RunRecords()


def _zip(path: Path, files: dict[str, str | bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


def test_a_run_from_our_crate_gets_its_workflow_and_recorded_inputs(tmp_path: Path) -> None:
    from hpc_bridge.wes import fromcrate

    run, tasks, records, data = _run(tmp_path, "COMPLETE")
    zipped = tmp_path / "run.zip"
    zipped.write_bytes(crate.build(run, tasks, records, CTX))
    again = fromcrate.read_crate(str(zipped), max_bytes=1 << 20)
    assert again.workflow == "crate/packed.cwl" and list(again.members) == ["crate/packed.cwl"]
    assert json.loads(again.members["crate/packed.cwl"]) == json.loads(records.packed or "")
    assert again.params == {"text": {"class": "File", "location": f"file://{data}/in.txt"}} == records.params


def test_a_run_from_another_producers_crate(tmp_path: Path) -> None:
    """Files inside the crate are attached; others are referenced; plain PropertyValues are values."""
    from hpc_bridge.wes import fromcrate

    graph = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"}},
        {"@id": "./", "@type": "Dataset", "mainEntity": {"@id": "wf/main.cwl"}},
        {"@id": "wf/main.cwl", "@type": ["File", "ComputationalWorkflow"]},
        {"@id": "#in-reads", "@type": "FormalParameter", "name": "reads"},
        {"@id": "#in-ref", "@type": "FormalParameter", "name": "ref"},
        {"@id": "#in-k", "@type": "FormalParameter", "name": "k"},
        {"@id": "data/r.fq", "@type": "File", "exampleOfWork": {"@id": "#in-reads"}},
        {"@id": "https://example.org/ref.fa", "@type": "File", "exampleOfWork": {"@id": "#in-ref"}},
        {"@id": "#k", "@type": "PropertyValue", "value": "31", "exampleOfWork": {"@id": "#in-k"}},
        {"@id": "#run", "@type": "CreateAction", "instrument": {"@id": "wf/main.cwl"},
         "object": [{"@id": "data/r.fq"}, {"@id": "https://example.org/ref.fa"}, {"@id": "#k"}]},
    ]
    path = _zip(tmp_path / "c.zip", {"ro-crate-metadata.json": json.dumps({"@graph": graph}),
                                     "wf/main.cwl": "cwlVersion: v1.2\n", "data/r.fq": "@r\nACGT\n+\n!!!!\n"})
    got = fromcrate.read_crate(str(path), max_bytes=1 << 20)
    assert got.workflow == "crate/wf/main.cwl"
    assert got.params == {"reads": {"class": "File", "location": "crate/data/r.fq"},
                          "ref": {"class": "File", "location": "https://example.org/ref.fa"}, "k": "31"}
    assert got.members == {"crate/wf/main.cwl": b"cwlVersion: v1.2\n", "crate/data/r.fq": b"@r\nACGT\n+\n!!!!\n"}


@pytest.mark.parametrize(("files", "message"), [
    ({"x.txt": "no metadata"}, "'ro-crate-metadata.json' is not in the crate"),
    ({"ro-crate-metadata.json": "{"}, "is not JSON"),
    ({"ro-crate-metadata.json": json.dumps({"@graph": [{"@id": "./"}]})}, "names no mainEntity"),
    ({"ro-crate-metadata.json": json.dumps({"@graph": [{"@id": "./", "mainEntity": {"@id": "../etc/passwd"}}]})},
     "is not a file inside the crate"),
    ({"ro-crate-metadata.json": json.dumps({"@graph": [{"@id": "./", "mainEntity": {"@id": "/etc/passwd"}}]})},
     "is not a file inside the crate"),
    ({"ro-crate-metadata.json": json.dumps({"@graph": [{"@id": "./", "mainEntity": {"@id": "big.cwl"}}]}),
      "big.cwl": "x" * 2048}, "more than the 1024 allowed"),
])
def test_a_bad_crate_is_refused_with_a_reason(tmp_path: Path, files: dict[str, str], message: str) -> None:
    from hpc_bridge.wes import fromcrate

    with pytest.raises(fromcrate.CrateError, match=message.replace("(", r"\(")):
        fromcrate.read_crate(str(_zip(tmp_path / "c.zip", files)), max_bytes=1024)
    (tmp_path / "not.zip").write_text("plain text")
    with pytest.raises(fromcrate.CrateError, match="not a zip file"):
        fromcrate.read_crate(str(tmp_path / "not.zip"), max_bytes=1024)


def test_an_unreadable_zip_or_odd_types_are_a_reason_not_a_crash(tmp_path: Path) -> None:
    import zipfile

    from hpc_bridge.wes import fromcrate

    path = tmp_path / "bz.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("ro-crate-metadata.json", "{}")
    data = bytearray(path.read_bytes())  # its compression method, in both headers: 99, unknown
    header, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[header + 8:header + 10] = data[central + 10:central + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(fromcrate.CrateError, match="the zip cannot be read"):
        fromcrate.read_crate(str(path), max_bytes=1024)
    graph = [{"@id": "./", "mainEntity": {"@id": "wf.cwl"}}, {"@id": "wf.cwl", "@type": "File"},
             {"@id": "#p", "@type": "FormalParameter", "name": "x"},
             {"@id": "#v", "@type": [{"odd": 1}, "PropertyValue"], "value": "1", "exampleOfWork": {"@id": "#p"}},
             {"@id": "#run", "@type": ["CreateAction"], "instrument": {"@id": "wf.cwl"}, "object": {"@id": "#v"}}]
    got = fromcrate.read_crate(str(_zip(tmp_path / "t.zip", {"ro-crate-metadata.json": json.dumps({"@graph": graph}),
                                                                "wf.cwl": "x"})), max_bytes=1024)
    assert got.params == {"x": "1"}
