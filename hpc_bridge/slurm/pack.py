"""Tasks packed into one Slurm job, each run as a job step in turn (pure: grouping and the launcher
script's model; the daemon does the I/O).

Slurm spends about a scheduling cycle on every job, so a hundred one-second tasks cost minutes as
jobs but seconds as steps of a few jobs. Each task keeps everything it has as a job of its own: its
own batch script (run by `srun` instead of `sbatch`), record, logs, time limit (`srun --time`) and
cancel (`scancel JOB.STEP`, or before its turn a marker the launcher checks).

Nobody declares a task short: a step that runs past the hand-back threshold makes the launcher
hand the tasks still waiting back to the daemon (a `returned` line in each one's record), which
submits them again (together in new packs; a task handed back twice alone). So a long task delays
the others by the threshold at most, and the pack's time limit needs room for one whole limit plus a
threshold per other member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from hpc_bridge.config import PackingSettings
from hpc_bridge.slurm.timelimit import minutes

T = TypeVar("T")
PACK_COMMENT = "hpc-bridge-pack:"
PACK_DIR = ".packs"  # under the work root: one directory per pack (its launcher, slurm.out, cancel/)


def pack_comment(pack_id: str) -> str:
    """The pack id travels with the Slurm job, so a restarted daemon can adopt it like a task's job."""
    return PACK_COMMENT + pack_id


def pack_id_from_comment(comment: str) -> str | None:
    return comment.removeprefix(PACK_COMMENT) if comment.startswith(PACK_COMMENT) else None


@dataclass(frozen=True)
class Member:
    """One task of a pack: the step named `name` runs `workdir/job.sh`; `record` is where the task's
    script writes its record, and where the launcher adds the step's end (or that it was skipped)."""

    task_id: str
    name: str
    workdir: str
    record: str
    output: str


@dataclass(frozen=True)
class PackScript:
    pack_id: str
    directory: str
    members: Sequence[Member]
    options: Sequence[tuple[str, str | None]]  # the members' #SBATCH options, time for all of them
    step_time: str | None  # each step's own limit: the members' time limit
    hand_back_seconds: int  # a step running this long hands the tasks still waiting back

    @property
    def comment(self) -> str:
        return pack_comment(self.pack_id)

    @property
    def step_seconds(self) -> int:
        """A step that fails after this long is taken to have run out of time."""
        limit = minutes(self.step_time) if self.step_time else None
        return int(limit * 60) if limit is not None else 0

    @property
    def cancel_dir(self) -> str:
        """`cancel/<task id>` here: the task is skipped when its turn comes."""
        return f"{self.directory}/cancel"

    @property
    def returned_marker(self) -> str:
        """Written when the launcher hands tasks back: a requeued pack then starts none of them."""
        return f"{self.directory}/returned"


def time_option(options: Sequence[tuple[str, str | None]]) -> str | None:
    """The `--time` value among #SBATCH options (None: none)."""
    return next((value for name, value in options if name == "time"), None)


def task_minutes(options: Sequence[tuple[str, str | None]]) -> int | None:
    """A task's time limit in minutes, from its #SBATCH options; None: no limit of its own, or one
    Slurm reads as none (`0`, `UNLIMITED`, `-1`)."""
    value = time_option(options)
    return minutes(value) if value else None


def pack_minutes(limit: float, count: int, hand_back_seconds: int) -> int:
    """The shared job's time for `count` members of `limit` minutes each: every member before the
    one that runs long ended within the threshold, so one whole limit plus a threshold for each
    other member, plus a minute for the launcher; Slurm grants whole minutes."""
    return math.ceil(limit + (count - 1) * hand_back_seconds / 60) + 1


def pack_options(options: Sequence[tuple[str, str | None]], count: int,
                 hand_back_seconds: int) -> list[tuple[str, str | None]]:
    """The shared job's options: the members' own (they are equal), with time enough that the last
    task still gets its whole limit. Members without a limit leave the pack without one too (the
    partition's default applies to it, as it would to each of them)."""
    limit = task_minutes(options)
    if limit is None:
        return list(options)
    total = pack_minutes(limit, count, hand_back_seconds)
    return [(name, str(total) if name == "time" else value) for name, value in options]


def pack_size(limit: float | None, settings: PackingSettings) -> int:
    """The most members a pack may have: `max_tasks`, fewer where `max_minutes` would be exceeded."""
    size = settings.max_tasks
    if limit is not None and settings.max_minutes is not None:
        while size > 1 and pack_minutes(limit, size, settings.hand_back_seconds) > settings.max_minutes:
            size -= 1
    return size


def group(items: Sequence[T], *, key: Callable[[T], Hashable],
          options: Callable[[T], Sequence[tuple[str, str | None]]], settings: PackingSettings) -> list[list[T]]:
    """Items with equal keys (equal options among them), in order, split into as few packs as the
    limits allow, as evenly as possible; a list of one is a task submitted as a job of its own."""
    by_key: dict[Hashable, list[T]] = {}
    for item in items:
        by_key.setdefault(key(item), []).append(item)
    packs: list[list[T]] = []
    for members in by_key.values():
        size = pack_size(task_minutes(options(members[0])), settings)
        if size < 2 or len(members) < 2:
            packs.extend([m] for m in members)
            continue
        count = math.ceil(len(members) / size)
        base, extra = divmod(len(members), count)
        start = 0
        for index in range(count):
            end = start + base + (1 if index < extra else 0)
            packs.append(members[start:end])
            start = end
    return packs
