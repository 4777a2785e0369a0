"""Executor image reference -> a SIF file the job can use.

A local `.sif` path is allowed only inside the site's image directories (checked after resolving
symlinks); a bare name `NAME` means `NAME.sif` in one of them. Registry references (Docker/OCI,
oras://, library://) need the image cache, which is not built yet: they are refused clearly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


class ImageError(ValueError):
    """The image cannot be used; the message names it and what was tried."""


def _inside(path: str, roots: Sequence[Path]) -> bool:
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if os.path.commonpath([real, base]) == base:
            return True
    return False


def resolve_image(reference: str, image_dirs: Sequence[Path]) -> str:
    if reference.startswith("/"):
        if not reference.endswith(".sif"):
            raise ImageError(f"image {reference!r}: a local image must be a .sif file")
        if not _inside(reference, image_dirs):
            raise ImageError(f"image {reference!r} is outside the allowed image directories "
                             f"({', '.join(map(str, image_dirs)) or 'none configured'})")
        if not os.path.isfile(reference):
            raise ImageError(f"image {reference!r} does not exist")
        return os.path.realpath(reference)
    if _NAME.match(reference):
        tried = [Path(d) / f"{reference}.sif" for d in image_dirs]
        for candidate in tried:
            if candidate.is_file() and _inside(str(candidate), image_dirs):
                return os.path.realpath(candidate)
        raise ImageError(f"image {reference!r} not found (tried {', '.join(map(str, tried)) or 'no image directories'})")
    raise ImageError(f"image {reference!r}: registry references (docker://, oras://, library://, "
                     "NAME:TAG) are not supported yet; use a SIF from the site's image directories")
