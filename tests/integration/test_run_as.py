"""Per-user execution on the real dev cluster, with real Unix users and the real sudoers rule.

`dev/cluster install` creates the service account `hpcbsvc`, the users `alice` and `bob` (uid >= 2000,
in `hpcbusers`) and `hpcblow` (a system uid, below min_uid), installs the root helper at
/usr/local/libexec/hpc-bridge/submit-as with its configuration /etc/hpc-bridge/submit-as.json (table
"local" -> alice, database and work root under /srv/hpc-bridge/runas) and the sudoers rule letting
only hpcbsvc run only the helper with only a task id. The servers here run as hpcbsvc (not root),
with `auth: none` (owner "local") and a site table that maps "local" to a Unix user; their
database and work root are the ones the helper's configuration names. If sudo refused the helper,
nothing here could pass: jobs would never reach Slurm.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from hpc_bridge.config import SiteConfig

from ..conftest import ROOT
from .conftest import ServerProcess, free_port
from .test_wes import SLEEPING

HELPER = Path("/usr/local/libexec/hpc-bridge/submit-as")
HELPER_CONFIG = Path("/etc/hpc-bridge/submit-as.json")
SERVICE = "hpcbsvc"
RUNAS = Path("/srv/hpc-bridge/runas")
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
# The venv's interpreter lives under /root, which the service account cannot enter: the server runs
# on the system's python3 (the same 3.11) with the venv's packages and this source tree on its path.
SYSTEM_PYTHON = "/usr/bin/python3"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60,
                          cwd="/", check=False)


def run_helper(task_id: str, user: str = SERVICE, *extra: str) -> subprocess.CompletedProcess[str]:
    return as_user(user, "sudo", "-n", str(HELPER), task_id, *extra)


class ServiceServer(ServerProcess):
    """`hpc-bridge serve` as the service account."""

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pwd.getpwnam(SERVICE).pw_dir,
               "LANG": "C.UTF-8", "PYTHONPATH": f"{ROOT}:{SITE_PACKAGES}"}
        code = "import sys; from hpc_bridge.cli import main; sys.argv[0] = 'hpc-bridge'; main()"
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                [SYSTEM_PYTHON, "-c", code, "serve", "--config", str(self.config_path), "--port", str(self.port)],
                stdout=out, stderr=out, user=SERVICE, group=SERVICE, extra_groups=[], env=env, cwd="/")


class RunAs:
    """Servers on the helper's database, one at a time; requests to the current one."""

    def __init__(self, dev_config: SiteConfig, helper: dict[str, Any], directory: Path) -> None:
        self.dev_config, self.helper, self.directory = dev_config, helper, directory
        self.work_root = Path(helper["work_root"])
        self.server: ServiceServer | None = None

    def start(self, table: dict[str, str] | None = None, **sections: dict[str, Any]) -> ServiceServer:
        self.stop()
        data = self.dev_config.model_dump(mode="json")
        data["database"] = self.helper["database"]
        data["slurm"]["submit_as"] = None  # jobs are the mapped users'; nothing as the service itself
        data["storage"].update(work_root=str(self.work_root), data_roots=[str(RUNAS / "data")],
                               work_retention_hours=None)
        data["apptainer"]["cache_dir"] = str(RUNAS / "images")
        data["monitor"].update(min_interval=0.3, idle_interval=1.0, cleanup_interval=1.0)
        data["run_as"] = {"mode": "table", "service_user": SERVICE, "table": table or {"local": "alice"},
                          "users_group": self.helper["users_group"], "min_uid": self.helper["min_uid"]}
        for section, values in sections.items():
            data[section] = {**data[section], **values}
        path = self.directory / "site.yaml"
        path.write_text(yaml.safe_dump(data))
        os.chmod(path, 0o644)
        self.server = ServiceServer(path, free_port()).start()
        return self.server

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.server
        req = urllib.request.Request(f"{self.server.url}/ga4gh/tes/v1{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def create(self, command: list[str], **extra: Any) -> str:
        status, body = self.request("POST", "/tasks", {
            "name": "run-as", "executors": [{"image": "busybox", "command": command}],
            "resources": {"cpu_cores": 1, "ram_gb": 0.25}, **extra})
        assert status == 200, body
        return body["id"]

    def get(self, task_id: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/tasks/{task_id}?view=FULL")
        assert status == 200, body
        return body

    def wait(self, task_id: str, states: set[str], timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.get(task_id)
            if task["state"] in states:
                return task
            time.sleep(0.3)
        assert self.server
        pytest.fail(f"task {task_id} not in {states} after {timeout}s: {task}\n{self.server.log.read_text()[-4000:]}")


def _wipe(helper: dict[str, Any]) -> None:
    """A fresh database and work root (what earlier runs left, owned by the test users, included)."""
    database = Path(helper["database"])
    for path in database.parent.iterdir():
        if path.name.startswith(database.name):
            path.unlink()
    work_root = Path(helper["work_root"])
    for path in work_root.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


@pytest.fixture()
def runas(dev_config: SiteConfig, slurm: object) -> Iterator[RunAs]:
    if not (HELPER.is_file() and HELPER_CONFIG.is_file()):
        pytest.fail(f"{HELPER} or {HELPER_CONFIG} missing: run `dev/cluster install` (make test does)")
    helper = json.loads(HELPER_CONFIG.read_text())
    assert helper["service_user"] == SERVICE and helper["table"] == {"local": "alice"}, helper
    _wipe(helper)
    directory = RUNAS / "test"
    directory.mkdir(mode=0o755, exist_ok=True)
    (directory / "site.log").unlink(missing_ok=True)
    env = RunAs(dev_config, helper, directory)
    yield env
    env.stop()


def _squeue(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}",
                          "--Format=UserName:|,State:|"], capture_output=True, text=True, check=True).stdout
    user, state = out.strip().split("|")[:2]
    return user.strip(), state.strip()


def _job_id(task: dict[str, Any]) -> str:
    return task["logs"][0]["metadata"]["slurm_job_id"]


# -- the tests ----------------------------------------------------------------------------------


def test_job_runs_as_the_mapped_user_in_a_private_work_area(runas: RunAs) -> None:
    alice = pwd.getpwnam("alice")
    out_url = f"file://{RUNAS}/data/alice/{uuid.uuid4().hex}.txt"
    runas.start()
    task_id = runas.create(["sh", "-c", "id -un; id -u; echo result > /out/result.txt"],
                           outputs=[{"path": "/out/result.txt", "url": out_url, "type": "FILE"}])
    task = runas.wait(task_id, TERMINAL)
    assert task["state"] == "COMPLETE", task
    log = task["logs"][0]
    assert log["logs"][0]["stdout"] == f"alice\n{alice.pw_uid}\n"  # read by the daemon via the status dir
    assert [o["url"] for o in log["outputs"]] == [out_url]
    produced = Path(out_url.removeprefix("file://"))
    assert produced.read_text() == "result\n" and produced.stat().st_uid == alice.pw_uid

    workdir = runas.work_root / task_id
    st = os.stat(workdir)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.pw_uid, 0o700)
    assert all(p.lstat().st_uid == alice.pw_uid for p in workdir.rglob("*"))
    status_dir = runas.work_root / ".status" / task_id
    st = os.stat(status_dir)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        alice.pw_uid, pwd.getpwnam(SERVICE).pw_gid, 0o2750)
    assert as_user(SERVICE, "ls", str(workdir)).returncode != 0  # private, even to the service
    assert as_user("bob", "cat", str(status_dir / "record.jsonl")).returncode != 0
    assert _squeue(_job_id(task))[0] == "alice"


