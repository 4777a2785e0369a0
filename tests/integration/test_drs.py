"""DRS ids as inputs, through the real server, Slurm and Apptainer, against a DRS server on loopback
(tests/ga4gh_servers.py, its answers checked against GA4GH's DRS 1.2.0 schemas): a `file` access inside
a data root is bound with the host file's inode (zero copy), an https access is downloaded once and
checked, a checksum mismatch is a SYSTEM_ERROR naming the object, an unknown id a 400."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from ..ga4gh_servers import DrsEntry, DrsServer
from ..unit.test_http_download import LOOPBACK, cert_files  # noqa: F401 - fixture
from .conftest import ServerProcess
from .test_staging import post, run_existing
from .test_wes import WES, wait_state
from .test_wes import post as run_post


@pytest.fixture()
def drs(cert_files: tuple[Path, Path]) -> Iterator[DrsServer]:  # noqa: F811
    yield from DrsServer(cert_files).serve()


@pytest.fixture()
def server(server_factory: Callable[..., ServerProcess], drs: DrsServer, cert_files: tuple[Path, Path],  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_files[0]))  # the service trusts the DRS server
    return server_factory(storage={"http": {"allowed_networks": LOOPBACK}, "drs": {
        "enabled": True, "hosts": [{"host": drs.host}], "prefixes": {"test": drs.host}}})


def sh(script: str) -> dict:
    return {"image": "busybox", "command": ["sh", "-c", script]}


def test_file_access_is_a_zero_copy_bind_and_https_is_downloaded_once_and_checked(
        server: ServerProcess, drs: DrsServer, data: Path) -> None:
    local = data / "reads.bam"
    local.write_bytes(b"BAM" * 1000)
    drs.objects["in-place"] = DrsEntry(data=local.read_bytes(), file=local)
    drs.objects["remote"] = DrsEntry(data=b"remote bytes\n", by_access_id=True)
    resp = post(server, {
        "inputs": [{"url": f"drs://{drs.host}/in-place", "path": "/in/reads.bam"},
                   {"url": "drs://test:remote", "path": "/in/remote.txt"}],
        "executors": [sh("stat -c %i /in/reads.bam; cat /in/remote.txt")]})
    assert resp.status_code == 200, resp.text
    task = run_existing(server, resp.json()["id"])
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    inode, content = task["logs"][0]["logs"][0]["stdout"].split("\n", 1)
    assert int(inode) == os.stat(local).st_ino  # the job read the host file itself
    assert content == "remote bytes\n"
    assert drs.downloads == ["remote"]  # the file access was never downloaded, the https one once
    # The task shows the DRS ids it was given, not what they resolved to.
    assert [i["url"] for i in task["inputs"]] == [f"drs://{drs.host}/in-place", "drs://test:remote"]
    info = requests.get(f"{server.url}/ga4gh/tes/v1/service-info", timeout=10).json()
    assert f"drs://{drs.host}/" in info["storage"]


def test_a_checksum_mismatch_is_a_system_error_naming_the_object(server: ServerProcess, drs: DrsServer) -> None:
    drs.objects["tampered"] = DrsEntry(data=b"not what was registered\n", checksum="0" * 64)
    resp = post(server, {"inputs": [{"url": f"drs://{drs.host}/tampered", "path": "/in/x"}],
                         "executors": [sh("cat /in/x")]})
    assert resp.status_code == 200, resp.text
    task = run_existing(server, resp.json()["id"])
    assert task["state"] == "SYSTEM_ERROR"
    assert any(f"drs://{drs.host}/tampered" in line and "checksum mismatch" in line
               for line in task["logs"][0]["system_logs"]), task["logs"][0]["system_logs"]


def test_unknown_ids_and_hosts_are_refused_at_submission(server: ServerProcess, drs: DrsServer) -> None:
    for url, message in [(f"drs://{drs.host}/no-such-object", "no such DRS object"),
                         ("drs://elsewhere.example.org/x", "not one this site uses"),
                         ("drs://nope:x", "compact id")]:
        resp = post(server, {"inputs": [{"url": url, "path": "/in/x"}], "executors": [sh("true")]})
        assert resp.status_code == 400, resp.text
        assert "inputs[0].url" in resp.json()["msg"] and url in resp.json()["msg"] and message in resp.json()["msg"]


INODE = """cwlVersion: v1.2
class: CommandLineTool
requirements: {DockerRequirement: {dockerPull: busybox}}
baseCommand: [sh, -c]
arguments: ["stat -c %i $(inputs.local.path) > out.txt; cat $(inputs.remote.path) >> out.txt"]
inputs: {local: File, remote: File}
outputs: {out: {type: File, outputBinding: {glob: out.txt}}}
"""


def test_a_cwl_run_reads_drs_inputs_through_its_tasks(server: ServerProcess, drs: DrsServer, data: Path,
                                                      dev_config) -> None:
    local = data / "reads.bam"
    local.write_bytes(b"BAM" * 1000)
    drs.objects["in-place"] = DrsEntry(data=local.read_bytes(), file=local)
    drs.objects["remote"] = DrsEntry(data=b"remote bytes\n", by_access_id=True)
    drs.objects["tampered"] = DrsEntry(data=b"changed\n", checksum="0" * 64)
    params = {"local": {"class": "File", "location": f"drs://{drs.host}/in-place"},
              "remote": {"class": "File", "location": "drs://test:remote"}}
    resp = run_post(server.url, {"tool.cwl": INODE}, workflow_url="tool.cwl", workflow_params=params)
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    state = wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"})
    run_dir = dev_config.wes.root(dev_config.storage.data_roots) / run_id
    assert state == "COMPLETE", (run_dir / "stderr.log").read_text()[-3000:]
    out = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()["outputs"]["out"]
    content = requests.get(f"{server.url}{WES}/runs/{run_id}/outputs", params={"location": out["location"]},
                           timeout=10).text
    assert content == f"{os.stat(local).st_ino}\nremote bytes\n"  # zero copy, and the https object
    assert drs.downloads == ["remote"]
    # The step's TES task was given the DRS ids themselves, and resolved them.
    [task] = requests.get(f"{server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]
    tes = requests.get(task["tes_uri"], params={"view": "FULL"}, timeout=10).json()
    assert sorted(i["url"] for i in tes["inputs"] if i["url"].startswith("drs://")) == \
        sorted([f"drs://{drs.host}/in-place", "drs://test:remote"])

    # A tampered object fails the run's task as a SYSTEM_ERROR naming it; an unknown id is a 400.
    bad = run_post(server.url, {"tool.cwl": INODE}, workflow_url="tool.cwl", workflow_params={
        **params, "remote": {"class": "File", "location": f"drs://{drs.host}/tampered"}})
    assert bad.status_code == 200, bad.text
    assert wait_state(server.url, bad.json()["run_id"], {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == \
        "SYSTEM_ERROR"
    [task] = requests.get(f"{server.url}{WES}/runs/{bad.json()['run_id']}/tasks", timeout=10).json()["task_logs"]
    tes = requests.get(task["tes_uri"], params={"view": "FULL"}, timeout=10).json()
    assert tes["state"] == "SYSTEM_ERROR"
    assert any(f"drs://{drs.host}/tampered" in line and "checksum mismatch" in line
               for line in tes["logs"][0]["system_logs"])
    unknown = run_post(server.url, {"tool.cwl": INODE}, workflow_url="tool.cwl", workflow_params={
        **params, "remote": {"class": "File", "location": f"drs://{drs.host}/nothing"}})
    assert unknown.status_code == 400 and "workflow_params.remote.location" in unknown.json()["msg"]
    assert f"drs://{drs.host}/nothing" in unknown.json()["msg"]


def test_an_https_file_input_is_a_tes_input_the_engine_never_downloads(server: ServerProcess, drs: DrsServer,
                                                                       data: Path) -> None:
    """cwltool would fetch an http(s) input itself, on the login node, outside the site's policy:
    the engine hands the URL to TES instead (one download, by the daemon, under storage.http)."""
    local = data / "local.txt"
    local.write_text("local\n")
    drs.objects["plain"] = DrsEntry(data=b"over https\n")
    resp = run_post(server.url, {"tool.cwl": INODE}, workflow_url="tool.cwl", workflow_params={
        "local": {"class": "File", "location": local.as_uri()},
        "remote": {"class": "File", "location": drs.url("/data/plain")}})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    out = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()["outputs"]["out"]
    content = requests.get(f"{server.url}{WES}/runs/{run_id}/outputs", params={"location": out["location"]},
                           timeout=10).text
    assert content.endswith("\nover https\n") and drs.downloads == ["plain"]
    [task] = requests.get(f"{server.url}{WES}/runs/{run_id}/tasks", timeout=10).json()["task_logs"]
    tes = requests.get(task["tes_uri"], params={"view": "FULL"}, timeout=10).json()
    assert drs.url("/data/plain") in [i["url"] for i in tes["inputs"]]
