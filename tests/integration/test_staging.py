"""Data in and out through the real server, Slurm and Apptainer: zero-copy binds, downloads,
content, directories, output collection in the job, and every escape a hostile task can try."""

from __future__ import annotations

import functools
import http.server
import os
import pwd
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from hpc_bridge.config import SiteConfig

from .conftest import ServerProcess

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture()
def secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file outside every allowed root that the job user could read: nothing may copy it."""
    path = tmp_path_factory.mktemp("outside") / "secret.txt"
    path.write_text("SECRET-CANARY\n")
    path.parent.chmod(0o755)
    path.chmod(0o644)
    yield path


def post(server: ServerProcess, task: dict) -> requests.Response:
    return requests.post(f"{server.url}/ga4gh/tes/v1/tasks", json=task, timeout=30)


def run(server: ServerProcess, task: dict, timeout: float = 120) -> dict:
    resp = post(server, task)
    assert resp.status_code == 200, resp.text
    return run_existing(server, resp.json()["id"], timeout)


def sh(script: str, **fields: object) -> dict:
    return {"image": "busybox", "command": ["sh", "-c", script], **fields}


def iso(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def startup(task: dict) -> float:
    """Seconds from creation to the first executor starting."""
    return iso(task["logs"][0]["logs"][0]["start_time"]) - iso(task["creation_time"])


def test_large_input_is_bind_mounted_not_copied(server: ServerProcess, data: Path,
                                                dev_config: SiteConfig) -> None:
    big, tiny = data / "big.bin", data / "tiny.txt"
    subprocess.run(["fallocate", "-l", "1G", str(big)], check=True)
    tiny.write_text("x")
    assert big.stat().st_blocks * 512 >= 1024**3  # really on disk, not sparse

    def task(path: Path) -> dict:
        return {"inputs": [{"url": path.as_uri(), "path": "/in/data"}],
                "executors": [sh("stat -c %i /in/data; wc -c < /in/data")]}

    small_run, big_run = run(server, task(tiny)), run(server, task(big))
    assert small_run["state"] == big_run["state"] == "COMPLETE", big_run
    inode, size = big_run["logs"][0]["logs"][0]["stdout"].split()
    assert int(inode) == big.stat().st_ino and int(size) == 1024**3  # the very same file
    assert big_run["inputs"][0]["type"] == "FILE"
    assert startup(big_run) < startup(small_run) + 2.0, (startup(small_run), startup(big_run))
    workdir = dev_config.storage.work_root / big_run["id"]
    used = int(subprocess.run(["du", "-sk", str(workdir)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    assert used < 1024, f"work area holds {used} KiB: the input was copied"


def test_http_content_and_directory_inputs_with_wildcard_and_directory_outputs(
        server_factory: Callable[..., ServerProcess], data: Path, tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "reads.fq").write_text("@r1\nACGT\n+\nIIII\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    (data / "refs" / "sub").mkdir(parents=True)
    (data / "refs" / "a.txt").write_text("A")
    (data / "refs" / "sub" / "b.txt").write_text("BB")
    try:
        server = server_factory(storage={"http": {"allowed_networks": ["127.0.0.0/8"]}})
        url = f"http://127.0.0.1:{httpd.server_address[1]}/reads.fq"
        task = run(server, {
            "inputs": [{"url": url, "path": "/in/reads.fq"},
                       {"content": "hello\n", "path": "/in/greeting.txt"},
                       {"url": (data / "refs").as_uri(), "path": "/refs"}],
            "outputs": [{"path": "/out/*.txt", "path_prefix": "/out/", "url": (data / "txt").as_uri()},
                        {"path": "/res", "url": (data / "res").as_uri(), "type": "DIRECTORY"},
                        {"path": "/out/reads.copy", "url": (data / "reads.copy").as_uri()}],
            "executors": [sh("cp /in/greeting.txt /out/one.txt && cat /refs/sub/b.txt > /out/two.txt"
                             " && cp /in/reads.fq /out/reads.copy && mkdir -p /res/deep"
                             " && cp -r /refs/* /res/deep/ && echo skip > /out/not-matched.log")],
        })
    finally:
        httpd.shutdown()
    assert task["state"] == "COMPLETE", task["logs"]
    assert [i["type"] for i in task["inputs"]] == ["FILE", "FILE", "DIRECTORY"]
    outputs = {o["path"]: (o["url"], o["size_bytes"]) for o in task["logs"][0]["outputs"]}
    assert outputs == {
        "/out/one.txt": ((data / "txt" / "one.txt").as_uri(), "6"),
        "/out/two.txt": ((data / "txt" / "two.txt").as_uri(), "2"),
        "/res/deep/a.txt": ((data / "res").as_uri() + "/deep/a.txt", "1"),
        "/res/deep/sub/b.txt": ((data / "res").as_uri() + "/deep/sub/b.txt", "2"),
        "/out/reads.copy": ((data / "reads.copy").as_uri(), "16"),
    }
    assert (data / "txt" / "one.txt").read_text() == "hello\n"
    assert (data / "res" / "deep" / "sub" / "b.txt").read_text() == "BB"
    assert (data / "reads.copy").read_text() == "@r1\nACGT\n+\nIIII\n"
    assert not (data / "txt" / "not-matched.log").exists()
    staged = {s.labels["direction"]: s.value for f in text_string_to_metric_families(
        requests.get(f"{server.url}/metrics", timeout=10).text) for s in f.samples
        if s.name == "hpcbridge_staged_bytes_total"}
    assert staged == {"in": 16, "out": 6 + 2 + 1 + 2 + 16}  # reads.fq downloaded; the outputs delivered


def test_missing_output_fails_with_a_clear_system_log(server: ServerProcess, data: Path) -> None:
    task = run(server, {"outputs": [{"path": "/out/result.txt", "url": (data / "r.txt").as_uri()}],
                        "executors": [sh("echo forgot to write it")]})
    assert task["state"] == "SYSTEM_ERROR"
    assert any("output 0" in line and "/out/result.txt" in line for line in task["logs"][0]["system_logs"])
    assert not (data / "r.txt").exists()


@pytest.mark.parametrize("bad", [
    {"inputs": [{"url": "file:///etc/passwd", "path": "/in/x"}]},
    {"inputs": [{"url": "file:///srv/hpc-bridge/data/../../../etc/passwd", "path": "/in/x"}]},
    {"inputs": [{"url": "{data}/link-out", "path": "/in/x"}]},
    {"inputs": [{"url": "{data}/ok.txt", "path": "/in/x,/etc:/y"}]},
    {"inputs": [{"url": "{data}/ok.txt", "path": "/in/../../proc/x"}]},
    {"inputs": [{"url": "http://127.0.0.1:22/x", "path": "/in/x"}]},
    {"inputs": [{"url": "http://169.254.169.254/latest/meta-data", "path": "/in/x"}]},
    {"inputs": [{"url": "gs://bucket/x", "path": "/in/x"}]},
    {"outputs": [{"url": "file:///etc/cron.d/x", "path": "/out/x"}]},
    {"outputs": [{"url": "{data}/link-dir/x", "path": "/out/x"}]},
    {"outputs": [{"url": "{data}/../../x", "path": "/out/x"}]},
    {"outputs": [{"url": "{data}/x", "path": "/out:/x"}]},
])
def test_escapes_in_urls_and_paths_are_refused_at_submission(server: ServerProcess, data: Path,
                                                              secret: Path, bad: dict) -> None:
    (data / "ok.txt").write_text("ok")
    os.symlink(secret, data / "link-out")
    os.symlink(secret.parent, data / "link-dir")
    bad = {k: [{f: v.format(data=data) for f, v in item.items()} for item in items] for k, items in bad.items()}
    resp = post(server, {**bad, "executors": [sh("true")]})
    assert resp.status_code == 400, resp.text
    assert resp.json()["status_code"] == 400 and resp.json()["msg"]


def test_symlinks_planted_by_the_task_are_not_followed_when_collecting(
        server: ServerProcess, data: Path, secret: Path) -> None:
    task = run(server, {
        "volumes": ["/vol"],
        "outputs": [{"path": "/res", "url": (data / "res").as_uri(), "type": "DIRECTORY"},
                    {"path": "/vol/*", "path_prefix": "/vol/", "url": (data / "wild").as_uri()}],
        "executors": [sh(f"mkdir -p /res && echo real > /res/real.txt && ln -s {secret} /res/leak.txt"
                         f" && ln -s {secret.parent} /res/leakdir && ln -s {secret} /vol/leak")],
    })
    assert task["state"] == "COMPLETE", task["logs"]
    assert [o["path"] for o in task["logs"][0]["outputs"]] == ["/res/real.txt"]
    warnings = [s for s in task["logs"][0]["system_logs"] if "symlink" in s]
    assert len(warnings) == 3, task["logs"][0]["system_logs"]
    copied = [p for p in data.rglob("*") if p.is_file()]
    assert [p.name for p in copied] == ["real.txt"]
    assert all("SECRET" not in p.read_text() for p in copied)

    # a FILE output that is a planted symlink, and a parent directory swapped for a symlink
    for script, path in ((f"ln -s {secret} /out/result.txt", "/out/result.txt"),
                         (f"ln -s {secret.parent} /vol/sub", "/vol/sub/secret.txt")):
        task = run(server, {"volumes": ["/vol"],
                            "outputs": [{"path": path, "url": (data / "r.txt").as_uri()}],
                            "executors": [sh(f"mkdir -p /out; {script}")]})
        assert task["state"] == "SYSTEM_ERROR", task
        assert not (data / "r.txt").exists()


def test_an_input_swapped_for_a_symlink_during_executor_0_does_not_reach_executor_1(
        server: ServerProcess, data: Path, secret: Path, dev_config: SiteConfig) -> None:
    """Each executor's `--bind` resolves the input path again, so it is checked before each one."""
    (data / "in").mkdir()
    (data / "in" / "secret.txt").write_text("the checked input\n")
    resp = post(server, {"inputs": [{"url": (data / "in").as_uri(), "path": "/in", "type": "DIRECTORY"}],
                         "executors": [sh("cat /in/secret.txt; sleep 8"), sh("cat /in/secret.txt")]})
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["id"]
    # Swap once executor 0 has printed: its bind is mounted by then (the check before each executor
    # closes the gap between executors; the one inside `apptainer exec`'s start is not this test's).
    stdout = dev_config.storage.work_root / task_id / "executor-0.stdout"
    deadline = time.monotonic() + 120
    while "the checked input" not in (stdout.read_text() if stdout.exists() else ""):
        assert time.monotonic() < deadline, "executor 0 did not print its input"
        time.sleep(0.2)
    os.rename(data / "in", data / "in.checked")
    os.symlink(secret.parent, data / "in")  # the job user may read it, but it was never allowed
    task = run_existing(server, task_id)
    assert task["state"] == "SYSTEM_ERROR", task
    logs = task["logs"][0]
    assert [log["stdout"] for log in logs["logs"]] == ["the checked input\n"]  # executor 1 never ran
    assert any("changed or vanished" in line for line in logs["system_logs"]), logs["system_logs"]
    assert "SECRET-CANARY" not in str(task)


