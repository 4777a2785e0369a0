"""Host paths: plain enough to be written unquoted, and containment checks, made after resolving
symlinks and `..`, by path components.

A string-prefix test would let `/data-evil` pass for `/data`, and a symlink inside a root would
lead anywhere; `realpath` + `commonpath` has neither hole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

# Paths that end up on #SBATCH lines, in Apptainer's bind lists or compiled into the root helper,
# none of which can quote: absolute, plain characters only.
PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./-]+")


def plain_path(value: Path) -> Path:
    """A pydantic validator's body: the path, or ValueError."""
    if not PLAIN_PATH.fullmatch(str(value)):
        raise ValueError("must be an absolute path of letters, digits and _ . / - only")
    return value


def within(path: str, root: str) -> bool:
    """True if `path` is `root` or lies under it (both taken as given: resolve them first)."""
    return os.path.commonpath([path, root]) == root


def resolve_inside(path: str, roots: Iterable[Path | str]) -> str | None:
    """The real path of `path` if it lies inside one of `roots` (also resolved), else None."""
    real = os.path.realpath(path)
    for root in roots:
        if within(real, os.path.realpath(root)):
            return real
    return None


def resolve_destination(path: str, roots: Iterable[Path | str]) -> str | None:
    """For a path that may not exist yet: resolve its nearest existing ancestor, then append the
    missing components; None if the result leaves every root."""
    path = os.path.normpath(path)
    missing: list[str] = []
    head = path
    while not os.path.lexists(head):
        head, tail = os.path.split(head)
        missing.append(tail)
        if head == "/":
            break
    real = resolve_inside(head, roots)
    if real is None:
        return None
    return os.path.join(real, *reversed(missing)) if missing else real
