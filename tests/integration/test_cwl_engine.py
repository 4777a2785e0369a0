"""The CWL engine on the real cluster, started by the WES supervisor as the job user: a two-step
workflow with a scatter of three produces the right outputs, every CommandLineTool job a TES task
and a Slurm job, and all three scatter jobs are in Slurm before any of them ends. (Failing tools,
cancel, and resume after a crash without running finished steps again: tests/integration/test_wes.py;
confinement: test_engine_confinement.py.)
"""

from __future__ import annotations

from pathlib import Path

import requests

from hpc_bridge.config import load_config
from hpc_bridge.store import Store, TaskFilter

from .conftest import ServerProcess
from .test_wes import WES, post, wait_state

SHOUT = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c]
arguments: ["cat $(inputs.prefix.path); echo $(inputs.word) | tr a-z A-Z; sleep $(inputs.pause)"]
inputs:
  word: string
  prefix: File
  pause: {type: int, default: 0}
stdout: shout.txt
outputs:
  out: stdout
"""

JOIN = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: cat
inputs:
  files: {type: 'File[]', inputBinding: {position: 1}}
stdout: joined.txt
outputs:
  out: stdout
"""

WORKFLOW = """cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  words: string[]
  prefix: File
  pause: {type: int, default: 0}
outputs:
  shouted: {type: 'File[]', outputSource: shout/out}
  joined: {type: File, outputSource: join/out}
steps:
  shout:
    run: shout.cwl
    scatter: word
    in: {word: words, prefix: prefix, pause: pause}
    out: [out]
  join:
    run: join.cwl
    in: {files: shout/out}
    out: [out]
"""


def test_scatter_workflow_runs_through_slurm(server: ServerProcess) -> None:
    files = {"wf.cwl": WORKFLOW, "shout.cwl": SHOUT, "join.cwl": JOIN, "prefix.txt": "P\n"}
    response = post(server.url, files, workflow_url="wf.cwl", workflow_params={
        "words": ["alpha", "beta", "gamma"], "pause": 3, "prefix": {"class": "File", "location": "prefix.txt"}})
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"}) == "COMPLETE"
    outputs = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()["outputs"]
    run_dir = load_config(server.config_path).wes.root(load_config(server.config_path).storage.data_roots) / run_id
    shouted = [Path(f["location"].removeprefix("file://")) for f in outputs["shouted"]]
    joined = Path(outputs["joined"]["location"].removeprefix("file://"))
    assert [f.read_text() for f in shouted] == ["P\nALPHA\n", "P\nBETA\n", "P\nGAMMA\n"]
    assert joined.read_text() == "P\nALPHA\nP\nBETA\nP\nGAMMA\n"
    assert all(f.parent == run_dir / "outputs" for f in [*shouted, joined])
    assert not (run_dir / ".cwl").exists()  # the work area goes once the run is complete

    store = Store(load_config(server.config_path).database)
    tasks = store.tasks.list(TaskFilter(tags=(("wes_run_id", run_id),)), before_seq=None, limit=100)
    steps = sorted(t.tags["cwl_step"] for t in tasks)
    assert steps == ["join", "shout", "shout_2", "shout_3"], steps
    assert all(t.state == "COMPLETE" and t.job_id for t in tasks)
    assert len({t.tags["cwl_job_key"] for t in tasks}) == 4
    assert {t.run_as for t in tasks} == {None} and {t.owner for t in tasks} == {"local"}
    scatter = [t for t in tasks if t.tags["cwl_step"].startswith("shout")]
    # The scatter's jobs may share a Slurm job (packing); the join, created after they ended, cannot.
    assert next(t.job_id for t in tasks if t.tags["cwl_step"] == "join") not in {t.job_id for t in scatter}
    # the scatter's three jobs were all handed to Slurm before the first of them ended
    assert max(t.created_at for t in scatter) < min(t.end_time for t in scatter)
