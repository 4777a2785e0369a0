from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import tes
from click.testing import CliRunner, Result
from werkzeug.serving import make_server

from hpc_bridge import cli, clicommon, liveview
from hpc_bridge.app import create_app
from hpc_bridge.cli import main
from hpc_bridge.config import load_config
from hpc_bridge.store import Store

from ..conftest import ROOT


def test_serve_refuses_a_broken_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: nope}\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert "server.port" in result.output


def test_config_check_prints_the_resolved_config() -> None:
    result = CliRunner().invoke(main, ["config", "check", "--config", str(ROOT / "site_config/dev.yaml")])
    assert result.exit_code == 0, result.output
    assert str(ROOT / "var" / "hpc-bridge.sqlite") in result.output


@pytest.mark.parametrize("command", [["config", "check"], ["serve"]])
def test_several_users_in_one_unix_account_need_owner_areas(tmp_path: Path, command: list[str]) -> None:
    """With tokens and service mode, one job user writes everyone's files: refused unless the
    site writes down that it accepts one shared space."""
    site = tmp_path / "site.yaml"
    site.write_text("auth: {issuers: [{issuer: 'https://id.example.org/'}]}\n"
                    f"storage: {{work_root: {tmp_path}/work, data_roots: [{tmp_path}/data]}}\n")
    result = CliRunner().invoke(main, [*command, "--config", str(site)])
    assert result.exit_code == 2 and "storage.owner_areas is required" in result.output
    site.write_text(site.read_text().replace("data_roots:", "one_shared_space: true, data_roots:"))
    if command == ["config", "check"]:
        assert CliRunner().invoke(main, [*command, "--config", str(site)]).exit_code == 0


# --- the TES client commands, against the real Flask app on a loopback port (no daemon) ---


@dataclass
class Bridge:
    """A served app; `finish` (store columns), when set, plays the daemon: every new task ends so."""

    url: str
    store: Store
    finish: dict[str, Any] = field(default_factory=dict)

    def on_change(self) -> None:
        if self.finish:
            for row in self.store.tasks.in_states(["QUEUED"]):
                self.store.tasks.update(row.id, **self.finish)

    def run(self, command: str, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, [command, "--url", self.url, *args], input=input)

    def submit(self, *args: str) -> str:
        result = self.run("submit", "--image", "busybox", *args)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    def task(self, task_id: str) -> dict[str, Any]:
        row = self.store.tasks.get(task_id)
        assert row is not None
        return row.task


@pytest.fixture()
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    images = tmp_path / "images"
    images.mkdir()
    (images / "busybox.sif").write_bytes(b"")  # only looked up at POST time, never run here
    base = load_config(ROOT / "site_config/dev.yaml")
    (tmp_path / "data").mkdir()
    config = base.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "apptainer": base.apptainer.model_copy(update={"image_dirs": [images]}),
        "storage": base.storage.model_copy(update={"data_roots": [tmp_path / "data"]}),  # WES runs go here
    })
    store = Store(config.database)
    holder = Bridge(url="", store=store)
    server = make_server("127.0.0.1", 0, create_app(config, store=store, on_change=holder.on_change),
                         threaded=True)
    holder.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield holder
    server.shutdown()
    thread.join(5)
    store.close()


def test_submit_shorthand_builds_a_one_executor_task(bridge: Bridge) -> None:
    task_id = bridge.submit("--name", "n1", "--cpus", "2", "--mem", "512M", "--disk", "1.5G",
                            "--time", "01:00:00", "--partition", "long", "--env", "A=1", "--env", "B=x=y",
                            "--workdir", "/tmp", "--tag", "k=v", "--volume", "/shared",
                            "--", "sh", "-c", "echo hi")
    assert bridge.task(task_id) == {
        "name": "n1",
        "resources": {"cpu_cores": 2, "ram_gb": 0.5, "disk_gb": 1.5,
                      "backend_parameters": {"time": "01:00:00", "partition": "long"}},
        "executors": [{"image": "busybox", "command": ["sh", "-c", "echo hi"], "workdir": "/tmp",
                       "env": {"A": "1", "B": "x=y"}}],
        "volumes": ["/shared"],
        "tags": {"k": "v"},
    }


def test_submit_shorthand_leaves_unset_options_to_the_server(bridge: Bridge) -> None:
    assert bridge.task(bridge.submit("--", "true")) == {
        "executors": [{"image": "busybox", "command": ["true"]}]}


@pytest.mark.parametrize(("text", "gb"), [("512M", 0.5), ("2G", 2.0), ("1.5G", 1.5), ("1T", 1024.0),
                                          ("2GiB", 2.0), ("256mb", 0.25), ("1048576K", 1.0)])
