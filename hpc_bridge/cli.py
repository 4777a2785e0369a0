"""The `hpc-bridge` command: the server (`serve`, `config`) and a TES client mirroring the API; the
workflow commands (`hpc-bridge run`) are in runcli.py."""

from __future__ import annotations

import gc
import ipaddress
import json
import logging
import re
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click
import tes
from rich.markup import escape
from rich.table import Table
from tes.models import datetime_json_handler
from tes.utils import UnmarshalError, unmarshal

from hpc_bridge import logformat
from hpc_bridge.clicommon import (
    EXIT_USAGE,
    JSON_OPTION,
    URL_OPTION,
    KeyValue,
    connect,
    err,
    executor_logs,
    fail,
    keeps_running,
    last_log,
    outcome,
    patient,
    slurm_job,
    stdout,
    styled,
    when,
)
from hpc_bridge.config import ConfigError, SiteConfig, load_config
from hpc_bridge.liveview import Snapshot, follow
from hpc_bridge.runcli import run_group
from hpc_bridge.slurm.timelimit import SLURM_TIME
from hpc_bridge.tes.client import BridgeClient
from hpc_bridge.tes.models import State

SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT])(?:I?B)?", re.IGNORECASE)
GB_PER_UNIT = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}  # as the server: 1G = 1024M

_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    envvar="HPC_BRIDGE_CONFIG", default="site_config/dev.yaml", show_default=True,
    help="Site configuration file (env: HPC_BRIDGE_CONFIG).",
)


def is_loopback(host: str) -> bool:
    """True only for addresses no other machine can reach; a name is resolved, and must only
    resolve to loopback addresses (`localhost`)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


def local_url(host: str, port: int) -> str:
    """Where processes on this machine (the WES engines) reach the server: a wildcard listen
    address is reached on loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _load(config_path: Path) -> SiteConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


@click.group()
@click.version_option(package_name="hpc-bridge")
def main() -> None:
    """GA4GH TES/WES on Slurm, executors in Apptainer."""


