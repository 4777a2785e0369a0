"""Inputs and outputs -> binds, downloads, in-job copies and the output manifest (no Slurm here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpc_bridge.config import SiteConfig
from hpc_bridge.slurm.script import InputCheck
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.tes.jobspec import Download, InvalidTask, JobPlan, plan_job
from hpc_bridge.tes.models import Task

WORK = "/work/t1"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "genome.fa").write_text(">chr1\nACGT\n")
    (root / "out").mkdir()
    (tmp_path / "secret.txt").write_text("not for tasks")
    os.symlink(tmp_path / "secret.txt", root / "refs" / "escape.fa")
    os.symlink(tmp_path, root / "up")
    (tmp_path / "data-evil").mkdir()
    (tmp_path / "data-evil" / "x").write_text("x")
    return root


@pytest.fixture
def config(dev_config: SiteConfig, data: Path) -> SiteConfig:
    storage = dev_config.storage.model_copy(update={"data_roots": [data]})
    return dev_config.model_copy(update={"storage": storage})


def plan(config: SiteConfig, **fields: object) -> JobPlan:
    body = {"executors": [{"image": "busybox", "command": ["true"]}], **fields}
    return plan_job(Task.model_validate(body), task_id="t1", workdir=WORK, config=config,
                    schemes=Schemes(config), owner="local")


def binds(p: JobPlan) -> list[str]:
    argv = list(p.script.executors[0].argv)
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]


def refused(config: SiteConfig, where: str, **fields: object) -> str:
    with pytest.raises(InvalidTask) as info:
        plan(config, **fields)
    assert info.value.field == where
    return str(info.value)


def test_file_input_is_bind_mounted_read_only_and_rechecked_in_the_job(config: SiteConfig, data: Path) -> None:
    p = plan(config, inputs=[{"url": (data / "refs" / "genome.fa").as_uri(), "path": "/in/genome.fa"}])
    real = os.path.realpath(data / "refs" / "genome.fa")
    assert binds(p) == [f"{real}:/in/genome.fa:ro"]
    assert p.input_types == ["FILE"] and p.files == {} and p.downloads == []
    assert list(p.script.inputs) == [InputCheck(0, real, "bind", None)]


def test_bare_path_and_directory_inputs_resolve_their_type(config: SiteConfig, data: Path) -> None:
    p = plan(config, inputs=[{"url": str(data / "refs"), "path": "/refs"}])
    assert p.input_types == ["DIRECTORY"]
    assert binds(p) == [f"{os.path.realpath(data / 'refs')}:/refs:ro"]
    message = refused(config, "inputs[0].url", inputs=[{"url": str(data / "refs"), "path": "/r", "type": "FILE"}])
    assert "is a directory" in message


@pytest.mark.parametrize("url", [
    "file:///etc/passwd",
    "{data}/../secret.txt",
    "file://{data}/refs/../../secret.txt",
    "{data}/refs/escape.fa",             # symlink inside the root pointing out
    "{data}/up/secret.txt",              # symlinked directory pointing out
    "{data}-evil/x",                     # a sibling sharing the root's name as a string prefix
    "file://otherhost{data}/refs/genome.fa",
    "{data}/refs/missing.fa",
])
def test_inputs_outside_the_data_roots_are_refused(config: SiteConfig, data: Path, url: str) -> None:
    refused(config, "inputs[0].url", inputs=[{"url": url.format(data=data), "path": "/in/x"}])


def test_characters_apptainer_cannot_bind_are_refused(config: SiteConfig, data: Path) -> None:
    (data / "a,b:c").write_text("x")
    refused(config, "inputs[0].path", inputs=[{"url": str(data / "a,b:c"), "path": "/in/x"}])
    refused(config, "inputs[0].path", inputs=[{"url": str(data / "refs"), "path": "/in/x,/etc:/y"}])


def test_copy_and_hardlink_happen_in_the_job(config: SiteConfig, data: Path) -> None:
    for how in ("copy", "hardlink"):
        cfg = config.model_copy(update={"storage": config.storage.model_copy(update={"file_inputs": how})})
        p = plan(cfg, inputs=[{"url": str(data / "refs"), "path": "/refs"}])
        real = os.path.realpath(data / "refs")
        assert list(p.script.inputs) == [InputCheck(0, real, how, f"{WORK}/inputs/0")]
        assert binds(p) == [f"{WORK}/inputs/0:/refs:ro"]
        assert f"{WORK}/inputs" in p.directories


def test_http_inputs_are_downloaded_before_submission(config: SiteConfig) -> None:
    p = plan(config, inputs=[{"url": "https://example.org/reads.fq", "path": "/in/reads.fq"}])
    assert p.downloads == [Download("https://example.org/reads.fq", f"{WORK}/inputs/0", "FILE")]
    assert binds(p) == [f"{WORK}/inputs/0:/in/reads.fq:ro"]
    refused(config, "inputs[0].url", inputs=[{"url": "http://127.0.0.1:8080/x", "path": "/in/x"}])
    refused(config, "inputs[0].url", inputs=[{"url": "https://example.org/d", "path": "/d", "type": "DIRECTORY"}])


def test_unknown_schemes_list_what_service_info_advertises(config: SiteConfig, data: Path) -> None:
    message = refused(config, "inputs[0].url", inputs=[{"url": "s3://bucket/key", "path": "/in/x"}])
    locations = Schemes(config).locations()
    assert locations == [data.as_uri(), "http://", "https://"]
    assert ", ".join(locations) in message


def test_content_inputs_up_to_the_site_maximum(config: SiteConfig) -> None:
    big = "A" * (128 * 1024)
    p = plan(config, inputs=[{"content": big, "path": "/in/big.txt", "url": "s3://ignored"}])
    assert p.files == {f"{WORK}/inputs/0": big} and p.input_types == ["FILE"]
    small = config.model_copy(update={"storage": config.storage.model_copy(update={"max_content_bytes": 10})})
    assert "maximum of" in refused(small, "inputs[0].content", inputs=[{"content": big, "path": "/in/b"}])


def manifest(p: JobPlan) -> dict:
    return json.loads(p.files[f"{WORK}/outputs.json"])


def test_outputs_get_binds_and_a_manifest_for_the_job_side_collector(config: SiteConfig, data: Path) -> None:
    p = plan(config, volumes=["/vol"], outputs=[
        {"path": "/out/result.txt", "url": (data / "out" / "result.txt").as_uri()},
        {"path": "/vol/reports", "url": str(data / "out" / "reports"), "type": "DIRECTORY"},
        {"path": "/res/*.bam", "path_prefix": "/res/", "url": (data / "out" / "bams").as_uri()},
    ])
    assert binds(p) == [f"{WORK}/volumes/0:/vol:rw", f"{WORK}/outputs/0:/out:rw", f"{WORK}/outputs/2:/res:rw"]
    entries = manifest(p)["outputs"]
    assert [(e["bind_container"], e["bind_host"]) for e in entries] == [
        ("/out", f"{WORK}/outputs/0"), ("/vol", f"{WORK}/volumes/0"), ("/res", f"{WORK}/outputs/2")]
    assert entries[0]["dest"] == str(data.resolve() / "out" / "result.txt")
    assert entries[2]["wildcard"] and entries[2]["path_prefix"] == "/res/"
    assert manifest(p)["roots"] == [str(data)]
    assert list(p.script.collect or []) == ["python3", "-I", f"{WORK}/collect_outputs.py", f"{WORK}/outputs.json"]
    assert "def main(" in p.files[f"{WORK}/collect_outputs.py"]


def test_no_outputs_no_collector(config: SiteConfig) -> None:
    assert plan(config).script.collect is None


def test_nested_binds_are_mounted_parents_first(config: SiteConfig, data: Path) -> None:
    p = plan(config, inputs=[{"content": "x", "path": "/out/sub/in.txt"}],
             outputs=[{"path": "/out", "url": str(data / "out" / "o"), "type": "DIRECTORY"}])
    assert binds(p) == [f"{WORK}/outputs/0:/out:rw", f"{WORK}/inputs/0:/out/sub/in.txt:ro"]


@pytest.mark.parametrize(("output", "where"), [
    ({"path": "/x.txt", "url": "{data}/out/x"}, "outputs[0].path"),
    ({"path": "/res/*.bam", "url": "{data}/out/b"}, "outputs[0].path_prefix"),
    ({"path": "/res/*.bam", "path_prefix": "/other/", "url": "{data}/out/b"}, "outputs[0].path_prefix"),
    ({"path": "/out/x", "url": "file:///etc/x"}, "outputs[0].url"),
    ({"path": "/out/x", "url": "{data}/up/secret.txt"}, "outputs[0].url"),
    ({"path": "/out/x", "url": "{data}/../elsewhere"}, "outputs[0].url"),
    ({"path": "/out/x", "url": "https://example.org/x"}, "outputs[0].url"),
    ({"path": "/in/x", "url": "{data}/out/x"}, "outputs[0].path"),   # inside a read-only input
    ({"path": "/a,b/x", "url": "{data}/out/x"}, "outputs[0].path"),
])
def test_bad_outputs_are_refused(config: SiteConfig, data: Path, output: dict, where: str) -> None:
    output = {k: v.format(data=data) for k, v in output.items()}
    refused(config, where, inputs=[{"url": str(data / "refs"), "path": "/in"}], outputs=[output])
