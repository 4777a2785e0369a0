"""The engine's task runner against the real app on loopback, as the engine uses it: over HTTP
with its run's credential. The daemon's part is played by the test: tasks are created with the
run's tags, found again for reuse, waited for by one poller, stopped at their time limit, and all
cancelled at once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from hpc_bridge.app import create_app
from hpc_bridge.auth import runtoken
from hpc_bridge.config import SiteConfig
from hpc_bridge.cwl.client import RunClient
from hpc_bridge.cwl.tasks import RunCanceled, TaskRunner
from hpc_bridge.store import Store
from hpc_bridge.store.runs import RunStore
from hpc_bridge.store.tasks import now_iso
from hpc_bridge.tes.service import TaskService

RUN1, RUN2 = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture()
def config(dev_config: SiteConfig, tmp_path: Path) -> SiteConfig:
    images = tmp_path / "images"
    images.mkdir()
    (images / "busybox.sif").write_bytes(b"")
    (tmp_path / "data").mkdir()
    return dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "storage": dev_config.storage.model_copy(update={"data_roots": [tmp_path / "data"],
                                                         "work_root": tmp_path / "work"}),
        "apptainer": dev_config.apptainer.model_copy(update={"image_dirs": [images]}),
    })


@pytest.fixture()
def store(config: SiteConfig) -> Store:
    store = Store(config.database)
    for run_id in (RUN1, RUN2):
        RunStore(store).create(id=run_id, owner="local", request={}, tags={}, run_dir="/nonexistent",
                               workflow="file:///wf.cwl")
        RunStore(store).update(run_id, state="RUNNING")
    return store


def serve(config: SiteConfig, store: Store) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, create_app(config, store=store), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture()
def url(config: SiteConfig, store: Store) -> Iterator[str]:
    yield from serve(config, store)


def body(config: SiteConfig, name: str) -> dict:
    out = config.storage.data_roots[0] / "out" / name
    return {"name": name, "executors": [{"image": "busybox", "command": ["true"]}],
            "outputs": [{"path": "/var/spool/cwl", "url": out.as_uri(), "type": "DIRECTORY"}]}


def runner(store: Store, url: str, run_id: str = RUN1) -> TaskRunner:
    """A new engine process of the run: a new credential (which voids the older one)."""
    token = runtoken.mint(run_id)
    RunStore(store).update(run_id, engine_token=token.digest)
    return TaskRunner(RunClient(url, token.bearer, retry_seconds=0), run_id=run_id, poll_interval=0.05)


def finish(store: Store, task_id: str, state: str = "COMPLETE", **fields) -> None:
    store.tasks.update(task_id, state=state, end_time=now_iso(), **fields)


def test_tasks_carry_the_run_tags_and_are_waited_for(store: Store, config: SiteConfig, url: str) -> None:
    r = runner(store, url)
    task_id = r.create(body(config, "a"), step="step1", key="k1")
    row = store.tasks.get(task_id)
    assert row.tags == {"wes_run_id": RUN1, "cwl_step": "step1", "cwl_job_key": "k1"}
    threading.Timer(0.2, finish, (store, task_id)).start()
    final, timed_out = r.wait(task_id)
    assert final.state == "COMPLETE" and not timed_out
    r.close()


def test_completed_tasks_of_earlier_attempts_are_reused_once_if_outputs_exist(
        store: Store, config: SiteConfig, url: str) -> None:
    first = runner(store, url)
    done = first.create(body(config, "a"), step="s", key="k")
    out = config.storage.data_roots[0] / "out" / "a"
    out.mkdir(parents=True)
    (out / "f").write_text("x")
    finish(store, done, outputs=[{"url": (out / "f").as_uri(), "path": "/var/spool/cwl/f", "size_bytes": "1"}])
    assert first.find_reusable("k") is None  # its own tasks are never reused by the same process
    first.close()

    second = runner(store, url)
    assert second.find_reusable("other-key") is None
    assert runner(store, url, run_id=RUN2).find_reusable("k") is None  # another run's task
    assert second.find_reusable("k").id == done
    assert second.find_reusable("k") is None  # two identical jobs get two tasks
    (out / "f").unlink()
    assert runner(store, url).find_reusable("k") is None  # outputs gone: run it again


def test_live_tasks_of_earlier_attempts_are_adopted(store: Store, config: SiteConfig, url: str) -> None:
    live = runner(store, url).create(body(config, "a"), step="s", key="k")
    failed = runner(store, url).create(body(config, "b"), step="s", key="k2")
    finish(store, failed, state="EXECUTOR_ERROR")
    again = runner(store, url)
    assert again.find_reusable("k").id == live
    assert again.find_reusable("k2") is None


def test_time_limit_cancels_the_task(store: Store, config: SiteConfig, url: str) -> None:
    r = runner(store, url)
    task_id = r.create(body(config, "a"), step="s", key="k")
    store.tasks.update(task_id, state="RUNNING", start_time=now_iso())

    def daemon() -> None:  # what the daemon does once the cancel is requested
        deadline = time.monotonic() + 10
        while not store.tasks.get(task_id).cancel_requested and time.monotonic() < deadline:
            time.sleep(0.05)
        finish(store, task_id, state="CANCELED")

    threading.Thread(target=daemon).start()
    final, timed_out = r.wait(task_id, timelimit=1)
    assert final.state == "CANCELED" and timed_out


def test_cancel_all_stops_live_tasks_and_refuses_new_ones(store: Store, config: SiteConfig, url: str) -> None:
    r = runner(store, url)
    live = r.create(body(config, "a"), step="s", key="k1")
    done = r.create(body(config, "b"), step="s", key="k2")
    finish(store, done)
    assert r.cancel_all() == 1
    assert store.tasks.get(live).cancel_requested and not store.tasks.get(done).cancel_requested
    with pytest.raises(RunCanceled):
        r.create(body(config, "c"), step="s", key="k3")


def test_the_owners_active_task_limit_makes_creation_wait(store: Store, config: SiteConfig, url: str) -> None:
    limited = config.model_copy(update={"limits": config.limits.model_copy(update={"max_active_tasks": 1})})
    r = runner(store, next(serve(limited, store)))
    first = r.create(body(config, "a"), step="s", key="k1")
    threading.Timer(0.3, finish, (store, first)).start()
    started = time.monotonic()
    second = r.create(body(config, "b"), step="s", key="k2")  # waits for the first to end
    assert time.monotonic() - started >= 0.25
    assert store.tasks.get(second).state == "QUEUED"


def test_two_jobs_may_wait_for_the_same_task(store: Store, config: SiteConfig, url: str) -> None:
    r = runner(store, url)
    task_id = r.create(body(config, "a"), step="s", key="k")
    results: list[str] = []
    waiters = [threading.Thread(target=lambda: results.append(r.wait(task_id)[0].state)) for _ in range(2)]
    for t in waiters:
        t.start()
    time.sleep(0.2)
    finish(store, task_id)
    for t in waiters:
        t.join(5)
    assert results == ["COMPLETE", "COMPLETE"]


def test_tasks_created_after_the_engine_started_are_never_reused(store: Store, config: SiteConfig, url: str) -> None:
    r = runner(store, url)
    # another thread of the same engine, mid-way through creating its task (not claimed yet)
    other = TaskService(store, config).create({**body(config, "a"), "tags": {"cwl_job_key": "k"}}, "local",
                                              run_id=RUN1)
    assert store.tasks.get(other).created_at > r.started_at
    assert r.find_reusable("k") is None


def test_a_first_engine_of_a_run_looks_up_nothing(store: Store, config: SiteConfig, url: str) -> None:
    live = runner(store, url).create(body(config, "a"), step="s", key="k")
    token = runtoken.mint(RUN1)
    RunStore(store).update(RUN1, engine_token=token.digest)
    first = TaskRunner(RunClient(url, token.bearer, retry_seconds=0), run_id=RUN1, reuse=False)
    assert first.find_reusable("k") is None  # no earlier attempt to reuse: no lookup per job
    assert runner(store, url).find_reusable("k").id == live  # a relaunch adopts it