def test_work_areas_are_private_and_removed_after_retention(
        server_factory: Callable[..., ServerProcess], dev_config: SiteConfig, data: Path) -> None:
    server = server_factory(storage={"work_retention_hours": 0},
                            monitor={"cleanup_interval": 0.5})
    task = run(server, {"outputs": [{"path": "/out/keep.txt", "url": (data / "keep.txt").as_uri()}],
                        "executors": [sh("echo kept > /out/keep.txt")]})
    assert task["state"] == "COMPLETE"
    workdir = dev_config.storage.work_root / task["id"]
    deadline = time.monotonic() + 20
    while workdir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workdir.exists()
    assert (data / "keep.txt").read_text() == "kept\n"  # outputs are never cleaned
    body = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task['id']}?view=FULL", timeout=10).json()
    assert any("work area removed" in line for line in body["logs"][0]["system_logs"])


def test_work_area_is_private_to_the_job_user(server: ServerProcess, dev_config: SiteConfig) -> None:
    task = run(server, {"executors": [sh("true")]})
    st = (dev_config.storage.work_root / task["id"]).stat()
    assert st.st_mode & 0o777 == 0o700
    assert st.st_uid == pwd.getpwnam(dev_config.slurm.submit_as or "root").pw_uid


REGISTRY_IMAGE = "127.0.0.1:5000/hpc-bridge/busybox:1.0"


