"""s3:// inputs and outputs through the real server, Slurm and Apptainer, against a real
S3-compatible server on loopback (moto's server mode, credentials enforced)."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hpc_bridge.config import SiteConfig
from hpc_bridge.staging.areas import owner_key
from tests.s3server import S3Server

from .conftest import ServerProcess
from .test_staging import FINAL, iso, post, run, run_existing, sh

BUCKET, DENIED = "hpcb-data", "hpcb-denied"
ME = owner_key("local")  # auth none: every caller is "local"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    for bucket in (BUCKET, DENIED):
        server.client().create_bucket(Bucket=bucket)
    yield server
    server.stop()


@pytest.fixture()
def s3_server(s3: S3Server, tmp_path: Path, server_factory: Callable[..., ServerProcess],
              dev_config: SiteConfig) -> Callable[..., ServerProcess]:
    """A server whose `s3` settings use the loopback store: the data bucket with the real key,
    `hpcb-denied` with a key the store does not know, and any other bucket name."""
    creds = s3.credentials_file(tmp_path / "s3-credentials", wrong=("AKIAWRONGWRONGWRONG1", "not-the-secret"))

    def make(**s3_settings: Any) -> ServerProcess:
        bucket = {"endpoint_url": s3.url, "region": "us-east-1"}
        storage = dev_config.storage.model_dump(mode="json")
        storage["s3"] = {"enabled": True, "credentials_file": str(creds), "buckets": [
            {**bucket, "name": BUCKET},
            {**bucket, "name": DENIED, "profile": "wrong"},
            {**bucket, "name": "*"},
        ], **s3_settings}
        return server_factory(storage=storage)

    return make


def keys(s3: S3Server, prefix: str, bucket: str = BUCKET) -> dict[str, bytes]:
    client = s3.client()
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}


def system_logs(task: dict) -> str:
    return "\n".join(line for log in task["logs"] for line in log.get("system_logs") or [])


def test_files_directories_and_wildcards_in_and_out(s3: S3Server, s3_server: Callable[..., ServerProcess],
                                                    dev_config: SiteConfig) -> None:
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{ME}/in/reads.fq", Body=b"@r1\nACGT\n+\nIIII\n")
    client.put_object(Bucket=BUCKET, Key=f"{ME}/refs/a.txt", Body=b"A")
    client.put_object(Bucket=BUCKET, Key=f"{ME}/refs/sub/b.txt", Body=b"BB")
    server = s3_server()
    info = requests.get(f"{server.url}/ga4gh/tes/v1/service-info", timeout=10).json()
    assert f"s3://{BUCKET}/" in info["storage"]
    base = f"s3://{BUCKET}/{ME}/out"
    task = run(server, {
        "inputs": [{"url": f"s3://{BUCKET}/{ME}/in/reads.fq", "path": "/in/reads.fq"},
                   {"url": f"s3://{BUCKET}/{ME}/refs", "path": "/refs", "type": "DIRECTORY"}],
        "outputs": [{"path": "/out/*.txt", "path_prefix": "/out/", "url": f"{base}/txt"},
                    {"path": "/res", "url": f"{base}/res", "type": "DIRECTORY"},
                    {"path": "/out/reads.copy", "url": f"{base}/reads.copy"}],
        "executors": [sh("cat /refs/a.txt > /out/one.txt && cat /refs/sub/b.txt > /out/two.txt"
                         " && cp /in/reads.fq /out/reads.copy && mkdir -p /res/deep && cp -r /refs/* /res/deep/")],
    })
    assert task["state"] == "COMPLETE", task["logs"]
    assert [i["type"] for i in task["inputs"]] == ["FILE", "DIRECTORY"]
    assert keys(s3, f"{ME}/out/") == {
        f"{ME}/out/txt/one.txt": b"A",
        f"{ME}/out/txt/two.txt": b"BB",
        f"{ME}/out/res/deep/a.txt": b"A",
        f"{ME}/out/res/deep/sub/b.txt": b"BB",
        f"{ME}/out/reads.copy": b"@r1\nACGT\n+\nIIII\n",
    }
    logged = {o["url"]: o["size_bytes"] for o in task["logs"][0]["outputs"]}
    assert logged[f"{base}/reads.copy"] == "16" and logged[f"{base}/res/deep/sub/b.txt"] == "2"
    assert "uploading output " + f"{base}/res" in system_logs(task)
    # The credentials never reach the job: not in its script, not in the task.
    script = (dev_config.storage.work_root / task["id"] / "job.sh").read_text()
    assert s3.secret_key not in script and s3.access_key not in script
    assert s3.secret_key not in str(task)


@pytest.mark.parametrize(("url", "reason"), [
    (f"s3://{DENIED}/{ME}/in.txt", "access denied by the object store"),
    (f"s3://hpcb-no-such-bucket/{ME}/in.txt", "no such bucket"),
    (f"s3://{BUCKET}/{ME}/no-such-key.txt", "no such object"),
])
def test_unreadable_inputs_are_system_errors_naming_the_url(
        s3: S3Server, s3_server: Callable[..., ServerProcess], dev_config: SiteConfig, url: str, reason: str) -> None:
    s3.client().put_object(Bucket=DENIED, Key=f"{ME}/in.txt", Body=b"x")
    task = run(s3_server(), {"inputs": [{"url": url, "path": "/in/x"}], "executors": [sh("cat /in/x")]})
    assert task["state"] == "SYSTEM_ERROR"
    assert f"cannot download {url}: {reason}" in system_logs(task)
    assert not (dev_config.storage.work_root / task["id"] / "inputs" / "0").exists()  # nothing partial
    assert not list((dev_config.storage.work_root / ".staging").glob(f"{task['id']}*"))


def test_an_owners_own_profile_is_used_for_their_tasks(s3: S3Server, s3_server: Callable[..., ServerProcess],
                                                      dev_config: SiteConfig) -> None:
    """Per-owner credentials (`owner_profiles`): this owner's tasks use the profile named for them
    (here a key the store refuses), not the bucket's."""
    s3.client().put_object(Bucket=BUCKET, Key=f"{ME}/own.txt", Body=b"x")
    server = s3_server(buckets=[{"name": BUCKET, "endpoint_url": s3.url, "owner_profiles": {"local": "wrong"}}])
    task = run(server, {"inputs": [{"url": f"s3://{BUCKET}/{ME}/own.txt", "path": "/in/x"}],
                        "executors": [sh("cat /in/x")]})
    assert task["state"] == "SYSTEM_ERROR"
    assert f"cannot download s3://{BUCKET}/{ME}/own.txt: access denied by the object store" in system_logs(task)


