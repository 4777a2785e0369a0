"""The WES supervisor: one thread of `hpc-bridge serve` (only where the daemon lock is held, so one
per database) that runs each workflow run's engine process and keeps the run's state.

- QUEUED runs get an engine, at most `wes.max_parallel_runs` at once, oldest first; the run goes
  INITIALIZING, then RUNNING once the engine has created its first TES task.
- An engine is its user's code (CWL expressions run in it): it runs as the run's Unix user (the
  root helper starts it in the per-user modes; the service drops to the job user itself when it
  runs as root),
  in the run directory, which is handed to that user first. It gets the local TES URL and a run
  credential minted for this launch (auth/runtoken.py) on stdin; it has no database access and
  makes its tasks over the TES API.
- The engine's exit code is the run's verdict: 0 COMPLETE (outputs from `outputs.json`),
  3 EXECUTOR_ERROR, 4 SYSTEM_ERROR, 5 CANCELED; a signal or any other code is a SYSTEM_ERROR. The
  end of the engine's stderr goes into the run's system logs when it failed.
- Cancel: the API marks the run CANCELING (its credential can then create no task); the
  supervisor sends the engine SIGTERM (it cancels its own tasks), cancels every live TES task of
  the run through TaskService (the daemon scancels their jobs), SIGKILLs an engine that outlives
  `wes.cancel_grace`, and makes the run CANCELED once the engine has exited and none of its tasks
  is still live or CANCELING. A final run's credential is void.
- Engines stop when the service process that started them is gone (they watch its pid and start
  time). A run left INITIALIZING/RUNNING by a previous service process gets a new engine with a
  new credential, which voids the old one, so two engines never drive one run; the new engine
  reuses the steps that completed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_bridge.auth import runtoken
from hpc_bridge.config import SiteConfig
from hpc_bridge.errors import NotFound
from hpc_bridge.lifecycle import ACTIVE, LIVE
from hpc_bridge.processes import process_start
from hpc_bridge.store import Store
from hpc_bridge.store.runs import RunRow, RunStore
from hpc_bridge.store.tasks import now_iso
from hpc_bridge.tes.service import TaskService
from hpc_bridge.wes import retention
from hpc_bridge.wes.attachments import open_beneath
from hpc_bridge.wes.rundir import engine_launch_refusal, hand_over_run_dir

log = logging.getLogger(__name__)

EXIT_STATES = {0: "COMPLETE", 3: "EXECUTOR_ERROR", 4: "SYSTEM_ERROR", 5: "CANCELED"}
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4096
ENGINE_MODULE = ["-I", "-m", "hpc_bridge.cwl"]
HELPER_REFUSED = 2  # the root helper's exit status for a refusal (runas/helper.py EXIT_REFUSED)
# The engine's whole environment when the service starts it itself (the helper sets its own).
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class LaunchRefused(Exception):
    """This run's engine cannot be started as a user other than root and the service account."""


@dataclass
class _Engine:
    proc: subprocess.Popen[bytes]
    term_at: float | None = None
    killed: bool = False


@dataclass(frozen=True)
class EngineCommand:
    """How one engine starts: its argv and, when the service (root) drops to the run's user
    itself, that user's ids (Popen sets them in the child before exec: no runuser in between,
    so SIGTERM and the engine's exit code go straight between it and the supervisor)."""

    argv: list[str]
    user: int | None = None
    group: int | None = None
    extra_groups: tuple[int, ...] | None = None


Launcher = Callable[[RunRow], EngineCommand]