@pytest.fixture()
def image_cache(dev_config: SiteConfig) -> Iterator[Path]:
    """A fresh, empty image cache where the job user can read (unlike pytest's tmp_path)."""
    path = dev_config.storage.work_root.parent / f"it-cache-{uuid.uuid4().hex[:12]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ten_parallel_tasks_on_a_new_registry_image_pull_it_once(
        server_factory: Callable[..., ServerProcess], image_cache: Path) -> None:
    cache = image_cache
    server = server_factory(apptainer={"cache_dir": str(cache), "insecure_registries": ["127.0.0.1:5000"]})
    ids = []
    for i in range(10):
        resp = post(server, {"executors": [{"image": REGISTRY_IMAGE, "command": ["echo", f"task {i}"]}]})
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["id"])
    first = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{ids[0]}?view=FULL", timeout=10).json()
    assert first["state"] == "QUEUED"  # while the image is being prepared
    tasks = [run_existing(server, task_id) for task_id in ids]
    assert [t["state"] for t in tasks] == ["COMPLETE"] * 10
    assert [t["logs"][0]["logs"][0]["stdout"] for t in tasks] == [f"task {i}\n" for i in range(10)]
    assert any(line.startswith(f"preparing image {REGISTRY_IMAGE}") for line in tasks[0]["logs"][0]["system_logs"])
    assert server.log.read_text().count(f"pulled image {REGISTRY_IMAGE}") == 1
    assert len(list(cache.glob("*.sif"))) == 1
    again = run(server, {"executors": [{"image": f"docker://{REGISTRY_IMAGE}", "command": ["true"]}]})
    assert again["state"] == "COMPLETE"  # the same image under its docker:// name: cached already
    assert server.log.read_text().count("pulled image") == 1