class Size(click.ParamType[float, str | float]):
    """512M, 2G, 1.5T -> GB (TES ram_gb/disk_gb). A unit is required: Slurm reads a bare number as MB,
    TES as GB, and guessing wrong is off by a factor of 1024."""

    name = "size"

    def convert(self, value: str | float, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        match = SIZE.fullmatch(value.strip())
        if not match:
            self.fail(f"{value!r}: expected a size with a unit, e.g. 512M, 2G or 1.5T", param, ctx)
        gb = float(match[1]) * GB_PER_UNIT[match[2].upper()]
        if gb <= 0:
            self.fail(f"{value!r}: must be more than 0", param, ctx)
        return gb


def _slurm_time(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a malformed time limit here: the server passes it on, and sbatch would only fail later."""
    if value is not None and not SLURM_TIME.fullmatch(value):
        raise click.BadParameter(f"{value!r}: expected a Slurm time limit (MM, HH:MM:SS, D-HH:MM, ...)")
    return value


def _build_task(image: str, command: tuple[str, ...], *, name: str | None = None, cpus: int | None = None,
                mem: float | None = None, disk: float | None = None, time: str | None = None,
                partition: str | None = None, env: tuple[tuple[str, str], ...] = (),
                workdir: str | None = None, tag: tuple[tuple[str, str], ...] = (),
                volume: tuple[str, ...] = ()) -> tes.Task:
    """The one-executor task `submit --image` describes; unset options stay unset (server defaults)."""
    backend = {key: value for key, value in (("time", time), ("partition", partition)) if value}
    resources = None
    if cpus or mem or disk or backend:
        resources = tes.Resources(cpu_cores=cpus, ram_gb=mem, disk_gb=disk,
                                  backend_parameters=backend or None)
    return tes.Task(
        name=name, resources=resources, volumes=list(volume) or None, tags=dict(tag) or None,
        executors=[tes.Executor(image=image, command=list(command), env=dict(env) or None, workdir=workdir)],
    )


def _read_task(path: str) -> tes.Task:
    try:
        with click.open_file(path) as stream:
            data = json.load(stream)
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}", EXIT_USAGE)
    except ValueError as exc:
        fail(f"{path}: not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(data, dict):
        fail(f"{path}: a tesTask must be a JSON object", EXIT_USAGE)
    try:
        return unmarshal(data, tes.Task)
    except (UnmarshalError, TypeError) as exc:
        fail(f"{path}: not a tesTask: {str(exc).splitlines()[-1]}", EXIT_USAGE)


def _snapshot(client: BridgeClient, task_id: str) -> Snapshot:
    task = client.get_task(task_id, view="BASIC")
    return Snapshot("task", task_id, task.state or "UNKNOWN", job=slurm_job(task))


@main.command()
@_CONFIG_OPTION
@click.option("--host", help="Listen address (default: server.host of the config).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default: server.port).")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve with auth mode none on a non-loopback address (never do this with real data).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per log line (for journald and log systems).")
def serve(config_path: Path, host: str | None, port: int | None, insecure_no_auth: bool, log_format: str) -> None:
    """Run the API (waitress) and, if no other daemon holds this database, the daemon loop.
    SIGTERM stops both; SIGHUP reloads the token and visa issuers' keys."""
    import waitress

    from hpc_bridge.bridge import Bridge

    config = _load(config_path)
    host = host or config.server.host
    port = port or config.server.port
    if config.auth.mode == "none" and not is_loopback(host) and not insecure_no_auth:
        fail(f"refusing to serve without authentication (auth.mode: none) on {host}, which is not "
              "a loopback address: configure auth.issuers, listen on 127.0.0.1, or pass "
              "--insecure-no-auth", 2)
    logformat.configure(log_format)
    bridge = Bridge(config, tes_url=local_url(host, port))
    app = bridge.start()
    _on_signals(app, config)
    # Everything loaded so far (Flask, pydantic's and cwltool's schemas) lives as long as the process:
    # out of the collector's sight, a full collection takes microseconds instead of about 30 ms, a
    # pause that any request could otherwise hit (it was the API's p99 at 100k stored tasks).
    gc.freeze()
    say = logging.getLogger("hpc_bridge").info if log_format == "json" else \
        lambda text: err.print(text, highlight=False, markup=False)
    if not bridge.runs_daemon:
        say(f"another daemon holds {bridge.lock.path}: serving the API only")
    say(f"hpc-bridge serving http://{host}:{port}/ga4gh/tes/v1 (config {config_path}, database {config.database})")
    try:
        # Waitress reads (and spools to disk) a whole body before the app sees the request: a
        # larger one than the site accepts is refused there, before reading and authentication.
        # It refuses a body of exactly its maximum, the app one over its limit: hence the + 1.
        waitress.serve(app, host=host, port=port, threads=config.server.threads, ident="hpc-bridge",
                       max_request_body_size=config.server_request_bytes + 1)
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C: a clean stop, exit status 0
        pass
    finally:
        bridge.stop()
        logging.getLogger("hpc_bridge").info("stopped")


def _on_signals(app: Any, config: SiteConfig) -> None:
    """SIGTERM: leave waitress's loop like Ctrl-C, so the daemon and the supervisor stop cleanly.
    SIGHUP: new verifiers, so key files are read again and fetched key sets fetched again."""
    from hpc_bridge.auth import TokenVerifier

    def stop(signum: int, frame: object) -> None:
        logging.getLogger("hpc_bridge").info("SIGTERM: stopping")
        raise KeyboardInterrupt

    def reload(signum: int, frame: object) -> None:
        try:
            app.extensions["hpc_bridge.verifier"] = TokenVerifier(config.auth)
            for service in (app.extensions["hpc_bridge.tasks"], app.extensions["hpc_bridge.runs"]):
                service.reload_keys()
        except Exception:  # a broken key file must not kill the service: it keeps the old keys
            logging.getLogger("hpc_bridge").exception("SIGHUP: keys not reloaded")
            return
        logging.getLogger("hpc_bridge").info("SIGHUP: issuer and visa issuer keys reloaded")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, reload)


@main.group()
def config() -> None:
    """Inspect the site configuration."""


@config.command("init")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write it to this file (default: standard output); an existing file is kept.")
def config_init(output: Path | None) -> None:
    """Print a commented starting site config for this machine (its Slurm partitions, Apptainer)."""
    from hpc_bridge import starter

    machine = starter.probe()
    text = starter.render(machine)
    for problem in machine.problems:
        err.print(f"[yellow]note:[/yellow] {escape(problem)}", soft_wrap=True)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "x") as f:
            f.write(text)
    except FileExistsError:
        fail(f"{output} exists: not replaced", EXIT_USAGE)
    err.print(f"wrote {escape(str(output))}: adapt it, then hpc-bridge config check --config {escape(str(output))}")