class Supervisor:
    """`tes_url` is where the engines reach this service's TES API (loopback); `launcher` gives the
    argv that starts a run's engine as the run's user (tests replace it with a fake engine)."""

    def __init__(self, config: SiteConfig, store: Store, tasks: TaskService, *, tes_url: str,
                 launcher: Launcher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._settings = config.wes
        self.runs = RunStore(store)
        self._tasks = tasks
        self._tes_url = tes_url
        self._launcher = launcher or self.engine_argv
        self._clock = clock
        self._engines: dict[str, _Engine] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._retained_at = float("-inf")
        self._retainer: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        log.info("WES supervisor started (%d engines at most)", self._settings.max_parallel_runs)
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # a bad row must not stop every other run
                log.exception("WES supervisor cycle failed")
            self._wake.wait(self._settings.poll_interval)
            self._wake.clear()

    def tick(self) -> None:
        self._reap()
        self._cancel()
        self._progress()
        self._launch()
        self._retain()

    def _retain(self) -> None:
        """Every monitor.cleanup_interval: remove run directories past wes.retention_hours."""
        hours, root = self._settings.retention_hours, self._config.wes.root(self._config.storage.data_roots)
        now = time.monotonic()
        if hours is None or root is None or now - self._retained_at < self._config.monitor.cleanup_interval:
            return
        self._retained_at = now
        if self._retainer is not None and self._retainer.is_alive():
            return  # the last sweep is still removing (a large directory, a slow helper)
        owners = {os.geteuid()}
        if self._config.slurm.submit_as:
            owners.add(pwd.getpwnam(self._config.slurm.submit_as).pw_uid)
        remove_as_user = self._remove_as_user if self._config.run_as.enabled else None

        def sweep() -> None:  # in a thread of its own: engines are reaped and started meanwhile
            try:
                retention.retire(self.runs, root, hours, owners, remove_as_user,
                                 keep_outputs=self._settings.retention_keep_outputs)
            except Exception:
                log.exception("WES retention sweep failed")

        self._retainer = threading.Thread(target=sweep, name="wes-retention", daemon=True)
        self._retainer.start()

    def _remove_as_user(self, row: RunRow) -> None:
        """The root helper removes an ended per-user run's directory as its owner (the run's user).
        A refusal that time will not change (its configuration keeps run directories, the user is no
        longer allowed, a link in the directory's place) leaves it to the site; others are retried."""
        done = subprocess.run(self._config.run_as.helper_argv(row.id), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return
        message = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        if done.returncode == HELPER_REFUSED and "ended less than" not in message:
            raise retention.LeftToSite(message)
        raise RuntimeError(message)

    @property
    def engines(self) -> dict[str, subprocess.Popen[bytes]]:
        return {run_id: e.proc for run_id, e in self._engines.items()}

    # -- starting engines ----------------------------------------------------------------------

    def _launch(self) -> None:
        free = self._settings.max_parallel_runs - len(self._engines)
        if free <= 0:
            return
        # Runs a previous service process was driving first (their engines died with it), then new ones.
        orphans = [r for r in self.runs.in_states(LIVE - {"QUEUED"})
                   if r.id not in self._engines]
        queued = self.runs.in_states(["QUEUED"])
        for row in [*orphans, *queued][:free]:
            self._start(row)

    def _start(self, row: RunRow) -> None:
        if row.launches > self._settings.max_relaunches:
            self._end(row, "SYSTEM_ERROR", f"the engine was started {row.launches} times (service "
                      "restarts) without finishing; giving up")
            return
        self._kill_stale(row)
        run_dir = Path(row.run_dir)
        if not (run_dir / "request.json").exists():
            self._end(row, "SYSTEM_ERROR", f"the run directory {run_dir} or its request.json is gone")
            return
        token = runtoken.mint(row.id)
        try:
            command = self._launcher(row)
        except (LaunchRefused, OSError, KeyError) as exc:
            self._end(row, "SYSTEM_ERROR", f"cannot start the engine: {exc}")
            return
        # The new credential is stored before the engine starts: an older engine's is void now.
        state = "INITIALIZING" if row.state == "QUEUED" else row.state
        self.runs.update(row.id, state=state, engine_token=token.digest, launches=row.launches + 1,
                         start_time=row.start_time or now_iso())
        launch = {"tes_url": self._tes_url, "token": token.bearer, "service_pid": os.getpid(),
                  "service_start": process_start(os.getpid()), "relaunch": bool(row.launches)}
        try:
            proc = subprocess.Popen(
                command.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                cwd=run_dir, close_fds=True, start_new_session=True, env=self._engine_env(),
                user=command.user, group=command.group, extra_groups=command.extra_groups)
        except OSError as exc:
            self._end(row, "SYSTEM_ERROR", f"cannot start the engine: {exc}")
            return
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(launch).encode() + b"\n")
            proc.stdin.close()
        except OSError:
            pass  # it died at once: reaped with its stderr next round
        self._engines[row.id] = _Engine(proc)
        what = "started" if not row.launches else "started again after a service restart"
        self.runs.update(row.id, engine_pid=proc.pid, engine_start=process_start(proc.pid),
                         message=f"engine {what} (pid {proc.pid})")
        log.info("run %s: engine %s (pid %d)", row.id, what, proc.pid)

    def engine_argv(self, row: RunRow) -> EngineCommand:
        """How the run's engine starts as the run's own Unix user, never as root or the service
        account: through the root helper in the per-user modes (it hands the run directory over
        and drops privileges), as the job user when the service runs as root."""
        if row.run_as is not None:
            return EngineCommand(self._config.run_as.helper_argv(row.id))
        refused = engine_launch_refusal(self._config, None)
        user = self._config.slurm.submit_as
        if refused or not user:
            raise LaunchRefused(refused or "no job user")
        entry = pwd.getpwnam(user)
        if entry.pw_uid == 0:
            raise LaunchRefused(f"slurm.submit_as {user!r} is root")
        hand_over_run_dir(Path(row.run_dir), entry)
        return EngineCommand([sys.executable, *ENGINE_MODULE], user=entry.pw_uid, group=entry.pw_gid,
                             extra_groups=tuple(os.getgrouplist(user, entry.pw_gid)))

    @staticmethod
    def _engine_env() -> dict[str, str]:
        return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}

    def _kill_stale(self, row: RunRow) -> None:
        """Kill an engine of an earlier service process still driving this run (its pid with the
        same start time), with its process group, and wait until it is gone."""
        if not row.engine_pid or not row.engine_start or row.id in self._engines:
            return
        if process_start(row.engine_pid) != row.engine_start:
            return
        log.warning("run %s: killing the engine left by an earlier service process (pid %d)",
                    row.id, row.engine_pid)
        try:
            os.killpg(row.engine_pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            try:
                os.kill(row.engine_pid, signal.SIGKILL)
            except PermissionError:
                return  # not ours to kill; its credential died when this launch minted a new one
        deadline = self._clock() + 10
        while process_start(row.engine_pid) == row.engine_start and self._clock() < deadline:
            time.sleep(0.05)

    # -- watching engines ----------------------------------------------------------------------

    def _reap(self) -> None:
        for run_id, engine in list(self._engines.items()):
            code = engine.proc.poll()
            if code is None:
                continue
            del self._engines[run_id]
            early = self._launch_errors(engine.proc)
            row = self.runs.get(run_id)
            if row is None:
                continue
            if early:
                self.runs.add_system_log(run_id, "the engine's launcher said:\n" + early)
            self._finish(row, code)

    @staticmethod
    def _launch_errors(proc: subprocess.Popen[bytes]) -> str:
        """What the launcher (sudo, the helper) or the engine said before the engine
        took its output into the run's own log files."""
        if proc.stderr is None:
            return ""
        os.set_blocking(proc.stderr.fileno(), False)
        try:
            data = proc.stderr.read(STDERR_TAIL_BYTES) or b""
        except OSError:
            data = b""
        proc.stderr.close()
        return data.decode(errors="replace").strip()

    def _finish(self, row: RunRow, code: int) -> None:
        how = (f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
        if row.cancel_requested or row.state == "CANCELING":
            self.runs.update(row.id, exit_code=code, engine_pid=None, message=f"engine {how}")
            return  # _cancel() ends the run once its tasks are gone
        state = EXIT_STATES.get(code, "SYSTEM_ERROR")
        outputs: dict[str, Any] | None = None
        logs = [f"engine {how}"]
        if state == "COMPLETE":
            try:
                outputs = self._outputs(Path(row.run_dir))
            except (OSError, ValueError) as exc:
                state = "SYSTEM_ERROR"
                logs.append(f"the engine reported success but its outputs.json is unusable: {exc}")
        if state != "COMPLETE":
            tail = self._stderr_tail(Path(row.run_dir))
            if tail:
                logs.append("end of the engine's stderr:\n" + tail)
        self._end(row, state, *logs, exit_code=code, outputs=outputs)

    def _end(self, row: RunRow, state: str, *logs: str, **fields: Any) -> None:
        """Make the run final and cancel any task of it still live (an engine that crashed leaves
        its tasks behind)."""
        for line in logs:
            self.runs.add_system_log(row.id, line)
        self.runs.update(row.id, state=state, end_time=now_iso(), engine_pid=None, engine_token=None,
                         message=logs[0] if logs else None, **fields)
        self._cancel_tasks(row.id)
        log.info("run %s: %s", row.id, state)

    @staticmethod
    def _outputs(run_dir: Path) -> dict[str, Any]:
        fd = open_beneath(str(run_dir), "outputs.json")
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(64 * 1024**2))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - caught with the JSON errors
        return data

    @staticmethod
    def _stderr_tail(run_dir: Path) -> str:
        try:
            fd = open_beneath(str(run_dir), "stderr.log")
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - STDERR_TAIL_BYTES))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-STDERR_TAIL_LINES:])

    def _progress(self) -> None:
        for row in self.runs.in_states(["INITIALIZING"]):
            if row.id in self._engines and self.runs.tasks(row.id, limit=1):
                self.runs.update(row.id, state="RUNNING", message="first task created")

    # -- cancelling ----------------------------------------------------------------------------

    def _cancel_tasks(self, run_id: str) -> int:
        live = self.runs.tasks(run_id, states=LIVE)
        for task in live:
            try:
                self._tasks.cancel(task.id, None)
            except NotFound:
                pass
        return len(live)

    def _cancel(self) -> None:
        for row in self.runs.in_states(["CANCELING"]):
            cancelled = self._cancel_tasks(row.id)
            if cancelled:
                self.runs.update(row.id, message=f"cancel requested for {cancelled} TES task(s)")
            engine = self._engines.get(row.id)
            if engine is not None:
                now = self._clock()
                if engine.term_at is None:
                    engine.term_at = now
                    self._signal(engine, signal.SIGTERM)
                    self.runs.update(row.id, message="SIGTERM sent to the engine")
                elif not engine.killed and now - engine.term_at > self._settings.cancel_grace:
                    engine.killed = True
                    self._signal(engine, signal.SIGKILL, group=True)
                    self.runs.update(row.id, message=f"engine still running {self._settings.cancel_grace:g}s "
                                                     "after SIGTERM: killed")
                continue
            self._kill_stale(row)
            if self.runs.tasks(row.id, states=ACTIVE, limit=1):
                continue  # the daemon is still taking their jobs out of Slurm
            self.runs.update(row.id, state="CANCELED", end_time=now_iso(), engine_pid=None,
                             engine_token=None,
                             message="canceled: the engine and every task of the run have stopped")
            log.info("run %s: CANCELED", row.id)

    @staticmethod
    def _signal(engine: _Engine, sig: signal.Signals, group: bool = False) -> None:
        """To the engine, or to sudo (which passes SIGTERM on to it); a group kill may not reach
        an engine of another user, whose credential then dies with the run."""
        try:
            if group:
                os.killpg(engine.proc.pid, sig)
            else:
                engine.proc.send_signal(sig)
        except PermissionError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                engine.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop and kill the engines (as the service's death would): their runs are
        re-launched by the next service process."""
        self.stop()
        for engine in self._engines.values():
            self._signal(engine, signal.SIGKILL, group=True)
        for engine in self._engines.values():
            try:
                engine.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._engines.clear()
