"""A WES run's Provenance Run Crate through the real server, engine, Slurm and Apptainer: the crate of
a 2-step run and of a failed run validate at provenance-run-crate-0.5 with no REQUIRED issue, its
checksums are the files' (the images' those of the SIFs the steps ran), each step is its TES task and
Slurm job, a run from the crate gives the same output; an unfinished run has none yet. A site that puts
the outputs in the zip gives a crate that still validates, and a run from its https URL.
(Another user's 404 is in test_tenancy.py, with the run's other URLs.)"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from hpc_bridge.config import SiteConfig
from hpc_bridge.containers.images import resolve_image

from ..crates import DocumentServer, documents, seeded_cache, unzip, validate  # noqa: F401 - fixture
from ..unit.test_http_download import LOOPBACK, cert_files  # noqa: F401 - fixture
from .conftest import ServerProcess
from .test_wes import ECHO, FAILING, SLEEPING, WES, post, wait_state

TWO_STEPS = """cwlVersion: v1.2
class: Workflow
inputs:
  text: File
  extra: File
outputs:
  result: {type: File, outputSource: again/upper}
steps:
  shout:
    run: tools/echo.cwl
    in: {text: text, extra: extra}
    out: [upper]
  again:
    run: tools/echo.cwl
    in: {text: shout/upper, extra: extra}
    out: [upper]
"""


def _graph(directory: Path) -> dict[str, dict]:
    return {e["@id"]: e for e in json.loads((directory / "ro-crate-metadata.json").read_text())["@graph"]}


def _two_steps(server: ServerProcess) -> str:
    """A finished 2-step run's id."""
    resp = post(server.url, {"wf.cwl": TWO_STEPS, "tools/echo.cwl": ECHO, "text.txt": "hello crate\n",
                             "extra.txt": "and more\n"},
                workflow_url="wf.cwl", workflow_params={"text": {"class": "File", "location": "text.txt"},
                                                        "extra": {"class": "File", "location": "extra.txt"}})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    return str(run_id)


def _output(server: ServerProcess, run_id: str) -> tuple[str, bytes]:
    """The location of the run's `result` and its content, as the service serves it."""
    output = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()["outputs"]["result"]
    served = requests.get(f"{server.url}{WES}/runs/{run_id}/outputs", params={"location": output["location"]},
                          timeout=10)
    assert served.status_code == 200, served.text
    return output["location"], served.content


