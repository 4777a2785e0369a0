"""The TES API through Flask's test client (no daemon: tasks stay QUEUED unless a test moves them).

Every response is validated against the official TES 1.1.0 spec. MINIMAL leaves out `executors`,
which the schema marks required; that is the view's purpose, so only that field is put back from
the FULL view before validating. Everything else must validate as it is.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from hpc_bridge.app import create_app
from hpc_bridge.config import SiteConfig, TaskCaps
from hpc_bridge.store import Store, TaskFilter
from hpc_bridge.store.tasks import MAX_SEQ, encode_token

SPEC = "tes-1.1.0.openapi.yaml"
BASE = "/ga4gh/tes/v1"


def simple(name: str = "t", **fields: Any) -> dict[str, Any]:
    return {"name": name, "executors": [{"image": "busybox", "command": ["echo", "hi"]}], **fields}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite")


@pytest.fixture()
def client(dev_config: SiteConfig, store: Store, spec_validator) -> FlaskClient:
    app = create_app(dev_config, store=store)
    test_client = app.test_client()
    full: dict[str, dict] = {}

    def checked(method: str, path: str, **kwargs: Any):
        resp = getattr(test_client, method)(path, **kwargs)
        if resp.status_code == 200:
            body = resp.get_json()
            tasks = body.get("tasks", [body]) if path.startswith(f"{BASE}/tasks") else []
            for t in tasks:
                if set(t) == {"id", "state"}:  # MINIMAL: put back what the view leaves out
                    t["executors"] = full.setdefault(t["id"], test_client.get(
                        f"{BASE}/tasks/{t['id']}?view=FULL").get_json())["executors"]
            spec_validator(SPEC, method, path.split("?")[0], 200, body)
        return resp

    test_client.checked = checked  # type: ignore[attr-defined]
    return test_client


def create(client: FlaskClient, body: dict[str, Any]) -> str:
    resp = client.checked("post", f"{BASE}/tasks", json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["id"]


def test_create_then_get_in_every_view(client: FlaskClient) -> None:
    body = simple("full", inputs=[{"path": "/in/a.txt", "content": "secret"}], volumes=["/vol"],
                  tags={"project": "x"}, resources={"cpu_cores": 1, "ram_gb": 0.5})
    task_id = create(client, body)
    minimal = client.checked("get", f"{BASE}/tasks/{task_id}").get_json()
    assert minimal == {"id": task_id, "state": "QUEUED"}
    basic = client.checked("get", f"{BASE}/tasks/{task_id}?view=BASIC").get_json()
    assert basic["inputs"] == [{"path": "/in/a.txt", "type": "FILE"}]
    full = client.checked("get", f"{BASE}/tasks/{task_id}?view=FULL").get_json()
    assert full["inputs"][0]["content"] == "secret"
    assert full["creation_time"] and full["tags"] == {"project": "x"}
    assert full["resources"] == {"cpu_cores": 1, "ram_gb": 0.5}
    # The task's log exists from creation, empty, so clients may read logs[0].logs right after POST.
    assert basic["logs"] == full["logs"] == [{"logs": [], "outputs": []}]


@pytest.mark.parametrize(("asked", "granted"), [(0.5, 1), (1.0, 1), (1.01, 2), (3, 3)])
def test_fractional_cpu_cores_are_rounded_up(client: FlaskClient, asked: float, granted: int) -> None:
    """TES 1.2 (draft) allows fractional cores and lets servers round up; TES 1.1 responses stay integers."""
    task_id = create(client, simple(resources={"cpu_cores": asked}))
    full = client.checked("get", f"{BASE}/tasks/{task_id}?view=FULL").get_json()
    assert full["resources"]["cpu_cores"] == granted and isinstance(full["resources"]["cpu_cores"], int)


def test_server_fields_sent_by_clients_are_ignored(client: FlaskClient) -> None:
    task_id = create(client, simple(id="mine", state="COMPLETE"))
    full = client.checked("get", f"{BASE}/tasks/{task_id}?view=FULL").get_json()
    assert full["id"] == task_id != "mine" and full["state"] == "QUEUED"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "executors"),
        (simple(executors=[]), "executors"),
        (simple(unknown=1), "unknown"),
        (simple(executors=[{"image": "busybox"}]), "executors[0].command"),
        (simple(executors=[{"image": "busybox", "command": ["x"], "workdir": "relative"}]), "executors[0].workdir"),
        (simple(resources={"cpu_cores": 0}), "resources.cpu_cores"),
        (simple(resources={"cpu_cores": -0.5}), "resources.cpu_cores"),
        (simple(resources={"cpu_cores": "two"}), "resources.cpu_cores"),
        (simple(resources={"ram_gb": "lots"}), "resources.ram_gb"),
        (simple(resources={"zones": ["nope"]}), "resources.zones[0]"),
        (simple(resources={"backend_parameters": {"x": "1"}, "backend_parameters_strict": True}),
         "resources.backend_parameters.x"),
        (simple(volumes=["/a,b"]), "volumes[0]"),
        ([1, 2], "body"),
    ],
)
def test_invalid_tasks_get_400_naming_the_field(client: FlaskClient, store: Store, body: Any,
                                                field: str) -> None:
    resp = client.post(f"{BASE}/tasks", json=body)
    assert resp.status_code == 400
    error = resp.get_json()
    assert error["status_code"] == 400 and field in error["msg"]
    assert store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []  # nothing half-created


def test_drs_inputs_where_the_site_offers_none_get_400(client: FlaskClient, store: Store) -> None:
    body = simple(inputs=[{"url": "drs://drs.example.org/obj", "path": "/in/obj"}])
    resp = client.post(f"{BASE}/tasks", json=body)
    assert resp.status_code == 400
    assert resp.get_json()["msg"] == "inputs[0].url: drs:// inputs are not enabled here (storage.drs)"
    assert store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []


def test_lone_surrogates_are_400(client: FlaskClient) -> None:
    body = '{"executors": [{"image": "busybox", "command": ["echo", "\\ud800"]}]}'
    resp = client.post(f"{BASE}/tasks", data=body, content_type="application/json")
    assert resp.status_code == 400 and "Unicode" in resp.get_json()["msg"]


def test_non_json_body_is_400(client: FlaskClient) -> None:
    resp = client.post(f"{BASE}/tasks", data="not json", content_type="text/plain")
    assert resp.status_code == 400 and "JSON" in resp.get_json()["msg"]


def test_unknown_task_is_404(client: FlaskClient) -> None:
    for resp in (client.get(f"{BASE}/tasks/nope"), client.post(f"{BASE}/tasks/nope:cancel")):
        assert resp.status_code == 404 and "nope" in resp.get_json()["msg"]


def test_bad_view_and_list_parameters_are_400(client: FlaskClient) -> None:
    for query in ("view=ALL", "page_size=0", "page_size=2048", "page_size=x", "state=DONE",
                  "page_token=garbage!", "tag_value=a"):
        resp = client.get(f"{BASE}/tasks?{query}")
        assert resp.status_code == 400, query
    assert client.get(f"{BASE}/tasks/x?view=nope").status_code == 400


def test_list_pages_in_a_stable_order_without_duplicates(client: FlaskClient) -> None:
    ids = [create(client, simple(f"p{i}")) for i in range(7)]
    seen, token, pages = [], None, 0
    while True:
        query = "page_size=3&view=BASIC" + (f"&page_token={token}" if token else "")
        body = client.checked("get", f"{BASE}/tasks?{query}").get_json()
        seen += [t["id"] for t in body["tasks"]]
        create(client, simple("late"))  # inserts while paging must not shift pages
        pages += 1
        token = body.get("next_page_token")
        if not token:
            break
    assert seen == list(reversed(ids)) and pages == 3


def test_list_filters(client: FlaskClient, store: Store) -> None:
    a = create(client, simple("align-1", tags={"project": "p1", "sample": "s1"}))
    b = create(client, simple("align-2", tags={"project": "p2"}))
    c = create(client, simple("call-1", tags={"project": "p1", "sample": ""}))
    store.tasks.update(c, state="COMPLETE")

    def ids(query: str) -> set[str]:
        return {t["id"] for t in client.checked("get", f"{BASE}/tasks?{query}").get_json()["tasks"]}

    assert ids("name_prefix=align") == {a, b}
    assert ids("state=COMPLETE") == {c}
    assert ids("tag_key=project&tag_value=p1") == {a, c}
    assert ids("tag_key=sample") == {a, c}  # a key without value matches any value
    assert ids("tag_key=project&tag_value=p1&tag_key=sample&tag_value=s1") == {a}
    assert ids("tag_key=project&tag_value=p1&name_prefix=call&state=COMPLETE") == {c}
    assert ids("tag_key=project&tag_value=p3") == set()
    assert ids("tag_key=project&tag_value=p1&tag_key=project&tag_value=p2") == set()  # both must match


def test_cancel_marks_canceling_and_is_a_noop_once_finished(client: FlaskClient, store: Store) -> None:
    task_id = create(client, simple())
    assert client.checked("post", f"{BASE}/tasks/{task_id}:cancel").get_json() == {}
    row = store.tasks.get(task_id)
    assert row.state == "CANCELING" and row.cancel_requested
    done = create(client, simple())
    store.tasks.update(done, state="COMPLETE")
    assert client.checked("post", f"{BASE}/tasks/{done}:cancel").get_json() == {}
    assert store.tasks.get(done).state == "COMPLETE"
    assert [e["state"] for e in store.tasks.events(task_id)] == ["QUEUED", "CANCELING"]
    store.tasks.update(task_id, state="RUNNING")  # a daemon write computed before the cancel
    assert store.tasks.get(task_id).state == "CANCELING"


def test_finished_task_logs_validate_in_every_view(client: FlaskClient, store: Store) -> None:
    task_id = create(client, simple())
    store.tasks.update(task_id, state="EXECUTOR_ERROR", job_id="42", start_time="2026-01-01T00:00:00Z",
                       end_time="2026-01-01T00:00:01Z", system_logs=["executor 0 exited with code 3"],
                       executor_logs=[{"exit_code": 3, "stdout": "o", "stderr": "e",
                                       "start_time": "2026-01-01T00:00:00Z"}])
    full = client.checked("get", f"{BASE}/tasks/{task_id}?view=FULL").get_json()
    assert full["logs"][0]["metadata"] == {"slurm_job_id": "42"}
    assert full["logs"][0]["logs"][0]["stdout"] == "o"
    basic = client.checked("get", f"{BASE}/tasks/{task_id}?view=BASIC").get_json()
    assert "system_logs" not in basic["logs"][0] and "stdout" not in basic["logs"][0]["logs"][0]
    assert basic["logs"][0]["logs"][0]["exit_code"] == 3
    client.checked("get", f"{BASE}/tasks?view=FULL")
    client.checked("get", f"{BASE}/tasks?view=BASIC")
    client.checked("get", f"{BASE}/tasks")


# -- hostile input: a 400 naming the problem, never a 500, nothing stored -----------------------


def nothing_stored(store: Store) -> bool:
    return store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []


def post_raw(client: FlaskClient, text: str):
    return client.post(f"{BASE}/tasks", data=text, content_type="application/json")


@pytest.mark.parametrize("text", [
    '{"executors": ' + "[" * 5000 + "]" * 5000 + "}",  # Python's parser: RecursionError
    json.dumps(simple(tags={"k": "v"}))[:-1] + ', "description": ' + "[" * 100 + "]" * 100 + "}",
    "[" * 100000 + "]" * 100000,
])
def test_deeply_nested_bodies_are_400(client: FlaskClient, store: Store, text: str) -> None:
    resp = post_raw(client, text)
    assert resp.status_code == 400 and resp.get_json() == {
        "msg": "body: nested more than 64 levels deep, the maximum here", "status_code": 400}
    assert nothing_stored(store)


def test_nesting_within_the_limit_is_parsed(client: FlaskClient) -> None:
    resp = post_raw(client, json.dumps(simple())[:-1] + ', "description": ' + "[" * 63 + "]" * 63 + "}")
    assert resp.status_code == 400 and "description: Input should be a valid string" in resp.get_json()["msg"]


@pytest.mark.parametrize("field", ["ram_gb", "disk_gb"])
@pytest.mark.parametrize(("value", "words"), [
    ("1e308", "less than or equal to 1000000000"), ("1e400", "finite"), ("Infinity", "finite"),
    ("-Infinity", "finite"), ("NaN", "finite"), ("1000000001", "less than or equal"),
])
def test_non_finite_and_absurd_sizes_are_400(client: FlaskClient, store: Store, field: str, value: str,
                                             words: str) -> None:
    text = json.dumps(simple(resources={field: 1}))[:-3] + value + "}}"
    resp = post_raw(client, text)
    assert resp.status_code == 400, resp.get_json()
    assert f"resources.{field}" in resp.get_json()["msg"] and words in resp.get_json()["msg"]
    assert nothing_stored(store)


def test_the_largest_size_plans(client: FlaskClient) -> None:
    """1e9 GB passes the model (no overflow on its way to MB); the dev site has no size limit."""
    create(client, simple(resources={"ram_gb": 1e9, "disk_gb": 1e9}))


def _token(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("raw", ["t" + "9" * 25, f"t{MAX_SEQ + 1}", "t" + "9" * 5000, "t\u0663", "t-1", "t"])
def test_page_tokens_beyond_sqlite_integers_are_400(client: FlaskClient, raw: str) -> None:
    resp = client.get(f"{BASE}/tasks?page_token={_token(raw)}")
    assert resp.status_code == 400 and resp.get_json()["msg"].startswith("invalid page_token")


def test_the_largest_page_token_is_a_page(client: FlaskClient) -> None:
    task_id = create(client, simple())
    assert encode_token(MAX_SEQ) == _token(f"t{MAX_SEQ}")
    body = client.checked("get", f"{BASE}/tasks?page_token={encode_token(MAX_SEQ)}").get_json()
    assert body["tasks"] == [{"id": task_id, "state": "QUEUED"}]


def test_tag_filters_are_capped(client: FlaskClient, dev_config: SiteConfig) -> None:
    most = dev_config.limits.caps.max_tags
    tagged = create(client, simple(tags={f"k{i}": "" for i in range(most)}))
    query = "&".join(f"tag_key=k{i}" for i in range(most))
    assert [t["id"] for t in client.checked("get", f"{BASE}/tasks?{query}").get_json()["tasks"]] == [tagged]
    for count in (most + 1, 1001, 5000):
        resp = client.get(f"{BASE}/tasks?" + "&".join(f"tag_key=k{i}" for i in range(count)))
        assert resp.status_code == 400
        assert resp.get_json()["msg"] == (f"tag_key: {count} given, more than the {most} allowed here "
                                          "(as many as a task may have tags)")


CAPS = TaskCaps(max_executors=2, max_inputs=2, max_outputs=2, max_volumes=2, max_env=2, max_tags=2)


@pytest.fixture()
def capped(dev_config: SiteConfig, store: Store) -> FlaskClient:
    limits = dev_config.limits.model_copy(update={"caps": CAPS})
    return create_app(dev_config.model_copy(update={"limits": limits}), store=store).test_client()


def executor(**fields: Any) -> dict[str, Any]:
    return {"image": "busybox", "command": ["true"], **fields}


@pytest.mark.parametrize(("parts", "field"), [
    ({"executors": [executor()] * 3}, "executors"),
    ({"inputs": [{"path": f"/in/{i}", "content": "x"} for i in range(3)]}, "inputs"),
    ({"outputs": [{"path": f"/out/{i}", "url": f"file:///srv/hpc-bridge/data/{i}"} for i in range(3)]}, "outputs"),
    ({"volumes": ["/v1", "/v2", "/v3"]}, "volumes"),
    ({"tags": {"a": "", "b": "", "c": ""}}, "tags"),
    ({"executors": [executor(), executor(env={"A": "1", "B": "2", "C": "3"})]}, "executors[1].env"),
])
def test_parts_over_the_caps_are_400_naming_the_field(capped: FlaskClient, store: Store, parts: dict[str, Any],
                                                      field: str) -> None:
    resp = capped.post(f"{BASE}/tasks", json=simple(**parts))
    assert resp.status_code == 400
    assert resp.get_json()["msg"] == f"{field}: 3 given, more than the 2 allowed here"
    assert nothing_stored(store)


def test_parts_at_the_caps_are_accepted(capped: FlaskClient) -> None:
    body = simple(executors=[executor(env={"A": "1", "B": "2"})] * 2, volumes=["/v1", "/v2"],
                  inputs=[{"path": f"/in/{i}", "content": "x"} for i in range(2)], tags={"a": "", "b": ""})
    resp = capped.post(f"{BASE}/tasks", json=body)
    assert resp.status_code == 200, resp.get_json()
