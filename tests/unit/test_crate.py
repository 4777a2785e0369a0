"""A WES run's crate (wes/crate.py) from a run record, its tasks and the engine's records: it validates
at provenance-run-crate-0.5 with no REQUIRED issue (roc-validator, offline), for a finished and a failed
run, and carries what each step did; the engine's records (cwl/provenance.py) give the checksums, the
SIFs the steps ran give their images' (containers/digest.py). A site may put the output files in the zip.
A run from a crate, attached or fetched by its https URL (wes/fromcrate.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from hpc_bridge.containers.digest import SifDigest, SifDigests
from hpc_bridge.cwl import provenance
from hpc_bridge.cwl.fetch import FetchPolicy
from hpc_bridge.staging import http
from hpc_bridge.store.runs import RunRow
from hpc_bridge.wes import crate

from ..crates import DocumentServer, documents, seeded_cache, unzip, validate  # noqa: F401 - fixture
from . import test_wes_api as wes_api
from .test_http_download import LOOPBACK, cert_files  # noqa: F401 - fixture
from .test_monitor import row as task_row
from .test_wes_api import client, config, data_root, store, validator, wes_spec  # noqa: F401 - fixtures

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


def _graph(data: bytes, directory: Path) -> dict[str, dict[str, Any]]:
    return {e["@id"]: e for e in json.loads((unzip(data, directory) / "ro-crate-metadata.json").read_text())["@graph"]}


def _ns(stamp: str) -> int:
    return round(datetime.fromisoformat(stamp).timestamp()) * 10**9


def test_each_steps_image_carries_the_sha256_of_the_sif_it_ran(tmp_path: Path, cache: Path) -> None:
    run, tasks, records, _ = _run(tmp_path, "COMPLETE")
    sha256 = hashlib.sha256(b"the SIF").hexdigest()
    asked: list[str] = []

    def sif_digest(reference: str) -> SifDigest:
        asked.append(reference)
        return SifDigest(sha256, _ns("2026-12-06T10:00:00Z"))  # before both tasks started

    data = crate.build(run, tasks, records, dataclasses.replace(CTX, sif_digest=sif_digest))
    assert validate(unzip(data, tmp_path / "crate"), cache) == []
    graph = _graph(data, tmp_path / "again")
    used = {graph[f"#task-{t}"]["containerImage"]["@id"] for t in ("t1", "t2")}
    assert len(used) == 1 and graph[used.pop()]["sha256"] == sha256
    assert set(asked) == {"docker.io/library/busybox:1.36"}


@pytest.mark.parametrize(("changed", "with_sha256"), [
    ("2026-12-06T10:00:05Z", {"t1": False, "t2": True}),  # replaced after t1 started, before t2: not what t1 ran
    (None, {"t1": False, "t2": False}),  # removed since
])
def test_a_sif_replaced_or_removed_since_a_step_ran_gives_it_no_sha256(tmp_path: Path, changed: str | None,
                                                                       with_sha256: dict[str, bool]) -> None:
    run, tasks, records, _ = _run(tmp_path, "COMPLETE")
    pinned = "docker.io/library/busybox@sha256:" + "ab" * 32
    tasks = [dataclasses.replace(t, task={**t.task, "executors": [{**t.task["executors"][0], "image": pinned}]})
             for t in tasks]
    found = SifDigest("cd" * 32, _ns(changed)) if changed else None
    graph = _graph(crate.build(run, tasks, records, dataclasses.replace(CTX, sif_digest=lambda ref: found)), tmp_path)
    images = {t: graph[graph[f"#task-{t}"]["containerImage"]["@id"]] for t in ("t1", "t2")}
    assert {t: "sha256" in image for t, image in images.items()} == with_sha256
    assert len({i["@id"] for i in images.values()}) == 1 + any(with_sha256.values())  # one entity per SIF
    # The digest a reference pins is the registry's manifest, not the SIF's: it is the image's identifier.
    assert all(i["identifier"] == pinned and i.get("sha256") != "ab" * 32 for i in images.values())


def test_a_sifs_digest_is_read_once_per_version_of_the_file(tmp_path: Path) -> None:
    sif = tmp_path / "img.sif"
    sif.write_bytes(b"SIF " * 300_000)
    digests = SifDigests(size=2)
    first = digests.of(sif)
    assert first is not None and first.sha256 == hashlib.sha256(sif.read_bytes()).hexdigest()
    assert first.changed_ns == sif.stat().st_ctime_ns
    assert digests.of(sif) == first and digests.reads == 1
    before = sif.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity
    sif.write_bytes(b"SIF!" * 300_000)  # the same size and, set back, the same mtime: a new ctime
    os.utime(sif, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert digests.of(sif) == SifDigest(hashlib.sha256(b"SIF!" * 300_000).hexdigest(), sif.stat().st_ctime_ns)
    assert digests.reads == 2
    others = [tmp_path / "a.sif", tmp_path / "b.sif"]
    for other in others:
        other.write_bytes(other.name.encode())
        digests.of(other)
    assert digests.of(sif) is not None and digests.reads == 5  # the oldest of 2 remembered was forgotten
    (tmp_path / "link.sif").symlink_to(sif)
    (tmp_path / "dir.sif").mkdir()
    os.mkfifo(tmp_path / "fifo.sif")
    assert [digests.of(tmp_path / n) for n in ("link.sif", "dir.sif", "fifo.sif", "gone.sif")] == [None] * 4


def _with_outputs(tmp_path: Path) -> tuple[RunRow, list[Any], crate.RunRecords, dict[str, bytes]]:
    """A finished run whose outputs are in its directory's outputs/, as the engine leaves them: two
    files, a symlink the user put there to a file that is not theirs and a directory named as a File."""
    run, tasks, records, _ = _run(tmp_path, "COMPLETE")
    outdir = Path(run.run_dir) / "outputs"
    (outdir / "sub dir").mkdir(parents=True)
    contents = {"outputs/out.txt": b"HELLO\n", "outputs/sub dir/big.bin": bytes(range(256)) * 4096}
    for name, content in contents.items():
        (Path(run.run_dir) / name).write_bytes(content)
    (tmp_path / "secret").write_text("SECRET of another user")
    (outdir / "link.txt").symlink_to(tmp_path / "secret")
    outputs = {"result": {"class": "File", "location": (outdir / "out.txt").as_uri()},
               "big": {"class": "File", "location": (outdir / "sub dir" / "big.bin").as_uri()},
               "link": {"class": "File", "location": (outdir / "link.txt").as_uri()},
               "odd": {"class": "File", "location": (outdir / "sub dir").as_uri()}}
    return dataclasses.replace(run, outputs=outputs), tasks, records, contents


def test_a_site_may_put_the_output_files_in_the_zip(tmp_path: Path, cache: Path) -> None:
    run, tasks, records, contents = _with_outputs(tmp_path)
    data = crate.build(run, tasks, records, dataclasses.replace(CTX, include_max_bytes=1 << 30))
    directory = unzip(data, tmp_path / "crate")
    issues = validate(directory, cache)
    assert issues == [], [(i.identifier, i.message) for i in issues]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n.startswith("outputs/")}
        assert {archive.getinfo(n).compress_type for n in members} == {zipfile.ZIP_STORED}
    assert members == contents  # the symlink's target is not in the zip
    graph = _graph(data, tmp_path / "again")
    for name, content in contents.items():
        entity = graph[name.replace(" ", "%20")]
        assert (entity["sha256"], entity["contentSize"]) == (hashlib.sha256(content).hexdigest(), str(len(content)))
        assert {"@id": entity["@id"]} in graph["./"]["hasPart"]
    assert {"@id": "outputs/out.txt"} in graph[f"#run-{run.id}"]["result"]
    link = graph[run.outputs["link"]["location"]]  # referenced by URL, saying why
    assert "sha256" not in link and link["description"].startswith("Not in the zip: not a regular file")
    assert graph[run.outputs["odd"]["location"]]["description"] == link["description"]
    assert "2 of its output files are referenced by URL" in graph["./"]["description"]
    # By default the outputs are referenced, and the zip holds none.
    with zipfile.ZipFile(io.BytesIO(crate.build(run, tasks, records, CTX))) as archive:
        assert not [n for n in archive.namelist() if n.startswith("outputs/")]


def test_outputs_beyond_the_sites_cap_stay_referenced(tmp_path: Path, cache: Path) -> None:
    run, tasks, records, contents = _with_outputs(tmp_path)
    data = crate.build(run, tasks, records, dataclasses.replace(CTX, include_max_bytes=100))
    assert validate(unzip(data, tmp_path / "crate"), cache) == []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert [n for n in archive.namelist() if n.startswith("outputs/")] == ["outputs/out.txt"]
    graph = _graph(data, tmp_path / "again")
    big = graph[run.outputs["big"]["location"]]
    assert big["description"] == ("Not in the zip: with it the run's output files would be more than the 100 "
                                  "bytes this service puts in a crate")
    assert "3 of its output files are referenced by URL" in graph["./"]["description"]


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


@pytest.fixture()
def https_client(client: FlaskClient, cert_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """test_wes_api's client, whose service reaches the https server on loopback and trusts its certificate."""
    monkeypatch.setattr(http, "_ca_bundle", lambda: str(cert_files[0]))
    service = client.application.extensions["hpc_bridge.runs"]
    storage = service._config.storage
    service._config = service._config.model_copy(update={"storage": storage.model_copy(update={
        "http": storage.http.model_copy(update={"allowed_networks": LOOPBACK})})})
    return client