def test_the_crate_of_a_two_step_run(server: ServerProcess, tmp_path: Path, dev_config: SiteConfig) -> None:
    run_id = _two_steps(server)
    listed = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()["outputs"]["hpc-bridge/ro-crate"]
    assert listed["url"] == f"{server.url}{WES}/runs/{run_id}/ro-crate"  # the RunLog lists the crate
    got = requests.get(listed["url"], timeout=60)
    assert got.status_code == 200 and got.headers["Content-Type"] == "application/zip"
    directory = unzip(got.content, tmp_path / "crate")
    issues = validate(directory, seeded_cache(tmp_path))
    assert issues == [], [(i.identifier, i.message) for i in issues]

    graph = _graph(directory)
    run = graph[f"#run-{run_id}"]
    assert run["actionStatus"] == "http://schema.org/CompletedActionStatus" and "error" not in run
    # The CLI fetches the same crate.
    cli = Path(sys.executable).parent / "hpc-bridge"
    done = subprocess.run([str(cli), "run", "crate", run_id, "-o", str(tmp_path / "cli.zip"), "--url", server.url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _graph(unzip((tmp_path / "cli.zip").read_bytes(), tmp_path / "cli"))[f"#run-{run_id}"] == run
    missing = subprocess.run([str(cli), "run", "crate", "no-such-run", "--url", server.url],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no-such-run" in missing.stderr
    packed = json.loads((directory / "packed.cwl").read_text())  # the engine's `cwltool --pack`
    assert {s["id"].rsplit("/", 1)[-1] for s in next(p for p in packed["$graph"] if p["id"] == "#main")["steps"]} \
        == {"shout", "again"}
    # The checksums in the crate are the files': the inputs as sent, the output as served.
    inputs = [graph[ref["@id"]] for ref in run["object"] if graph[ref["@id"]]["@type"] == "File"]
    assert sorted((e["sha256"], e["contentSize"]) for e in inputs) == sorted(
        (hashlib.sha256(text).hexdigest(), str(len(text))) for text in (b"hello crate\n", b"and more\n"))
    location, served = _output(server, run_id)
    assert served == b"HELLO CRATE\nAND MORE\nand more\n"
    assert graph[run["result"]["@id"]]["sha256"] == hashlib.sha256(served).hexdigest()
    # Each step is one of the run's TES tasks, with its Slurm job, image (the SHA-256 of the SIF it ran) and
    # control action.
    tasks = requests.get(f"{server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]
    assert len(tasks) == 2
    for task in tasks:
        action = graph[f"#task-{task['id']}"]
        ids = {graph[i["@id"]]["propertyID"]: graph[i["@id"]]["value"] for i in action["identifier"]}
        tes = requests.get(task["tes_uri"], params={"view": "BASIC"}, timeout=10).json()
        assert ids == {"GA4GH TES task id": task["id"], "Slurm job id": tes["logs"][0]["metadata"]["slurm_job_id"]}
        assert action["actionStatus"] == "http://schema.org/CompletedActionStatus"
        image = graph[action["containerImage"]["@id"]]
        sif = resolve_image(tes["executors"][0]["image"], dev_config.apptainer).sif
        assert image["name"] == "busybox" and image["sha256"] == hashlib.sha256(sif.read_bytes()).hexdigest()
        control = next(e for e in graph.values() if e.get("@type") == "ControlAction"
                       and e["object"] == {"@id": action["@id"]})
        assert graph[control["instrument"]["@id"]]["name"] == task["name"]

    # Each input is an exampleOfWork of its parameter, and recorded whole for a run from the crate.
    recorded = {graph[f"#param-{name}"]["exampleOfWork"]["@id"]: json.loads(graph[f"#param-{name}"]["value"])
                for name in ("text", "extra")}
    assert set(recorded) == {"packed.cwl#main/text", "packed.cwl#main/extra"}
    assert all(v["class"] == "File" and v["location"].startswith("file:///") for v in recorded.values())

    # Run again from the crate: its workflow, its recorded inputs, the same output.
    again = requests.post(f"{server.url}{WES}/runs", files=[("workflow_attachment", ("run.zip", got.content))],
                          data={"workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "run.zip"},
                          timeout=120)
    assert again.status_code == 200, again.text
    rerun = again.json()["run_id"]
    assert wait_state(server.url, rerun, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    again_location, content = _output(server, rerun)
    assert again_location != location
    assert hashlib.sha256(content).hexdigest() == graph[run["result"]["@id"]]["sha256"]


def test_a_crate_with_its_outputs_inside_run_again_from_its_https_url(
        server_factory: Callable[..., ServerProcess], documents: DocumentServer, cert_files: tuple[Path, Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_files[0]))  # the server trusts the test's https server
    server = server_factory(wes={"crate_outputs": "include"}, storage={"http": {"allowed_networks": LOOPBACK}})
    run_id = _two_steps(server)
    got = requests.get(f"{server.url}{WES}/runs/{run_id}/ro-crate", timeout=60)
    assert got.status_code == 200 and got.headers["Content-Type"] == "application/zip"
    directory = unzip(got.content, tmp_path / "crate")
    issues = validate(directory, seeded_cache(tmp_path))
    assert issues == [], [(i.identifier, i.message) for i in issues]
    # The output file is in the zip, its checksum and size those of the bytes there: the file's, as served.
    _, served = _output(server, run_id)
    result = _graph(directory)[_graph(directory)[f"#run-{run_id}"]["result"]["@id"]]
    with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
        assert [n for n in archive.namelist() if n.startswith("outputs/")] == [result["@id"]]
        assert archive.read(result["@id"]) == served
    assert (result["sha256"], result["contentSize"]) == (hashlib.sha256(served).hexdigest(), str(len(served)))

    # Run again from the crate's https URL: its workflow, its recorded inputs, the same output.
    url = documents.url("/crates/run.zip", host="localhost")
    documents.documents["/crates/run.zip"] = got.content
    again = post(server.url, {}, workflow_url=url)
    assert again.status_code == 200, again.text
    rerun = again.json()["run_id"]
    assert wait_state(server.url, rerun, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    assert _output(server, rerun)[1] == served
    # A document that starts as a zip but is none is a 400 naming its URL.
    bad = documents.url("/crates/bad", host="localhost")
    documents.documents["/crates/bad"] = b"PK\x03\x04" + got.content[4:100]
    refused = post(server.url, {}, workflow_url=bad)
    assert refused.status_code == 400 and bad in refused.json()["msg"] and "zip" in refused.json()["msg"], refused.text


def test_the_crate_of_a_failed_run_and_none_before_the_end(server: ServerProcess, tmp_path: Path) -> None:
    failing = post(server.url, {"fail.cwl": FAILING}, workflow_url="fail.cwl", workflow_params={}).json()
    assert wait_state(server.url, failing["run_id"], {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == \
        "EXECUTOR_ERROR"
    got = requests.get(f"{server.url}{WES}/runs/{failing['run_id']}/ro-crate", timeout=60)
    assert got.status_code == 200
    directory = unzip(got.content, tmp_path / "crate")
    issues = validate(directory, seeded_cache(tmp_path))
    assert issues == [], [(i.identifier, i.message) for i in issues]
    graph = _graph(directory)
    run = graph[f"#run-{failing['run_id']}"]
    assert run["actionStatus"] == "http://schema.org/FailedActionStatus" and run["error"].startswith("EXECUTOR_ERROR")
    steps = [e for e in graph.values() if e.get("@type") == "CreateAction" and e["@id"].startswith("#task-")]
    assert len(steps) == 1 and steps[0]["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert "exit code 7" in steps[0]["error"]

    sleeping = post(server.url, {"sleep.cwl": SLEEPING}, workflow_url="sleep.cwl", workflow_params={}).json()
    try:
        assert wait_state(server.url, sleeping["run_id"], {"RUNNING"}) == "RUNNING"
        early = requests.get(f"{server.url}{WES}/runs/{sleeping['run_id']}/ro-crate", timeout=60)
        assert early.status_code == 409 and "once it has ended" in early.json()["msg"]
    finally:
        requests.post(f"{server.url}{WES}/runs/{sleeping['run_id']}/cancel", timeout=10)
    assert wait_state(server.url, sleeping["run_id"], {"CANCELED"}) == "CANCELED"
    assert requests.get(f"{server.url}{WES}/runs/no-such-run/ro-crate", timeout=10).status_code == 404
