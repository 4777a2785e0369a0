"""The WES 1.1 API through Flask's test client (no supervisor: runs stay QUEUED unless a test moves
them; a fake cwltool validator unless a test asks for the real one).

Every 200 response is validated against the official WES 1.1.0 spec, read from ../shared. The spec's
`servers` entry (`https://{defaultHost}/{basePath}/{apiVersion}`, whose basePath holds a slash)
cannot be matched by openapi-core, so it is replaced in memory by `/ga4gh/wes/v1`; the schemas are
used as they are.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from hpc_bridge.app import create_app
from hpc_bridge.auth import Identity
from hpc_bridge.config import SiteConfig
from hpc_bridge.store import Store
from hpc_bridge.store.runs import RunStore

from ..conftest import SPECS

BASE = "/ga4gh/wes/v1"
TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: cat
inputs:
  reads: {type: File, inputBinding: {position: 1}}
outputs:
  out: stdout
"""


def wes_validator():
    """validate(method, path, status, body) against the official WES 1.1.0 spec (also used by the
    integration tests); skips when ../shared is missing, like the shared spec_validator fixture."""
    if not SPECS.is_dir():
        pytest.skip(f"official GA4GH specs not found at {SPECS} (they live in ../shared)")
    from openapi_core import OpenAPI
    from openapi_core.testing import MockRequest, MockResponse

    path = SPECS / "wes-1.1.0.openapi.yaml"
    data = json.loads(json.dumps(yaml.safe_load(path.read_text())))  # status codes as strings
    data["servers"] = [{"url": BASE}]
    api = OpenAPI.from_dict(data, base_uri=path.as_uri())

    def validate(method: str, path: str, status: int, body: Any) -> None:
        api.validate_response(MockRequest("http://localhost", method, path.split("?")[0]),
                              MockResponse(json.dumps(body).encode(), status_code=status,
                                           content_type="application/json"))

    return validate


@pytest.fixture(scope="module")
def wes_spec():
    return wes_validator()


