"""Naming one process for good: a pid alone may be recycled, a pid with its start time may not."""

from __future__ import annotations


def process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot, /proc/PID/stat field 22); None when it is
    gone. The WES supervisor knows its engines by it, and an engine its service."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None
