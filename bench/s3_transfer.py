#!/usr/bin/env python3
"""Benchmark: s3:// inputs and outputs through hpc-bridge vs a plain boto3 copy, in one run.

    .venv/bin/python bench/s3_transfer.py [--size-mib 1024] [--runs 3]

A real S3-compatible server on loopback (moto's server mode, tests/s3server.py) holds one object
of SIZE random bytes. Per run, interleaved, best of RUNS reported:

- plain boto3: `download_file` and `upload_file`, once with boto3's default transfer settings (8 MiB
  parts, 10 threads) and once with the same part size and concurrency as hpc-bridge's defaults, the
  fair baseline: the ratio is against that one, so it shows hpc-bridge's own overhead;
- hpc-bridge: `S3Scheme.download` and `S3Scheme.upload` with the site settings' defaults, the very
  calls the daemon's stager (inputs, before the job) and uploader (outputs, after it) make, with
  their policy checks, caps and progress accounting.

Then one task end to end through a real `hpc-bridge serve` and Slurm: the object in, copied by the
job, out again; its wall time from POST to COMPLETE. Every copy is checked byte for byte (size and
SHA-256). Progress goes to stderr, the summary table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
from boto3.s3.transfer import TransferConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "dev")]

from devserver import serve, stop  # noqa: E402

from hpc_bridge.config import S3Settings, load_config  # noqa: E402
from hpc_bridge.staging.areas import owner_key  # noqa: E402
from hpc_bridge.staging.s3 import S3Scheme  # noqa: E402
from tests.s3server import S3Server  # noqa: E402

BUCKET = "bench-data"
OWNER = "local"  # the dev site's auth mode none
MIB = 1024**2


def say(text: str) -> None:
    print(f"[s3-bench] {text}", file=sys.stderr, flush=True)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def end_to_end(s3: S3Server, key: str, size: int, work: Path) -> float:
    """POST -> COMPLETE of one task that copies the object from its input to its output."""
    config = ROOT / "site_config" / "dev.yaml"
    storage = load_config(config).storage.model_dump(mode="json")
    storage["s3"] = {"enabled": True, "credentials_file": str(s3.credentials_file(work / "creds")),
                     "buckets": [{"name": BUCKET, "endpoint_url": s3.url}]}
    server, url = serve(config, work, storage=storage)
    base = f"{url}/ga4gh/tes/v1"
    try:
        start = time.perf_counter()
        task_id = requests.post(f"{base}/tasks", timeout=30, json={
            "inputs": [{"url": f"s3://{BUCKET}/{key}", "path": "/in/big.bin"}],
            "outputs": [{"url": f"s3://{BUCKET}/{owner_key(OWNER)}/e2e/big.bin", "path": "/out/big.bin"}],
            "executors": [{"image": "busybox", "command": ["cp", "/in/big.bin", "/out/big.bin"]}]}).json()["id"]
        while (task := requests.get(f"{base}/tasks/{task_id}", timeout=10).json())["state"] not in (
                "COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        if task["state"] != "COMPLETE":
            raise SystemExit(f"the end-to-end task ended {task['state']}: {task}")
        head = s3.client().head_object(Bucket=BUCKET, Key=f"{owner_key(OWNER)}/e2e/big.bin")
        assert head["ContentLength"] == size, head
        return elapsed
    finally:
        stop(server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="hpcb-s3-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        s3 = S3Server(work / "moto.log").start()
        try:
            client = s3.client()
            client.create_bucket(Bucket=BUCKET)
            source = work / "source.bin"
            say(f"writing {args.size_mib} MiB of random data")
            with open(source, "wb") as fh:
                for _ in range(args.size_mib):
                    fh.write(os.urandom(MIB))
            want = digest(source)
            key = f"{owner_key(OWNER)}/big.bin"
            client.upload_file(str(source), BUCKET, key)
            scheme_settings = S3Settings(enabled=True, buckets=[{"name": BUCKET, "endpoint_url": s3.url}],
                                         credentials_file=s3.credentials_file(work / "creds"))
            scheme = S3Scheme(scheme_settings)
            bucket = scheme.policy.bucket(BUCKET)
            assert bucket is not None
            scheme.client(bucket, OWNER)  # made once per bucket and kept by the daemon, as `client` is here
            plain_key, ours_key = f"{owner_key(OWNER)}/plain-out.bin", f"{owner_key(OWNER)}/ours-out.bin"
            same = TransferConfig(multipart_threshold=scheme_settings.part_size,
                                  multipart_chunksize=scheme_settings.part_size,
                                  max_concurrency=scheme_settings.concurrency)
            times: dict[str, list[float]] = {k: [] for k in (
                "default_in", "plain_in", "ours_in", "default_out", "plain_out", "ours_out")}
            for run in range(args.runs):
                say(f"run {run + 1}/{args.runs}")
                for name, dest, action in (
                        ("default_in", work / "default.bin", lambda d: client.download_file(BUCKET, key, str(d))),
                        ("plain_in", work / "plain.bin",
                         lambda d: client.download_file(BUCKET, key, str(d), Config=same)),
                        ("ours_in", work / "ours.bin",
                         lambda d: scheme.download(f"s3://{BUCKET}/{key}", d, "FILE", OWNER))):
                    dest.unlink(missing_ok=True)
                    times[name].append(timed(lambda a=action, d=dest: a(d)))
                    assert dest.stat().st_size == size and digest(dest) == want, f"{name}: corrupt copy"
                    dest.unlink()
                times["default_out"].append(timed(lambda: client.upload_file(str(source), BUCKET, plain_key)))
                times["plain_out"].append(timed(lambda: client.upload_file(str(source), BUCKET, plain_key,
                                                                           Config=same)))
                times["ours_out"].append(timed(lambda: scheme.upload(
                    f"s3://{BUCKET}/{ours_key}", iter([("", os.open(source, os.O_RDONLY))]), OWNER,
                    directory=False)))
                for k in (plain_key, ours_key):
                    assert client.head_object(Bucket=BUCKET, Key=k)["ContentLength"] == size
            say("one task end to end through hpc-bridge serve and Slurm")
            e2e = end_to_end(s3, key, size, work)
        finally:
            s3.stop()
    best = {name: min(values) for name, values in times.items()}
    rate = {name: size / MIB / seconds for name, seconds in best.items()}
    print(f"S3 transfers of one {args.size_mib} MiB object, moto server on loopback, best of {args.runs}")
    print("  MiB/s            boto3 defaults   boto3 same settings   hpc-bridge   ratio to same settings")
    for label, way in (("in  (download)", "in"), ("out (upload)  ", "out")):
        print(f"  {label} {rate['default_' + way]:14.1f} {rate['plain_' + way]:21.1f} {rate['ours_' + way]:12.1f}"
              f" {rate['ours_' + way] / rate['plain_' + way]:24.2f}")
    print(f"  task in + cp + out through Slurm: {e2e:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
