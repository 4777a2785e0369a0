"""Run inside .venv-pulsar (dev/clients/pulsar.lock): Galaxy Pulsar's own TES client code sends a job to
a TES server and watches it, as Pulsar's TES runner does (`LaunchesTesContainersMixin`: one task, the
stage-in, tool and stage-out containers as three executors sharing Pulsar's staging volume; pydantic-tes
for the HTTP and the models; Basic credentials from the destination parameters). Without a Galaxy to
stage files from, the staging containers are stand-ins (busybox) that write and read the shared volume.

    python pulsar_drive.py URL USER PASSWORD {run|kill}

Prints one JSON object: the task id, each status Pulsar derived while polling (the last once the task
has ended), and the stdout of each executor (the FULL view, as pydantic-tes parses it).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pulsar.client.container_job_config import CoexecutionContainerCommand
from pulsar.client.tes import LaunchesTesContainersMixin
from pydantictes.models import TesState


class Job(LaunchesTesContainersMixin):
    """The parts of Pulsar's TES job client its launch, poll and kill use (no Galaxy, no message queue)."""

    def __init__(self, destination_params: dict[str, Any], job_id: str) -> None:
        self.destination_params = destination_params
        self.job_id = job_id
        self.external_id = None
        self._setup_tes_client_properties(destination_params)


def container(script: str) -> CoexecutionContainerCommand:
    return CoexecutionContainerCommand(image="busybox", command="sh", args=["-c", script],
                                       working_directory="/pulsar_staging/")


def main() -> int:
    url, user, password, mode = sys.argv[1:5]
    job = Job({"tes_url": url, "authorization": "basic", "basic_auth": {"username": user, "password": password},
               "tes_cpu_cores": 1, "tes_ram_gb": 0.5}, f"galaxy-{int(time.time() * 1000)}")
    if mode == "run":
        launched = job._launch_containers(
            container("echo staged-in > input.txt"),
            container("tr a-z A-Z < input.txt > output.txt"),
            container("cat output.txt"))
    else:
        launched = job._launch_containers(container("sleep 300"), container("true"), container("true"))
    job.external_id = launched.external_id  # what Galaxy records, and gives back as `external_id`
    statuses: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.5)
        # As Galaxy's job monitor does: a poll that fails is logged and tried again at the next one.
        # (pydantic-tes 0.4.0 knows TES 1.0's states only: TES 1.1's CANCELING fails its model.)
        try:
            check = job.raw_check_complete()
            # Pulsar's polling maps QUEUED, which its state tables lack, to failed and complete: the
            # task's own state says when it has really ended.
            state = job._tes_client.get_task(job.external_id, "BASIC").state  # its model needs executors
        except Exception as exc:  # noqa: BLE001 - recorded, as Galaxy logs it
            status = f"poll failed: {type(exc).__name__}"
            if not statuses or statuses[-1] != status:
                statuses.append(status)
            continue
        if not statuses or statuses[-1] != check["status"]:
            statuses.append(check["status"])
        if state in (TesState.COMPLETE, TesState.EXECUTOR_ERROR, TesState.SYSTEM_ERROR, TesState.CANCELED):
            statuses.append(job.raw_check_complete()["status"])
            break
        if mode == "kill" and check["status"] == "running":
            job.kill()
    task = job._tes_client.get_task(job.external_id, "FULL")
    print(json.dumps({"id": job.external_id, "statuses": statuses, "name": task.name,
                      "stdout": [log.stdout for log in (task.logs[0].logs if task.logs else [])]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
