"""`hpc-bridge run`: workflow runs over the WES API, the way `hpc-bridge-cwl-runner` submits them
(the workflow and its local files attached), followed step by step through the run's TES tasks."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import tes
from rich.markup import escape
from rich.table import Table
from tes.models import datetime_json_handler

from hpc_bridge.clicommon import (
    EXIT_NOT_FINISHED,
    EXIT_SERVER,
    EXIT_USAGE,
    JSON_OPTION,
    URL_OPTION,
    KeyValue,
    connect,
    connect_wes,
    err,
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
from hpc_bridge.liveview import Snapshot, Step, follow
from hpc_bridge.tes.client import BridgeClient
from hpc_bridge.wes import CRATE_OUTPUT
from hpc_bridge.wes.runner import WES, Client, Outputs, RunnerError, Submission


def _run(run_id: str, tail: str = "") -> str:
    return f"{WES}/runs/{quote(run_id, safe='')}{tail}"


def run_log(wes: Client, run_id: str) -> dict[str, Any]:
    """The WES RunLog; one without its id and state is no answer of this API (KeyError, TypeError:
    connect_wes ends the command with a message)."""
    log: dict[str, Any] = wes.call("GET", _run(run_id)).json()
    missing = {"run_id", "state"} - set(log)
    if missing:
        raise KeyError(", ".join(sorted(missing)))
    return log


def run_tasks(client: BridgeClient, run_id: str) -> list[tes.Task]:
    """The run's TES tasks in the order its engine created them (the engine tags each with the run)."""
    tasks, _ = client.find_tasks(all_pages=True, view="BASIC", tags={"wes_run_id": run_id})
    return tasks[::-1]


def step_name(task: tes.Task) -> str:
    return (task.tags or {}).get("cwl_step") or task.name or task.id or ""


def snapshot(wes: Client, client: BridgeClient, run_id: str) -> Snapshot:
    state = wes.call("GET", _run(run_id, "/status")).json()["state"]
    steps = tuple(Step(t.id or "", step_name(t), t.state or "UNKNOWN", slurm_job(t)) for t in run_tasks(client, run_id))
    return Snapshot("run", run_id, state, steps=steps)


def run_outcome(state: str, tasks: list[tes.Task]) -> tuple[int, str]:
    """The exit code `run submit --wait` ends with, as `submit --wait`'s for a task: on EXECUTOR_ERROR
    the code of the last step that failed with one (1 when no step did: the engine itself failed)."""
    if state == "COMPLETE":
        return 0, ""
    if state != "EXECUTOR_ERROR":
        return EXIT_NOT_FINISHED, ""
    for task in reversed(tasks):
        if task.state == "EXECUTOR_ERROR":
            code, why = outcome(task)
            return code, f"step {step_name(task)} ({task.id}): {why}"
    return 1, "the workflow failed (its engine's log: hpc-bridge run logs --stderr)"


@click.group("run")
def run_group() -> None:
    """Workflow runs (GA4GH WES): submit CWL, follow its steps, read its outputs."""


@run_group.command("submit")
@click.argument("workflow", metavar="WORKFLOW")
@click.argument("job", metavar="[JOB]", required=False)
@click.option("--tag", type=KeyValue(), multiple=True, help="Run tag K=V (repeatable).")
@click.option("--engine-param", type=KeyValue(), multiple=True,
              help="workflow_engine_parameters entry K=V, e.g. crypt4gh_recipients=KEY (repeatable).")
