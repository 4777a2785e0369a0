"""The one fetcher for everything a CWL document names (hpc_bridge.cwl.fetch), through
validate_workflow as the WES layer and the engine call it: files only inside the run's own
directories and the data roots (never other runs'), http(s) only by the address policy and within
its timeout, and never a refused file's content in a message."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hpc_bridge.config import SiteConfig
from hpc_bridge.cwl.fetch import OUTSIDE, FetchPolicy
from hpc_bridge.cwl.validate import InvalidWorkflow, validate_workflow

CANARY = "CANARY-5b1e9d-the-refused-files-text"
HEAD = "cwlVersion: v1.2\n"
TOOL = HEAD + "class: CommandLineTool\nbaseCommand: echo\ninputs: []\noutputs: []\n"


class Run:
    """A site (data root holding the runs root) with this run's directory and another run's."""

    def __init__(self, tmp_path: Path, config: SiteConfig) -> None:
        self.data = tmp_path / "data"
        self.run_dir = self.data / "runs" / "this-run"
        self.attachments = self.run_dir / "attachments"
        self.attachments.mkdir(parents=True)
        self.other = self.data / "runs" / "other-run" / "attachments"
        self.other.mkdir(parents=True)
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        for folder in (self.outside, self.other, self.run_dir):
            (folder / "secret.cwl").write_text(CANARY + "\n")
        (self.outside / "tree").mkdir()
        (self.outside / "tree" / "f.txt").write_text(CANARY)
        self.config = config
        self.policy = FetchPolicy.for_run(config, self.run_dir, [str(r) for r in config.storage.data_roots])

    def attach(self, name: str, text: str) -> Path:
        path = self.attachments / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def validate(self, text: str, params: dict | None = None) -> None:
        validate_workflow(str(self.attach("main.cwl", text)), params=params, policy=self.policy)

    def refused(self, text: str, *expected: str, params: dict | None = None) -> str:
        with pytest.raises(InvalidWorkflow) as info:
            self.validate(text, params)
        message = info.value.message
        assert CANARY not in message and CANARY not in str(info.value)
        for part in expected:
            assert part in message, message
        return message


def site(dev_config: SiteConfig, data: Path, **http: object) -> SiteConfig:
    storage = dev_config.storage.model_copy(update={
        "data_roots": [data], "http": dev_config.storage.http.model_copy(update=http)})
    return dev_config.model_copy(update={"storage": storage})


@pytest.fixture()
def run(tmp_path: Path, dev_config: SiteConfig, caplog: pytest.LogCaptureFixture) -> Iterator[Run]:
    caplog.set_level(logging.DEBUG)
    yield Run(tmp_path, site(dev_config, tmp_path / "data"))
    assert CANARY not in caplog.text  # not in cwltool's warnings either


def workflow(run: str, **extra: str) -> str:
    lines = "".join(f"{key}: {value}\n" for key, value in extra.items())
    return (HEAD + "class: Workflow\n" + lines + "inputs: []\noutputs: []\n"
            f"steps:\n  s:\n    run: {run}\n    in: []\n    out: []\n")


def tool_with_input(spec: str) -> str:
    return HEAD + f"class: CommandLineTool\nbaseCommand: cat\ninputs:\n  ref: {spec}\noutputs: []\n"


# -- file: references --------------------------------------------------------------------------


def test_policy_for_a_run_and_its_json(run: Run) -> None:
    policy = run.policy
    assert policy.roots[:2] == (str(run.run_dir / "attachments"), str(run.run_dir / "remote"))
    assert str(run.data) in policy.roots and policy.exclude == (str(run.data / "runs"),)
    assert policy.http.timeout == min(run.config.storage.http.timeout, run.config.wes.https_timeout)
    assert FetchPolicy.from_json(json.loads(json.dumps(policy.to_json()))) == policy
    for bad in ([], {"roots": ["relative"]}, {"roots": [], "extra": 1}, {"http": {"timeout": -1}}):
        with pytest.raises(ValueError):
            FetchPolicy.from_json(bad)


def test_every_kind_of_reference_outside_is_refused(run: Run) -> None:
    secret = (run.outside / "secret.cwl").as_uri()
    cases = {
        "run": workflow(secret),
        "$import": HEAD + f"class: CommandLineTool\nbaseCommand: echo\ninputs: {{$import: {secret}}}\noutputs: []\n",
        "$include": TOOL + f"doc: {{$include: {secret}}}\n",
        "$include in a default": tool_with_input(f"{{type: string, default: {{$include: {secret}}}}}"),
        "relative run": workflow("../../../../outside/secret.cwl"),
    }
    for name, text in cases.items():
        message = run.refused(text, OUTSIDE)
        assert str(run.outside / "secret.cwl") in message, (name, message)


def test_schemas_outside_are_refused_by_field(run: Run) -> None:
    secret = (run.outside / "secret.cwl").as_uri()
    run.refused(TOOL + f"$schemas: [{secret}]\n", f"$schemas[0]: {secret} {OUTSIDE}")
    (run.attachments / "ontology.owl").write_text("<rdf/>")
    run.validate(TOOL + "$schemas: [ontology.owl]\n")


def test_default_file_and_directory_outside_are_refused_by_field(run: Run) -> None:
    hosts = run.outside / "tree" / "f.txt"
    run.refused(tool_with_input(f"{{type: File, default: {{class: File, location: {hosts.as_uri()}}}}}"),
                f"inputs.ref.default.location: {hosts.as_uri()} {OUTSIDE}")
    run.refused(tool_with_input(f"{{type: Directory, default: {{class: Directory, path: {run.outside / 'tree'}}}}}"),
                "inputs.ref.default.path: ", OUTSIDE)
    run.refused(tool_with_input("{type: File, default: {class: File, location: s3://bucket/key}}"),
                "inputs.ref.default.location: s3://bucket/key: the scheme 's3' is not allowed")
    # A step's `in` default, a default inside an embedded tool, an InitialWorkDir listing.
    step_default = (HEAD + "class: Workflow\ninputs: []\noutputs: []\nsteps:\n  s1:\n    run: tool.cwl\n"
                    f"    in: {{ref: {{default: {{class: File, location: {hosts.as_uri()}}}}}}}\n    out: []\n")
    run.attach("tool.cwl", tool_with_input("File"))
    run.refused(step_default, "steps.s1.in.ref.default.location: ", OUTSIDE)
    run.attach("tool.cwl", tool_with_input(f"{{type: File, default: {{class: File, path: {hosts}}}}}"))
    run.refused(workflow("tool.cwl"), "steps.s.run.inputs.ref.default.path: ", OUTSIDE)
    listing = (TOOL.replace("inputs: []\n", "") + "inputs: []\nrequirements:\n  InitialWorkDirRequirement:\n"
               f"    listing: [{{class: File, location: {hosts.as_uri()}}}]\n")
    run.refused(listing, "checking field 'listing'", OUTSIDE)


def test_references_inside_the_attachments_and_data_roots_are_accepted(run: Run) -> None:
    run.attach("tools/echo.cwl", TOOL)
    run.attach("doc.txt", "some documentation")
    run.attach("ref.txt", "ACGT")
    (run.data / "shared").mkdir()
    (run.data / "shared" / "genome.fa").write_text(">chr1\n")
    run.validate(workflow("tools/echo.cwl", doc="{$include: doc.txt}"))
    run.validate(tool_with_input("{type: File, default: {class: File, location: ref.txt}}"))
    genome = run.data / "shared/genome.fa"
    run.validate(tool_with_input(f"{{type: File, default: {{class: File, location: {genome}}}}}"))
    run.validate(tool_with_input("{type: File, default: {class: File, location: http://example.org/ref.fa}}"))


def test_a_symlink_out_of_the_attachments_is_refused(run: Run) -> None:
    (run.attachments / "link.cwl").symlink_to(run.outside / "secret.cwl")
    (run.attachments / "linkdir").symlink_to(run.outside / "tree")
    run.refused(workflow("link.cwl"), OUTSIDE)
    run.refused(TOOL + "doc: {$include: linkdir/f.txt}\n", OUTSIDE)
    run.refused(tool_with_input("{type: Directory, default: {class: Directory, location: linkdir}}"),
                "inputs.ref.default.location: ", OUTSIDE)
    (run.attachments / "inside.cwl").symlink_to(run.attachments / "main.cwl")
    run.attach("echo.cwl", TOOL)
    (run.attachments / "alias.cwl").symlink_to(run.attachments / "echo.cwl")
    run.validate(workflow("alias.cwl"))  # a symlink that stays inside is fine


def test_other_runs_and_the_run_dir_itself_are_closed(run: Run) -> None:
    """The runs root lies inside a data root; only this run's own directories are open."""
    run.refused(workflow((run.other / "secret.cwl").as_uri()), OUTSIDE)
    run.refused(workflow("../secret.cwl"), OUTSIDE)  # this run's dir, outside attachments/remote
    run.refused(tool_with_input(f"{{type: File, default: {{class: File, location: {run.other / 'secret.cwl'}}}}}"),
                "inputs.ref.default.location: ", OUTSIDE)