def test_refused_uploads_leave_nothing_at_the_destination(s3: S3Server,
                                                          s3_server: Callable[..., ServerProcess]) -> None:
    server = s3_server(max_bytes=1500)
    denied = run(server, {"outputs": [{"path": "/out/r.txt", "url": f"s3://{DENIED}/{ME}/r.txt"}],
                          "executors": [sh("echo hi > /out/r.txt")]})
    assert denied["state"] == "SYSTEM_ERROR"
    assert f"cannot upload to s3://{DENIED}/{ME}/r.txt: access denied" in system_logs(denied)
    assert keys(s3, f"{ME}/r.txt", bucket=DENIED) == {}
    # A directory whose second file is over the cap: the first one, already sent, is deleted again.
    capped = run(server, {"outputs": [{"path": "/res", "url": f"s3://{BUCKET}/{ME}/capped", "type": "DIRECTORY"}],
                          "executors": [sh("mkdir -p /res && head -c 1000 /dev/zero > /res/a && "
                                           "head -c 1000 /dev/zero > /res/b")]})
    assert capped["state"] == "SYSTEM_ERROR"
    assert "larger than the maximum of 1500 bytes" in system_logs(capped)
    assert keys(s3, f"{ME}/capped") == {}


def test_other_owners_prefixes_and_unknown_forms_are_400_at_creation(
        s3_server: Callable[..., ServerProcess]) -> None:
    server = s3_server()
    cases = {
        f"s3://{BUCKET}/someone-else/x.txt": "may read only under",
        f"s3://{BUCKET}/{ME}/../someone-else/x.txt": "'..' segments are not allowed",
        f"s3://user:pw@{BUCKET}/{ME}/x": "plain bucket name",
    }
    for url, message in cases.items():
        resp = post(server, {"inputs": [{"url": url, "path": "/in/x"}], "executors": [sh("true")]})
        assert resp.status_code == 400 and message in resp.json()["msg"], (url, resp.text)
    resp = post(server, {"outputs": [{"url": f"s3://{BUCKET}/someone-else/r", "path": "/out/r"}],
                         "executors": [sh("true")]})
    assert resp.status_code == 400 and "may write only under" in resp.json()["msg"]
    assert resp.json()["msg"].count(f"s3://{BUCKET}/{ME}/") == 1


def test_s3_is_refused_where_the_site_has_not_enabled_it(server: ServerProcess) -> None:
    resp = post(server, {"inputs": [{"url": f"s3://{BUCKET}/{ME}/x", "path": "/in/x"}], "executors": [sh("true")]})
    assert resp.status_code == 400 and "unsupported URL" in resp.json()["msg"]


def wait_for_upload(server: ServerProcess, task_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        task = requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}?view=FULL", timeout=10).json()
        if "uploading output" in system_logs(task):
            return
        assert task["state"] not in FINAL, task
        time.sleep(0.05)
    pytest.fail(f"task {task_id} never started uploading")


BIG = 400 * 1024**2  # several seconds through moto: time to kill or cancel mid-upload
BIG_TASK = {"outputs": [{"path": "/out/big.bin", "url": f"s3://{BUCKET}/{ME}/big/big.bin"}],
            "executors": [sh(f"head -c {BIG} /dev/urandom > /out/big.bin")]}