@click.option("--wait", is_flag=True, help="Follow the run step by step and exit with its outcome.")
@URL_OPTION
def run_submit(workflow: str, job: str | None, tag: tuple[tuple[str, str], ...],
               engine_param: tuple[tuple[str, str], ...], wait: bool, url: str) -> None:
    """Submit a CWL workflow (WORKFLOW, or WORKFLOW#id) with its job file and print the run id.

    The workflow, the local files it references and the job's local inputs are attached; inputs in a
    data root the server shares with this machine are passed by location. With --wait the exit code
    is the run's: 0 when COMPLETE, the failing step's code on EXECUTOR_ERROR (1 if none failed),
    125 on SYSTEM_ERROR or CANCELED.
    """
    with connect_wes(url) as wes:
        submission = Submission(workflow, job, wes.data_roots())
        try:
            submission.prepare()
        except RunnerError as exc:
            fail(str(exc), EXIT_USAGE)
        run_id = submission.post(wes, dict(tag), dict(engine_param))
    click.echo(run_id)
    if not wait:
        return
    with connect_wes(url) as wes, connect(url) as client, keeps_running("run", run_id, "hpc-bridge run cancel", url):
        final = follow(patient(lambda: snapshot(wes, client, run_id)), err)
        code, why = run_outcome(final.state, run_tasks(client, run_id))
        if code:
            _explain_failure(wes, run_id)
    stdout().print(f"{run_id} {styled(final.state)}" + (f": {escape(why)}" if why else ""))
    sys.exit(code)


def _explain_failure(wes: Client, run_id: str) -> None:
    """The run's system logs on stderr: why it ended so, with the end of the engine's stderr (the
    supervisor adds it when a run fails)."""
    for line in run_log(wes, run_id).get("run_log", {}).get("system_logs") or []:
        err.print(f"[dim]system log:[/dim] {escape(line)}", soft_wrap=True)


@run_group.command("list")
@click.option("--all", "all_pages", is_flag=True, help="Follow every page, not only the first.")
@JSON_OPTION
@URL_OPTION
def run_list(all_pages: bool, as_json: bool, url: str) -> None:
    """List workflow runs, newest first."""
    runs: list[dict[str, Any]] = []
    params: dict[str, str] = {}
    with connect_wes(url) as wes:
        while True:
            page = wes.call("GET", f"{WES}/runs", params=params).json()
            runs += page["runs"]
            more = page.get("next_page_token") or ""
            if not (more and all_pages):
                break
            params["page_token"] = more
    if as_json:
        click.echo(json.dumps(runs, indent=2))
    elif runs:
        table = Table(box=None, pad_edge=False)
        table.add_column("id", no_wrap=True, min_width=max(len(r["run_id"]) for r in runs))
        for column in ("state", "started", "ended", "tags"):
            table.add_column(column)
        for run in runs:
            tags = " ".join(f"{k}={v}" for k, v in (run.get("tags") or {}).items())
            table.add_row(run["run_id"], styled(run.get("state")), when(run.get("start_time")),
                          when(run.get("end_time")), escape(tags))
        stdout().print(table)
    else:
        err.print("no runs")
    if more:
        err.print("[dim]more runs on further pages: add --all[/dim]")


@run_group.command("status")
@click.argument("run_id")
@JSON_OPTION
@URL_OPTION
def run_status(run_id: str, as_json: bool, url: str) -> None:
    """Show a run: state, workflow, times, the engine's exit code, its steps by state, system logs."""
    with connect_wes(url) as wes, connect(url) as client:
        log = run_log(wes, run_id)
        tasks = run_tasks(client, run_id) if not as_json else []
    if as_json:
        click.echo(json.dumps(log, indent=2))
        return
    engine, request = log.get("run_log") or {}, log.get("request") or {}
    counts = Counter(t.state or "UNKNOWN" for t in tasks)
    exit_code = engine.get("exit_code")
    info = Table.grid(padding=(0, 2))
    for key, value in (("id", escape(log["run_id"])), ("state", styled(log.get("state"))),
                       ("workflow", escape(request.get("workflow_url") or "")),
                       ("type", escape(f"{request.get('workflow_type', '')} "
                                       f"{request.get('workflow_type_version', '')}")),
                       ("started", when(engine.get("start_time"))), ("ended", when(engine.get("end_time"))),
                       ("engine exit code", "" if exit_code is None else str(exit_code)),
                       ("tasks", ", ".join(f"{n} {styled(s)}" for s, n in sorted(counts.items())))):
        info.add_row(f"[bold]{key}[/bold]", value)
    out = stdout()
    out.print(info)
    if engine.get("system_logs"):
        out.print("[bold]system logs[/bold]")
        for line in engine["system_logs"]:
            out.print(f"  {escape(line)}", soft_wrap=True)