class FakeValidator:
    """Stands in for hpc_bridge.cwl.validate: a document containing BROKEN is invalid."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        module = types.ModuleType("hpc_bridge.cwl.validate")

        class InvalidWorkflow(Exception):
            pass

        def validate_workflow(workflow: str, *, params: dict | None = None, **_: object) -> None:
            self.calls.append((workflow, params or {}))
            path = workflow.removeprefix("file://").partition("#")[0]
            if "BROKEN" in Path(path).read_text():
                raise InvalidWorkflow(f"{path}:3:1: Tool definition failed validation: BROKEN is not a field")

        module.InvalidWorkflow = InvalidWorkflow  # type: ignore[attr-defined]
        module.validate_workflow = validate_workflow  # type: ignore[attr-defined]
        self.module = module


class Users:
    """A verifier for tests: `Authorization: user NAME` (admin: `user root`)."""

    def verify(self, header: str | None) -> Identity:
        name = (header or "user alice").split()[-1]
        return Identity(issuer="https://idp.example.org", subject=name, admin=name == "root")


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture()
def config(dev_config: SiteConfig, data_root: Path) -> SiteConfig:
    storage = dev_config.storage.model_copy(update={"data_roots": [data_root]})
    return dev_config.model_copy(update={"storage": storage})


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite")


@pytest.fixture()
def validator(monkeypatch: pytest.MonkeyPatch) -> FakeValidator:
    fake = FakeValidator()
    import hpc_bridge.cwl

    monkeypatch.setitem(sys.modules, "hpc_bridge.cwl.validate", fake.module)
    monkeypatch.setattr(hpc_bridge.cwl, "validate", fake.module, raising=False)
    return fake


@pytest.fixture()
def client(config: SiteConfig, store: Store, validator: FakeValidator, wes_spec) -> FlaskClient:
    app = create_app(config, store=store, verifier=Users())  # type: ignore[arg-type]
    test_client = app.test_client()

    def checked(method: str, path: str, **kwargs: Any):
        resp = getattr(test_client, method)(path, **kwargs)
        if resp.status_code == 200 and resp.mimetype == "application/json":
            wes_spec(method, path, 200, resp.get_json())
        return resp

    test_client.checked = checked  # type: ignore[attr-defined]
    return test_client


def form(files: dict[str, bytes] | None = None, **fields: Any) -> dict[str, Any]:
    """A multipart body: JSON-encoded objects for the object fields, one part per attachment."""
    data: dict[str, Any] = {"workflow_type": "CWL", "workflow_type_version": "v1.2"}
    for key, value in fields.items():
        data[key] = json.dumps(value) if isinstance(value, dict) else value
    if files is not None:
        data["workflow_attachment"] = [(io.BytesIO(content), name) for name, content in files.items()]
    return data


def submit(client: FlaskClient, files: dict[str, bytes] | None = None, user: str = "alice",
           **fields: Any):
    fields.setdefault("workflow_url", "tool.cwl")
    if files is None:
        files = {"tool.cwl": TOOL.encode(), "data/reads.txt": b"ACGT\n"}
        fields.setdefault("workflow_params", {"reads": {"class": "File", "location": "data/reads.txt"}})
    return client.checked("post", f"{BASE}/runs", data=form(files, **fields),
                          content_type="multipart/form-data", headers={"Authorization": f"user {user}"})


def create(client: FlaskClient, user: str = "alice", **fields: Any) -> str:
    resp = submit(client, user=user, **fields)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["run_id"]


def as_user(user: str) -> dict[str, str]:
    return {"Authorization": f"user {user}"}


def run_dirs(data_root: Path) -> list[Path]:
    runs = data_root / "runs"
    return sorted(runs.iterdir()) if runs.exists() else []


# -- service-info -----------------------------------------------------------------------------


def test_service_info_is_public_and_follows_the_spec(client: FlaskClient, store: Store) -> None:
    create(client)
    info = client.checked("get", f"{BASE}/service-info", headers={}).get_json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "wes", "version": "1.1.0"}
    assert info["workflow_type_versions"] == {"CWL": {"workflow_type_version": ["v1.0", "v1.1", "v1.2"]}}
    assert list(info["workflow_engine_versions"]) == ["cwltool"]
    assert info["supported_wes_versions"] == ["1.1.0"]
    assert "file" in info["supported_filesystem_protocols"]
    assert info["system_state_counts"]["QUEUED"] == 1 and info["system_state_counts"]["COMPLETE"] == 0
    assert set(info["system_state_counts"]) >= {"CANCELING", "UNKNOWN", "PREEMPTED"}
    assert info["auth_instructions_url"].startswith("https://")
    params = {p["name"]: p for p in info["default_workflow_engine_parameters"]}
    assert params["max_parallel"]["type"] == "integer" and params["on_error"]["default_value"] == "stop"


# -- submission -------------------------------------------------------------------------------


def test_submission_with_attachments(client: FlaskClient, store: Store, data_root: Path,
                                     validator: FakeValidator) -> None:
    run_id = create(client, tags={"project": "p1"}, workflow_type="cwl", workflow_type_version="1.2",
                    workflow_engine_parameters={"max_parallel": "2"})
    run_dir = data_root / "runs" / run_id
    assert (run_dir / "attachments" / "tool.cwl").read_text() == TOOL
    assert (run_dir / "attachments" / "data" / "reads.txt").read_bytes() == b"ACGT\n"
    request = json.loads((run_dir / "request.json").read_text())
    workflow = (run_dir / "attachments" / "tool.cwl").as_uri()
    reads = (run_dir / "attachments" / "data" / "reads.txt").as_uri()
    policy, apptainer = request.pop("fetch_policy"), request.pop("apptainer")
    assert request == {"run_id": run_id, "owner": "https://idp.example.org#alice", "workflow": workflow,
                       "params": {"reads": {"class": "File", "location": reads}},
                       "engine_parameters": {"max_parallel": "2"}}
    assert apptainer["registry_mirrors"] == {"docker.io": "127.0.0.1:5000"}  # the site's image settings
    assert policy is not None  # what the documents may name: tests/unit/test_cwl_fetch.py
    assert validator.calls == [(workflow, request["params"])]
    assert oct((data_root / "runs").stat().st_mode & 0o777) == "0o711"
    # The run's files are the service's until its engine starts (then its user's): nobody else's.
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    for path in (run_dir / "request.json", run_dir / "attachments", run_dir / "attachments" / "tool.cwl"):
        assert path.stat().st_mode & 0o007 == 0, path

    log = client.checked("get", f"{BASE}/runs/{run_id}").get_json()
    assert log["state"] == "QUEUED" and log["run_id"] == run_id
    assert log["request"]["workflow_type"] == "CWL" and log["request"]["workflow_type_version"] == "v1.2"
    assert log["request"]["workflow_url"] == "tool.cwl"
    assert log["request"]["workflow_engine"] == "cwltool"
    assert log["request"]["workflow_params"] == {"reads": {"class": "File", "location": "data/reads.txt"}}
    assert log["request"]["tags"] == {"project": "p1"}
    assert log["run_log"]["stdout"] == f"http://localhost{BASE}/runs/{run_id}/stdout"
    assert log["run_log"]["stderr"] == f"http://localhost{BASE}/runs/{run_id}/stderr"
    assert log["task_logs_url"] == f"http://localhost{BASE}/runs/{run_id}/tasks"
    assert log["outputs"] == {}
    assert client.checked("get", f"{BASE}/runs/{run_id}/status").get_json() == {
        "run_id": run_id, "state": "QUEUED"}
    row = RunStore(store).get(run_id)
    assert row is not None and row.owner == "https://idp.example.org#alice" and row.workflow == workflow


def test_path_keys_and_nested_files_are_resolved(client: FlaskClient, data_root: Path) -> None:
    shared = data_root / "ref.fa"
    shared.write_text(">x\n")
    (data_root / "dir").mkdir()
    params = {"reads": {"class": "File", "path": "data/reads.txt",
                        "secondaryFiles": [{"class": "File", "location": "./data/reads.txt"}]},
              "refs": [{"class": "File", "location": shared.as_uri()}, {"class": "File", "path": str(shared)}],
              "dir": {"class": "Directory", "location": str(data_root / "dir")},
              "literal": {"class": "File", "basename": "x.txt", "contents": "hi"},
              "n": 3}
    run_id = create(client, workflow_params=params)
    resolved = json.loads((data_root / "runs" / run_id / "request.json").read_text())["params"]
    reads = (data_root / "runs" / run_id / "attachments" / "data" / "reads.txt").as_uri()
    assert resolved["reads"] == {"class": "File", "location": reads,
                                 "secondaryFiles": [{"class": "File", "location": reads}]}
    assert resolved["refs"] == [{"class": "File", "location": shared.as_uri()}] * 2
    assert resolved["dir"] == {"class": "Directory", "location": (data_root / "dir").as_uri()}
    assert resolved["literal"] == params["literal"] and resolved["n"] == 3


def test_json_body_and_workflow_in_a_data_root(client: FlaskClient, data_root: Path) -> None:
    (data_root / "tool.cwl").write_text(TOOL)
    (data_root / "reads.txt").write_text("A\n")
    body = {"workflow_type": "CWL", "workflow_type_version": "v1.2",
            "workflow_url": (data_root / "tool.cwl").as_uri() + "#main",
            "workflow_params": {"reads": {"class": "File", "location": str(data_root / "reads.txt")}}}
    resp = client.checked("post", f"{BASE}/runs", json=body)
    assert resp.status_code == 200, resp.get_json()
    run_id = resp.get_json()["run_id"]
    request = json.loads((data_root / "runs" / run_id / "request.json").read_text())
    assert request["workflow"] == (data_root / "tool.cwl").as_uri() + "#main"


def assert_400(resp, *words: str) -> None:
    assert resp.status_code == 400, (resp.status_code, resp.get_json())
    body = resp.get_json()
    assert body["status_code"] == 400
    for word in words:
        assert word in body["msg"], (word, body["msg"])


@pytest.mark.parametrize(("fields", "words"), [
    ({"workflow_type": "WDL"}, ("workflow_type", "WDL", "CWL")),
    ({"workflow_type": ""}, ("workflow_type", "required")),
    ({"workflow_type_version": "v2.0"}, ("workflow_type_version", "v1.0, v1.1, v1.2")),
    ({"workflow_engine": "toil"}, ("workflow_engine", "cwltool")),
    ({"workflow_engine_version": "1.0"}, ("workflow_engine_version", "without workflow_engine")),
    ({"workflow_engine": "cwltool", "workflow_engine_version": "0.1"}, ("workflow_engine_version",)),
    ({"workflow_params": "{not json"}, ("workflow_params", "JSON")),
    ({"workflow_params": "[1]"}, ("workflow_params", "object")),
    ({"tags": {"a": 1}}, ("tags.a", "string")),
    ({"workflow_engine_parameters": {"a": {"b": 1}}}, ("workflow_engine_parameters.a",)),
    ({"workflow_engine_parameters": {"nope": "1"}}, ("workflow_engine_parameters.nope", "max_parallel")),
    ({"workflow_engine_parameters": {"max_parallel": "many"}}, ("max_parallel", "integer")),
    ({"workflow_url": ""}, ("workflow_url", "required")),
    ({"workflow_url": "missing.cwl"}, ("workflow_url", "missing.cwl", "tool.cwl")),
    ({"workflow_url": "data"}, ("workflow_url", "directory")),
    ({"workflow_url": "../tool.cwl"}, ("workflow_url", "..")),
    ({"workflow_url": "file:///etc/passwd"}, ("workflow_url", "outside the allowed data roots")),
    ({"workflow_url": "/etc/passwd"}, ("workflow_url", "outside the allowed data roots")),
    ({"workflow_url": "http://example.org/tool.cwl"}, ("workflow_url", "https://")),
    ({"workflow_url": "ftp://example.org/tool.cwl"}, ("workflow_url",)),
    ({"workflow_url": "https://127.0.0.1/tool.cwl"}, ("workflow_url", "127.0.0.1")),
    ({"workflow_params": {"reads": {"class": "File", "location": "nope.txt"}}},
     ("workflow_params.reads.location", "nope.txt", "not one of the attached files")),
    ({"workflow_params": {"reads": {"class": "File", "location": "file:///etc/passwd"}}},
     ("workflow_params.reads.location", "outside the allowed data roots")),
    ({"workflow_params": {"x": [{"class": "File", "path": "/etc/hostname"}]}},
     ("workflow_params.x[0].path", "outside")),
    ({"workflow_params": {"reads": {"class": "Directory", "location": "data/reads.txt"}}},
     ("workflow_params.reads.location", "is a file")),
    ({"workflow_params": {"reads": {"class": "File", "location": "s3://bucket/x"}}},
     ("workflow_params.reads.location", "s3")),
    ({"workflow_params": {"reads": {"class": "File", "location": "../../etc/passwd"}}},
     ("workflow_params.reads.location", "..")),
    ({"unknown": "1"}, ("unknown", "unknown field")),
])
def test_bad_requests_are_400_and_leave_nothing(client: FlaskClient, store: Store, data_root: Path,
                                                fields: dict[str, Any], words: tuple[str, ...]) -> None:
    assert_400(submit(client, **fields), *words)
    assert RunStore(store).list(None, before_seq=None, limit=10) == []
    assert run_dirs(data_root) == []


@pytest.mark.parametrize(("name", "words"), [
    ("../evil.cwl", ("'..'",)),
    ("a/../../evil", ("'..'",)),
    ("/etc/cron.d/evil", ("absolute",)),
    ("a//b", ("empty",)),
    ("./a", ("'.'",)),
    ("a\x7fb", ("not allowed",)),
    ("x" * 300, ("longer than 255",)),
])
def test_unsafe_attachment_names_are_refused(client: FlaskClient, data_root: Path, name: str,
                                             words: tuple[str, ...]) -> None:
    files = {"tool.cwl": TOOL.encode(), name: b"x"}
    assert_400(submit(client, files=files, workflow_params={}), "workflow_attachment", *words)
    assert run_dirs(data_root) == []
    assert not (data_root.parent / "evil.cwl").exists() and not Path("/etc/cron.d/evil").exists()


def test_duplicate_and_clashing_attachments_are_refused(client: FlaskClient, data_root: Path) -> None:
    data = form(workflow_url="tool.cwl")
    data["workflow_attachment"] = [(io.BytesIO(b"1"), "tool.cwl"), (io.BytesIO(b"2"), "tool.cwl")]
    assert_400(client.post(f"{BASE}/runs", data=data), "tool.cwl", "twice")
    data = form(workflow_url="tool.cwl")
    data["workflow_attachment"] = [(io.BytesIO(b"1"), "a"), (io.BytesIO(b"2"), "a/b")]
    assert_400(client.post(f"{BASE}/runs", data=data), "not a directory")
    assert run_dirs(data_root) == []


def test_a_part_without_filename_and_other_file_fields_are_refused(client: FlaskClient) -> None:
    data = form(workflow_url="tool.cwl")
    data["workflow_attachment"] = "inline text"
    assert_400(client.post(f"{BASE}/runs", data=data), "filename")
    data = form(workflow_url="tool.cwl")
    data["other"] = (io.BytesIO(TOOL.encode()), "tool.cwl")
    assert_400(client.post(f"{BASE}/runs", data=data), "other")
    data = form(workflow_url="tool.cwl")
    data["workflow_url"] = ["tool.cwl", "other.cwl"]
    assert_400(client.post(f"{BASE}/runs", data=data), "workflow_url", "more than once")


def test_attachment_size_caps(client: FlaskClient, config: SiteConfig, data_root: Path) -> None:
    app = client.application
    wes = config.wes.model_copy(update={"max_attachment_bytes": 1000, "max_attachments_bytes": 1500,
                                        "max_attachments": 3})
    app.config["SITE"] = config.model_copy(update={"wes": wes})
    service = app.extensions["hpc_bridge.runs"]
    service._settings = wes
    assert_400(submit(client, files={"tool.cwl": TOOL.encode(), "big": b"x" * 1001}, workflow_params={}),
               "big", "1000 bytes")
    assert_400(submit(client, files={"tool.cwl": TOOL.encode(), "a": b"x" * 800, "b": b"x" * 800},
                      workflow_params={}), "1500 bytes")
    assert_400(submit(client, files={"tool.cwl": TOOL.encode(), "a": b"", "b": b"", "c": b""},
                      workflow_params={}), "more than 3 files")
    assert run_dirs(data_root) == []
    assert submit(client, files={"tool.cwl": TOOL.encode(), "a": b"x" * 900}, workflow_params={}
                  ).status_code == 200


def test_invalid_workflow_is_400_with_the_validator_message(client: FlaskClient, store: Store,
                                                            data_root: Path) -> None:
    resp = submit(client, files={"tool.cwl": (TOOL + "BROKEN: 1\n").encode()}, workflow_params={})
    assert_400(resp, "Tool definition failed validation", "BROKEN is not a field")
    assert RunStore(store).list(None, before_seq=None, limit=10) == [] and run_dirs(data_root) == []


def test_https_workflows_can_be_switched_off(client: FlaskClient, config: SiteConfig) -> None:
    service = client.application.extensions["hpc_bridge.runs"]
    service._settings = config.wes.model_copy(update={"https_workflows": False})
    assert_400(submit(client, workflow_url="https://example.org/tool.cwl"), "disabled")


def test_active_run_limit(client: FlaskClient, config: SiteConfig, store: Store) -> None:
    limits = config.limits.model_copy(update={"max_active_tasks": 2})
    client.application.extensions["hpc_bridge.runs"]._config = config.model_copy(update={"limits": limits})
    first = create(client)
    create(client)
    resp = submit(client)
    assert resp.status_code == 429 and "2 active workflow runs" in resp.get_json()["msg"]
    RunStore(store).update(first, state="COMPLETE")
    create(client)
    assert create(client, user="bob")


# -- listing ----------------------------------------------------------------------------------


def test_list_pages_in_a_stable_order(client: FlaskClient, store: Store) -> None:
    ids = [create(client, tags={"i": str(i)}) for i in range(7)]
    RunStore(store).update(ids[0], state="RUNNING", start_time="2026-01-01T00:00:00.123456Z")
    seen, token, pages = [], None, 0
    while True:
        query = "page_size=3" + (f"&page_token={token}" if token else "")
        body = client.checked("get", f"{BASE}/runs?{query}").get_json()
        assert len(body["runs"]) <= 3
        seen += body["runs"]
        create(client)  # a run added while paging does not shift the pages
        pages += 1
        token = body["next_page_token"]
        if not token:
            break
    assert [r["run_id"] for r in seen] == list(reversed(ids)) and pages == 3
    assert seen[-1] == {"run_id": ids[0], "state": "RUNNING", "start_time": "2026-01-01T00:00:00Z",
                        "tags": {"i": "0"}}
    assert seen[0]["tags"] == {"i": "6"} and "start_time" not in seen[0]
    assert len(client.checked("get", f"{BASE}/runs?page_size=100000").get_json()["runs"]) == 10


@pytest.mark.parametrize("query", ["page_size=0", "page_size=x", "page_token=garbage!",
                                   "page_token=dDE"])  # a TES task token is not a run token
def test_bad_list_parameters_are_400(client: FlaskClient, query: str) -> None:
    assert client.get(f"{BASE}/runs?{query}").status_code == 400


# -- tenancy ----------------------------------------------------------------------------------


def test_other_users_runs_are_404_and_unlisted(client: FlaskClient, store: Store, data_root: Path) -> None:
    run_id = create(client, user="alice")
    bob = as_user("bob")
    for method, path in (("get", ""), ("get", "/status"), ("post", "/cancel"), ("get", "/tasks"),
                         ("get", "/tasks/x"), ("get", "/stdout"), ("get", "/stderr"),
                         ("get", "/tasks/x/stdout"), ("get", "/outputs?location=file:///x")):
        resp = getattr(client, method)(f"{BASE}/runs/{run_id}{path}", headers=bob)
        assert resp.status_code == 404, path
        assert resp.get_json() == {"msg": f"workflow run {run_id!r} not found", "status_code": 404}
    assert RunStore(store).get(run_id).state == "QUEUED"  # bob's cancel did nothing
    assert client.checked("get", f"{BASE}/runs", headers=bob).get_json()["runs"] == []
    other = create(client, user="bob")
    assert [r["run_id"] for r in client.get(f"{BASE}/runs", headers=bob).get_json()["runs"]] == [other]
    admin = client.checked("get", f"{BASE}/runs", headers=as_user("root")).get_json()
    assert {r["run_id"] for r in admin["runs"]} == {run_id, other}
    assert client.get(f"{BASE}/runs/{run_id}", headers=as_user("root")).status_code == 200


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_marks_canceling_and_is_a_noop_once_finished(client: FlaskClient, store: Store) -> None:
    runs = RunStore(store)
    run_id = create(client)
    assert client.checked("post", f"{BASE}/runs/{run_id}/cancel").get_json() == {"run_id": run_id}
    row = runs.get(run_id)
    assert row.state == "CANCELING" and row.cancel_requested
    runs.update(run_id, state="RUNNING")  # a supervisor write computed before the cancel
    assert runs.get(run_id).state == "CANCELING"
    done = create(client)
    runs.update(done, state="COMPLETE")
    assert client.checked("post", f"{BASE}/runs/{done}/cancel").get_json() == {"run_id": done}
    assert runs.get(done).state == "COMPLETE"
    assert [e["state"] for e in runs.events(run_id)] == ["QUEUED", "CANCELING"]


# -- tasks, logs and outputs ------------------------------------------------------------------


def add_task(store: Store, run_id: str, step: str, owner: str = "https://idp.example.org#alice",
             **fields: Any) -> str:
    import uuid

    task_id = str(uuid.uuid4())
    tags = {"wes_run_id": run_id, "cwl_step": step, "cwl_job_key": step}
    store.tasks.create(id=task_id, owner=owner, name=f"{run_id[:8]}-{step}", tags=tags,
                       task={"executors": [{"image": "busybox", "command": ["sh", "-c", "stage"]},
                                           {"image": "busybox", "command": ["cat", "reads.txt"]}],
                             "tags": tags})
    if fields:
        store.tasks.update(task_id, **fields)
    return task_id


def test_run_tasks_are_listed_in_order_with_tes_uris(client: FlaskClient, store: Store) -> None:
    run_id = create(client)
    other_run = create(client)
    first = add_task(store, run_id, "align", state="EXECUTOR_ERROR", start_time="2026-01-01T00:00:00.5Z",
                     end_time="2026-01-01T00:00:09.5Z", system_logs=["executor 1 exited with code 2"],
                     executor_logs=[{"exit_code": 0, "stdout": "staged\n", "stderr": ""},
                                    {"exit_code": 2, "stdout": "out\n", "stderr": "cat: no such file\n"}])
    ids = [first, *(add_task(store, run_id, f"s{i}") for i in range(4))]
    foreign = add_task(store, other_run, "x")
    body = client.checked("get", f"{BASE}/runs/{run_id}/tasks?page_size=2").get_json()
    log = body["task_logs"][0]
    assert log == {
        "id": first, "name": "align", "cmd": ["cat", "reads.txt"],
        "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-01T00:00:09Z",
        "stdout": f"http://localhost{BASE}/runs/{run_id}/tasks/{first}/stdout",
        "stderr": f"http://localhost{BASE}/runs/{run_id}/tasks/{first}/stderr",
        "exit_code": 2, "system_logs": ["TES state: EXECUTOR_ERROR", "executor 1 exited with code 2"],
        "tes_uri": f"http://localhost/ga4gh/tes/v1/tasks/{first}"}
    seen, token = [t["id"] for t in body["task_logs"]], body["next_page_token"]
    while token:
        body = client.checked("get", f"{BASE}/runs/{run_id}/tasks?page_size=2&page_token={token}").get_json()
        seen += [t["id"] for t in body["task_logs"]]
        token = body["next_page_token"]
    assert seen == ids
    assert client.checked("get", f"{BASE}/runs/{run_id}/tasks/{first}").get_json() == log
    assert client.get(f"{BASE}/runs/{run_id}/tasks/{first}/stdout").get_data(as_text=True) == "staged\nout\n"
    assert client.get(f"{BASE}/runs/{run_id}/tasks/{first}/stderr").get_data(as_text=True) == \
        "cat: no such file\n"
    assert client.get(f"{BASE}/runs/{run_id}/tasks/{foreign}").status_code == 404
    assert client.get(f"{BASE}/runs/{other_run}/tasks").get_json()["task_logs"][0]["id"] == foreign
    tes = client.get(f"/ga4gh/tes/v1/tasks/{first}?view=FULL")
    assert tes.status_code == 200 and tes.get_json()["tags"]["wes_run_id"] == run_id


def test_run_log_streams(client: FlaskClient, store: Store, data_root: Path) -> None:
    run_id = create(client)
    assert client.get(f"{BASE}/runs/{run_id}/stderr").get_data(as_text=True) == ""
    run_dir = data_root / "runs" / run_id
    (run_dir / "stderr.log").write_text("INFO [workflow] start\nERROR boom\n")
    resp = client.get(f"{BASE}/runs/{run_id}/stderr")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert resp.get_data(as_text=True) == "INFO [workflow] start\nERROR boom\n"
    secret = data_root.parent / "secret"
    secret.write_text("secret")
    os.symlink(secret, run_dir / "stdout.log")
    assert client.get(f"{BASE}/runs/{run_id}/stdout").get_data(as_text=True) == ""


def test_outputs_are_served_to_the_owner_only_when_listed(client: FlaskClient, store: Store,
                                                         data_root: Path) -> None:
    run_id = create(client)
    out = data_root / "runs" / run_id / ".cwl" / "out" / "t1"
    out.mkdir(parents=True)
    (out / "result.txt").write_text("42\n")
    (out / "sub").mkdir()
    (out / "sub" / "a.txt").write_text("a")
    (data_root / "unlisted.txt").write_text("no")
    os.symlink(data_root / "unlisted.txt", out / "sub" / "link")
    outputs = {"result": {"class": "File", "location": (out / "result.txt").as_uri(), "size": 3},
               "dir": {"class": "Directory", "location": (out / "sub").as_uri()}, "n": 1}
    RunStore(store).update(run_id, state="COMPLETE", outputs=outputs, exit_code=0,
                           end_time="2026-01-01T00:00:00.000000Z")
    log = client.checked("get", f"{BASE}/runs/{run_id}").get_json()
    crate = {"url": f"http://localhost{BASE}/runs/{run_id}/ro-crate", "encodingFormat": "application/zip",
             "conformsTo": "https://w3id.org/ro/wfrun/provenance/0.5"}
    assert log["outputs"] == {**outputs, "hpc-bridge/ro-crate": crate} and log["run_log"]["exit_code"] == 0

    def get(location: str, user: str = "alice"):
        return client.get(f"{BASE}/runs/{run_id}/outputs", query_string={"location": location},
                          headers=as_user(user))

    assert get((out / "result.txt").as_uri()).data == b"42\n"
    assert get((out / "sub" / "a.txt").as_uri()).data == b"a"
    listing = get((out / "sub").as_uri()).get_json()
    assert listing["listing"] == [{"class": "File", "basename": "a.txt",
                                   "location": (out / "sub" / "a.txt").as_uri()}]
    for refused in ((data_root / "unlisted.txt").as_uri(), (out / "sub" / "link").as_uri(),
                    (out / "sub" / ".." / ".." / ".." / ".." / "unlisted.txt").as_uri(),
                    "file:///etc/passwd", (out / "sub" / "missing").as_uri()):
        assert get(refused).status_code == 404, refused
    assert get((out / "result.txt").as_uri(), user="bob").status_code == 404


def test_client_side_absolute_paths_of_attached_files_are_mapped(client: FlaskClient, data_root: Path) -> None:
    """What wes-client sends: job files as absolute paths of the client's machine, attached
    relative to the workflow's directory."""
    params = {"reads": {"class": "File", "location": "file:///home/u/project/data/reads.txt"},
              "dir": {"class": "Directory", "path": "/home/u/project/data"}}
    run_id = create(client, workflow_params=params)
    attached = data_root / "runs" / run_id / "attachments"
    resolved = json.loads((attached.parent / "request.json").read_text())["params"]
    assert resolved == {"reads": {"class": "File", "location": (attached / "data" / "reads.txt").as_uri()},
                        "dir": {"class": "Directory", "location": (attached / "data").as_uri()}}
    assert_400(submit(client, workflow_params={"r": {"class": "File", "location": "file:///home/u/other.txt"}}),
               "workflow_params.r.location", "outside the allowed data roots")