def test_a_daemon_killed_mid_upload_uploads_again_after_its_restart(
        s3: S3Server, s3_server: Callable[..., ServerProcess]) -> None:
    server = s3_server(part_size=8 * 1024**2)
    task_id = post(server, BIG_TASK).json()["id"]
    wait_for_upload(server, task_id)
    server.kill()  # SIGKILL mid-upload: no clean-up of any kind
    assert keys(s3, f"{ME}/big/") == {}  # a multipart upload in flight is no object yet
    server.start()
    task = run_existing(server, task_id, timeout=300)
    assert task["state"] == "COMPLETE", system_logs(task)
    head = s3.client().head_object(Bucket=BUCKET, Key=f"{ME}/big/big.bin")
    assert head["ContentLength"] == BIG


def test_a_cancel_mid_upload_stops_it_and_leaves_nothing(s3: S3Server,
                                                         s3_server: Callable[..., ServerProcess]) -> None:
    server = s3_server(part_size=8 * 1024**2)
    task_id = post(server, {**BIG_TASK, "outputs": [{**BIG_TASK["outputs"][0],
                                                      "url": f"s3://{BUCKET}/{ME}/cancelled/big.bin"}]}).json()["id"]
    wait_for_upload(server, task_id)
    assert requests.post(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}:cancel", timeout=10).status_code == 200
    task = run_existing(server, task_id, timeout=120)
    assert task["state"] == "CANCELED", system_logs(task)
    assert "cancelled while uploading outputs" in system_logs(task)
    assert keys(s3, f"{ME}/cancelled/") == {}
    assert not s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix=f"{ME}/cancelled/").get("Uploads")


def test_folder_markers_untyped_directories_raw_names_and_all_or_nothing(
        s3: S3Server, s3_server: Callable[..., ServerProcess], dev_config: SiteConfig,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{ME}/marked/", Body=b"")  # a console's "folder"
    client.put_object(Bucket=BUCKET, Key=f"{ME}/marked/a.txt", Body=b"A")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "daemon-environment-secret")  # boto3's chain, if a site uses it
    server = s3_server()
    task = run(server, {
        "inputs": [{"url": f"s3://{BUCKET}/{ME}/marked", "path": "/in", "type": "DIRECTORY"}],
        "outputs": [{"path": "/out/res", "url": f"s3://{BUCKET}/{ME}/untyped"}],  # no type: a directory, it turns out
        "executors": [sh("mkdir -p /out/res/sub && cp /in/a.txt '/out/res/sub/a b%.txt' && env")]})
    assert task["state"] == "COMPLETE", system_logs(task)
    assert "daemon-environment-secret" not in task["logs"][0]["logs"][0]["stdout"]  # not in the job's env
    assert keys(s3, f"{ME}/untyped") == {f"{ME}/untyped/sub/a b%.txt": b"A"}
    # The logged URL names the very object (keys are taken literally, not percent-encoded).
    assert [o["url"] for o in task["logs"][0]["outputs"]] == [f"s3://{BUCKET}/{ME}/untyped/sub/a b%.txt"]
    # Two outputs, the second refused by the store: the first one's object is removed again.
    failed = run(server, {
        "outputs": [{"path": "/out/ok.txt", "url": f"s3://{BUCKET}/{ME}/pair/ok.txt"},
                    {"path": "/out/no.txt", "url": f"s3://{DENIED}/{ME}/pair/no.txt"}],
        "executors": [sh("echo ok > /out/ok.txt && echo no > /out/no.txt")]})
    assert failed["state"] == "SYSTEM_ERROR"
    assert f"cannot upload to s3://{DENIED}/{ME}/pair/no.txt: access denied" in system_logs(failed)
    assert keys(s3, f"{ME}/pair/") == {}


def test_a_service_stopped_mid_download_stops_at_once_and_stages_again_after(
        s3: S3Server, s3_server: Callable[..., ServerProcess]) -> None:
    """A download may take hours: stopping the service gracefully (Ctrl-C: the API, then the daemon,
    then the interpreter's wait for its worker threads) does not wait for it, and does not fail the
    task either; the next service process downloads it again."""
    s3.client().upload_fileobj(io.BytesIO(os.urandom(BIG)), BUCKET, f"{ME}/big-in.bin")
    server = s3_server(part_size=5 * 1024**2, concurrency=1)  # slow: the download outlasts the stop by far
    task_id = post(server, {"inputs": [{"url": f"s3://{BUCKET}/{ME}/big-in.bin", "path": "/in/big"}],
                            "executors": [sh("wc -c < /in/big")]}).json()["id"]
    deadline = time.monotonic() + 60
    while "downloading input" not in system_logs(
            requests.get(f"{server.url}/ga4gh/tes/v1/tasks/{task_id}?view=FULL", timeout=10).json()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(60)
    stopped = time.monotonic() - started
    server.start()
    task = run_existing(server, task_id, timeout=300)
    assert task["state"] == "COMPLETE", system_logs(task)
    assert task["logs"][0]["logs"][0]["stdout"].strip() == str(BIG)
    downloading = iso(task["logs"][0]["logs"][0]["start_time"]) - iso(task["creation_time"])
    assert stopped < 3 < downloading, (stopped, downloading)