@run_group.command("tasks")
@click.argument("run_id")
@JSON_OPTION
@URL_OPTION
def run_tasks_command(run_id: str, as_json: bool, url: str) -> None:
    """List a run's TES tasks: step, task id, state, Slurm job, exit code, times."""
    with connect_wes(url) as wes, connect(url) as client:
        wes.call("GET", _run(run_id, "/status")).json()["state"]  # an unknown run is an error, not no tasks
        tasks = run_tasks(client, run_id)
    if as_json:
        click.echo(json.dumps([t.as_dict() for t in tasks], indent=2, default=datetime_json_handler))
        return
    if not tasks:
        err.print(f"run {run_id} has no tasks yet")
        return
    table = Table("step", "task", "state", "slurm job", "exit code", "started", "ended", box=None, pad_edge=False)
    for task in tasks:
        log = last_log(task) or tes.TaskLog()
        codes = [e.exit_code for e in log.logs or [] if e.exit_code is not None]
        table.add_row(escape(step_name(task)), task.id, styled(task.state), slurm_job(task),
                      str(codes[-1]) if codes else "", when(log.start_time), when(log.end_time))
    stdout().print(table)


@run_group.command("logs")
@click.argument("run_id")
@click.option("--task", "task_id", metavar="TASK_ID", help="A step task's executor logs instead of the engine's.")
@click.option("--stderr", is_flag=True, help="Print stderr, not stdout.")
@URL_OPTION
def run_logs(run_id: str, task_id: str | None, stderr: bool, url: str) -> None:
    """Print the workflow engine's stdout (or stderr), or one of the run's tasks' with --task."""
    stream = "stderr" if stderr else "stdout"
    tail = f"/tasks/{quote(task_id, safe='')}/{stream}" if task_id else f"/{stream}"
    with connect_wes(url) as wes:
        text = wes.call("GET", _run(run_id, tail)).text
    click.echo(text, nl=False)


@run_group.command("cancel")
@click.argument("run_id")
@URL_OPTION
def run_cancel(run_id: str, url: str) -> None:
    """Cancel a run and print its state (a finished run is left as it is)."""
    with connect_wes(url) as wes:
        wes.call("POST", _run(run_id, "/cancel"))
        state = wes.call("GET", _run(run_id, "/status")).json()["state"]
    stdout().print(f"{run_id} {styled(state)}")


@run_group.command("outputs")
@click.argument("run_id")
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path),
              help="Copy or download the output files here; the printed object then names these copies.")
@URL_OPTION
def run_outputs(run_id: str, outdir: Path | None, url: str) -> None:
    """Print a completed run's CWL output object (JSON), as the server has the files, or as copied to --outdir."""
    with connect_wes(url) as wes:
        log = run_log(wes, run_id)
        outputs = {k: v for k, v in (log.get("outputs") or {}).items() if k != CRATE_OUTPUT}
        if log["state"] != "COMPLETE" and not outputs:
            fail(f"run {run_id} is {log['state']}: outputs come with COMPLETE", EXIT_SERVER)
        if outdir is not None:
            try:
                outputs = Outputs(wes, run_id, str(outdir)).relocate(outputs)
            except OSError as exc:
                fail(f"{outdir}: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(json.dumps(outputs, indent=2))


@run_group.command("crate")
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the zip (default: run-RUN_ID-ro-crate.zip here; - for stdout).")
@URL_OPTION
def run_crate(run_id: str, output: Path | None, url: str) -> None:
    """Download a finished run's Provenance Run Crate (a zip)."""
    with connect_wes(url) as wes:
        resp = wes.call("GET", _run(run_id, "/ro-crate"), timeout=300)
    if str(output) == "-":
        sys.stdout.buffer.write(resp.content)
        return
    path = output or Path(f"run-{run_id}-ro-crate.zip")
    partial = path.with_name(path.name + ".part")
    try:
        partial.write_bytes(resp.content)
        partial.replace(path)  # never a half-written crate under the final name
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}", EXIT_USAGE)
    err.print(f"{path} ({len(resp.content) / 1024:.1f} KiB): the Provenance Run Crate of run {run_id}")
