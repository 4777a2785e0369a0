"""A cwltool job (as plain values) -> its TES task: binds, staging script, env, resources, job key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpc_bridge.cwl.executor import TesExecutor
from hpc_bridge.cwl.state import stamp
from hpc_bridge.cwl.taskspec import (
    STAGE_ROOT,
    Entry,
    ToolRun,
    Unsupported,
    job_key,
    plan_task,
)
from hpc_bridge.cwl.tool import StablePathMapper, process_status

OUT = "/var/spool/cwl"


def run(**fields) -> ToolRun:
    base = {"name": "step", "image": "debian:stable-slim", "command": ["cat", "/var/lib/cwl/stg1/a.txt"],
            "outdir": OUT, "tmpdir": "/tmp", "host_outdir": "/data/run/.cwl/out/x"}
    return ToolRun(**{**base, **fields})


def plan(tool: ToolRun, literals: dict[str, str] | None = None):
    store = literals if literals is not None else {}

    def literal(contents: str) -> str:
        path = f"/data/run/.cwl/literals/{len(store)}"
        store[path] = contents
        return path

    return plan_task(tool, literal=literal, empty_dir="/data/run/.cwl/empty")


def test_files_are_bound_read_only_at_their_container_paths_and_outdir_is_the_output() -> None:
    p = plan(run(entries=[Entry("/data/in/a.txt", "/var/lib/cwl/stg1/a.txt", "File"),
                          Entry("/data/in/d", "/var/lib/cwl/stg2/d", "Directory")],
                 env={"HOME": OUT, "TMPDIR": "/tmp", "FOO": "bar"}, stdout="out.txt", stderr="err.txt",
                 stdin="/var/lib/cwl/stg1/a.txt"))
    body = p.body
    assert p.tool_index == 0 and len(body["executors"]) == 1
    assert body["inputs"] == [
        {"url": "file:///data/in/a.txt", "path": "/var/lib/cwl/stg1/a.txt", "type": "FILE"},
        {"url": "file:///data/in/d", "path": "/var/lib/cwl/stg2/d", "type": "DIRECTORY"}]
    assert body["outputs"] == [{"name": "outdir", "path": OUT, "url": "file:///data/run/.cwl/out/x",
                                "type": "DIRECTORY"}]
    tool = body["executors"][0]
    # HOME cannot travel as an Apptainer environment variable: the command sets it.
    assert tool["command"] == ["env", f"HOME={OUT}", "cat", "/var/lib/cwl/stg1/a.txt"]
    assert tool["env"] == {"TMPDIR": "/tmp", "FOO": "bar"}
    assert tool["workdir"] == OUT
    assert (tool["stdin"], tool["stdout"], tool["stderr"]) == (
        "/var/lib/cwl/stg1/a.txt", f"{OUT}/out.txt", f"{OUT}/err.txt")
    assert "ignore_error" not in tool and "volumes" not in body


def test_resources_and_time_limit() -> None:
    body = plan(run(cores=1.5, ram_mib=1536, disk_mib=2048, timelimit=90)).body
    assert body["resources"] == {"cpu_cores": 2, "ram_gb": 1.5, "disk_gb": 2.0,
                                 "backend_parameters": {"time": "3"}}
    assert "backend_parameters" not in plan(run(timelimit=0)).body["resources"]


def test_non_zero_success_codes_keep_collecting_outputs() -> None:
    assert plan(run(collect_on_failure=True)).body["executors"][0]["ignore_error"] is True


def test_literal_files_become_content_addressed_host_files() -> None:
    literals: dict[str, str] = {}
    body = plan(run(entries=[Entry("hello\n", f"{OUT}/greeting.txt", "CreateFile")]), literals).body
    (path, contents), = literals.items()
    assert contents == "hello\n"
    assert body["inputs"] == [{"url": f"file://{path}", "path": f"{OUT}/greeting.txt", "type": "FILE"}]


def test_writable_entries_are_copied_by_a_staging_executor_first() -> None:
    p = plan(run(entries=[Entry("/data/in/a.txt", f"{OUT}/a.txt", "WritableFile"),
                          Entry("_:dir1", f"{OUT}/work", "WritableDirectory"),
                          Entry("x=1\n", f"{OUT}/work/conf", "CreateWritableFile")]))
    staging, tool = p.body["executors"]
    assert p.tool_index == 1 and tool["command"][0] == "env"
    assert staging["image"] == "debian:stable-slim" and staging["command"][:2] == ["/bin/sh", "-c"]
    script = staging["command"][2]
    assert script.splitlines()[0] == "set -e"
    assert f"mkdir -p {OUT}/work" in script
    assert f"cp -pR {STAGE_ROOT}/0 {OUT}/a.txt" in script and f"chmod -R u+w {OUT}/a.txt" in script
    assert script.index(f"mkdir -p {OUT}/work\n") < script.index(f"{OUT}/work/conf")
    # the sources are bound read-only somewhere the tool does not look
    assert {i["path"] for i in p.body["inputs"]} == {f"{STAGE_ROOT}/0", f"{STAGE_ROOT}/1"}


def test_paths_apptainer_cannot_bind_go_through_a_parent_and_a_symlink() -> None:
    p = plan(run(entries=[Entry("/data/in/A:Gln2Cys", "/var/lib/cwl/stgX/A:Gln2Cys", "File")]))
    assert p.body["inputs"] == [{"url": "file:///data/in", "path": f"{STAGE_ROOT}/0", "type": "DIRECTORY"}]
    script = p.body["executors"][0]["command"][2]
    assert f"ln -s {STAGE_ROOT}/0/A:Gln2Cys /var/lib/cwl/stgX/A:Gln2Cys" in script
    # outside the output directory the link needs a writable directory: a TES volume
    assert p.body["volumes"] == ["/var/lib/cwl/stgX"]


def test_directory_literals() -> None:
    empty = plan(run(entries=[Entry("_:d", f"{OUT}/empty", "Directory")])).body
    assert empty["inputs"] == [{"url": "file:///data/run/.cwl/empty", "path": f"{OUT}/empty",
                                "type": "DIRECTORY"}]
    # a directory literal with entries is made by binding its entries
    full = plan(run(entries=[Entry("_:d", "/var/lib/cwl/stg1/d", "Directory"),
                             Entry("/data/in/a", "/var/lib/cwl/stg1/d/a", "File")])).body
    assert [i["path"] for i in full["inputs"]] == ["/var/lib/cwl/stg1/d/a"]
    assert len(full["executors"]) == 1


def test_later_initial_workdir_entries_win_on_the_same_path() -> None:
    body = plan(run(entries=[Entry("/data/a", f"{OUT}/x", "File"), Entry("/data/b", f"{OUT}/x", "File")])).body
    assert body["inputs"] == [{"url": "file:///data/b", "path": f"{OUT}/x", "type": "FILE"}]


def test_unstageable_target() -> None:
    with pytest.raises(Unsupported):
        plan(run(entries=[Entry("/data/a", "/a:b", "WritableFile")]))


def test_job_key_ignores_the_output_url_but_not_inputs_or_command() -> None:
    entries = [Entry("/data/in/a.txt", "/var/lib/cwl/stg1/a.txt", "File")]
    a = plan(run(entries=entries))
    b = plan(run(entries=entries, host_outdir="/data/run/.cwl/out/other"))
    stamps = {"file:///data/in/a.txt": [3, 100]}
    assert job_key(a, stamps) == job_key(b, stamps)
    assert job_key(a, stamps) != job_key(a, {"file:///data/in/a.txt": [3, 101]})
    assert job_key(a, stamps) != job_key(plan(run(entries=entries, command=["wc"])), stamps)
    assert job_key(a, stamps) != job_key(plan(run(entries=entries, ram_mib=512)), stamps)


def test_stamps_see_changes_inside_directories(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("1")
    before = stamp(str(tmp_path / "d"))
    assert stamp(str(tmp_path / "d")) == before
    (tmp_path / "d" / "g").write_text("2")
    assert stamp(str(tmp_path / "d")) != before
    f = tmp_path / "d" / "f"
    assert stamp(str(f)) == [1, os.stat(f).st_mtime_ns]
    assert stamp(str(tmp_path / "missing")) is None


def test_process_status_follows_cwl_exit_code_rules() -> None:
    assert process_status(0, [], [], []) == "success"
    assert process_status(1, [], [], []) == "permanentFail"
    assert process_status(1, [1], [], []) == "success"
    assert process_status(3, [], [3], []) == "temporaryFail"
    assert process_status(0, [], [], [0]) == "permanentFail"


def test_staging_directories_are_named_after_their_contents(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    files = [{"class": "File", "location": (tmp_path / "a.txt").as_uri(), "basename": "a.txt"},
             {"class": "File", "location": "_:8b5a", "basename": "lit.txt", "contents": "x"}]
    first = StablePathMapper([dict(f) for f in files], str(tmp_path), "/var/lib/cwl")
    again = StablePathMapper([{**files[0]}, {**files[1], "location": "_:other-uuid"}], str(tmp_path),
                             "/var/lib/cwl")
    targets = sorted(e.target for _, e in first.items())
    assert targets == sorted(e.target for _, e in again.items())
    assert all(t.startswith("/var/lib/cwl/stg") for t in targets)


def test_executor_asks_slurm_for_the_minimum_not_this_machine() -> None:
    chosen = TesExecutor(max_parallel=2).select_resources(
        {"coresMin": 64, "coresMax": 128, "ramMin": 10**6, "ramMax": 10**6, "tmpdirMin": 100,
         "tmpdirMax": 100, "outdirMin": 200, "outdirMax": 200}, None)  # type: ignore[arg-type]
    assert chosen == {"cores": 64, "ram": 10**6, "tmpdirSize": 100, "outdirSize": 200}


def test_docker_images_run_their_entrypoint_like_docker_run() -> None:
    tool = plan(run(entrypoint=True, command=["-c", "echo moo"])).body["executors"][0]
    assert tool["command"] == ["env", f"HOME={OUT}", "/.singularity.d/runscript", "-c", "echo moo"]
    assert tool["env"]["SINGULARITY_NO_EVAL"] == "1"
