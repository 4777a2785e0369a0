"""Workflows from a TRS registry through WES, the engine, Slurm and Apptainer, against a TRS server on
loopback (tests/ga4gh_servers.py, its answers checked against trs-cli's models of the TRS OpenAPI
document): a CWL workflow with a secondary tool file runs from its `trs://` id and from its https
descriptor URL; a host the site does not allow, or a tool the registry does not have, is a 400."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from ..ga4gh_servers import TrsServer, TrsTool
from ..unit.test_http_download import LOOPBACK, cert_files  # noqa: F401 - fixture
from .conftest import ServerProcess
from .test_crate import TWO_STEPS
from .test_wes import ECHO, WES, post, wait_state

TOOL = "#workflow/example.org/hpc-bridge/shout"


@pytest.fixture()
def registry(cert_files: tuple[Path, Path]) -> Iterator[TrsServer]:  # noqa: F811
    yield from TrsServer(cert_files).serve()


@pytest.fixture()
def server(server_factory: Callable[..., ServerProcess], registry: TrsServer, cert_files: tuple[Path, Path],  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_files[0]))  # the service trusts the registry
    registry.tools[(TOOL, "v1")] = TrsTool({"wf.cwl": TWO_STEPS, "tools/echo.cwl": ECHO})
    return server_factory(wes={"trs_hosts": [registry.host]}, storage={"http": {"allowed_networks": LOOPBACK}})


def run_from(server: ServerProcess, url: str) -> str:
    resp = post(server.url, {"text.txt": "hello trs\n", "extra.txt": "and more\n"}, workflow_url=url,
                workflow_params={"text": {"class": "File", "location": "text.txt"},
                                 "extra": {"class": "File", "location": "extra.txt"}})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["run_id"]
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    output = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()["outputs"]["result"]
    served = requests.get(f"{server.url}{WES}/runs/{run_id}/outputs", params={"location": output["location"]},
                          timeout=10)
    assert served.content == b"HELLO TRS\nAND MORE\nand more\n"
    return run_id


def test_a_registered_workflow_runs_from_its_trs_id_and_its_descriptor_url(
        server: ServerProcess, registry: TrsServer) -> None:
    uri = f"trs://{registry.host}/{quote(TOOL, safe='')}/v1"
    run_id = run_from(server, uri)
    # Both descriptors came through TRS, the secondary one by its relative path.
    asked = [path for path, _ in registry.requests]
    assert any(p.endswith("/CWL/descriptor/wf.cwl") for p in asked)
    assert any(p.endswith("/CWL/descriptor/tools/echo.cwl") for p in asked)
    # The run's crate names the TRS id and version it ran.
    got = requests.get(f"{server.url}{WES}/runs/{run_id}/ro-crate", timeout=60)
    with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
        graph = {e["@id"]: e for e in json.loads(archive.read("ro-crate-metadata.json"))["@graph"]}
    origin = graph[graph["packed.cwl"]["isBasedOn"]["@id"]]
    assert origin["identifier"] == uri and origin["version"] == "v1"

    descriptor = registry.url(f"/ga4gh/trs/v2/tools/{quote(TOOL, safe='')}/versions/v1/CWL/descriptor")
    run_from(server, descriptor)


def test_a_host_not_allowed_or_a_missing_tool_is_a_400(server: ServerProcess, registry: TrsServer) -> None:
    elsewhere = f"trs://127.0.0.1:{registry.server_address[1]}/{quote(TOOL, safe='')}/v1"
    for url, message in [(elsewhere, "is not one this site allows"),
                         (f"trs://{registry.host}/{quote(TOOL, safe='')}/v9", "no such tool or version"),
                         (f"trs://{registry.host}/only-two-parts", "trs://HOST/ID/VERSION")]:
        resp = post(server.url, {}, workflow_url=url, workflow_params={})
        assert resp.status_code == 400, resp.text
        assert "workflow_url" in resp.json()["msg"] and message in resp.json()["msg"], resp.text
    assert "v9" in post(server.url, {}, workflow_url=f"trs://{registry.host}/{quote(TOOL, safe='')}/v9",
                        workflow_params={}).json()["msg"]
