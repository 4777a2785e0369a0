"""The daemon against hostile users (issue 13, point 7): which job files it reads, which Slurm jobs
it adopts, and who may set the tags workflow runs and task reuse go by."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from hpc_bridge.config import SiteConfig
from hpc_bridge.daemon import Daemon, JobFileRefused, read_record, read_tail
from hpc_bridge.slurm.client import JobStatus
from hpc_bridge.slurm.record import file_refusal
from hpc_bridge.store import Store, TaskFilter
from hpc_bridge.tes.service import TaskService

from ..fake_slurm import FakeSlurm
from .test_run_credential import client, config, new_run, store  # noqa: F401 - fixtures
from .test_runas import job_writes

ROOT = 0
TASK = {"executors": [{"image": "busybox", "command": ["true"]}]}
RECORD = json.dumps({"event": "job_start", "time": "2024-01-01T00:00:00.000Z", "job_id": "6"}) + "\n"


# -- files the job wrote ------------------------------------------------------------------------


def test_the_jobs_own_plain_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "record.jsonl").write_text(RECORD)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "out.log").write_text("0123456789")
    assert read_record(str(tmp_path), ROOT).job_id == "6"
    assert read_tail(str(tmp_path / "sub" / "out.log"), str(tmp_path), 4, ROOT) == "6789"
    assert read_record(str(tmp_path / "none"), ROOT) is None  # no work area, no record yet
    assert read_tail(str(tmp_path / "missing.log"), str(tmp_path), 4, ROOT) == ""


def test_a_hard_link_is_refused_even_to_the_jobs_own_file(tmp_path: Path) -> None:
    service = tmp_path / "service.key"
    service.write_text(RECORD)
    area = tmp_path / "area"
    area.mkdir()
    os.link(service, area / "record.jsonl")
    with pytest.raises(JobFileRefused, match="record.jsonl: has 2 hard links"):
        read_record(str(area), ROOT)


def test_another_owners_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out.log").write_text("root's")  # the test runs as root: not the job user's
    job_user = pwd.getpwnam("hpcb").pw_uid
    with pytest.raises(JobFileRefused, match=f"belongs to uid 0, not to uid {job_user}"):
        read_tail(str(tmp_path / "out.log"), str(tmp_path), 100, job_user)
    job_writes(tmp_path / "out.log", "mine", "hpcb")
    assert read_tail(str(tmp_path / "out.log"), str(tmp_path), 100, job_user) == "mine"


def test_symlinks_fifos_and_paths_outside_are_refused_without_blocking(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("service")
    area = tmp_path / "area"
    (area / "dir").mkdir(parents=True)
    (area / "link.log").symlink_to(outside)
    (area / "linked-dir").symlink_to(tmp_path)
    os.mkfifo(area / "fifo.log")
    for path, why in [(area / "link.log", "Too many levels of symbolic links"),
                      (area / "linked-dir" / "outside.txt", "not a plain directory"),
                      (area / "fifo.log", "not a regular file"),
                      (area / ".." / "outside.txt", "is not inside the work area")]:
        with pytest.raises(JobFileRefused, match=why):
            read_tail(str(path), str(area), 100, ROOT)


def test_file_refusal_names_type_links_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    assert file_refusal(path.stat(), ROOT) is None
    assert file_refusal(tmp_path.stat(), ROOT) == "not a regular file"
    assert file_refusal(path.stat(), 1234) == "belongs to uid 0, not to uid 1234 who writes there"
    os.link(path, tmp_path / "g")
    assert file_refusal(path.stat(), ROOT) == "has 2 hard links (a link to another file?)"


def test_a_refused_log_is_a_system_log_line_and_the_task_still_ends(dev_config: SiteConfig,
                                                                     tmp_path: Path) -> None:
    work = tmp_path / "work"
    storage = dev_config.storage.model_copy(update={"work_root": work})
    cfg = dev_config.model_copy(update={"database": tmp_path / "db.sqlite", "storage": storage})
    db = Store(cfg.database)
    task_id = TaskService(db, cfg).create(TASK, owner="local")
    slurm = FakeSlurm()
    daemon = Daemon(cfg, db, slurm)
    daemon.cycle()  # submitted: job 1
    events = [{"event": "job_start", "job_id": "1"}, {"event": "executor_start", "executor": 0},
              {"event": "executor_end", "executor": 0, "exit_code": 0}, {"event": "job_end"}]
    job_writes(work / task_id / "record.jsonl", "".join(
        json.dumps({"time": "2024-01-01T00:00:00.000Z", **e}) + "\n" for e in events), "hpcb")
    (work / task_id / "executor-0.stdout").write_text("root's")  # not the job user's
    slurm.jobs = [JobStatus("1", "COMPLETED", "None", "x", f"hpc-bridge:{task_id}", 0, 0, "hpcb")]
    daemon.cycle()
    row = db.tasks.get(task_id)
    assert row.state == "COMPLETE" and row.executor_logs[0]["stdout"] == ""
    assert any(line.startswith(f"executor 0 stdout: {work}/{task_id}/executor-0.stdout: belongs to uid 0")
               for line in row.system_logs), row.system_logs


# -- adoption ------------------------------------------------------------------------------------


def _daemon(dev_config: SiteConfig, tmp_path: Path) -> tuple[Daemon, Store, FakeSlurm, SiteConfig]:
    storage = dev_config.storage.model_copy(update={"work_root": tmp_path / "work"})
    cfg = dev_config.model_copy(update={"database": tmp_path / "db.sqlite", "storage": storage})
    db, slurm = Store(cfg.database), FakeSlurm()
    return Daemon(cfg, db, slurm), db, slurm, cfg


def test_a_job_with_the_tasks_comment_is_adopted_only_when_it_runs_as_the_tasks_user(
        dev_config: SiteConfig, tmp_path: Path) -> None:
    daemon, db, slurm, cfg = _daemon(dev_config, tmp_path)
    task_id = TaskService(db, cfg).create(TASK, owner="local")
    comment = f"hpc-bridge:{task_id}"
    slurm.jobs = [JobStatus("5", "RUNNING", "None", "x", comment, None, None, "alice"),
                  JobStatus("6", "RUNNING", "None", "x", comment, None, None, "")]
    daemon.cycle()
    row = db.tasks.get(task_id)
    assert row.job_id == "1" and ("submit", f"{cfg.storage.work_root}/{task_id}/job.sh") in slurm.calls

    other = TaskService(db, cfg).create(TASK, owner="local")
    slurm.jobs = [JobStatus("7", "RUNNING", "None", "x", "x", None, None, "alice"),
                  JobStatus("8", "RUNNING", "None", "x", f"hpc-bridge:{other}", None, None, "hpcb")]
    daemon.cycle()
    assert db.tasks.get(other).job_id == "8"


def test_a_record_naming_another_live_job_is_not_adopted(dev_config: SiteConfig, tmp_path: Path) -> None:
    """After a crash the job's own record may name its job; a live job of another task is not it."""
    daemon, db, slurm, cfg = _daemon(dev_config, tmp_path)
    service = TaskService(db, cfg)
    victim, task_id = service.create(TASK, owner="someone"), service.create(TASK, owner="local")
    db.tasks.update(victim, job_id="6", state="RUNNING")
    db.tasks.update(task_id, submit_attempts=1, workdir=str(cfg.storage.work_root / task_id))
    (cfg.storage.work_root / task_id).mkdir(parents=True)
    job_writes(cfg.storage.work_root / task_id / "record.jsonl", RECORD, "hpcb")  # "job_id": "6"
    slurm.jobs = [JobStatus("6", "RUNNING", "None", "x", f"hpc-bridge:{victim}", None, None, "hpcb")]
    daemon.cycle()
    assert db.tasks.get(task_id).job_id == "1"  # submitted anew, not job 6
    slurm.jobs = []
    db.tasks.update(task_id, job_id=None)
    daemon.cycle()
    assert db.tasks.get(task_id).job_id == "6"  # gone from Slurm: the record is all there is


