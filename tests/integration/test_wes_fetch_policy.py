"""Everything a workflow document names goes through one fetch policy, at submission (the API's
validation) as in the engine: `run:`/`$import`/`$include`/`$schemas` only inside the run's
attachments (and the data roots), http(s) only to allowed addresses with timeouts, defaults like
params. Through the real server on the dev cluster, with a canary in every file that must stay
unread; a workflow URL that never answers blocks no other submission."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from .conftest import ServerProcess
from .test_wes import WES, post, wait_state

CANARY = "CANARY-4f1c9a-NEVER-SHOWN"
TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
inputs: {}
outputs: []
"""


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A file outside the data roots and attachments (the service, root here, could read it)."""
    path = tmp_path / "secret.cwl"
    path.write_text(f"# {CANARY}\n{TOOL}")
    return path


@pytest.fixture()
def listener() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A port that accepts connections and never answers; `accepted` records who came."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield sock, accepted
    sock.close()
    for conn in accepted:
        conn.close()


def refused(server: ServerProcess, files: dict[str, str], field: str, name: str) -> str:
    response = post(server.url, files, workflow_url="wf.cwl")
    assert response.status_code == 400, response.text
    message = response.json()["msg"]
    assert field in message and name in message, message
    assert CANARY not in response.text
    return message


def workflow_running(step: str) -> str:
    return ("cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\n"
            f"steps:\n  s:\n    run: {step}\n    in: []\n    out: []\n")


def test_documents_outside_the_attachments_are_400s_naming_the_field(server: ServerProcess, secret: Path) -> None:
    refused(server, {"wf.cwl": workflow_running(secret.as_uri())}, "run", str(secret))
    refused(server, {"wf.cwl": TOOL.replace("inputs: {}", f"inputs:\n  $import: {secret.as_uri()}")},
            "inputs", str(secret))
    refused(server, {"wf.cwl": TOOL.replace("inputs: {}", "inputs:\n  x:\n    type: string\n"
                                            f"    default: {{$include: {secret.as_uri()}}}")},
            "default", str(secret))
    refused(server, {"wf.cwl": TOOL + f"$schemas: [{secret.as_uri()}]\n"}, "$schemas", str(secret))


def test_a_default_file_outside_the_data_roots_is_a_400(server: ServerProcess, secret: Path) -> None:
    wf = TOOL.replace("inputs: {}", "inputs:\n  ref:\n    type: File\n"
                      f"    default: {{class: File, location: {secret.as_uri()}}}")
    refused(server, {"wf.cwl": wf}, "default", str(secret))


def test_local_addresses_are_refused_for_includes_defaults_and_inputs(
        server: ServerProcess, listener: tuple[socket.socket, list[socket.socket]]) -> None:
    sock, accepted = listener
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/x"
    include = TOOL.replace("inputs: {}", f"inputs:\n  x: {{type: string, default: {{$include: {url}}}}}")
    refused(server, {"wf.cwl": include}, "default", url)
    default = TOOL.replace("inputs: {}", f"inputs:\n  ref: {{type: File, default: {{class: File, location: {url}}}}}")
    refused(server, {"wf.cwl": default}, "default", url)
    param = TOOL.replace("inputs: {}", "inputs:\n  ref: File")
    response = post(server.url, {"wf.cwl": param}, workflow_url="wf.cwl",
                    workflow_params={"ref": {"class": "File", "location": url}})
    assert response.status_code == 400 and "workflow_params.ref.location" in response.json()["msg"]
    time.sleep(0.5)
    assert not accepted, "a refused URL was connected to"


def test_a_workflow_url_that_never_answers_blocks_no_other_submission(
        server_factory: Callable[..., ServerProcess],
        listener: tuple[socket.socket, list[socket.socket]]) -> None:
    sock, accepted = listener
    server = server_factory(storage={"http": {"allowed_networks": ["127.0.0.1/32"]}},
                            wes={"https_timeout": 8})
    slow: dict[str, object] = {}

    def submit_slow() -> None:
        started = time.monotonic()
        slow["response"] = post(server.url, {}, workflow_url=f"https://127.0.0.1:{sock.getsockname()[1]}/wf.cwl")
        slow["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=submit_slow)
    thread.start()
    deadline = time.monotonic() + 10
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert accepted, "the slow submission never reached its URL"
    started = time.monotonic()
    response = post(server.url, {"wf.cwl": TOOL}, workflow_url="wf.cwl")
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 2.0
    assert thread.is_alive()
    thread.join(30)
    slow_response = slow["response"]
    assert isinstance(slow_response, requests.Response) and slow_response.status_code == 400
    assert "workflow_url" in slow_response.json()["msg"]
    wait_state(server.url, response.json()["run_id"], {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"})


def test_nothing_refused_reaches_a_runs_outputs_or_logs(server: ServerProcess, secret: Path) -> None:
    """An accepted run whose params try a file outside: refused at submission, nothing stored."""
    wf = TOOL.replace("inputs: {}", "inputs:\n  ref: File")
    response = post(server.url, {"wf.cwl": wf}, workflow_url="wf.cwl",
                    workflow_params={"ref": {"class": "File", "location": secret.as_uri()}})
    assert response.status_code == 400 and CANARY not in response.text
    runs = requests.get(f"{server.url}{WES}/runs", timeout=10).json()["runs"]
    assert CANARY not in json.dumps(runs)