def test_sizes_are_gb_with_1024_steps(text: str, gb: float) -> None:
    assert cli.Size().convert(text, None, None) == gb


@pytest.mark.parametrize("text", ["2000", "2X", "0G", "G", "-1G"])
def test_sizes_need_a_positive_number_and_a_unit(text: str) -> None:
    with pytest.raises(click.BadParameter):
        cli.Size().convert(text, None, None)


def test_submit_a_task_file_and_stdin(bridge: Bridge, tmp_path: Path) -> None:
    doc = {"name": "from-file", "executors": [{"image": "busybox", "command": ["echo", "hi"]}],
           "tags": {"a": "b"}}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(doc))
    from_file = bridge.run("submit", str(path))
    from_stdin = bridge.run("submit", "-", input=json.dumps(doc))
    for result in (from_file, from_stdin):
        assert result.exit_code == 0, result.output
        assert bridge.task(result.stdout.strip()) == doc


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["submit", "--image", "busybox", "--mem", "2000", "--", "true"], None, "expected a size with a unit"),
    (["submit", "--image", "busybox", "--time", "1h", "--", "true"], None, "Slurm time limit"),
    (["submit", "--image", "busybox", "--env", "NOVALUE", "--", "true"], None, "expected KEY=VALUE"),
    (["submit", "--image", "busybox"], None, "give the command after --"),
    (["submit"], None, "give one TASK_FILE"),
    (["submit", "--name", "x", "--tag", "a=b", "-"], "{}", "--name, --tag: only with --image"),
    (["submit", "/no/such/task.json"], None, "/no/such/task.json: No such file or directory"),
    (["submit", "-"], "{not json", "-: not valid JSON"),
    (["submit", "-"], "[]", "a tesTask must be a JSON object"),
    (["submit", "-"], '{"executors": [], "colour": "red"}', "unexpected keyword argument 'colour'"),
    (["list", "--state", "DONE"], None, "'DONE' is not one of"),
    (["logs", "x", "--executor", "-1"], None, "--executor"),
])
def test_bad_input_is_exit_2_with_a_message(bridge: Bridge, args: list[str], stdin: str | None,
                                            message: str) -> None:
    result = bridge.run(*args, input=stdin)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_a_task_the_server_refuses_shows_its_message_with_exit_2(bridge: Bridge) -> None:
    result = bridge.run("submit", "--image", "/opt/hpc-bridge-dev/images/nosuch.sif", "--", "true")
    assert result.exit_code == 2
    assert "executors[0].image: image '/opt/hpc-bridge-dev/images/nosuch.sif' is outside" in result.stderr
    assert f"HTTP 400 from {bridge.url}" in result.stderr


def test_an_unknown_task_is_exit_1_with_the_servers_message(bridge: Bridge) -> None:
    for command in ("status", "logs", "cancel"):
        result = bridge.run(command, "no-such-id")
        assert result.exit_code == 1, result.output
        assert "task 'no-such-id' not found (HTTP 404" in result.stderr


def test_no_server_is_exit_1_naming_the_url() -> None:
    with socket.socket() as s:  # a port nothing listens on, once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = CliRunner().invoke(main, ["list"], env={"HPC_BRIDGE_URL": url})
    assert result.exit_code == 1
    assert f"no answer from the server at {url}" in result.stderr


def test_a_url_that_is_not_http_is_exit_2() -> None:
    result = CliRunner().invoke(main, ["status", "x", "--url", "ftp://example.org"])
    assert result.exit_code == 2
    assert "Unsupported URL scheme" in result.stderr


def test_the_url_may_carry_the_api_path_and_come_from_the_environment(bridge: Bridge) -> None:
    task_id = bridge.submit("--", "true")
    result = CliRunner().invoke(main, ["status", task_id],
                                env={"HPC_BRIDGE_URL": f"{bridge.url}/ga4gh/tes/v1/"})
    assert result.exit_code == 0, result.output
    assert "QUEUED" in result.stdout