def test_job_object_imports_are_held_to_the_policy(run: Run) -> None:
    text = tool_with_input("File")
    run.refused(text, OUTSIDE, params={"ref": {"$import": str(run.outside / "secret.cwl")}})
    run.attach("job-part.json", json.dumps({"class": "File", "location": str(run.outside / "tree/f.txt")}))
    run.refused(text, "workflow_params.ref.location: ", OUTSIDE,
                params={"ref": {"$import": str(run.attachments / "job-part.json")}})
    run.attach("job-part.json", json.dumps({"class": "File", "location": "ref.txt"}))
    run.attach("ref.txt", "ACGT")
    run.validate(text, params={"ref": {"$import": str(run.attachments / "job-part.json")}})


# -- http(s) references ------------------------------------------------------------------------


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    """A local port that accepts connections into its backlog and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_local_addresses_are_refused_without_connecting(run: Run, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"):
        url = f"http://{host}:{port}/x"
        message = run.refused(TOOL + f"doc: {{$include: '{url}'}}\n", "not a public address")
        assert f"{host}:{port}/x" in message
        run.refused(workflow(f"'{url}'"), "not a public address")
        if host != "localhost":  # a default's host name is resolved when the file is downloaded
            run.refused(tool_with_input(f"{{type: File, default: {{class: File, location: '{url}'}}}}"),
                        f"inputs.ref.default.location: {url}: ", "not a public address")
    assert not connected(listener)


class Documents(BaseHTTPRequestHandler):
    """Serves CWL documents by path; /local names a file: URL (a remote document must not)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = {"/echo.cwl": TOOL, "/doc.txt": "remote documentation",
                "/local.cwl": workflow("file:///etc/hostname")}.get(self.path)
        self.send_response(200 if body else 404)
        data = (body or "").encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def allowed(tmp_path: Path, dev_config: SiteConfig) -> Iterator[tuple[Run, str]]:
    """A run whose site allows 127.0.0.1 with a 2 s timeout, and a document server there."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Documents)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = site(dev_config, tmp_path / "data", allowed_networks=["127.0.0.1/32"], timeout=2.0,
                  connect_timeout=1.0)
    yield Run(tmp_path, config), f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_allowed_http_documents_are_fetched(allowed: tuple[Run, str]) -> None:
    run, base = allowed
    run.validate(workflow(f"'{base}/echo.cwl'", doc=f"{{$include: '{base}/doc.txt'}}"))
    run.refused(workflow(f"'{base}/missing.cwl'"), "HTTP 404")
    run.refused(workflow(f"'{base}/local.cwl'"), f"file:///etc/hostname {OUTSIDE}")


def test_a_url_that_never_answers_times_out_and_blocks_no_one(allowed: tuple[Run, str],
                                                              listener: socket.socket) -> None:
    run, _ = allowed
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/never"
    run.attach("echo.cwl", TOOL)
    slow_doc = run.attach("slow.cwl", TOOL + f"doc: {{$include: '{url}'}}\n")
    outcome: dict[str, object] = {}

    def slow() -> None:
        started = time.monotonic()
        try:
            validate_workflow(str(slow_doc), policy=run.policy)
        except InvalidWorkflow as exc:
            outcome["message"] = exc.message
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 10
    while not connected(listener) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert connected(listener), "the slow validation never reached its URL"
    started = time.monotonic()
    validate_workflow(str(run.attachments / "echo.cwl"), policy=run.policy)  # meanwhile
    assert time.monotonic() - started < 2.0
    assert thread.is_alive()  # the other one is still waiting for its URL
    thread.join(10)
    assert "timed out" in str(outcome.get("message")), outcome
    assert float(outcome["seconds"]) < 2.0 + 3.0  # type: ignore[arg-type]


# -- through the WES API -----------------------------------------------------------------------


def test_post_runs_refuses_with_the_field_and_never_the_content(tmp_path: Path, dev_config: SiteConfig) -> None:
    """The real validator behind POST /runs: a 400 naming the reference or field, no canary."""
    from hpc_bridge.app import create_app
    from hpc_bridge.store import Store

    from .test_wes_api import BASE, Users, form

    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.cwl"
    secret.write_text(CANARY + "\n")
    app = create_app(site(dev_config, data), store=Store(tmp_path / "db.sqlite"), verifier=Users())  # type: ignore[arg-type]
    client = app.test_client()

    def post(document: str) -> tuple[int, str]:
        resp = client.post(f"{BASE}/runs", data=form({"tool.cwl": document.encode()}, workflow_url="tool.cwl",
                                                     workflow_params={}),
                           content_type="multipart/form-data", headers={"Authorization": "user alice"})
        assert CANARY not in resp.get_data(as_text=True)
        return resp.status_code, resp.get_json()["msg"] if resp.status_code == 400 else ""

    status, message = post(workflow(secret.as_uri()))
    assert status == 400 and f"{secret.as_uri()} {OUTSIDE}" in message
    status, message = post(TOOL + f"doc: {{$include: {secret}}}\n")
    assert status == 400 and OUTSIDE in message
    status, message = post(tool_with_input(f"{{type: File, default: {{class: File, location: {secret.as_uri()}}}}}"))
    assert status == 400 and message == f"inputs.ref.default.location: {secret.as_uri()} {OUTSIDE}"
    assert not any((data / "runs").iterdir())  # nothing recorded
    assert post(TOOL)[0] == 200