def test_a_missing_registry_image_is_a_system_error_naming_it(
        server_factory: Callable[..., ServerProcess], image_cache: Path) -> None:
    server = server_factory(apptainer={"cache_dir": str(image_cache),
                                       "insecure_registries": ["127.0.0.1:5000"]})
    task = run(server, {"executors": [{"image": "127.0.0.1:5000/hpc-bridge/nope:9", "command": ["true"]}]})
    assert task["state"] == "SYSTEM_ERROR"
    message = task["logs"][0]["system_logs"][-1]
    assert "127.0.0.1:5000/hpc-bridge/nope:9" in message and "docker://127.0.0.1:5000/hpc-bridge/nope:9" in message


def run_existing(server: ServerProcess, task_id: str, timeout: float = 180,
                 headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}?view=FULL", timeout=10,
                            headers=headers).json()
        if body["state"] in FINAL:
            return body
        time.sleep(0.3)
    pytest.fail(f"task {task_id} not finished after {timeout}s")


def test_tmp_is_on_disk_and_shared_by_the_executors(server: ServerProcess, dev_config: SiteConfig) -> None:
    """--containall alone gives a 64 MiB in-memory /tmp: Snakemake's TES jobs (a script put at
    /tmp/run_snakemake.sh, ~100 MB of plugins installed under /tmp) outgrow it. Like that /tmp, it is
    gone when the job ends."""
    task = run(server, {
        "inputs": [{"content": "echo from-content\n", "path": "/tmp/run.sh"}],
        "executors": [sh("sh /tmp/run.sh && head -c 200000000 /dev/zero > /tmp/big && mkdir /var/tmp/d"),
                      sh("wc -c < /tmp/big && test -d /var/tmp/d && echo shared")]})
    assert task["state"] == "COMPLETE", task["logs"]
    first, second = task["logs"][0]["logs"]
    assert first["stdout"].strip() == "from-content"
    assert second["stdout"].split() == ["200000000", "shared"]
    assert not (dev_config.storage.work_root / task["id"] / "scratch").exists()
    failed = run(server, {"executors": [sh("echo x > /tmp/left && exit 3")]})
    assert failed["state"] == "EXECUTOR_ERROR"
    assert not (dev_config.storage.work_root / failed["id"] / "scratch").exists()
