"""Bounded work per request, through the real `hpc-bridge serve` and the dev cluster.

Waitress reads a whole request body (spooling it to an unlinked temp file past 512 KiB) before the
app sees the request, so only waitress can refuse a body before reading it, and before
authentication: `limits.max_request_bytes` is its maximum. A 1 GiB body, streamed in 1 MiB chunks
and never held in the test's memory, is refused with 413, chunked (no length: waitress reads up to
the limit) and with a Content-Length just under waitress's own default of 1 GiB (refused on its
headers); meanwhile the server's RSS (/proc/PID/status) and its spool files (its open files in its
TMPDIR, /proc/PID/fd) are sampled and must not grow by more than the limit.

The per-task caps (`limits.caps`) are checked at creation: one executor too many is a 400 naming
the field, a task at the cap runs on Slurm and keeps every executor's log.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import ServerProcess

TES = "/ga4gh/tes/v1"
LIMIT = 8 * 1024**2
GiB = 1024**3
CHUNK = 1024**2
SLACK = 64 * 1024  # waitress notices the limit after a socket read, which may carry it a little past
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _spooled(pid: int, spool: Path) -> int:
    """Bytes in the files the server holds open in its TMPDIR (unlinked ones included)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(spool)):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue  # closed meanwhile
    return total + sum(entry.stat().st_size for entry in os.scandir(spool) if entry.is_file())


class Sampler:
    """The peak of the server's RSS and spool while a request is sent."""

    def __init__(self, pid: int, spool: Path) -> None:
        self.pid, self.spool = pid, spool
        self.rss_before = _status_bytes(pid, "VmRSS")
        self.hwm_before = _status_bytes(pid, "VmHWM")
        self.rss = self.rss_before
        self.spooled = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self.rss = max(self.rss, _status_bytes(self.pid, "VmRSS"))
            self.spooled = max(self.spooled, _spooled(self.pid, self.spool))
            time.sleep(0.002)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        # VmHWM catches a peak between two samples.
        self.rss = max(self.rss, _status_bytes(self.pid, "VmRSS"))
        self.hwm_after = _status_bytes(self.pid, "VmHWM")


def _send_gib(port: int, headers: str, chunked: bool) -> tuple[bytes, int]:
    """POST a 1 GiB body chunk by chunk, stopping when the server answers or closes; returns the
    response and how many body bytes were sent."""
    chunk = b"x" * CHUNK
    frame = b"%x\r\n%s\r\n" % (CHUNK, chunk) if chunked else chunk
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"POST {TES}/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"{headers}\r\n".encode())
        while sent < GiB and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += CHUNK
        response = b""
        try:
            while data := sock.recv(65536):
                response += data
        except ConnectionResetError:
            pass
    return response, sent


@pytest.fixture()
def limited(server_factory: Callable[..., ServerProcess], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> tuple[ServerProcess, Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))  # the server's, where waitress spools bodies
    server = server_factory(limits={"max_request_bytes": LIMIT})
    return server, spool


@pytest.mark.parametrize(("headers", "chunked"), [
    ("Transfer-Encoding: chunked\r\n", True),
    (f"Content-Length: {GiB - 1}\r\n", False),  # under waitress's default maximum
])
def test_a_gib_body_is_refused_without_the_server_holding_it(limited: tuple[ServerProcess, Path], headers: str,
                                                            chunked: bool) -> None:
    server, spool = limited
    assert server.proc is not None
    sampler = Sampler(server.proc.pid, spool)
    started = time.monotonic()
    response, sent = _send_gib(server.port, headers, chunked)
    sampler.stop()
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert sent < GiB and time.monotonic() - started < 60
    assert sampler.spooled <= LIMIT + SLACK, (sampler.spooled, sent)
    if not chunked:
        assert sampler.spooled == 0  # refused on its headers: not a byte of the body was read
    assert sampler.rss - sampler.rss_before <= LIMIT, (sampler.rss_before, sampler.rss)
    assert sampler.hwm_after <= max(sampler.hwm_before, sampler.rss_before + LIMIT)
    assert _spooled(server.proc.pid, spool) == 0  # nothing left behind
    assert requests.get(f"{server.url}{TES}/service-info", timeout=10).status_code == 200


def test_a_body_within_the_limit_reaches_the_app(limited: tuple[ServerProcess, Path]) -> None:
    server, _ = limited
    body = '{"executors": [], "description": "' + "x" * (LIMIT - 100) + '"}'
    resp = requests.post(f"{server.url}{TES}/tasks", data=body, headers={"Content-Type": "application/json"},
                         timeout=60)
    assert resp.status_code == 400 and resp.json()["status_code"] == 400 and "executors" in resp.json()["msg"]
    over = requests.post(f"{server.url}{TES}/tasks", data=b"x" * (LIMIT + 1),
                         headers={"Content-Type": "application/json"}, timeout=60)
    assert over.status_code == 413


def _wait(server: ServerProcess, task_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (task := requests.get(f"{server.url}{TES}/tasks/{task_id}", params={"view": "FULL"},
                                timeout=10).json())["state"] not in FINAL:
        assert time.monotonic() < deadline, task
        time.sleep(0.5)
    return task


def test_executors_over_the_cap_are_400_and_a_task_at_the_cap_runs(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(limits={"caps": {"max_executors": 3}})

    def body(count: int) -> dict[str, Any]:
        return {"executors": [{"image": "busybox", "command": ["sh", "-c", f"echo out{i}; echo err{i} >&2"]}
                              for i in range(count)]}

    over = requests.post(f"{server.url}{TES}/tasks", json=body(4), timeout=30)
    assert over.status_code == 400 and over.json() == {
        "msg": "executors: 4 given, more than the 3 allowed here", "status_code": 400}
    assert requests.get(f"{server.url}{TES}/tasks", timeout=10).json()["tasks"] == []
    created = requests.post(f"{server.url}{TES}/tasks", json=body(3), timeout=30)
    assert created.status_code == 200, created.text
    task = _wait(server, created.json()["id"])
    assert task["state"] == "COMPLETE", task
    logs = task["logs"][0]["logs"]
    assert [(e["stdout"], e["stderr"]) for e in logs] == [(f"out{i}\n", f"err{i}\n") for i in range(3)]