def test_large_workflow_params_are_accepted(client: FlaskClient, data_root: Path) -> None:
    """Form fields beyond werkzeug's default 500 kB in-memory limit, up to wes.max_params_bytes."""
    params = {"reads": {"class": "File", "location": "data/reads.txt"}, "names": ["x" * 100] * 20000}
    run_id = create(client, workflow_params=params)
    assert len((data_root / "runs" / run_id / "request.json").read_text()) > 2_000_000


def test_request_size_follows_the_wes_caps_unless_the_user_has_a_limit(client: FlaskClient,
                                                                       config: SiteConfig) -> None:
    big = {"tool.cwl": TOOL.encode(), "big.bin": b"x" * (17 * 1024**2)}  # over the 16 MiB API default
    assert submit(client, files=big, workflow_params={}).status_code == 200
    limits = config.limits.model_copy(update={"max_request_bytes": 1024**2})
    client.application.config["SITE"] = config.model_copy(update={"limits": limits})
    resp = submit(client, files=big, workflow_params={})
    assert resp.status_code == 413 and resp.get_json()["status_code"] == 413


# -- hostile input: a 400 naming the problem, never a 500, nothing stored -----------------------

DEEP = "[" * 5000 + "]" * 5000  # Python's parser: RecursionError


def nothing_stored(store: Store, data_root: Path) -> bool:
    return RunStore(store).list(None, before_seq=None, limit=10) == [] and run_dirs(data_root) == []