def test_cancel_of_a_running_per_user_job_removes_it_from_slurm(runas: RunAs) -> None:
    runas.start()
    task_id = runas.create(["sleep", "300"])
    task = runas.wait(task_id, {"RUNNING"} | TERMINAL)
    assert task["state"] == "RUNNING", task
    job_id = _job_id(task)
    assert _squeue(job_id) == ("alice", "RUNNING")
    # The service account alone may not touch alice's job: that is what the helper is for.
    as_user(SERVICE, "scancel", job_id)
    assert _squeue(job_id) == ("alice", "RUNNING")

    assert runas.request("POST", f"/tasks/{task_id}:cancel") == (200, {})
    task = runas.wait(task_id, TERMINAL, timeout=60)
    assert task["state"] == "CANCELED", task
    deadline = time.monotonic() + 30
    while _squeue(job_id)[1] not in ("CANCELLED", "COMPLETED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue(job_id) == ("alice", "CANCELLED")


def test_the_helper_refuses_a_user_its_own_table_does_not_map(runas: RunAs) -> None:
    """The site config (writable by whoever runs the service) maps "local" to bob; the helper's
    root-owned table says alice: the job never reaches Slurm."""
    runas.start(table={"local": "bob"})
    task_id = runas.create(["true"])
    task = runas.wait(task_id, TERMINAL)
    assert task["state"] == "SYSTEM_ERROR", task
    assert any("could not submit the job as Unix user bob" in line and
               "this helper's table does not map owner 'local' to Unix user 'bob'" in line
               for line in task["logs"][0]["system_logs"]), task
    comments = subprocess.run(["squeue", "--noheader", "--states=all", "--Format=Comment:|"],
                              capture_output=True, text=True, check=True).stdout
    assert task_id not in comments
    assert pwd.getpwnam("bob").pw_uid not in {p.lstat().st_uid for p in runas.work_root.rglob("*")}


@pytest.mark.parametrize(("table", "message"), [
    ({"someone-else": "alice"}, "no Unix user is mapped to 'local'"),
    ({"local": "hpcblow"}, "has uid"),
    ({"local": "no-such-user"}, "does not exist"),
])
def test_a_task_without_a_usable_unix_user_is_refused_at_creation(runas: RunAs, table: dict[str, str],
                                                                  message: str) -> None:
    runas.start(table=table)
    status, body = runas.request("POST", "/tasks", {"executors": [{"image": "busybox", "command": ["true"]}]})
    assert status == 403 and message in body["msg"], body
    assert runas.request("GET", "/tasks")[1]["tasks"] == []


def test_the_sudo_rule_allows_only_the_service_account_and_one_task_id(runas: RunAs) -> None:
    _store_as_service()  # an empty database where the helper looks
    unknown = str(uuid.uuid4())
    allowed = run_helper(unknown)  # sudo lets it through; the helper finds no such task
    assert allowed.returncode == 2 and f"submit-as: refused: no task or run {unknown}" in allowed.stderr, allowed
    for argv, user in [(["not-a-uuid"], SERVICE), ([unknown.upper()], SERVICE), ([unknown, unknown], SERVICE),
                       ([unknown + "\n"], SERVICE), ([unknown], "alice"), ([unknown], "hpcb")]:
        refused = run_helper(argv[0], user, *argv[1:])
        assert refused.returncode == 1 and refused.stderr.startswith("sudo: "), (argv, user, refused)
    for argv in (["/bin/sh", "-c", "id"], ["-u", "alice", str(HELPER), unknown], ["-E", str(HELPER), unknown]):
        refused = as_user(SERVICE, "sudo", "-n", *argv)
        assert refused.returncode == 1 and refused.stderr.startswith("sudo: "), (argv, refused)


def _store_as_service(*statements: str) -> None:
    """Act on the database as a compromised service account would (it owns it)."""
    database = json.loads(HELPER_CONFIG.read_text())["database"]
    code = "\n".join(["import sys", f"sys.path[:0] = [{str(ROOT)!r}, {SITE_PACKAGES!r}]",
                      "from hpc_bridge.store import Store", f"store = Store({database!r})", *statements])
    proc = as_user(SERVICE, SYSTEM_PYTHON, "-c", code)
    assert proc.returncode == 0, proc.stderr


def test_a_compromised_service_account_cannot_pick_users_or_plant_links(runas: RunAs) -> None:
    """The helper checks everything again from its own configuration and the filesystem."""
    ids = {name: str(uuid.uuid4()) for name in ("low", "root", "bob", "nouser", "symlinked", "planted", "running")}
    task = {"executors": [{"image": "busybox", "command": ["true"]}]}
    rows = {"low": "hpcblow", "root": "root", "bob": "bob", "nouser": None, "symlinked": "alice",
            "planted": "alice", "running": "alice"}
    _store_as_service(*(f"store.tasks.create(id={ids[k]!r}, owner='local', name=None, task={task!r}, tags={{}}, "
                        f"run_as={v!r})" for k, v in rows.items()),
                      f"store.tasks.update({ids['running']!r}, state='RUNNING', job_id='1')")
    work = runas.work_root
    as_user(SERVICE, "ln", "-s", "/etc", str(work / ids["symlinked"]))
    as_user(SERVICE, "mkdir", "-m", "0700", str(work / ids["planted"]))
    as_user(SERVICE, "ln", "-s", "/etc/shadow", str(work / ids["planted"] / "job.sh"))
    expected = {
        "low": "Unix user 'hpcblow' has uid",
        "root": "Unix user 'root' has uid 0",
        "bob": "does not map owner 'local' to Unix user 'bob'",
        "nouser": "runs as the service account",
        "symlinked": "cannot be opened without following links",
        "planted": "job.sh: cannot be opened without following links",
        "running": "is RUNNING (job 1): nothing to do",
    }
    for name, message in expected.items():
        proc = run_helper(ids[name])
        assert proc.returncode == 2 and message in proc.stderr, (name, proc)
        assert proc.stderr.count("\n") == 1
    for path in ("/etc", "/etc/shadow"):
        assert os.lstat(path).st_uid == 0, path


def test_an_ended_tasks_work_area_is_removed_as_its_user(runas: RunAs) -> None:
    runas.start(storage={"work_retention_hours": 0})
    task_id = runas.create(["echo", "done"])
    assert runas.wait(task_id, TERMINAL)["state"] == "COMPLETE"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        task = runas.get(task_id)
        if any("work area removed" in line for line in task["logs"][0].get("system_logs", [])):
            break
        time.sleep(0.5)
    assert not (runas.work_root / task_id).exists()
    assert not (runas.work_root / ".status" / task_id).exists()
    assert task["logs"][0]["logs"][0]["stdout"] == "done\n"  # the logs stay in the store



ENGINE_UID = """cwlVersion: v1.2
class: Workflow
requirements:
  InlineJavascriptRequirement: {}
inputs: []
outputs:
  engine_uid: {type: int, outputSource: engine/uid}
  step_uid: {type: File, outputSource: step/uid}
steps:
  engine:
    run:
      class: ExpressionTool
      inputs: []
      outputs: {uid: int}
      expression: '${ return {"uid": Function("return this")().constructor.constructor("return process")().getuid()}; }'
    in: []
    out: [uid]
  step:
    run:
      class: CommandLineTool
      requirements:
        DockerRequirement: {dockerPull: busybox}
      baseCommand: [sh, -c, "id -u > uid.txt"]
      inputs: []
      outputs: {uid: {type: File, outputBinding: {glob: uid.txt}}}
    in: []
    out: [uid]
"""


def test_a_workflow_engine_runs_as_the_mapped_user_through_the_helper(runas: RunAs) -> None:
    """WES in a per-user mode: the helper hands the run dir to alice and starts the engine as her;
    its JavaScript and its steps run with her uid; the service reads logs and outputs by group."""
    if not runas.helper.get("runs_root"):
        pytest.fail(f"{HELPER_CONFIG} has no runs_root/engine_python: run `dev/cluster install`")
    alice, service = pwd.getpwnam("alice"), pwd.getpwnam(SERVICE)
    server = runas.start()
    response = requests.post(f"{server.url}/ga4gh/wes/v1/runs", timeout=60,
                             data={"workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "wf.cwl"},
                             files=[("workflow_attachment", ("wf.cwl", ENGINE_UID.encode()))])
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    deadline = time.monotonic() + 180
    while (run := requests.get(f"{server.url}/ga4gh/wes/v1/runs/{run_id}", timeout=10).json())["state"] not in TERMINAL:
        assert time.monotonic() < deadline, run
        time.sleep(0.5)
    assert run["state"] == "COMPLETE", (run["run_log"], server.log.read_text()[-3000:])
    assert run["outputs"]["engine_uid"] == alice.pw_uid
    step_uid = Path(run["outputs"]["step_uid"]["location"].removeprefix("file://"))
    assert int(step_uid.read_text()) == alice.pw_uid
    run_dir = Path(runas.helper["runs_root"]) / run_id
    st = os.stat(run_dir)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (alice.pw_uid, service.pw_gid, 0o2750)
    assert as_user("bob", "ls", str(run_dir)).returncode != 0


def test_an_ended_per_user_runs_directory_is_removed_as_its_user_and_a_live_one_kept(runas: RunAs) -> None:
    """wes.retention_hours in a per-user mode: the helper (run_retention_hours in its own configuration)
    empties the ended run's directory as alice and removes it; the record stays; a run still going
    keeps its directory."""
    if runas.helper.get("run_retention_hours") is None:
        pytest.fail(f"{HELPER_CONFIG} has no run_retention_hours: run `dev/cluster install`")
    server = runas.start(wes={"retention_hours": 0})
    wes = f"{server.url}/ga4gh/wes/v1"

    def submit(text: str) -> str:
        response = requests.post(f"{wes}/runs", timeout=60,
                                 files=[("workflow_attachment", ("wf.cwl", text.encode()))],
                                 data={"workflow_type": "CWL", "workflow_type_version": "v1.2",
                                       "workflow_url": "wf.cwl"})
        assert response.status_code == 200, response.text
        return response.json()["run_id"]

    def run_log(run_id: str) -> dict[str, Any]:
        return requests.get(f"{wes}/runs/{run_id}", timeout=10).json()

    live, done = submit(SLEEPING), submit(ENGINE_UID)
    live_dir, done_dir = (Path(runas.helper["runs_root"]) / r for r in (live, done))
    deadline = time.monotonic() + 180
    while not any("run directory removed" in line for line in run_log(done)["run_log"].get("system_logs") or []):
        assert time.monotonic() < deadline, (run_log(done), server.log.read_text()[-3000:])
        time.sleep(0.5)
    log = run_log(done)
    assert log["state"] == "COMPLETE" and log["outputs"]["engine_uid"] == pwd.getpwnam("alice").pw_uid
    assert not done_dir.exists()
    assert run_log(live)["state"] in ("INITIALIZING", "RUNNING")
    st = os.stat(live_dir)
    assert st.st_uid == pwd.getpwnam("alice").pw_uid and any(live_dir.iterdir())
    requests.post(f"{wes}/runs/{live}/cancel", timeout=10)
    deadline = time.monotonic() + 120
    while run_log(live)["state"] not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.5)
