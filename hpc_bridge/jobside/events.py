"""The job's record (`record.jsonl`): the contract between what runs on the compute node and the daemon.

One JSON object per line, `{"event": NAME, "time": ISO-8601 UTC, ...}`, appended by the batch script
(`slurm_templates/task.sh.j2`), the pack launcher (`pack.sh.j2`) and the output collector
(`jobside/collect.py`, which is copied alone into the job and so spells its names itself), and read by
`slurm/record.py`. `tests/unit/test_jobside_contract.py` holds every writer to this list.
"""

from __future__ import annotations

JOB_START = "job_start"  # job_id, step_id (a packed task's step)
JOB_SIGNAL = "job_signal"  # signal: the batch script was told to stop
JOB_END = "job_end"  # exit_code: the script reached its end
INPUT_ERROR = "input_error"  # input, message: an input changed or could not be staged
UNSAFE_PATH = "unsafe_path"  # executor, stream: a redirection led outside its bind
EXECUTOR_START = "executor_start"  # executor
EXECUTOR_END = "executor_end"  # executor, exit_code
COLLECT_END = "collect_end"  # exit_code of the output collector
OUTPUT = "output"  # output, url, path, size_bytes: one file delivered
OUTPUT_WARNING = "output_warning"  # output, message: something skipped (a symlink out of the bind)
OUTPUT_ERROR = "output_error"  # output, message: the output failed
STEP_END = "step_end"  # exit_code, timed_out: a packed task's job step as srun saw it
SKIPPED = "skipped"  # a packed task cancelled before its turn
RETURNED = "returned"  # job_id: a packed task handed back to the daemon before its turn (a step ran long)

WRITERS: dict[str, frozenset[str]] = {
    "task.sh.j2": frozenset({JOB_START, JOB_SIGNAL, JOB_END, INPUT_ERROR, UNSAFE_PATH, EXECUTOR_START,
                             EXECUTOR_END, COLLECT_END}),
    "pack.sh.j2": frozenset({STEP_END, SKIPPED, RETURNED}),
    "collect.py": frozenset({OUTPUT, OUTPUT_WARNING, OUTPUT_ERROR}),
}
ALL: frozenset[str] = frozenset().union(*WRITERS.values())
