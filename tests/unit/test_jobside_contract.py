"""The job-side contracts: every record event a job can write is one `jobside.events` names and
`slurm/record.py` acts on; the output manifest the daemon writes is what the collector reads back."""

from __future__ import annotations

import json
import re

import pytest

from hpc_bridge.jobside import events
from hpc_bridge.jobside.collect import Manifest, OutputSpec, manifest_json, parse_manifest
from hpc_bridge.slurm.record import parse_record

from ..conftest import ROOT

SOURCES = {"task.sh.j2": ROOT / "slurm_templates" / "task.sh.j2",
           "pack.sh.j2": ROOT / "slurm_templates" / "pack.sh.j2",
           "collect.py": ROOT / "hpc_bridge" / "jobside" / "collect.py"}
# "event":"x" in a template (its quotes escaped for the shell or not), or the collector's _event("x", ...)
WRITTEN = re.compile(r'\\?"event\\?":\s*\\?"(\w+)|_event\("(\w+)"')
# One line of each event with the fields its writer gives it.
SAMPLES = {
    events.JOB_START: {"job_id": "7", "step_id": "0"},
    events.JOB_SIGNAL: {"signal": "TERM"},
    events.JOB_END: {"exit_code": 0},
    events.INPUT_ERROR: {"input": 0, "message": "changed or vanished"},
    events.UNSAFE_PATH: {"executor": 0, "stream": "stdout"},
    events.EXECUTOR_START: {"executor": 0},
    events.EXECUTOR_END: {"executor": 0, "exit_code": 3},
    events.COLLECT_END: {"exit_code": 0},
    events.OUTPUT: {"output": 0, "url": "file:///d/a", "path": "/o/a", "size_bytes": "5"},
    events.OUTPUT_WARNING: {"output": 0, "message": "skipped symlink"},
    events.OUTPUT_ERROR: {"output": 0, "message": "not found"},
    events.STEP_END: {"exit_code": 0, "timed_out": False},
    events.SKIPPED: {},
    events.RETURNED: {"job_id": "9"},
}


def line(name: str, **fields: object) -> str:
    return json.dumps({"event": name, "time": "2026-01-01T00:00:00.000Z", **fields}) + "\n"


@pytest.mark.parametrize("writer", sorted(SOURCES))
def test_each_writer_writes_exactly_the_events_it_is_listed_with(writer: str) -> None:
    written = {a or b for a, b in WRITTEN.findall(SOURCES[writer].read_text())}
    assert written == events.WRITERS[writer]


def test_every_event_has_a_sample() -> None:
    assert set(SAMPLES) == events.ALL


@pytest.mark.parametrize("name", sorted(events.ALL - {events.JOB_START}))
def test_every_event_changes_what_the_record_says(name: str) -> None:
    start = line(events.JOB_START, job_id="7")
    assert parse_record(start + line(name, **SAMPLES[name])) != parse_record(start), name


def test_an_unknown_event_changes_nothing() -> None:
    start = line(events.JOB_START, job_id="7")
    assert parse_record(start + line("no_such_event")) == parse_record(start)


def test_the_manifest_reads_back_as_written() -> None:
    manifest = Manifest(
        workdir="/w/t", roots=("/data",), areas=("/data/alice", "/data/shared"), keep=("/data/shared",),
        outputs=(OutputSpec(index=0, type="FILE", path="/out/a.txt", path_prefix=None, wildcard=False,
                            bind_container="/out", bind_host="/w/t/outputs/0", url="file:///data/alice/a.txt",
                            dest="/data/alice/a.txt"),
                 OutputSpec(index=1, type=None, path="/out/*.vcf", path_prefix="/out/", wildcard=True,
                            bind_container="/out", bind_host="/w/t/outputs/0", url="file:///data/shared/v/",
                            dest="/data/shared/v")))
    assert parse_manifest(json.loads(manifest_json(manifest))) == manifest
