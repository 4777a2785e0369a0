"""A workflow engine's run credential: the run's owner, for that run's TES tasks only, void once
the run ends or a newer engine of the run holds another one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from hpc_bridge.app import create_app
from hpc_bridge.auth import runtoken
from hpc_bridge.config import SiteConfig
from hpc_bridge.store import Store
from hpc_bridge.store.runs import RunStore

TASK = {"executors": [{"image": "busybox", "command": ["true"]}]}


@pytest.fixture()
def config(dev_config: SiteConfig, tmp_path: Path) -> SiteConfig:
    images = tmp_path / "images"
    images.mkdir()
    (images / "busybox.sif").write_bytes(b"")
    return dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "apptainer": dev_config.apptainer.model_copy(update={"image_dirs": [images]}),
    })


@pytest.fixture()
def store(config: SiteConfig) -> Store:
    return Store(config.database)


@pytest.fixture()
def client(config: SiteConfig, store: Store) -> FlaskClient:
    return create_app(config, store=store).test_client()


def new_run(store: Store, *, owner: str = "local", run_as: str | None = None,
            state: str = "RUNNING") -> tuple[str, dict[str, str]]:
    run_id = str(uuid.uuid4())
    runs = RunStore(store)
    runs.create(id=run_id, owner=owner, request={}, tags={}, run_dir="/nonexistent",
                workflow="file:///wf.cwl", run_as=run_as)
    token = runtoken.mint(run_id)
    runs.update(run_id, state=state, engine_token=token.digest)
    return run_id, {"Authorization": f"Bearer {token.bearer}"}


def create(client: FlaskClient, headers: dict[str, str], body: dict | None = None) -> str:
    response = client.post("/ga4gh/tes/v1/tasks", json=body or TASK, headers=headers)
    assert response.status_code == 200, response.json
    return response.json["id"]


def test_tasks_of_a_run_credential_belong_to_its_run_and_owner(client: FlaskClient, store: Store) -> None:
    run_id, headers = new_run(store, owner="https://idp.example#alice")
    other_run, _ = new_run(store)
    task_id = create(client, headers, {**TASK, "tags": {"wes_run_id": other_run, "cwl_step": "s"}})
    row = store.tasks.get(task_id)
    assert row.owner == "https://idp.example#alice"
    assert row.tags == {"wes_run_id": run_id, "cwl_step": "s"}  # the run tag is the service's


def test_a_run_credential_sees_only_its_runs_tasks(client: FlaskClient, store: Store) -> None:
    run_id, headers = new_run(store)
    _, other_headers = new_run(store)
    mine = create(client, headers)
    theirs = create(client, other_headers)  # same owner, another run
    plain = create(client, {})  # the owner's own task, in no run
    listed = client.get("/ga4gh/tes/v1/tasks", headers=headers).json["tasks"]
    assert [t["id"] for t in listed] == [mine]
    for task_id in (theirs, plain):
        assert client.get(f"/ga4gh/tes/v1/tasks/{task_id}", headers=headers).status_code == 404
        assert client.post(f"/ga4gh/tes/v1/tasks/{task_id}:cancel", headers=headers).status_code == 404
        assert not store.tasks.get(task_id).cancel_requested
    assert client.get(f"/ga4gh/tes/v1/tasks/{mine}", headers=headers).json["id"] == mine
    assert client.post(f"/ga4gh/tes/v1/tasks/{mine}:cancel", headers=headers).status_code == 200


def test_tasks_of_a_run_run_as_the_runs_unix_user(client: FlaskClient, store: Store) -> None:
    _, headers = new_run(store, run_as="hpcb")
    assert store.tasks.get(create(client, headers)).run_as == "hpcb"


def test_a_run_credential_cannot_call_wes(client: FlaskClient, store: Store) -> None:
    run_id, headers = new_run(store)
    for path in ("/ga4gh/wes/v1/runs", f"/ga4gh/wes/v1/runs/{run_id}"):
        response = client.get(path, headers=headers)
        assert response.status_code == 403 and "TES" in response.json["msg"]
    assert client.post(f"/ga4gh/wes/v1/runs/{run_id}/cancel", headers=headers).status_code == 403
    assert RunStore(store).get(run_id).state == "RUNNING"


@pytest.mark.parametrize("state", ["COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"])
def test_the_credential_dies_with_the_run(client: FlaskClient, store: Store, state: str) -> None:
    _, headers = new_run(store)
    task_id = create(client, headers)
    run_id = store.tasks.get(task_id).tags["wes_run_id"]
    RunStore(store).update(run_id, state=state)
    response = client.get(f"/ga4gh/tes/v1/tasks/{task_id}", headers=headers)
    assert response.status_code == 401 and "run credential" in response.json["msg"]


def test_a_newer_engine_voids_the_older_credential_and_forgeries_fail(client: FlaskClient, store: Store) -> None:
    run_id, headers = new_run(store)
    newer = runtoken.mint(run_id)
    RunStore(store).update(run_id, engine_token=newer.digest)
    assert client.get("/ga4gh/tes/v1/tasks", headers=headers).status_code == 401
    assert client.get("/ga4gh/tes/v1/tasks", headers={"Authorization": f"Bearer {newer.bearer}"}).status_code == 200
    forged = runtoken.RunToken(run_id, "A" * 43)
    assert client.get("/ga4gh/tes/v1/tasks", headers={"Authorization": f"Bearer {forged.bearer}"}).status_code == 401
    unknown = runtoken.mint(str(uuid.uuid4()))
    assert client.get("/ga4gh/tes/v1/tasks", headers={"Authorization": f"Bearer {unknown.bearer}"}).status_code == 401


def test_a_run_being_cancelled_starts_no_new_task(client: FlaskClient, store: Store) -> None:
    run_id, headers = new_run(store)
    live = create(client, headers)
    RunStore(store).request_cancel(run_id)
    response = client.post("/ga4gh/tes/v1/tasks", json=TASK, headers=headers)
    assert response.status_code == 403 and "cancelled" in response.json["msg"]
    assert client.post(f"/ga4gh/tes/v1/tasks/{live}:cancel", headers=headers).status_code == 200
    assert [t["id"] for t in client.get("/ga4gh/tes/v1/tasks", headers=headers).json["tasks"]] == [live]


def test_the_store_keeps_only_the_credentials_digest(store: Store) -> None:
    run_id, headers = new_run(store)
    secret = headers["Authorization"].rsplit(".", 1)[1]
    row = RunStore(store).get(run_id)
    assert secret not in (row.engine_token or "") and row.engine_token == runtoken.digest(secret)


def test_an_engines_tasks_are_batched_for_the_daemon(config: SiteConfig, store: Store) -> None:
    """A client's task wakes the daemon at once; an engine's scatter is left to the daemon's next
    cycle, so its short tasks share packs."""
    wakes: list[int] = []
    client = create_app(config, store=store, on_change=lambda: wakes.append(1)).test_client()
    _, headers = new_run(store)
    create(client, headers)
    assert wakes == []
    create(client, {})
    assert wakes == [1]