ANOTHER_CRATE = [
    {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"}},
    {"@id": "./", "@type": "Dataset", "mainEntity": {"@id": "wf/main.cwl"}},
    {"@id": "wf/main.cwl", "@type": ["File", "ComputationalWorkflow"]},
    {"@id": "#in-reads", "@type": "FormalParameter", "name": "reads"},
    {"@id": "#in-k", "@type": "FormalParameter", "name": "k"},
    {"@id": "data/r.fq", "@type": "File", "exampleOfWork": {"@id": "#in-reads"}},
    {"@id": "#k", "@type": "PropertyValue", "value": "31", "exampleOfWork": {"@id": "#in-k"}},
    {"@id": "#run", "@type": "CreateAction", "instrument": {"@id": "wf/main.cwl"},
     "object": [{"@id": "data/r.fq"}, {"@id": "#k"}]},
]


def test_a_run_from_a_crates_https_url(https_client: FlaskClient, documents: DocumentServer, data_root: Path,
                                       tmp_path: Path) -> None:
    """A zip is a crate by its URL's name or by its first bytes; anything else is a workflow document,
    fetched once."""
    zipped = _zip(tmp_path / "c.zip", {"ro-crate-metadata.json": json.dumps({"@graph": ANOTHER_CRATE}),
                                       "wf/main.cwl": TOOL, "data/r.fq": "@r\nACGT\n"}).read_bytes()
    documents.documents.update({"/crates/run.zip": zipped, "/latest": zipped, "/shout.cwl": TOOL.encode()})
    for path in ("/crates/run.zip", "/latest?v=2"):
        resp = wes_api.submit(https_client, files={}, workflow_url=documents.url(path, host="localhost"),
                              workflow_params={"k": "7"})
        assert resp.status_code == 200, resp.get_json()
        run_dir = data_root / "runs" / resp.get_json()["run_id"]
        request = json.loads((run_dir / "request.json").read_text())
        crate_dir = run_dir.resolve() / "attachments" / "crate"
        assert request["workflow"] == (crate_dir / "wf" / "main.cwl").as_uri()
        assert request["params"] == {"reads": {"class": "File", "location": (crate_dir / "data" / "r.fq").as_uri()},
                                     "k": "7"}  # the request's params win
        assert (crate_dir / "data" / "r.fq").read_text() == "@r\nACGT\n"
    resp = wes_api.submit(https_client, files={}, workflow_url=documents.url("/shout.cwl", host="localhost"),
                  workflow_params={})
    assert resp.status_code == 200, resp.get_json()
    request = json.loads((data_root / "runs" / resp.get_json()["run_id"] / "request.json").read_text())
    assert request["workflow"].endswith("/remote/shout.cwl")
    assert [p for p, _ in documents.requests] == ["/crates/run.zip", "/latest?v=2", "/shout.cwl"]


@pytest.mark.parametrize(("body", "path", "words"), [
    (b"PK\x03\x04 is how a zip starts, and no more", "/looks-like-one", "not a zip file"),
    (b"<html>Not found</html>", "/run.zip", "not a zip file"),
    (None, "/missing.zip", "404"),
])
def test_a_bad_crate_at_an_https_url_is_a_400_naming_it(https_client: FlaskClient, documents: DocumentServer,
                                                       data_root: Path, body: bytes | None, path: str,
                                                       words: str) -> None:
    if body is not None:
        documents.documents[path] = body
    url = documents.url(path, host="localhost")
    resp = wes_api.submit(https_client, files={}, workflow_url=url, workflow_params={})
    wes_api.assert_400(resp, "workflow_url", url, words)
    assert wes_api.run_dirs(data_root) == []
