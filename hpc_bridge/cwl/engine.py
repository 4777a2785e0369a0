"""One workflow run: cwltool's own main flow (document loading, job order, scatter, outputs) with
our tool class, executor and runtime context plugged in through its library parameters.

The run dir holds request.json (written by the WES layer); the engine writes outputs.json (the CWL
output object, files under DIR/outputs) on success and keeps its work area in DIR/.cwl. Exit code
0 COMPLETE, 3 EXECUTOR_ERROR, 4 SYSTEM_ERROR, 5 CANCELED (SIGTERM: the live tasks are cancelled).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cwltool import main as cwlmain
from cwltool.context import LoadingContext

from hpc_bridge.config import SiteConfig, load_config
from hpc_bridge.cwl import (
    EXIT_CANCELED,
    EXIT_COMPLETE,
    EXIT_EXECUTOR_ERROR,
    EXIT_SYSTEM_ERROR,
)
from hpc_bridge.cwl.executor import TesExecutor
from hpc_bridge.cwl.state import EngineState
from hpc_bridge.cwl.tasks import TaskRunner
from hpc_bridge.cwl.tool import StablePathMapper, TesRuntimeContext, make_tool
from hpc_bridge.store import Store

log = logging.getLogger("hpc_bridge.cwl")

# Without a DockerRequirement, CWL tools expect an ordinary Linux userland (bash, python3, coreutils).
DEFAULT_IMAGE = "docker.io/python:3-slim"
CONTAINER_OUTDIR = "/var/spool/cwl"
CONTAINER_TMPDIR = "/tmp"
CONTAINER_STAGEDIR = "/var/lib/cwl"
ENGINE_PARAMETERS = {"default_container": str, "on_error": str, "max_parallel": int}


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
    if not isinstance(request.get("params", {}), dict):
        raise EngineError("request.json: 'params' must be an object")
    return request


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


def job_user(config: SiteConfig, run_as: str | None) -> tuple[int, int] | None:
    name = run_as or config.slurm.submit_as
    if not name:
        return None
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def default_image(config: SiteConfig, params: dict[str, Any]) -> str:
    site = getattr(getattr(config, "cwl", None), "default_image", None)
    return params.get("default_container") or site or DEFAULT_IMAGE


def _cwltool_args(workflow: str, job_file: Path, run_dir: Path, work: Path, params: dict[str, Any]) -> argparse.Namespace:
    argv = ["--outdir", str(run_dir / "outputs"), "--basedir", str(run_dir),
            "--tmpdir-prefix", f"{work}/tmp/", "--tmp-outdir-prefix", f"{work}/out/",
            "--write-summary", str(work / "summary.json"), "--disable-color",
            "--on-error", params.get("on_error", "stop"), workflow, str(job_file)]
    return cwlmain.arg_parser().parse_args(argv)


def run(config: SiteConfig, run_dir: Path) -> int:
    """The whole run; returns the exit code."""
    request = read_request(run_dir)
    params = engine_parameters(request.get("engine_parameters"))
    os.umask(0o022)
    work = run_dir / ".cwl"
    work.mkdir(parents=True, exist_ok=True)
    user = job_user(config, request.get("run_as"))
    if user is not None:  # the job user must reach its inputs and outputs below the run dir
        os.chmod(run_dir, os.stat(run_dir).st_mode | 0o011)
    store = Store(config.database)
    runner = TaskRunner(store, config, run_id=request["run_id"], owner=request["owner"],
                        run_as=request.get("run_as"))
    state = EngineState(runner, work, default_image=default_image(config, params), job_user=user,
                        apptainer=config.apptainer)
    _on_sigterm(runner)

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
    runtime.select_resources = executor.select_resources
    loading = LoadingContext(vars(args))
    loading.construct_tool_object = make_tool
    loading.relax_path_checks = True  # spaces, # and the like are safe: argv lists, never a shell

    log.info("run %s: %s (default image %s)", request["run_id"], request["workflow"], state.default_image)
    code = cwlmain.main(args=args, loadingContext=loading, runtimeContext=runtime, executor=executor,
                        logger_handler=_handler(), stdout=sys.stderr)
    runner.close()
    if state.system_errors:
        log.error("run %s: SYSTEM_ERROR (%s)", request["run_id"], "; ".join(state.system_errors[:3]))
        return EXIT_SYSTEM_ERROR
    if code != 0:
        log.error("run %s: EXECUTOR_ERROR (cwltool status %s)", request["run_id"], code)
        return EXIT_EXECUTOR_ERROR
    os.replace(work / "summary.json", run_dir / "outputs.json")
    log.info("run %s: COMPLETE (%d tasks created, %d reused)", request["run_id"],
             len(runner.created), len(runner.reused))
    shutil.rmtree(work, ignore_errors=True)
    return EXIT_COMPLETE


_HANDLER: logging.Handler | None = None


def _handler() -> logging.Handler:
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = logging.StreamHandler(sys.stderr)
        _HANDLER.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    return _HANDLER


def _on_sigterm(runner: TaskRunner) -> None:
    """SIGTERM/SIGINT: cancel the run's live tasks, then exit 5 (from a thread, so the store is
    not used from inside a signal handler that interrupted the main thread mid-transaction)."""
    def cancel_and_exit() -> None:
        try:
            count = runner.cancel_all()
            print(f"run cancelled: {count} live TES task(s) cancelled", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_CANCELED)

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=cancel_and_exit, name="cwl-cancel", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_bridge.cwl", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="site config file")
    parser.add_argument("--run-dir", required=True, type=Path, help="the run's directory (request.json)")
    ns = parser.parse_args(argv)
    logger = logging.getLogger("hpc_bridge")
    logger.addHandler(_handler())
    logger.setLevel(logging.INFO)
    try:
        config = load_config(ns.config)
        return run(config, ns.run_dir.resolve())
    except EngineError as exc:
        log.error("%s", exc)
        return EXIT_SYSTEM_ERROR
    except Exception:
        log.exception("engine failure")
        return EXIT_SYSTEM_ERROR
