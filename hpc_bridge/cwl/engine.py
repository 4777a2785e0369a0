"""One workflow run: cwltool's own main flow (document loading, job order, scatter, outputs) with
our tool class, executor and runtime context plugged in through its library parameters.

`python -I -m hpc_bridge.cwl`, started by the WES supervisor as the run's own Unix user in the run
directory, never as root or the service account. Its standard input carries one JSON object: the
local TES API's URL, the run's credential, and the service's pid and start time (the engine stops
when that process is gone). The run dir holds request.json (written by the WES layer, including
the document fetch policy and the site's image settings); the engine appends its own output to
stdout.log/stderr.log, writes outputs.json (the CWL output object, files under DIR/outputs) on
success, packed.cwl and provenance.json for the run's crate (cwl/provenance.py), and keeps its work
area in DIR/.cwl. It reaches its tasks only over the TES API. Exit
code 0 COMPLETE, 3 EXECUTOR_ERROR, 4 SYSTEM_ERROR, 5 CANCELED (SIGTERM: the live tasks are
cancelled).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from cwltool import main as cwlmain
from cwltool.argparser import arg_parser
from cwltool.context import LoadingContext

from hpc_bridge.config import ApptainerSettings
from hpc_bridge.cwl import (
    EXIT_CANCELED,
    EXIT_COMPLETE,
    EXIT_EXECUTOR_ERROR,
    EXIT_SYSTEM_ERROR,
    encrypt,
    provenance,
)
from hpc_bridge.cwl.client import RunClient
from hpc_bridge.cwl.executor import TesExecutor
from hpc_bridge.cwl.fetch import FetchPolicy, fetcher_constructor
from hpc_bridge.cwl.remote import RemoteFsAccess
from hpc_bridge.cwl.state import EngineState
from hpc_bridge.cwl.tasks import TaskRunner
from hpc_bridge.cwl.tool import StablePathMapper, TesRuntimeContext, make_tool
from hpc_bridge.cwl.validate import InvalidWorkflow, validate_workflow
from hpc_bridge.processes import process_start

log = logging.getLogger("hpc_bridge.cwl")

# Without a DockerRequirement, CWL tools expect an ordinary Linux userland (bash, python3, coreutils).
DEFAULT_IMAGE = "docker.io/python:3-slim"
CONTAINER_OUTDIR = "/var/spool/cwl"
CONTAINER_TMPDIR = "/tmp"
CONTAINER_STAGEDIR = "/var/lib/cwl"
ENGINE_PARAMETERS = {"default_container": str, "on_error": str, "max_parallel": int, encrypt.PARAMETER: str}
# Seconds one JavaScript expression may run (an endless loop in a user's expression ends the job).
JS_TIMEOUT = 60
LOG_MODE = 0o640
MAX_LAUNCH_BYTES = 64 * 1024


class EngineError(Exception):
    """The run cannot even start (bad request file, unusable run dir)."""


def read_request(run_dir: Path) -> dict[str, Any]:
    try:
        request = json.loads((run_dir / "request.json").read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {run_dir / 'request.json'}: {exc}") from exc
    for key in ("run_id", "owner", "workflow"):
        if not isinstance(request.get(key), str) or not request[key]:
            raise EngineError(f"request.json: {key!r} must be a non-empty string")
    for key in ("params", "fetch_policy", "apptainer"):
        if not isinstance(request.get(key, {}), dict):
            raise EngineError(f"request.json: {key!r} must be an object")
    if "fetch_policy" not in request:
        raise EngineError("request.json: 'fetch_policy' is missing")
    return dict(request)


def read_launch(stream: Any) -> dict[str, Any]:
    """What the supervisor passes on stdin (never in argv or the environment, which other
    processes may see): the TES URL, the run credential, the service process to outlive not."""
    try:
        launch = json.loads(stream.read(MAX_LAUNCH_BYTES) or "{}")
    except ValueError as exc:
        raise EngineError(f"standard input: not the supervisor's JSON ({exc})") from None
    for key in ("tes_url", "token"):
        if not isinstance(launch.get(key), str) or not launch[key]:
            raise EngineError(f"standard input: {key!r} must be a non-empty string")
    return dict(launch)


def engine_parameters(raw: Any) -> dict[str, Any]:
    """The few workflow_engine_parameters this engine takes; others are ignored with a warning."""
    result: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        kind = ENGINE_PARAMETERS.get(key)
        if kind is None:
            log.warning("engine parameter %r is not supported and was ignored (supported: %s)",
                        key, ", ".join(ENGINE_PARAMETERS))
            continue
        try:
            result[key] = kind(value)
        except (TypeError, ValueError):
            raise EngineError(f"engine parameter {key!r}: expected {kind.__name__}") from None
    if result.get("on_error", "stop") not in ("stop", "continue"):
        raise EngineError("engine parameter 'on_error': 'stop' or 'continue'")
    if not 1 <= result.get("max_parallel", 1) <= 512:
        raise EngineError("engine parameter 'max_parallel': between 1 and 512")
    return result


def default_image(params: dict[str, Any]) -> str:
    return params.get("default_container") or DEFAULT_IMAGE


def _cwltool_args(workflow: str, job_file: Path, run_dir: Path, work: Path,
                  params: dict[str, Any]) -> argparse.Namespace:
    argv = ["--outdir", str(run_dir / "outputs"), "--basedir", str(run_dir),
            "--tmpdir-prefix", f"{work}/tmp/", "--tmp-outdir-prefix", f"{work}/out/",
            "--write-summary", str(work / "summary.json"), "--disable-color",
            "--eval-timeout", str(JS_TIMEOUT),
            "--on-error", params.get("on_error", "stop"), workflow, str(job_file)]
    return arg_parser().parse_args(argv)


def run(run_dir: Path, launch: dict[str, Any]) -> int:
    """The whole run; returns the exit code."""
    request = read_request(run_dir)
    params = engine_parameters(request.get("engine_parameters"))
    policy = FetchPolicy.from_json(request["fetch_policy"])
    try:  # the documents are fetched again here: the same policy as at submission
        validate_workflow(request["workflow"], params=request.get("params") or {}, policy=policy)
    except InvalidWorkflow as exc:
        log.error("run %s: the workflow is refused: %s", request["run_id"], exc.message)
        return EXIT_EXECUTOR_ERROR
    work = run_dir / ".cwl"
    work.mkdir(exist_ok=True)
    provenance.write_packed(request["workflow"], policy, run_dir)
    # The inputs' digests, beside the run: hashing a large input must not delay its first task.
    hashing = threading.Thread(target=provenance.record, args=(run_dir,), name="provenance", daemon=True,
                               kwargs={"inputs": request.get("params"),
                                       "engine": {"name": "cwltool", "version": metadata.version("cwltool")}})
    hashing.start()
    code = EXIT_SYSTEM_ERROR
    try:
        code = _run(request, params, policy, run_dir, work, launch)
        return code
    finally:
        hashing.join()
        if params.get(encrypt.PARAMETER):  # no plaintext outlives the run, whatever its end
            encrypt.remove_plaintext(run_dir, keep_outputs=code == EXIT_COMPLETE)


def _run(request: dict[str, Any], params: dict[str, Any], policy: FetchPolicy, run_dir: Path, work: Path,
         launch: dict[str, Any]) -> int:
    # cwltool reads its own job order (and step outputs) from the engine's work area.
    policy = dataclasses.replace(policy, roots=(*policy.roots, str(work)))
    client = RunClient(launch["tes_url"], launch["token"])
    recipients = params.get(encrypt.PARAMETER)
    runner = TaskRunner(client, run_id=request["run_id"], reuse=bool(launch.get("relaunch")),
                        on_revoked=lambda: os._exit(EXIT_SYSTEM_ERROR), tags=encrypt.step_tags(recipients))
    state = EngineState(runner, work, default_image=default_image(params),
                        apptainer=ApptainerSettings.model_validate(request.get("apptainer") or {}))
    _on_sigterm(runner, encrypt.after_cancel(runner, run_dir) if recipients else None)
    _watch_service(launch.get("service_pid"), launch.get("service_start"))

    job_file = work / "job.json"
    job_file.write_text(json.dumps(request.get("params") or {}))
    args = _cwltool_args(request["workflow"], job_file, run_dir, work, params)
    executor = TesExecutor(max_parallel=params.get("max_parallel", 64))
    runtime = TesRuntimeContext(vars(args))
    runtime.hpcb = state
    runtime.docker_outdir, runtime.docker_tmpdir = CONTAINER_OUTDIR, CONTAINER_TMPDIR
    runtime.docker_stagedir = CONTAINER_STAGEDIR
    runtime.default_container = state.default_image
    runtime.path_mapper = StablePathMapper
    runtime.make_fs_access = RemoteFsAccess
    runtime.select_resources = executor.select_resources
    loading = LoadingContext(vars(args))
    loading.construct_tool_object = make_tool
    loading.fetcher_constructor = fetcher_constructor(policy)
    loading.relax_path_checks = True  # spaces, # and the like are safe: argv lists, never a shell

    log.info("run %s: %s (default image %s, engine uid %d)", request["run_id"], request["workflow"],
             state.default_image, os.getuid())
    code = cwlmain.main(args=args, loadingContext=loading, runtimeContext=runtime, executor=executor,
                        logger_handler=_handler(), stdout=sys.stderr)
    if state.system_errors:
        runner.close()
        log.error("run %s: SYSTEM_ERROR (%s)", request["run_id"], "; ".join(state.system_errors[:3]))
        return EXIT_SYSTEM_ERROR
    if code != 0:
        runner.close()
        log.error("run %s: EXECUTOR_ERROR (cwltool status %s)", request["run_id"], code)
        return EXIT_EXECUTOR_ERROR
    outputs = json.loads((work / "summary.json").read_text())
    if recipients:
        encrypted = encrypt.encrypt_outputs(runner, run_dir, recipients, state.default_image, outputs)
        if encrypted is None:
            runner.close()
            log.error("run %s: SYSTEM_ERROR (its outputs could not be encrypted)", request["run_id"])
            return EXIT_SYSTEM_ERROR
        (work / "summary.json").write_text(json.dumps(encrypted, indent=2))
        outputs = encrypted
    runner.close()
    os.replace(work / "summary.json", run_dir / "outputs.json")
    provenance.record(run_dir, outputs=outputs)
    log.info("run %s: COMPLETE (%d tasks created, %d reused)", request["run_id"],
             len(runner.created), len(runner.reused))
    shutil.rmtree(work, ignore_errors=True)
    return EXIT_COMPLETE


def _redirect_output(run_dir: Path) -> None:
    """stdout/stderr into the run's log files, appended, opened without following a link."""
    dfd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
            log_fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                             LOG_MODE, dir_fd=dfd)
            os.dup2(log_fd, fd)
            os.close(log_fd)
    finally:
        os.close(dfd)


