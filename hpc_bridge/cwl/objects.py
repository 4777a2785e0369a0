"""The File and Directory objects of a CWL value (a job order, an output object), nested ones too
(secondaryFiles, listing): pure, for the service (the outputs it serves), the engine and the crate
(the files they record)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def file_objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every File and Directory object in `value`, depth first, in order."""
    if isinstance(value, list):
        for item in value:
            yield from file_objects(item)
    elif isinstance(value, dict):
        if value.get("class") in ("File", "Directory"):
            yield value
        for item in value.values():
            if isinstance(item, dict | list):
                yield from file_objects(item)


def file_locations(value: Any) -> Iterator[str]:
    """Every File's location (or, without one, its path) in `value`, in order."""
    for obj in file_objects(value):
        where = obj.get("location") or obj.get("path")
        if obj["class"] == "File" and isinstance(where, str):
            yield where