def test_list_filters_and_formats(bridge: Bridge) -> None:
    a = bridge.submit("--name", "align-1", "--tag", "project=x", "--", "true")
    b = bridge.submit("--name", "align-2", "--tag", "project=y", "--", "true")
    c = bridge.submit("--name", "call-1", "--", "true")
    bridge.store.tasks.update(c, state="COMPLETE")

    def ids(*args: str) -> list[str]:
        result = bridge.run("list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [t["id"] for t in json.loads(result.stdout)]

    assert ids() == [c, b, a]
    assert ids("--name-prefix", "align") == [b, a]
    assert ids("--tag", "project=x") == [a]
    assert ids("--tag", "project") == [b, a]
    assert ids("--state", "complete") == [c]
    assert ids("--state", "RUNNING") == []
    table = bridge.run("list", "--name-prefix", "align")
    assert table.exit_code == 0
    assert table.stdout.split("\n")[0].split() == ["id", "name", "state", "created"]
    assert table.stdout.split("\n")[1].split()[:3] == [b, "align-2", "QUEUED"]
    assert "no tasks" in bridge.run("list", "--state", "RUNNING").stderr


def test_list_all_follows_the_pages(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hpc_bridge.tes.service.DEFAULT_PAGE_SIZE", 2)
    created = [bridge.submit("--", "true") for _ in range(5)]
    first = bridge.run("list", "--json")
    assert [t["id"] for t in json.loads(first.stdout)] == created[:2:-1]
    assert "add --all" in first.stderr
    every = bridge.run("list", "--json", "--all")
    assert [t["id"] for t in json.loads(every.stdout)] == created[::-1]
    assert "add --all" not in every.stderr


def _ended_task(bridge: Bridge) -> str:
    """A two-executor task that the (pretend) daemon saw fail in its second executor."""
    doc = {"executors": [{"image": "busybox", "command": ["echo", "one"]},
                         {"image": "busybox", "command": ["sh", "-c", "echo two; exit 3"]}]}
    result = bridge.run("submit", "-", input=json.dumps(doc))
    assert result.exit_code == 0, result.output
    task_id = result.stdout.strip()
    bridge.store.tasks.update(
        task_id, state="EXECUTOR_ERROR", job_id="4242", start_time="2024-05-01T10:00:00Z",
        end_time="2024-05-01T10:00:09Z", system_logs=["job 4242 ended: FAILED"],
        executor_logs=[{"exit_code": 0, "stdout": "one\n", "stderr": "e1\n"},
                       {"exit_code": 3, "stdout": "two\n", "stderr": "e2\n"}])
    return task_id


def test_status_shows_slurm_job_times_system_logs_and_exit_codes(bridge: Bridge) -> None:
    task_id = _ended_task(bridge)
    result = bridge.run("status", task_id)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["state", "EXECUTOR_ERROR"] in lines
    assert ["slurm", "job", "4242"] in lines
    assert [line[:2] for line in lines if line[0] in ("started", "ended")] == [["started", "2024-05-01"],
                                                                               ["ended", "2024-05-01"]]
    assert "job 4242 ended: FAILED" in result.stdout
    assert lines[-2] == ["0", "busybox", "echo", "one", "0"]
    assert lines[-1] == ["1", "busybox", "sh", "-c", "'echo", "two;", "exit", "3'", "3"]
    as_json = json.loads(bridge.run("status", task_id, "--json").stdout)
    assert as_json["logs"][0]["metadata"] == {"slurm_job_id": "4242"}


def test_logs_print_executor_output(bridge: Bridge) -> None:
    queued = bridge.submit("--", "true")
    assert "no stdout yet" in bridge.run("logs", queued).stderr
    task_id = _ended_task(bridge)
    every = bridge.run("logs", task_id)
    assert every.stdout == "one\ntwo\n"
    assert "== executor 1 stdout ==" in every.stderr
    assert bridge.run("logs", task_id, "--executor", "1").stdout == "two\n"
    assert bridge.run("logs", task_id, "--stderr", "--executor", "0").stdout == "e1\n"
    result = bridge.run("logs", task_id, "--executor", "2")
    assert result.exit_code == 2
    assert "has 2 executor(s)" in result.stderr


def test_cancel_prints_the_new_state(bridge: Bridge) -> None:
    task_id = bridge.submit("--", "true")
    result = bridge.run("cancel", task_id)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [task_id, "CANCELING"]


@pytest.mark.parametrize(("finish", "code", "line"), [
    ({"state": "COMPLETE", "executor_logs": [{"exit_code": 0}]}, 0, "COMPLETE"),
    ({"state": "EXECUTOR_ERROR", "executor_logs": [{"exit_code": 5}, {"exit_code": 7}]}, 7,
     "EXECUTOR_ERROR: executor 1 exited with 7"),
    ({"state": "EXECUTOR_ERROR"}, 1, "EXECUTOR_ERROR: exit code unknown"),
    ({"state": "SYSTEM_ERROR", "system_logs": ["sbatch: invalid partition"]}, clicommon.EXIT_NOT_FINISHED,
     "SYSTEM_ERROR"),
    ({"state": "CANCELED"}, clicommon.EXIT_NOT_FINISHED, "CANCELED"),
])
def test_submit_wait_exits_with_the_tasks_outcome(bridge: Bridge, finish: dict[str, Any], code: int,
                                                  line: str) -> None:
    bridge.finish = finish
    result = bridge.run("submit", "--wait", "--image", "busybox", "--", "true")
    assert result.exit_code == code, result.output
    task_id, final = result.stdout.splitlines()
    assert final == f"{task_id} {line}"
    assert f"{task_id} {finish['state']}" in result.stderr  # the state change, as it was seen
    for system_log in finish.get("system_logs", []):
        assert system_log in result.stderr


def test_outcome_keeps_exit_codes_a_shell_can_carry() -> None:
    def task(*codes: int) -> tes.Task:
        return tes.Task(state="EXECUTOR_ERROR",
                        logs=[tes.TaskLog(logs=[tes.ExecutorLog(exit_code=c) for c in codes])])

    assert clicommon.outcome(task(0, 255)) == (255, "executor 1 exited with 255")
    assert clicommon.outcome(task(300)) == (1, "executor 0 exited with 300")
    assert clicommon.outcome(task(-9)) == (1, "executor 0 exited with -9")


def test_ctrl_c_while_waiting_leaves_the_task_running(bridge: Bridge,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(liveview, "sleep", interrupt)
    result = bridge.run("submit", "--wait", "--image", "busybox", "--", "true")
    task_id = result.stdout.strip()
    assert result.exit_code == clicommon.EXIT_INTERRUPTED
    assert f"task {task_id} keeps running" in result.stderr
    assert f"hpc-bridge cancel --url {bridge.url} {task_id}" in result.stderr
    row = bridge.store.tasks.get(task_id)
    assert row is not None and row.state == "QUEUED"


def test_serve_refuses_no_auth_off_loopback_unless_forced(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything is opened: no database file, no listening socket."""
    config = tmp_path / "site.yaml"
    config.write_text(f"auth: {{mode: none}}\ndatabase: {tmp_path}/db.sqlite\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(config), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to serve without authentication" in result.output
    assert not (tmp_path / "db.sqlite").exists()
    served: list[str] = []
    monkeypatch.setattr("waitress.serve", lambda app, host, **kw: served.append(host))
    monkeypatch.setattr("hpc_bridge.daemon.loop.Daemon.run", lambda self: None)
    result = CliRunner().invoke(main, ["serve", "--config", str(config), "--host", "0.0.0.0",
                                       "--insecure-no-auth"])
    assert result.exit_code == 0, result.output
    assert served == ["0.0.0.0"]


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.8.9.10", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.1", False), ("no-such-host.invalid", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert cli.is_loopback(host) is loopback


def test_client_commands_send_the_token_from_the_environment(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Against an app that requires tokens: without HPC_BRIDGE_TOKEN the server's 401 message is
    shown (exit 1); with it, the caller's own tasks are listed."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from hpc_bridge.auth import AuthSettings

    from ..oidc import Issuer, claims, jwk, token

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp = Issuer()
    idp.jwks = {"keys": [jwk(key, "rsa-1")]}
    base = load_config(ROOT / "site_config/dev.yaml")
    config = base.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "auth": AuthSettings.model_validate({"issuers": [{"issuer": idp.issuer}]})})
    store = Store(config.database)
    server = make_server("127.0.0.1", 0, create_app(config, store=store), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        store.tasks.create(id="t-alice", owner=f"{idp.issuer}#alice", name="mine", task={}, tags={})
        store.tasks.create(id="t-bob", owner=f"{idp.issuer}#bob", name="theirs", task={}, tags={})
        result = CliRunner().invoke(main, ["list", "--json", "--url", url])
        assert result.exit_code == 1 and "a bearer token is required" in result.output
        monkeypatch.setenv("HPC_BRIDGE_TOKEN", token(key, claims(idp, sub="alice")))
        result = CliRunner().invoke(main, ["list", "--json", "--url", url])
        assert result.exit_code == 0, result.output
        assert [t["id"] for t in json.loads(result.stdout)] == ["t-alice"]
    finally:
        server.shutdown()
        thread.join(5)
        idp.close()
        store.close()


def test_auth_hash_password_prints_a_hash_that_verifies_and_refuses_short_passwords() -> None:
    from hpc_bridge.auth.passwords import check_hash, verify_password

    result = CliRunner().invoke(main, ["auth", "hash-password"], input="a-long-enough-secret\n")
    assert result.exit_code == 0, result.output
    stored = result.output.strip()
    assert check_hash(stored) == stored and verify_password("a-long-enough-secret", stored)
    assert "a-long-enough-secret" not in result.output
    short = CliRunner().invoke(main, ["auth", "hash-password"], input="short\n")
    assert short.exit_code == 2 and "at least 12 characters" in short.output