@pytest.mark.parametrize("field", ["workflow_params", "tags", "workflow_engine_parameters"])
@pytest.mark.parametrize("value", ['{"a": ' + DEEP + "}", '{"a": ' + "[" * 100 + "]" * 100 + "}"])
def test_deeply_nested_form_fields_are_400(client: FlaskClient, store: Store, data_root: Path, field: str,
                                           value: str) -> None:
    assert_400(submit(client, **{field: value}), field, "nested more than 64 levels deep")
    assert nothing_stored(store, data_root)


def test_deeply_nested_json_body_is_400(client: FlaskClient, store: Store, data_root: Path) -> None:
    body = '{"workflow_type": "CWL", "workflow_params": {"a": ' + DEEP + "}}"
    resp = client.post(f"{BASE}/runs", data=body, content_type="application/json", headers=as_user("alice"))
    assert_400(resp, "body: nested more than 64 levels deep")
    assert nothing_stored(store, data_root)


@pytest.mark.parametrize("raw", ["r" + "9" * 25, f"r{2**63}", "r" + "9" * 5000])
def test_page_tokens_beyond_sqlite_integers_are_400(client: FlaskClient, raw: str) -> None:
    run_id = create(client)
    token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    for path in ("/runs", f"/runs/{run_id}/tasks"):
        assert_400(client.get(f"{BASE}{path}?page_token={token}"), "invalid page_token")