@config.command("check")
@_CONFIG_OPTION
def config_check(config_path: Path) -> None:
    """Validate the site config and print it with every default filled in; with Crypt4GH on, also
    load its keys and try its job Python (the site's public key goes to standard error)."""
    cfg = _load(config_path)
    click.echo(cfg.model_dump_json(indent=2))
    if cfg.crypt4gh.enabled:
        from hpc_bridge.c4gh.keys import Crypt4ghKeyError, check

        try:
            for line in check(cfg.crypt4gh, cfg.storage):
                err.print(escape(line), soft_wrap=True)
        except Crypt4ghKeyError as exc:
            fail(str(exc), EXIT_USAGE)


@main.group()
def auth() -> None:
    """Credentials for the site configuration."""


@auth.command("hash-password")
def auth_hash_password() -> None:
    """Print the scrypt hash of a password for auth.basic_users (asked twice on a terminal, else
    read from the first line of standard input). The password itself is never stored."""
    from hpc_bridge.auth.passwords import hash_password

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12:
        fail("the password must have at least 12 characters", EXIT_USAGE)
    click.echo(hash_password(password))


@main.command()
@click.argument("args", nargs=-1, metavar="[TASK_FILE | -- COMMAND...]")
@click.option("--image", metavar="IMAGE", help="Build a one-executor task running COMMAND in IMAGE.")
@click.option("--name", metavar="NAME", help="Task name.")
@click.option("--cpus", type=click.IntRange(min=1), help="CPU cores.")
@click.option("--mem", type=Size(), help="Memory, e.g. 512M, 2G.")
@click.option("--disk", type=Size(), help="Scratch disk, e.g. 10G.")
@click.option("--time", metavar="TIME", callback=_slurm_time, help="Slurm time limit, e.g. 01:00:00.")
@click.option("--partition", metavar="NAME", help="Slurm partition.")
@click.option("--env", type=KeyValue(), multiple=True, help="Environment variable K=V (repeatable).")
@click.option("--workdir", metavar="DIR", help="Working directory inside the container.")
@click.option("--tag", type=KeyValue(), multiple=True, help="Tag K=V (repeatable).")
@click.option("--volume", metavar="PATH", multiple=True,
              help="Container path shared by the executors (repeatable).")
@click.option("--wait", is_flag=True, help="Follow the task and exit with its outcome.")
@URL_OPTION
def submit(args: tuple[str, ...], image: str | None, wait: bool, url: str, name: str | None,
           cpus: int | None, mem: float | None, disk: float | None, time: str | None, partition: str | None,
           env: tuple[tuple[str, str], ...], workdir: str | None, tag: tuple[tuple[str, str], ...],
           volume: tuple[str, ...]) -> None:
    """Submit a task and print its id.

    The task is a tesTask JSON file (- for stdin), or built from --image IMAGE [OPTIONS] -- COMMAND...
    With --wait the exit code is the task's: 0 when COMPLETE, the failing command's code on
    EXECUTOR_ERROR (1 if unknown), 125 on SYSTEM_ERROR, CANCELED or PREEMPTED.
    """
    shorthand: dict[str, Any] = {"name": name, "cpus": cpus, "mem": mem, "disk": disk, "time": time,
                                 "partition": partition, "env": env, "workdir": workdir, "tag": tag,
                                 "volume": volume}
    if image:
        if not args:
            raise click.UsageError("give the command after --, e.g. submit --image busybox -- echo hi")
        task = _build_task(image, args, **shorthand)
    else:
        given = [f"--{key}" for key, value in shorthand.items() if value]
        if given:
            raise click.UsageError(f"{', '.join(given)}: only with --image (a task file is sent as it is)")
        if len(args) != 1:
            raise click.UsageError("give one TASK_FILE (- for stdin), or --image IMAGE -- COMMAND...")
        task = _read_task(args[0])
    with connect(url) as client:
        task_id = client.create_task(task)
        click.echo(task_id)
        if not wait:
            return
        with keeps_running("task", task_id, "hpc-bridge cancel", url):
            follow(patient(lambda: _snapshot(client, task_id)), err)
            task = client.get_task(task_id, view="FULL")
    for line in (last_log(task) or tes.TaskLog()).system_logs or []:
        err.print(f"[dim]system log:[/dim] {escape(line)}", soft_wrap=True)
    code, why = outcome(task)
    stdout().print(f"{task_id} {styled(task.state)}" + (f": {escape(why)}" if why else ""))
    sys.exit(code)


@main.command("list")
@click.option("--state", type=click.Choice([s.value for s in State], case_sensitive=False),
              help="Only tasks in this state.")
