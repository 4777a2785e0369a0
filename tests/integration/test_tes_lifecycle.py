"""The TES task lifecycle through the real server, Slurm and Apptainer, driven by py-tes."""

from __future__ import annotations

import os
import time

import pytest
import requests
import tes

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
IMAGE = "busybox"


def wait_final(client: tes.HTTPClient, task_id: str, timeout: float = 60) -> tes.Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(task_id, view="FULL")
        if task.state in FINAL:
            return task
        time.sleep(0.3)
    pytest.fail(f"task {task_id} not finished after {timeout}s (state {task.state})")


def sh(script: str, **kwargs: object) -> tes.Executor:
    return tes.Executor(image=IMAGE, command=["sh", "-c", script], **kwargs)


def test_success_with_logs(server, tes_client: tes.HTTPClient, spec_validator) -> None:
    task_id = tes_client.create_task(tes.Task(name="ok", executors=[sh("echo out; echo err >&2")]))
    task = wait_final(tes_client, task_id)
    assert task.state == "COMPLETE"
    for view in ("BASIC", "FULL"):  # a real finished task, as served, in the views that must validate
        path = f"/ga4gh/tes/v1/tasks/{task_id}"
        body = requests.get(f"{server.url}{path}?view={view}", timeout=10).content
        spec_validator("tes-1.1.0.openapi.yaml", "get", path, 200, body)
    log = task.logs[0]
    assert log.metadata["slurm_job_id"].isdigit()
    assert [(e.exit_code, e.stdout, e.stderr) for e in log.logs] == [(0, "out\n", "err\n")]
    assert log.start_time and log.end_time


def test_executor_failure_reports_its_exit_code(tes_client: tes.HTTPClient) -> None:
    task_id = tes_client.create_task(tes.Task(executors=[sh("echo before; exit 7"), sh("echo never")]))
    task = wait_final(tes_client, task_id)
    assert task.state == "EXECUTOR_ERROR"
    assert [e.exit_code for e in task.logs[0].logs] == [7]
    assert "executor 0 exited with code 7" in task.logs[0].system_logs


def test_ignore_error_goes_on(tes_client: tes.HTTPClient) -> None:
    task_id = tes_client.create_task(tes.Task(executors=[sh("exit 5", ignore_error=True), sh("echo after")]))
    task = wait_final(tes_client, task_id)
    assert task.state == "COMPLETE"
    assert [(e.exit_code, e.stdout) for e in task.logs[0].logs] == [(5, ""), (0, "after\n")]


@pytest.mark.parametrize(("ignore_error", "logs"), [(False, 1), (True, 2)])
def test_the_compliance_suites_ignore_error_task_once_it_has_ended(tes_client: tes.HTTPClient, ignore_error: bool,
                                                                    logs: int) -> None:
    """`create_task_ignore_error` of the TES compliance suite, read when the task has ended rather than
    right after the POST (as the suite does): 1 executor log without ignore_error, 2 with it."""
    task_id = tes_client.create_task(tes.Task(name="CompTest", executors=[
        tes.Executor(image="alpine", command=["ERROR"], ignore_error=ignore_error),
        tes.Executor(image="alpine", command=["echo", "hello"])]))
    task = wait_final(tes_client, task_id)
    assert task.state == ("COMPLETE" if ignore_error else "EXECUTOR_ERROR"), task.logs[0].system_logs
    assert len(task.logs[0].logs) == logs and task.logs[0].logs[0].exit_code != 0


def test_stdin_stdout_stderr_env_workdir_and_shared_volume(tes_client: tes.HTTPClient) -> None:
    """Executor 1 writes into the shared volume; executor 2 reads it through stdin, in its workdir."""
    task_id = tes_client.create_task(tes.Task(
        volumes=["/shared"],
        inputs=[tes.Input(path="/in/name.txt", content="Ada\n")],
        executors=[
            tes.Executor(image=IMAGE, command=["sh", "-c", 'read n; echo "hello $n from $PLACE"; pwd >&2'],
                         stdin="/in/name.txt", stdout="/shared/greeting.txt", stderr="/shared/err.txt",
                         env={"PLACE": "Slurm; $(touch /shared/pwned)"}, workdir="/shared"),
            tes.Executor(image=IMAGE, command=["sh", "-c", "cat; ls"], stdin="/shared/greeting.txt",
                         workdir="/shared"),
        ]))
    task = wait_final(tes_client, task_id)
    assert task.state == "COMPLETE", task.logs[0].system_logs
    first, second = task.logs[0].logs
    assert first.stdout == "hello Ada from Slurm; $(touch /shared/pwned)\n"
    assert first.stderr == "/shared\n"
    assert second.stdout == "hello Ada from Slurm; $(touch /shared/pwned)\nerr.txt\ngreeting.txt\n"


