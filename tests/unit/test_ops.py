"""/metrics, /healthz and /readyz through the app (no cluster): who may scrape, what is counted."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hpc_bridge.app import create_app
from hpc_bridge.config import SiteConfig
from hpc_bridge.store import Store


def _app(tmp_path: Path, ready=None, **server):  # noqa: ANN001, ANN202
    (tmp_path / "img.sif").touch()
    config = SiteConfig.model_validate({
        "auth": {"mode": "none"}, "database": str(tmp_path / "db.sqlite"), "server": server,
        "apptainer": {"image_dirs": [str(tmp_path)]},
        "storage": {"work_root": str(tmp_path / "work"), "data_roots": [str(tmp_path / "data")]}})
    return create_app(config, store=Store(config.database), ready=ready)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_submissions_states_and_requests(tmp_path: Path) -> None:
    client = _app(tmp_path).test_client()
    for _ in range(3):
        assert client.post("/ga4gh/tes/v1/tasks", json={"executors": [{"image": "img",
                                                                       "command": ["true"]}]}).status_code == 200
    assert client.post("/ga4gh/tes/v1/tasks", json={"executors": []}).status_code == 400  # not counted
    client.get("/ga4gh/tes/v1/tasks/nope")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain")
    samples = _samples(resp.get_data(as_text=True))
    assert samples[("hpcbridge_task_submissions_total", ())] == 3
    assert samples[("hpcbridge_tasks", (("state", "QUEUED"),))] == 3
    assert samples[("hpcbridge_runs", (("state", "RUNNING"),))] == 0
    assert samples[("hpcbridge_http_request_duration_seconds_count",
                    (("method", "GET"), ("route", "/ga4gh/tes/v1/tasks/<task_id>"), ("status", "404")))] == 1


def test_who_may_scrape(tmp_path: Path) -> None:
    assert _app(tmp_path).test_client().get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403
    assert _app(tmp_path, metrics="off").test_client().get("/metrics").status_code == 404
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    client = _app(tmp_path, metrics="token", metrics_token_file=str(secret)).test_client()
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"},
                      environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200


def test_health_and_readiness(tmp_path: Path) -> None:
    client = _app(tmp_path).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready", "problems": {}}
    sick = _app(tmp_path, ready=[("slurm", lambda: "Slurm has not answered"), ("database", lambda: None)])
    resp = sick.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["problems"] == {"slurm": "Slurm has not answered"}
