"""The composition root: one daemon and one WES supervisor per database, the API in every process."""

from __future__ import annotations

from pathlib import Path

from hpc_bridge.bridge import Bridge
from hpc_bridge.config import SiteConfig

from ..fake_slurm import FakeSlurm


def test_only_the_process_holding_the_lock_builds_a_daemon(dev_config: SiteConfig, tmp_path: Path) -> None:
    storage = dev_config.storage.model_copy(update={"work_root": tmp_path / "work"})
    config = dev_config.model_copy(update={"database": tmp_path / "db.sqlite", "storage": storage})
    first, second = (Bridge(config, tes_url="http://127.0.0.1:1", slurm=FakeSlurm()) for _ in range(2))
    try:
        app = first.start()
        assert first.runs_daemon and first.supervisor is not None
        other = second.start()
        assert not second.runs_daemon and second.daemon is None and second.supervisor is None
        for client in (app.test_client(), other.test_client()):
            assert client.get("/ga4gh/tes/v1/service-info").status_code == 200
        created = other.test_client().post("/ga4gh/tes/v1/tasks", json={
            "executors": [{"image": "busybox", "command": ["true"]}]})
        assert created.status_code == 200  # stored by the API-only process, for the daemon's
        assert first.store.tasks.get(created.json["id"]) is not None
    finally:
        second.stop()
        first.stop()
    assert first.lock.acquire()  # released
    first.lock.release()
