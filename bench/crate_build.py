#!/usr/bin/env python3
"""Benchmark: building a WES run's Provenance Run Crate (wes/crate.py) for an N-way scatter run.

    .venv/bin/python bench/crate_build.py [--n 100] [--repeat 5]

No cluster needed: the run is what the store and the engine hold after an N-way scatter of
bench/workflows/scatter.cwl (its packed document made by the engine's own `cwltool --pack`, N
COMPLETE tasks with their Slurm jobs, inputs and outputs, the files' digests), and the clock runs
around `crate.build` (metadata, the packed workflow, the zip), the call `GET /runs/{id}/ro-crate`
makes. It prints the median and range of `--repeat` builds, the zip's size and its entity count,
then validates the crate once with roc-validator (offline, provenance-run-crate-0.5, REQUIRED) so the
figure is that of a valid crate, and reports how long validation took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc_bridge.cwl import provenance  # noqa: E402
from hpc_bridge.cwl.fetch import FetchPolicy  # noqa: E402
from hpc_bridge.store import TaskRow  # noqa: E402
from hpc_bridge.store.runs import RunRow  # noqa: E402
from hpc_bridge.wes import crate  # noqa: E402
from tests.crates import seeded_cache, unzip, validate  # noqa: E402

WORKFLOWS = ROOT / "bench" / "workflows"
STAMP = "2026-12-06T10:00:00.000000Z"


def scatter_run(tmp: Path, n: int) -> tuple[RunRow, list[TaskRow], crate.RunRecords]:
    """The run as the service and the engine leave it after an N-way scatter."""
    run_dir = tmp / "run"
    run_dir.mkdir()
    for name in ("scatter.cwl", "echo.cwl"):
        (run_dir / name).write_text((WORKFLOWS / name).read_text())
    if not provenance.write_packed(str(run_dir / "scatter.cwl"), FetchPolicy(roots=(str(run_dir),)), run_dir):
        raise SystemExit("cwltool --pack failed on bench/workflows/scatter.cwl")
    outputs_dir = run_dir / "outputs"
    outputs_dir.mkdir()
    outs = []
    for i in range(n):
        (outputs_dir / f"out_{i}.txt").write_text(f"m{i}\n")
        outs.append({"class": "File", "location": f"file://{outputs_dir}/out_{i}.txt"})
    outputs = {"outs": outs}
    provenance.record(run_dir, inputs={}, outputs=outputs, engine={"name": "cwltool", "version": "bench"})
    run_id = str(uuid.uuid4())
    run = RunRow(seq=1, id=run_id, owner="local", state="COMPLETE", created_at=STAMP, updated_at=STAMP,
                 start_time=STAMP, end_time=STAMP,
                 request={"workflow_url": "scatter.cwl", "workflow_params": {"messages": [f"m{i}" for i in range(n)]}},
                 tags={}, run_dir=str(run_dir), workflow=str(run_dir / "scatter.cwl"), cancel_requested=0,
                 engine_pid=None, engine_start=None, launches=1, exit_code=0, outputs=outputs, system_logs=[])
    tasks = []
    for i in range(n):
        task_id = str(uuid.uuid4())
        tasks.append(TaskRow(
            seq=i + 1, id=task_id, owner="local", name=f"each_{i + 1}", state="COMPLETE", created_at=STAMP,
            updated_at=STAMP, tags={"wes_run_id": run_id, "cwl_step": "each" if i == 0 else f"each_{i + 1}"},
            task={"executors": [{"image": "docker.io/python:3-slim",
                                 "command": ["sh", "-c", "echo \"$0\"", f"m{i}"], "stdout": "/out/out.txt"}],
                  "outputs": [{"url": outs[i]["location"], "path": "/out/out.txt"}]},
            job_id=str(1000 + i // 16), workdir=f"/srv/work/{task_id}", cancel_requested=0, submit_attempts=1,
            next_attempt_at=0.0, start_time=STAMP, end_time=STAMP, executor_logs=[{"exit_code": 0}],
            system_logs=[], streams=[], outputs=[{"url": outs[i]["location"], "path": "/out/out.txt",
                                                  "size_bytes": str(len(f"m{i}\n"))}],
            cleaned_at=None, run_as=None, pack_id=str(i // 16)))
    return run, tasks, crate.read_records(str(run_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="scatter width (default 100)")
    parser.add_argument("--repeat", type=int, default=5, help="builds timed (default 5; the median is reported)")
    args = parser.parse_args()
    context = crate.CrateContext(service_name="hpc-bridge", service_version="bench",
                                 service_url="http://127.0.0.1:8000/ga4gh/wes/v1", agent="local")
    with tempfile.TemporaryDirectory(prefix="hpcb-crate-bench-") as tmp:
        run, tasks, records = scatter_run(Path(tmp), args.n)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            data = crate.build(run, tasks, records, context)
            times.append(time.perf_counter() - t0)
        directory = unzip(data, Path(tmp) / "crate")
        entities = len(json.loads((directory / "ro-crate-metadata.json").read_text())["@graph"])
        t0 = time.perf_counter()
        issues = validate(directory, seeded_cache(Path(tmp)))
        validation = time.perf_counter() - t0
    if issues:
        print("\n".join(f"{i.identifier}: {i.message}" for i in issues), file=sys.stderr)
        raise SystemExit(f"the crate does not validate: {len(issues)} REQUIRED issues")
    print(f"\nProvenance Run Crate of a {args.n}-way scatter run ({args.n} TES tasks), {args.repeat} builds")
    median = statistics.median(times)
    print(f"{'crate build (median)':32} {median:8.3f} s   (min {min(times):.3f}, max {max(times):.3f})")
    print(f"{'zip size':32} {len(data) / 1024:8.1f} KiB  ({entities} entities)")
    print(f"{'roc-validator, REQUIRED':32} {validation:8.3f} s   (0 issues, offline)")
    print(f"target: build under 2 s for a 100-way scatter: {'met' if median < 2 else 'NOT met'}"
          + ("" if args.n >= 100 else f" (measured at N={args.n})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
