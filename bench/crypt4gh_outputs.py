#!/usr/bin/env python3
"""Benchmark: Crypt4GH-encrypting a task's output in its job against copying it plainly, on the real
dev cluster.

    .venv/bin/python bench/crypt4gh_outputs.py [--size-mib 1024] [--repeat 3]

Run as root on the dev machine (`dev/cluster up`). A real `hpc-bridge serve` (Crypt4GH on, its job
Python this venv's) runs TES tasks one at a time, alternating: each writes one SIZE output
(`yes | head -c`, so every task writes the same bytes; then `sync`, so that no write-back of it
competes with what is measured) that its job's collector then delivers to a
data root, plainly (the in-kernel copy every task gets) or encrypted to two recipients (tag
`crypt4gh_recipients`). The figure is the collection step alone: from the executor's end to the
collector's end, both read from the job's own record (`record.jsonl`). Medians of `--repeat` pairs.
Each encrypted output is then decrypted with a recipient's key (crypt4gh's own code) and must equal
the plain one. For reference the same file is also encrypted here, in this process, by
`crypt4gh.lib.encrypt` (the library's own body loop), the way the collector does not.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crypt4gh import lib  # noqa: E402
from crypt4gh.keys import c4gh, get_private_key, get_public_key  # noqa: E402

from bench.tes_submit import (  # noqa: E402
    FINAL_TES,
    TES,
    Run,
    check_job_user,
    interrupt_on_signals,
    iso_epoch,
    say,
    slurm_up,
)
from hpc_bridge.config import load_config  # noqa: E402

MiB = 1024**2


def keys(directory: Path) -> tuple[list[str], bytes]:
    """Two recipients' public keys (base64) and the first one's secret key."""
    publics, secret = [], b""
    for name in ("alice", "bob"):
        sec, pub = directory / f"{name}.sec", directory / f"{name}.pub"
        c4gh.generate(str(sec), str(pub), None, b"")
        publics.append(base64.b64encode(get_public_key(str(pub))).decode())
        secret = secret or get_private_key(str(sec), None)
    return publics, secret


def task(data: Path, name: str, size: int, recipients: list[str] | None) -> dict:
    body = {"name": f"bench-c4gh-{name}",
            "outputs": [{"url": f"file://{data}/{name}/big", "path": "/out/big"}],
            "executors": [{"image": "busybox", "command": ["sh", "-c", f"yes | head -c {size} > /out/big && sync"]}],
            "resources": {"cpu_cores": 1}}
    if recipients:
        body["tags"] = {"crypt4gh_recipients": ",".join(recipients)}
    return body


def collect_seconds(url: str, body: dict, work_root: Path) -> float:
    """Run one task to COMPLETE; the seconds from its executor's end to its collector's end."""
    task_id = requests.post(f"{url}{TES}/tasks", json=body, timeout=30).json()["id"]
    deadline = time.monotonic() + 900
    while (state := requests.get(f"{url}{TES}/tasks/{task_id}", timeout=10).json()["state"]) not in FINAL_TES:
        if time.monotonic() > deadline:
            raise SystemExit(f"task {task_id} did not end in 900 s")
        time.sleep(0.5)
    if state != "COMPLETE":
        raise SystemExit(f"task {task_id} ended {state}")
    events = [json.loads(line) for line in (work_root / task_id / "record.jsonl").read_text().splitlines()]
    end = next(e["time"] for e in events if e["event"] == "executor_end")
    collected = next(e["time"] for e in events if e["event"] == "collect_end")
    return iso_epoch(collected) - iso_epoch(end)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", type=Path, default=ROOT / "site_config" / "dev.yaml")
    parser.add_argument("--keep", action="store_true", help="keep configs, logs and outputs")
    args = parser.parse_args()
    if not slurm_up():
        parser.error("Slurm is not answering: run `dev/cluster up` first")
    base = load_config(args.config)
    check_job_user(parser, base)
    size = args.size_mib * MiB
    run = Run(base, args.keep)
    interrupt_on_signals()
    data = base.storage.data_roots[0] / f"bench-c4gh-{run.id}"
    try:
        data.mkdir(parents=True)
        run.chown(data)
        recipients, secret = keys(run.tmp)
        server, config = run.server("c4gh", crypt4gh={"enabled": True, "job_python": sys.executable})
        run.wait_quiet("crypt4gh", 300)
        plain: list[float] = []
        encrypted: list[float] = []
        for i in range(args.repeat):
            say(f"[crypt4gh] pair {i + 1}/{args.repeat}: {args.size_mib} MiB plain, then encrypted")
            plain.append(collect_seconds(server.url, task(data, f"plain-{i}", size, None), config.storage.work_root))
            encrypted.append(collect_seconds(server.url, task(data, f"enc-{i}", size, recipients),
                                             config.storage.work_root))
        expected = sha256(data / "plain-0/big")
        for i in range(args.repeat):  # every encrypted output decrypts to the plain bytes
            out = data / f"dec-{i}"
            with (data / f"enc-{i}/big.c4gh").open("rb") as src, out.open("wb") as dst:
                lib.decrypt([(0, secret, None)], src, dst)
            if sha256(out) != expected:
                raise SystemExit(f"enc-{i}/big.c4gh does not decrypt to the plain output")
            out.unlink()
        os.sync()
        t0 = time.perf_counter()
        with (data / "plain-0/big").open("rb") as src, (data / "lib.c4gh").open("wb") as dst:
            lib.encrypt([(0, os.urandom(32), base64.b64decode(r)) for r in recipients], src, dst)
        library = time.perf_counter() - t0
        p, e = statistics.median(plain), statistics.median(encrypted)
        print(f"\nCrypt4GH outputs: one {args.size_mib} MiB output, collected in its job "
              f"(median of {args.repeat}; 2 recipients)")
        print(f"  plain copy (collector)             {p:8.2f} s  {args.size_mib / p:8.0f} MiB/s")
        print(f"  encrypted (collector)              {e:8.2f} s  {args.size_mib / e:8.0f} MiB/s")
        print(f"  ratio encrypted / plain:           {e / p:8.2f}")
        print(f"  crypt4gh.lib.encrypt (reference)   {library:8.2f} s  {args.size_mib / library:8.0f} MiB/s")
        print(f"  all runs: plain {' '.join(f'{x:.2f}' for x in plain)}; "
              f"encrypted {' '.join(f'{x:.2f}' for x in encrypted)}")
        return 0
    finally:
        run.cleanup()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
