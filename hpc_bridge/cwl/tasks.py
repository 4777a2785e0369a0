"""The run's TES tasks: created over this service's TES API with the run's credential, found again
after a restart, and watched by one polling thread for all of them (one list call per round; the
job threads just wait on an event).

A task is reused when an earlier engine process of the same run created one with the same job
key: a COMPLETE one whose outputs are still on disk, or one still in flight (adopted and waited
for, instead of a second Slurm job).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from hpc_bridge.cwl.client import CredentialRevoked, RemoteTask, RunClient
from hpc_bridge.errors import Forbidden, NotFound, TooManyRequests
from hpc_bridge.lifecycle import LIVE
from hpc_bridge.store.tasks import now_iso
from hpc_bridge.tes.models import State

log = logging.getLogger("hpc_bridge.cwl")

class RunCanceled(Exception):
    """The run is being cancelled: no new task may start."""


def url_path(url: str) -> str:
    return unquote(urlsplit(url).path) if url.startswith("file://") else url


def outputs_on_disk(row: RemoteTask) -> bool:
    """The task's output directory and every file it reported are still there."""
    outputs = row.task.get("outputs") or []
    if not outputs or not os.path.isdir(url_path(outputs[0]["url"])):
        return False
    return all(os.path.lexists(url_path(o["url"])) for o in row.outputs)


def _parse_time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


@dataclass
class _Watch:
    done: threading.Event = field(default_factory=threading.Event)
    row: RemoteTask | None = None
    timelimit: int | None = None
    tool_index: int = 0
    seen_running: float | None = None
    timed_out: bool = False


class TaskRunner:
    def __init__(self, client: RunClient, *, run_id: str, poll_interval: float = 0.5, reuse: bool = True,
                 on_revoked: Callable[[], None] | None = None, tags: dict[str, str] | None = None) -> None:
        """`reuse`: an earlier engine of the run may have left tasks (a relaunch); a first engine
        skips the lookup for each job. `tags` go on every task it creates."""
        self.client, self.run_id, self.reuse = client, run_id, reuse
        self.tags = tags or {}
        self.poll_interval = poll_interval
        self.on_revoked = on_revoked
        self._lock = threading.Lock()
        self._watches: dict[str, list[_Watch]] = {}
        self._claimed: set[str] = set()  # tasks this process created or reused
        self.started_at = now_iso()  # only tasks created before this are an earlier attempt's
        self._closing = False
        self.created: list[str] = []
        self.reused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cwl-task-watch", daemon=True)
        self._thread.start()

    # -- creating or finding ------------------------------------------------------------------

    def find_reusable(self, key: str) -> RemoteTask | None:
        """A task of an earlier engine process with this key: COMPLETE with its outputs on disk,
        or still live. Each is used once per process (two identical jobs get two tasks)."""
        if not self.reuse:
            return None
        found = self.client.list(tags={"wes_run_id": self.run_id, "cwl_job_key": key}, view="FULL")
        with self._lock:
            for row in found:
                if row.id in self._claimed or row.created_at >= self.started_at:
                    continue
                if row.state == State.COMPLETE and outputs_on_disk(row) or \
                        row.state in LIVE and not row.cancel_requested:
                    self._claimed.add(row.id)
                    self.reused.append(row.id)
                    return row
        return None

    def create(self, body: dict[str, Any], *, step: str, key: str) -> str:
        body = {**body, "tags": {**self.tags, **(body.get("tags") or {}), "cwl_step": step[:200],
                                 "cwl_job_key": key}}
        while True:  # the owner's active-task limit: wait for some of the run's tasks to end
            with self._lock:
                if self._closing:
                    raise RunCanceled("the run is being cancelled")
            try:
                task_id = self.client.create(body)
                break
            except TooManyRequests as exc:
                log.info("[job %s] waiting to create its task: %s", step, exc.message)
                self._stop.wait(max(self.poll_interval, exc.retry_after or 2.0))
            except Forbidden as exc:  # the run is being cancelled
                raise RunCanceled(exc.message) from None
        with self._lock:
            self._claimed.add(task_id)
            self.created.append(task_id)
            closing = self._closing
        if closing:  # cancelled while it was being created
            self.client.cancel(task_id)
            raise RunCanceled("the run is being cancelled")
        return task_id

    # -- waiting ------------------------------------------------------------------------------

    def wait(self, task_id: str, *, timelimit: int | None = None, tool_index: int = 0) -> tuple[RemoteTask, bool]:
        """Block until the task ends; returns its FULL view and whether the engine stopped it for
        exceeding `timelimit` seconds of run time (ToolTimeLimit)."""
        watch = _Watch(timelimit=timelimit or None, tool_index=tool_index)
        with self._lock:
            self._watches.setdefault(task_id, []).append(watch)
        try:
            watch.done.wait()
        finally:
            with self._lock:
                self._watches[task_id].remove(watch)
                if not self._watches[task_id]:
                    del self._watches[task_id]
        assert watch.row is not None
        return watch.row, watch.timed_out

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            with self._lock:
                watches = {task_id: list(ws) for task_id, ws in self._watches.items()}
            if not watches:
                continue
            try:
                self._poll(watches)
            except CredentialRevoked as exc:
                log.error("the service no longer accepts this engine's credential (%s): stopping", exc.message)
                if self.on_revoked is not None:
                    self.on_revoked()
                return
            except Exception:  # the service restarting, a hiccup: try again next round
                log.exception("polling the run's tasks failed")

    def _poll(self, watches: dict[str, list[_Watch]]) -> None:
        states = {t.id: t.state for t in self.client.list(tags={"wes_run_id": self.run_id})}
        for task_id, waiting in watches.items():
            state = states.get(task_id)
            if state is None:
                continue
            if State(state).terminal:
                row = self.client.get(task_id, "FULL")
                for watch in waiting:
                    watch.row = row
                    watch.done.set()
            elif state == State.RUNNING and any(w.timelimit and not w.timed_out for w in waiting):
                row = self.client.get(task_id, "BASIC")
                for watch in waiting:
                    self._check_time(task_id, row, watch)

    def _check_time(self, task_id: str, row: RemoteTask, watch: _Watch) -> None:
        if watch.timelimit and not watch.timed_out \
                and time.time() - self._tool_start(row, watch) > watch.timelimit:
            watch.timed_out = True
            log.warning("task %s exceeded its time limit of %ss: cancelling it", task_id, watch.timelimit)
            self.client.cancel(task_id)

    @staticmethod
    def _tool_start(row: RemoteTask, watch: _Watch) -> float:
        """When the tool's executor started: its log, else the job's start, else when first seen
        running (the daemon refreshes executor logs only now and then while a job runs)."""
        logs = row.executor_logs
        if len(logs) > watch.tool_index:
            started = _parse_time(logs[watch.tool_index].get("start_time"))
            if started is not None:
                return started
        started = _parse_time(row.start_time)
        if started is not None:
            return started
        if watch.seen_running is None:
            watch.seen_running = time.time()
        return watch.seen_running

    # -- cancelling ---------------------------------------------------------------------------

    def cancel_all(self) -> int:
        """Stop every live task this process created or adopted; no new task starts after this."""
        with self._lock:
            self._closing = True
            ids = list(self._claimed)
        if not ids:
            return 0
        live = {t.id for t in self.client.list(tags={"wes_run_id": self.run_id})
                if not State(t.state).terminal and t.state != State.CANCELING}
        cancelled = 0
        for task_id in ids:
            if task_id in live:
                try:
                    self.client.cancel(task_id)
                except NotFound:
                    continue
                cancelled += 1
        return cancelled

    def close(self) -> None:
        self._stop.set()