# -- reserved tags -------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["wes_run_id", "cwl_job_key"])
def test_a_plain_tes_user_cannot_set_a_reserved_tag(client: FlaskClient, store: Store, tag: str) -> None:
    response = client.post("/ga4gh/tes/v1/tasks", json={**TASK, "tags": {tag: "x", "mine": "y"}})
    assert response.status_code == 400
    reserved = f"tags.{tag}: reserved: only the service sets it, on a workflow run's tasks"
    assert response.json == {"msg": reserved, "status_code": 400}
    assert store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []


def test_the_engine_sets_its_job_key_and_finds_only_its_own_runs_tasks(client: FlaskClient, store: Store) -> None:
    run1, engine1 = new_run(store)
    run2, engine2 = new_run(store)
    created = client.post("/ga4gh/tes/v1/tasks", json={**TASK, "tags": {"cwl_job_key": "k"}}, headers=engine1)
    assert created.status_code == 200, created.json
    assert store.tasks.get(created.json["id"]).tags == {"cwl_job_key": "k", "wes_run_id": run1}
    lookup = {"tag_key": ["wes_run_id", "cwl_job_key"], "tag_value": [run1, "k"], "view": "FULL"}
    assert [t["id"] for t in client.get("/ga4gh/tes/v1/tasks", query_string=lookup, headers=engine1)
            .json["tasks"]] == [created.json["id"]]
    assert client.get("/ga4gh/tes/v1/tasks", query_string=lookup, headers=engine2).json["tasks"] == []
    assert client.get("/ga4gh/tes/v1/tasks", query_string={**lookup, "tag_value": [run2, "k"]},
                      headers=engine2).json["tasks"] == []
