"""Injection suite through the real server, Slurm and Apptainer.

Every hostile payload (newline, `;`, `$(...)`, backticks, quotes, `,`/`:` for bind specs, NUL,
100k-character strings, a 300-byte path component, unicode, ...) goes into every field of a TES
task (the matrix: `tests/unit/test_injection_render.py`, PAYLOADS x TES_SITES). Each (field,
payload) is either

* refused: 400 with a GA4GH ErrorResponse naming the field, and nothing stored (GET /tasks is
  unchanged: nothing half-created); or
* accepted and passed through literally: one task per payload carries it in every field that
  accepts it and really runs through Slurm. Its probe executor reports what it saw (argv, env,
  workdir, stdin, inputs, volumes, mounts) into a file collected as an output, compared byte for
  byte; names, tags, outputs, logs and the Slurm job are checked from the outside.

The canary: every payload that could run a command touches a file on the host (in the data root,
writable by the job user) and one in the task's volume; every payload that could add a bind names a
secret directory (readable by the job user, outside every data root) and a `/leak-...` mount point.
After the runs neither canary exists, no mount of the secret shows in `/proc/self/mountinfo`, and
the leak mount point does not exist.

WES: `WES_SITES` holds the WES fields (workflow attachment names so far; add workflow_params,
tags, engine parameters, ... there). Attachment names travel as RFC 5987 `filename*` so every byte
arrives as sent; refused ones must also leave nothing in the runs root. `test_wes_sites_exist_once_
wes_is_served` fails if the server serves WES while that list is empty.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from hpc_bridge.config import SiteConfig

from ..unit.test_injection_render import (
    NUL,
    PATH_TOO_LONG,
    PAYLOADS,
    TES_SITES,
    Builder,
    Ctx,
    Site,
    accepted_builder,
    accepted_cases,
    refused_cases,
    single_builder,
)
from .conftest import ServerProcess, free_port, write_config

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
TES = "/ga4gh/tes/v1"

WES = "/ga4gh/wes/v1"
CWL = b"cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: ['true']\ninputs: []\noutputs: []\n"


@dataclass(frozen=True)
class WesSite:
    """A place in a WES RunRequest: `build(payload)` -> (form fields, attachments (name, bytes)),
    `stored(run_dir, payload)` -> the file the payload must have become (accepted cases)."""

    id: str
    field: str
    refuses: frozenset[str]
    build: Callable[[str], tuple[dict[str, str], list[tuple[str, bytes]]]]
    stored: Callable[[Path, str], tuple[Path, bytes]]
    api: str = "wes"


def _run_request(extra: list[tuple[str, bytes]]) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    fields = {"workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "wf.cwl",
              "workflow_params": "{}"}
    return fields, [("wf.cwl", CWL), *extra]


# Attachment names are relative paths of plain components: control characters, backslashes (a
# Windows separator), names over 4096 bytes and components over 255 bytes are refused.
WES_SITES: list[WesSite] = [
    WesSite("wes.workflow_attachment.name", "workflow_attachment",
            NUL | PATH_TOO_LONG | {"newline", "cr", "backslash"},
            lambda v: _run_request([(v, b"attachment-ok")]),
            lambda run_dir, v: (run_dir / "attachments" / v, b"attachment-ok")),
]
SITES = [*TES_SITES, *WES_SITES]


@pytest.fixture(scope="module")
def inj_server(dev_config: SiteConfig, slurm: Any, tmp_path_factory: pytest.TempPathFactory,
               ictx: Ctx) -> Iterator[ServerProcess]:
    """One server (API + daemon) on a fresh database for the whole module; WES runs in ictx; every
    payload an allowed account, so the account backend parameter reaches sbatch."""
    config = write_config(dev_config, tmp_path_factory.mktemp("inj-server"),
                          wes={"runs_root": str(ictx.data / "runs")},
                          limits={"allowed_accounts": [ictx.payload(p) for p in PAYLOADS]})
    server = ServerProcess(config, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ictx(dev_config: SiteConfig) -> Iterator[Ctx]:
    """Test data under /srv/hpc-bridge (the job user cannot read pytest's tmp dirs): a directory in
    the data root owned by the job user, and a secret directory beside the root that it can read."""
    user = pwd.getpwnam(dev_config.slurm.submit_as or "root")
    token = uuid.uuid4().hex[:10]
    root = dev_config.storage.data_roots[0]
    data, secret = root / f"inj-{token}", root.parent / f"secret-{token}"
    data.mkdir(parents=True)
    os.chown(data, user.pw_uid, user.pw_gid)
    secret.mkdir(mode=0o755)
    (secret / "secret.txt").write_text("SECRET\n")
    (secret / "secret.txt").chmod(0o644)
    yield Ctx(data=data, secret=secret, token=token)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(secret, ignore_errors=True)


class Api:
    """What the site checks may ask: the server's task list, and the Slurm job of a task."""

    def __init__(self, server: ServerProcess, scontrol: str = "scontrol") -> None:
        self.url = server.url
        self.scontrol = scontrol

    def ids(self, **params: str) -> list[str]:
        resp = requests.get(f"{self.url}{TES}/tasks", params={"page_size": "2047", **params}, timeout=30)
        assert resp.status_code == 200, resp.text
        return [t["id"] for t in resp.json()["tasks"]]

    def slurm_field(self, doc: dict[str, Any], name: str) -> str:
        job = doc["logs"][0]["metadata"]["slurm_job_id"]
        out = subprocess.run([self.scontrol, "show", "job", "-o", job], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        match = re.search(rf"(?:^|\s){name}=(\S*)", out)
        assert match, out
        return match.group(1)


def all_ids(server: ServerProcess) -> list[str]:
    return Api(server).ids()


# ---------------------------------------------------------------------------------------------
# Refused: 400, a GA4GH ErrorResponse naming the field, nothing stored.

@pytest.mark.parametrize(("site", "pid"), refused_cases(TES_SITES))
def test_refused_with_400_and_nothing_stored(site: Site, pid: str, inj_server: ServerProcess,
                                             ictx: Ctx) -> None:
    body = single_builder(ictx, site, pid).body(run=False)
    before = all_ids(inj_server)
    resp = requests.post(f"{inj_server.url}{TES}/tasks", json=body, timeout=60)
    assert resp.status_code == 400, resp.text[:2000]
    error = resp.json()
    assert set(error) == {"msg", "status_code"} and error["status_code"] == 400, error
    assert isinstance(error["msg"], str) and site.field in error["msg"], error["msg"][:2000]
    assert all_ids(inj_server) == before


# ---------------------------------------------------------------------------------------------
# Accepted: one task per payload, all submitted at once, run through Slurm.

@dataclass
class Run:
    builder: Builder
    status: int
    doc: dict[str, Any]
    report: list[bytes] | None  # the probe's records (None: no report was collected)

    def explain(self) -> str:
        logs = (self.doc.get("logs") or [{}])[0]
        executors = [(e.get("exit_code"), (e.get("stderr") or "")[-500:]) for e in logs.get("logs", [])]
        return f"state {self.doc.get('state')}: system_logs={logs.get('system_logs')}, executors={executors}"


@pytest.fixture(scope="module")
def runs(inj_server: ServerProcess, ictx: Ctx) -> dict[str, Run]:
    builders = {pid: accepted_builder(ictx, pid, TES_SITES) for pid in PAYLOADS}
    posted: dict[str, tuple[int, dict[str, Any]]] = {}
    for pid, builder in builders.items():
        resp = requests.post(f"{inj_server.url}{TES}/tasks", json=builder.body(), timeout=60)
        posted[pid] = (resp.status_code, resp.json())
    pending = {pid: body["id"] for pid, (status, body) in posted.items() if status == 200}
    docs: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        for pid, task_id in list(pending.items()):
            doc = requests.get(f"{inj_server.url}{TES}/tasks/{task_id}", params={"view": "FULL"},
                               timeout=30).json()
            if doc["state"] in FINAL:
                docs[pid] = doc
                del pending[pid]
        time.sleep(0.5)
    result = {}
    for pid, builder in builders.items():
        status, body = posted[pid]
        doc = docs.get(pid, body if status != 200 else {"state": "not finished after 300 s"})
        report = None
        if os.path.exists(builder.report_url):
            with open(builder.report_url, "rb") as fh:
                report = fh.read().split(b"\0")[:-1]
        result[pid] = Run(builder, status, doc, report)
    return result


def finished(run: Run) -> Run:
    assert run.status == 200, run.doc
    assert run.doc["state"] == "COMPLETE", run.explain()
    assert run.report is not None
    return run


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field.encode()).decode(
        errors="replace")


@pytest.mark.parametrize("pid", list(PAYLOADS))
def test_no_command_ran_and_no_bind_appeared(pid: str, runs: dict[str, Run], ictx: Ctx) -> None:
    run = finished(runs[pid])
    assert run.report is not None
    expected = run.builder.expected_records()
    assert len(run.report) == len(expected), (len(run.report), len(expected))
    assert not ictx.host_canary.exists(), f"a command of payload {pid!r} ran on the host"
    by_site = dict(zip([s for s, _ in expected], run.report, strict=True))
    assert by_site["volume_canary"] == b"0", f"a command of payload {pid!r} ran in the container"
    assert by_site["leak"] == b"0", f"{ictx.leak} exists in the container"
    mounts = []
    for line in by_site["mountinfo"].decode(errors="replace").split("\n")[:-1]:  # not U+2028
        fields = line.split(" ")
        mounts.append((_unescape(fields[3]), _unescape(fields[4])))
    assert mounts, by_site["mountinfo"]
    assert not [m for m in mounts if ictx.secret.name in m[0]], "the secret directory is mounted"
    assert not [m for m in mounts if m[1] == ictx.leak or m[1].startswith(ictx.leak + "/")]


@pytest.mark.parametrize(("site", "pid"), accepted_cases(TES_SITES))
def test_accepted_and_passed_literally(site: Site, pid: str, runs: dict[str, Run],
                                       inj_server: ServerProcess, dev_config: SiteConfig) -> None:
    run = finished(runs[pid])
    assert run.report is not None
    expected = run.builder.expected_records()
    assert len(run.report) == len(expected), (len(run.report), len(expected))
    for (where, want), got in zip(expected, run.report, strict=True):
        if where == site.id and want is not None:
            assert got == want, (got[:300], want[:300])
    bin_dir = dev_config.slurm.bin_dir
    api = Api(inj_server, str(bin_dir / "scontrol") if bin_dir else "scontrol")
    for where, check in run.builder.checks:
        if where == site.id:
            check(run.doc, api)


# ---------------------------------------------------------------------------------------------
# WES

def post_run(server: ServerProcess, fields: dict[str, str], parts: list[tuple[str, bytes]]
             ) -> requests.Response:
    """multipart/form-data as the spec wants it; file names as RFC 5987 `filename*` (UTF-8,
    percent-encoded), so newlines, quotes and NUL reach the server as they are."""
    boundary = f"inj-{uuid.uuid4().hex}"
    body = io.BytesIO()
    for key, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
                   + value.encode() + b"\r\n")
    for name, data in parts:
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"workflow_attachment\"; "
                   f"filename*=UTF-8''{quote(name, safe='')}\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return requests.post(f"{server.url}{WES}/runs", data=body.getvalue(), timeout=60,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def run_ids(server: ServerProcess) -> list[str]:
    resp = requests.get(f"{server.url}{WES}/runs", params={"page_size": "1000"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return [r["run_id"] for r in resp.json()["runs"]]


def _wes_cases(accepted: bool) -> list[Any]:
    return [pytest.param(s, p, id=f"{s.id}-{p}") for s in WES_SITES for p in PAYLOADS
            if (p not in s.refuses) == accepted]


def _listing(path: Path) -> list[str]:
    """The run directories in the runs root (runs created earlier keep changing inside)."""
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


@pytest.mark.parametrize(("site", "pid"), _wes_cases(accepted=False))
def test_wes_refused_with_400_and_nothing_stored(site: WesSite, pid: str, inj_server: ServerProcess,
                                                 ictx: Ctx) -> None:
    before, files = run_ids(inj_server), _listing(ictx.data / "runs")
    resp = post_run(inj_server, *site.build(ictx.payload(pid)))
    assert resp.status_code == 400, resp.text[:2000]
    error = resp.json()
    assert set(error) == {"msg", "status_code"} and error["status_code"] == 400, error
    assert site.field in error["msg"], error["msg"][:2000]
    assert run_ids(inj_server) == before
    assert _listing(ictx.data / "runs") == files, "a refused run left a run directory behind"


@pytest.mark.parametrize(("site", "pid"), _wes_cases(accepted=True))
def test_wes_accepted_and_stored_literally(site: WesSite, pid: str, inj_server: ServerProcess,
                                           ictx: Ctx) -> None:
    value = ictx.payload(pid)
    resp = post_run(inj_server, *site.build(value))
    assert resp.status_code == 200, resp.text[:2000]
    run_id = resp.json()["run_id"]
    try:
        path, content = site.stored(ictx.data / "runs" / run_id, value)
        assert path.read_bytes() == content
        assert not ictx.host_canary.exists()
    finally:
        requests.post(f"{inj_server.url}{WES}/runs/{run_id}/cancel", timeout=30)


def test_control_a_comma_in_a_naive_bind_spec_mounts_the_secret(dev_config: SiteConfig, ictx: Ctx,
                                                                  slurm: Any) -> None:
    """Positive control for the bind canary: pasted into a `--bind` spec unchecked, the comma
    payload does mount the secret at the leak path, and mountinfo shows it the way the test looks."""
    user = dev_config.slurm.submit_as
    spec = f"{ictx.data}:/v/{ictx.payload('comma')}:rw"
    argv = [str(dev_config.apptainer.binary), "--quiet", "exec", "--containall", "--cleanenv", "--bind", spec,
            str(dev_config.apptainer.image_dirs[0] / "busybox.sif"), "cat", "/proc/self/mountinfo"]
    proc = subprocess.run(["runuser", "-u", user, "--", *argv] if user else argv, capture_output=True,
                          text=True, timeout=120, cwd="/", check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")[:-1]
    mounts = [(_unescape(f[3]), _unescape(f[4])) for f in (line.split(" ") for line in lines)]
    assert (str(ictx.secret), ictx.leak) in mounts, mounts


def test_every_site_and_payload_is_decided() -> None:
    """Each (site, payload) is either refused or accepted, and each payload runs somewhere."""
    refused, accepted = refused_cases(TES_SITES), accepted_cases(TES_SITES)
    assert len(refused) + len(accepted) == len(TES_SITES) * len(PAYLOADS)
    assert len(_wes_cases(False)) + len(_wes_cases(True)) == len(WES_SITES) * len(PAYLOADS)
    assert all(site.refuses <= set(PAYLOADS) for site in SITES)


def test_wes_sites_exist_once_wes_is_served(inj_server: ServerProcess) -> None:
    """A tripwire, not a skip: when the server starts serving WES, its fields must join the matrix."""
    resp = requests.get(f"{inj_server.url}/ga4gh/wes/v1/service-info", timeout=30)
    if resp.status_code == 200:
        assert [s for s in WES_SITES if s.api == "wes"], (
            "the server serves /ga4gh/wes/v1: add WES sites (workflow attachment names, "
            "workflow_params, tags, ...) to WES_SITES in tests/integration/test_injection.py")
    else:
        assert resp.status_code == 404, resp.text
