"""Slurm time limits and GPU requests as numbers, so per-user limits can be compared (pure)."""

from __future__ import annotations

import re

SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)


def minutes(value: str) -> float | None:
    """A Slurm `--time` value in minutes; None for UNLIMITED/INFINITE. Raises ValueError if malformed.

    Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (a day prefix changes what two parts mean)."""
    text = value.strip()
    if not SLURM_TIME.fullmatch(text):
        raise ValueError(f"{value!r} is not a Slurm time limit (MM, HH:MM:SS, D-HH:MM, ...)")
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, mins, secs = (parts + [0, 0])[:3]
        return int(days) * 1440 + hours * 60 + mins + secs / 60
    if len(parts) == 1:
        return float(parts[0])
    if len(parts) == 2:
        return parts[0] + parts[1] / 60
    return parts[0] * 60 + parts[1] + parts[2] / 60


def gpu_count(option: str, value: str | None) -> int:
    """GPUs asked for by `--gpus` (`2`, `a100:2`) or `--gres` (`gpu:2`, `gpu:a100:2,...`)."""
    if value is None:
        return 0
    if option == "gpus":
        last = value.split(":")[-1]
        return int(last) if last.isdigit() else 1
    total = 0
    for item in value.split(","):
        fields = item.split(":")
        if fields[0] == "gpu":
            total += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return total