def test_cancel_queued_and_running_tasks_removes_their_jobs(tes_client: tes.HTTPClient, slurm) -> None:
    running = tes_client.create_task(tes.Task(executors=[sh("sleep 120")]))
    deadline = time.monotonic() + 60
    while tes_client.get_task(running).state != "RUNNING":
        assert time.monotonic() < deadline, "task never started running"
        time.sleep(0.3)
    # Every CPU of the node: cannot start while the first task holds one, so it stays pending.
    queued = tes_client.create_task(tes.Task(executors=[sh("true")],
                                             resources=tes.Resources(cpu_cores=os.cpu_count())))
    deadline = time.monotonic() + 30
    while not (t := tes_client.get_task(queued, view="FULL")).logs[0].metadata:  # a Slurm job id
        assert time.monotonic() < deadline, "queued task was never submitted"
        time.sleep(0.3)
    assert tes_client.get_task(queued).state == "QUEUED"
    deadline = time.monotonic() + 30  # why it waits shows up in its system logs
    while not any("Slurm: job pending (" in line
                  for line in tes_client.get_task(queued, view="FULL").logs[0].system_logs or []):
        assert time.monotonic() < deadline, tes_client.get_task(queued, view="FULL").logs
        time.sleep(0.3)
    job_ids = {running: tes_client.get_task(running, view="FULL").logs[0].metadata["slurm_job_id"],
               queued: t.logs[0].metadata["slurm_job_id"]}
    for task_id in (running, queued):
        tes_client.cancel_task(task_id)
    for task_id in (running, queued):
        assert wait_final(tes_client, task_id).state == "CANCELED"
    states = {j.job_id: j.state for j in slurm.queue()}
    assert all(states.get(job) in (None, "CANCELLED") for job in job_ids.values()), states


def test_resources_reach_slurm(tes_client: tes.HTTPClient) -> None:
    import subprocess

    task_id = tes_client.create_task(tes.Task(
        executors=[sh("sleep 30")],
        resources=tes.Resources(cpu_cores=1, ram_gb=0.3, disk_gb=0.5, zones=["long"],
                                backend_parameters={"time": "00:07:00", "color": "blue"})))
    deadline = time.monotonic() + 30
    while not (task := tes_client.get_task(task_id, view="FULL")).logs or \
            not task.logs[0].metadata:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    job = task.logs[0].metadata["slurm_job_id"]
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    tes_client.cancel_task(task_id)
    assert "Partition=long" in shown and "TimeLimit=00:07:00" in shown
    assert "MinMemoryNode=308M" in shown and "MinTmpDiskNode=512M" in shown
    assert "NumCPUs=1" in shown and f"Comment=hpc-bridge:{task_id}" in shown
    assert "backend parameter 'color' is not supported here and was ignored" in task.logs[0].system_logs


def test_strict_unknown_backend_parameter_is_400(server) -> None:
    resp = requests.post(f"{server.url}/ga4gh/tes/v1/tasks", timeout=10, json={
        "executors": [{"image": IMAGE, "command": ["true"]}],
        "resources": {"backend_parameters": {"color": "blue"}, "backend_parameters_strict": True}})
    assert resp.status_code == 400
    assert "resources.backend_parameters.color" in resp.json()["msg"]
    assert requests.get(f"{server.url}/ga4gh/tes/v1/tasks", timeout=10).json()["tasks"] == []


def test_filters_and_pagination_over_several_pages(server, tes_client: tes.HTTPClient) -> None:
    """py-tes pages; its list_tasks has no filters, so those go through plain HTTP."""
    ids = [tes_client.create_task(tes.Task(name=f"batch-{i}", tags={"run": "r1", "i": str(i)},
                                           executors=[sh("true")])) for i in range(7)]
    other = tes_client.create_task(tes.Task(name="other", executors=[sh("exit 1")]))
    seen, token = [], None
    while True:
        page = tes_client.list_tasks(view="MINIMAL", page_size=3, page_token=token)
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == [other, *reversed(ids)]
    for task_id in [*ids, other]:
        wait_final(tes_client, task_id)

    def listed(**params: object) -> list[str]:
        resp = requests.get(f"{server.url}/ga4gh/tes/v1/tasks", params=params, timeout=10)
        assert resp.status_code == 200
        return [t["id"] for t in resp.json()["tasks"]]

    assert listed(state="EXECUTOR_ERROR") == [other]
    assert listed(name_prefix="batch-", page_size=2000) == list(reversed(ids))
    assert listed(tag_key=["run", "i"], tag_value=["r1", "3"]) == [ids[3]]
    assert listed(tag_key="i") == list(reversed(ids))


def test_symlinks_planted_by_a_task_do_not_lead_out(tes_client: tes.HTTPClient, dev_config) -> None:
    """Redirections and log tails happen on the host: a task's symlinks must not steer them."""
    target = dev_config.storage.work_root / "canary-outside.txt"
    target.write_text("untouched\n")
    try:
        task_id = tes_client.create_task(tes.Task(volumes=["/shared"], executors=[
            # replaces its own stdout file with a link to a root-only host file: the tail must not follow
            sh("echo visible; rm /shared/log.txt; ln -s /etc/shadow /shared/log.txt",
               stdout="/shared/log.txt"),
            sh(f"ln -s {target} /shared/out"),
            sh("echo overwritten", stdout="/shared/out"),
        ]))
        task = wait_final(tes_client, task_id)
        assert task.state == "EXECUTOR_ERROR"
        assert any("executor 2 stdout" in line and "outside" in line for line in task.logs[0].system_logs)
        assert target.read_text() == "untouched\n"
        assert "root:" not in (task.logs[0].logs[0].stdout or "")
    finally:
        target.unlink()
