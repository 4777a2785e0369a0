"""What every `hpc-bridge` client command shares: its consoles, options, state colours, exit codes,
and how a failed request ends the command."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from time import sleep
from typing import NoReturn, TypeVar

import click
import requests
import tes
from rich.console import Console
from rich.markup import escape
from tes.utils import UnmarshalError

from hpc_bridge.tes.client import DEFAULT_URL, BridgeClient, error_message
from hpc_bridge.tes.models import State
from hpc_bridge.wes.runner import Client, RunnerError

err = Console(stderr=True, highlight=False)
T = TypeVar("T")

EXIT_SERVER = 1
EXIT_USAGE = 2
# `--wait` when the task or run ended without its commands' verdict (SYSTEM_ERROR, CANCELED,
# PREEMPTED): 125, like `docker run` when the container itself failed, so it rarely collides
# with a command's own small exit codes.
EXIT_NOT_FINISHED = 125
EXIT_INTERRUPTED = 130
POLL_TRIES = 5  # about 25 s of no answer while following, before giving up
STATE_STYLES = {"COMPLETE": "green", "EXECUTOR_ERROR": "red", "SYSTEM_ERROR": "red", "CANCELED": "yellow",
                "CANCELING": "yellow", "PREEMPTED": "yellow", "INITIALIZING": "cyan", "RUNNING": "cyan"}
TOKEN_ENV = "HPC_BRIDGE_TOKEN"

URL_OPTION = click.option(
    "--url", metavar="URL", envvar="HPC_BRIDGE_URL", default=DEFAULT_URL, show_default=True,
    help="The hpc-bridge server, with or without /ga4gh/tes/v1 or /ga4gh/wes/v1 (env: HPC_BRIDGE_URL; "
         "bearer token: env HPC_BRIDGE_TOKEN).",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def token() -> str | None:
    """The bearer token: an environment variable, so it stays out of shell history and `ps`."""
    return os.environ.get(TOKEN_ENV) or None


class KeyValue(click.ParamType[tuple[str, str], str | tuple[str, str]]):
    """K=V on the command line; with `bare_key`, a lone K stands for (K, "") (a tag filter on the key)."""

    name = "K=V"

    def __init__(self, bare_key: bool = False) -> None:
        self.bare_key = bare_key

    def convert(self, value: str | tuple[str, str], param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, val = value.partition("=")
        if not key or not (sep or self.bare_key):
            self.fail(f"{value!r}: expected KEY=VALUE", param, ctx)
        return key, val


@contextmanager
def connect(url: str) -> Iterator[BridgeClient]:
    """A TES client whose failures end the command with a message: exit 2 if the server called the
    request bad (HTTP 400), else 1 (not found, server error, no answer)."""
    try:
        client = BridgeClient(url, token=token())
    except ValueError as exc:  # py-tes validates the scheme
        raise click.BadParameter(str(exc), param_hint="--url") from None
    try:
        yield client
    except requests.JSONDecodeError:
        _not_json(url)
    except _WRONG_SHAPE as exc:
        _wrong_shape(url, exc)
    except requests.RequestException as exc:
        bad_request = exc.response is not None and exc.response.status_code == 400
        fail(error_message(exc, url), EXIT_USAGE if bad_request else EXIT_SERVER)
    except UnmarshalError as exc:  # py-tes refused the answer: not (this version of) a TES server
        fail(f"unexpected answer from {url}: {str(exc).splitlines()[-1]}", EXIT_SERVER)


@contextmanager
def connect_wes(url: str) -> Iterator[Client]:
    """The WES client of hpc-bridge-cwl-runner (the same URL forms and token), with `connect`'s exit codes."""
    try:
        yield Client(url, token())
    except RunnerError as exc:
        fail(str(exc), EXIT_USAGE if exc.status == 400 else EXIT_SERVER)
    except requests.JSONDecodeError:
        _not_json(url)
    except _WRONG_SHAPE as exc:
        _wrong_shape(url, exc)


# JSON, but not the objects the API answers with (a list, a field missing): another server at --url.
_WRONG_SHAPE = (KeyError, TypeError, AttributeError)


def _wrong_shape(url: str, exc: Exception) -> NoReturn:
    fail(f"unexpected answer from {url}: not the hpc-bridge API ({type(exc).__name__}: {exc})", EXIT_SERVER)


def _not_json(url: str) -> NoReturn:
    """An answer of 200 that is not JSON: not an hpc-bridge API at this URL."""
    fail(f"unexpected answer from {url}: not JSON (is it an hpc-bridge server?)", EXIT_SERVER)


def last_log(task: tes.Task) -> tes.TaskLog | None:
    """The current attempt: TES appends one TaskLog per attempt."""
    return task.logs[-1] if task.logs else None


def executor_logs(task: tes.Task) -> list[tes.ExecutorLog]:
    log = last_log(task)
    return (log.logs or []) if log else []


def patient(poll: Callable[[], T], tries: int = POLL_TRIES) -> Callable[[], T]:
    """`poll`, tried again while the server does not answer or answers 5xx (a restart of the
    service while someone waits on a long run): after `tries` failures the last one stands."""

    def attempt() -> T:
        failed = 0
        while True:
            try:
                return poll()
            except (requests.RequestException, RunnerError) as exc:
                response = getattr(exc, "response", None)
                status = exc.status if isinstance(exc, RunnerError) else \
                    (response.status_code if response is not None else None)
                failed += 1
                if (status is not None and status < 500) or failed == tries:
                    raise
                err.print(f"[dim]no answer from the server ({status or 'no connection'}); trying again[/dim]")
                sleep(min(2 ** (failed - 1), 10))

    return attempt


def slurm_job(task: tes.Task) -> str:
    """The Slurm job of the task's current attempt ("" before it has one)."""
    log = last_log(task)
    return str(((log.metadata if log else None) or {}).get("slurm_job_id") or "")


@contextmanager
def keeps_running(what: str, ident: str, cancel: str, url: str) -> Iterator[None]:
    """Ctrl-C while following a task or run (polling, or reading its end): it goes on; exit 130
    with the command that cancels it."""
    try:
        yield
    except KeyboardInterrupt:
        hint = "" if url == DEFAULT_URL else f" --url {shlex.quote(url)}"
        err.print(f"\ninterrupted: {what} {ident} keeps running; cancel it with "
                  f"[bold]{escape(cancel + hint)} {ident}[/bold]", soft_wrap=True)
        sys.exit(EXIT_INTERRUPTED)


def outcome(task: tes.Task) -> tuple[int, str]:
    """The exit code `submit --wait` ends with, and why. EXECUTOR_ERROR passes on the failing
    executor's own code: the last non-zero one, since a job stops at its first unignored failure."""
    if task.state == State.COMPLETE:
        return 0, ""
    if task.state == State.EXECUTOR_ERROR:
        failed = [(i, e.exit_code) for i, e in enumerate(executor_logs(task)) if e.exit_code]
        if not failed:
            return 1, "exit code unknown"
        index, code = failed[-1]
        return (code if 0 < code < 256 else 1), f"executor {index} exited with {code}"
    return EXIT_NOT_FINISHED, ""


def stdout() -> Console:
    """stdout for rich output: fitted to a terminal; piped, never wrapped or cropped, so scripts
    and grep see whole ids and commands."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 1_000_000
    return console


def styled(state: str | None) -> str:
    state = state or "UNKNOWN"
    return f"[{STATE_STYLES[state]}]{state}[/]" if state in STATE_STYLES else state


def when(moment: datetime | str | None) -> str:
    """A moment in local time; WES gives RFC 3339 strings, py-tes datetimes."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return str(moment)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if moment else ""
