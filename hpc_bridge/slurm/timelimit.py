"""Slurm time limits, node counts and GPU requests as the numbers Slurm will grant, so per-user
limits can be compared (pure).

Each parser reads a strict subset of what Slurm reads and refuses the rest (ValueError): Slurm also
takes unit suffixes (`--nodes=1k` is 1024 nodes, `--gres=gpu:2k` 2048 GPUs), open ranges and C
integers that wrap around, and a form counted differently here than there would step around a limit.
"""

from __future__ import annotations

import re

SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|-1|UNLIMITED|INFINITE", re.IGNORECASE | re.ASCII)
INT_MAX = 2**31 - 1  # Slurm adds a time limit's parts up, and reads node counts, in a C int
NODES = re.compile(r"([0-9]+)(?:-([0-9]+))?")
COUNT = re.compile(r"[0-9]+")
# A GRES type that Slurm cannot take for a count: a count may carry a unit suffix (`2k`, `1g`).
GRES_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def minutes(value: str) -> int | None:
    """A Slurm `--time` value in the whole minutes Slurm grants (seconds round up); None for no limit:
    UNLIMITED, INFINITE, -1, and whatever comes to 0 minutes (`0`, `0:0`, `0-0`), which sbatch takes
    as no limit. Raises ValueError if malformed or too large for Slurm.

    Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (a day prefix changes what two parts mean)."""
    text = value.strip()
    if not SLURM_TIME.fullmatch(text):
        raise ValueError(f"{value!r} is not a Slurm time limit (MM, HH:MM:SS, D-HH:MM, ...)")
    if text.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, mins, secs = (parts + [0, 0])[:3]
        seconds = ((int(days) * 24 + hours) * 60 + mins) * 60 + secs
    elif len(parts) == 3:
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    else:
        seconds = parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)
    if seconds > INT_MAX:
        raise ValueError(f"{value!r} is longer than Slurm can count (about 68 years)")
    return (seconds + 59) // 60 or None


def node_count(value: str) -> int:
    """The most nodes `--nodes` lets Slurm allocate: N, or MIN-MAX. Slurm's other forms (unit suffixes,
    `2-0` for no maximum, signs, lists) are refused."""
    match = NODES.fullmatch(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a node count this service can check: use N or MIN-MAX")
    low, high = int(match[1]), int(match[2] or match[1])
    if not 1 <= low <= high <= INT_MAX:
        raise ValueError(f"{value!r}: node counts are between 1 and {INT_MAX}, MIN not above MAX")
    return high


def gpu_count(option: str, value: str | None) -> int:
    """GPUs asked for by `--gpus` (per job: `2`, `a100:2`, `a100:1,v100:2`) or `--gres` (per node:
    `gpu:2`, `gpu:a100:2,shard:1`; `gres:` prefixes are dropped by sbatch too). Raises ValueError for
    a GPU request whose count is not a plain number."""
    if value is None:
        return 0
    total = 0
    for item in value.split(","):
        fields = item.split(":")
        if option == "gpus":
            fields = ["gpu", *fields]
        while len(fields) > 1 and fields[0] == "gres":
            fields = fields[1:]
        if fields[0] == "gpu":
            total += _gpus(item, fields[1:])
    return total


def _gpus(item: str, fields: list[str]) -> int:
    """One `gpu[:type][:count]` request (without its name)."""
    if not fields:
        return 1
    if len(fields) == 1 and COUNT.fullmatch(fields[0]):
        return int(fields[0])
    if len(fields) == 1 and GRES_TYPE.fullmatch(fields[0]):
        return 1
    if len(fields) == 2 and GRES_TYPE.fullmatch(fields[0]) and COUNT.fullmatch(fields[1]):
        return int(fields[1])
    raise ValueError(f"cannot count the GPUs of {item!r}: use [TYPE:]COUNT with a plain number, and a "
                     "type that starts with a letter")