@pytest.fixture()
def real_client(config: SiteConfig, store: Store) -> FlaskClient:
    """The real validator (cwltool), for documents only cwltool reads."""
    return create_app(config, store=store, verifier=Users()).test_client()  # type: ignore[arg-type]


def submit_to(client: FlaskClient, files: dict[str, bytes], **fields: Any):
    return client.post(f"{BASE}/runs", data=form(files, workflow_url="tool.cwl", **fields),
                       content_type="multipart/form-data", headers=as_user("alice"))


@pytest.mark.parametrize(("files", "params", "words"), [
    ({"tool.cwl": (TOOL + "hints: " + "[" * 1000 + "]" * 1000 + "\n").encode()}, {},
     ("nested too deeply",)),
    ({"tool.cwl": (TOOL + "hints:\n  - " + "{a: " * 1000 + "1" + "}" * 1000 + "\n").encode()}, {},
     ("nested too deeply",)),
    ({"tool.cwl": TOOL.replace("inputs:\n  reads: {type: File, inputBinding: {position: 1}}",
                               "inputs: {$import: str.yml}").encode(), "str.yml": b"hello\n"}, {},
     ("AttributeError",)),
    ({"tool.cwl": TOOL.encode(), "str.yml": b"hello\n"}, {"$import": "str.yml"},
     ("workflow_params: must be an object",)),
])
def test_documents_cwltool_cannot_load_are_400(real_client: FlaskClient, store: Store, data_root: Path,
                                               files: dict[str, bytes], params: dict[str, Any],
                                               words: tuple[str, ...]) -> None:
    assert_400(submit_to(real_client, files, workflow_params=params), *words)
    assert nothing_stored(store, data_root)


def test_real_validator_accepts_nesting_within_the_limit(real_client: FlaskClient, data_root: Path) -> None:
    nested: Any = "x"
    for _ in range(60):
        nested = [nested]
    files = {"tool.cwl": TOOL.replace("outputs:", "  extra: Any\noutputs:").encode(), "reads.txt": b"ACGT\n"}
    resp = submit_to(real_client, files, workflow_params={"reads": {"class": "File", "location": "reads.txt"},
                                                          "extra": nested})
    assert resp.status_code == 200, resp.get_json()