def _watch_service(pid: Any, start: Any) -> None:
    """Engines die with the service that started them (a new service process starts a new engine,
    with a new credential): poll the service's pid and start time."""
    if not isinstance(pid, int) or not isinstance(start, str):
        return
    def watch() -> None:
        while process_start(pid) == start:
            threading.Event().wait(0.5)
        os._exit(EXIT_SYSTEM_ERROR)

    threading.Thread(target=watch, name="cwl-service-watch", daemon=True).start()


_HANDLER: logging.Handler | None = None


def _handler() -> logging.Handler:
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = logging.StreamHandler(sys.stderr)
        _HANDLER.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    return _HANDLER


def _on_sigterm(runner: TaskRunner, last: Callable[[], None] | None = None) -> None:
    """SIGTERM/SIGINT: cancel the run's live tasks, do `last`, then exit 5 (from a thread, so no
    HTTP call is made from inside a signal handler that interrupted the main thread mid-request)."""
    def cancel_and_exit() -> None:
        try:
            count = runner.cancel_all()
            print(f"run cancelled: {count} live TES task(s) cancelled", file=sys.stderr, flush=True)
            if last is not None:
                last()
        finally:
            os._exit(EXIT_CANCELED)

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=cancel_and_exit, name="cwl-cancel", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -I -m hpc_bridge.cwl", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    run_dir = Path.cwd()
    os.umask(0o027)
    try:
        launch = read_launch(sys.stdin)
        _redirect_output(run_dir)
    except (EngineError, OSError) as exc:
        print(f"hpc-bridge engine: {exc}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    logger = logging.getLogger("hpc_bridge")
    logger.addHandler(_handler())
    logger.setLevel(logging.INFO)
    if launch.get("relaunch"):
        log.warning("--- hpc-bridge: the service restarted; engine started again ---")
    try:
        return run(run_dir, launch)
    except EngineError as exc:
        log.error("%s", exc)
        return EXIT_SYSTEM_ERROR
    except Exception:
        log.exception("engine failure")
        return EXIT_SYSTEM_ERROR