@click.option("--name-prefix", metavar="PREFIX", help="Only tasks whose name starts with this.")
@click.option("--tag", type=KeyValue(bare_key=True), multiple=True,
              help="Only tasks with tag K=V, or with key K (repeatable; all must match).")
@click.option("--all", "all_pages", is_flag=True, help="Follow every page, not only the first.")
@JSON_OPTION
@URL_OPTION
def list_tasks(state: str | None, name_prefix: str | None, tag: tuple[tuple[str, str], ...], all_pages: bool,
               as_json: bool, url: str) -> None:
    """List tasks, newest first."""
    with connect(url) as client:
        tasks, more = client.find_tasks(all_pages=all_pages, state=state, name_prefix=name_prefix,
                                        tags=dict(tag))
    if as_json:
        click.echo(json.dumps([t.as_dict() for t in tasks], indent=2, default=datetime_json_handler))
    elif tasks:
        table = Table(box=None, pad_edge=False)
        table.add_column("id", no_wrap=True, min_width=max(len(t.id or "") for t in tasks))
        table.add_column("name")
        table.add_column("state", no_wrap=True)
        table.add_column("created")
        for task in tasks:
            table.add_row(task.id, escape(task.name or ""), styled(task.state), when(task.creation_time))
        stdout().print(table)
    else:
        err.print("no tasks")
    if more:
        err.print("[dim]more tasks on further pages: add --all[/dim]")


@main.command()
@click.argument("task_id")
@JSON_OPTION
@URL_OPTION
def status(task_id: str, as_json: bool, url: str) -> None:
    """Show a task: state, Slurm job, times, system logs, executors' exit codes."""
    with connect(url) as client:
        task = client.get_task(task_id, view="FULL")
        if not task.id:  # no answer of this API: connect ends the command with a message
            raise KeyError("id")
    if as_json:
        click.echo(task.as_json(indent=2))
        return
    out = stdout()
    log = last_log(task) or tes.TaskLog()
    info = Table.grid(padding=(0, 2))
    for key, value in (("id", escape(task.id or "")), ("name", escape(task.name or "")),
                       ("state", styled(task.state)),
                       ("slurm job", escape(slurm_job(task))),
                       ("created", when(task.creation_time)), ("started", when(log.start_time)),
                       ("ended", when(log.end_time))):
        info.add_row(f"[bold]{key}[/bold]", value)
    out.print(info)
    if log.system_logs:
        out.print("[bold]system logs[/bold]")
        for line in log.system_logs:
            out.print(f"  {escape(line)}", soft_wrap=True)
    executors = Table("#", "image", "command", "exit code", "started", "ended", box=None, pad_edge=False)
    logs = executor_logs(task)
    for i, executor in enumerate(task.executors or []):
        entry = logs[i] if i < len(logs) else tes.ExecutorLog()
        executors.add_row(str(i), escape(executor.image), escape(shlex.join(executor.command)),
                          "" if entry.exit_code is None else str(entry.exit_code),
                          when(entry.start_time), when(entry.end_time))
    out.print(executors)


@main.command()
@click.argument("task_id")
@click.option("--executor", type=click.IntRange(min=0), help="Only this executor (0-based); default: all.")
@click.option("--stderr", is_flag=True, help="Print stderr, not stdout.")
@URL_OPTION
def logs(task_id: str, executor: int | None, stderr: bool, url: str) -> None:
    """Print a task's executor stdout (or stderr), as the server keeps it."""
    stream = "stderr" if stderr else "stdout"
    with connect(url) as client:
        task = client.get_task(task_id, view="FULL")
    count = len(task.executors or [])
    if executor is not None and executor >= count:
        raise click.BadParameter(f"task {task_id} has {count} executor(s), numbered from 0",
                                 param_hint="--executor")
    entries = list(enumerate(executor_logs(task)))
    if executor is not None:
        entries = entries[executor:executor + 1]
    if not entries:
        err.print(f"no {stream} yet: task {task_id} is {styled(task.state)}")
    for i, entry in entries:
        if executor is None and count > 1:  # on stderr, so stdout stays exactly what the commands wrote
            err.print(f"[dim]== executor {i} {stream} ==[/dim]")
        click.echo(getattr(entry, stream) or "", nl=False)


@main.command()
@click.argument("task_id")
@URL_OPTION
def cancel(task_id: str, url: str) -> None:
    """Cancel a task and print its state (a finished task is left as it is)."""
    with connect(url) as client:
        client.cancel_task(task_id)
        state = client.get_task(task_id, view="MINIMAL").state
    stdout().print(f"{task_id} {styled(state)}")


main.add_command(run_group)
