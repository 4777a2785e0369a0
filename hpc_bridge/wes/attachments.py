"""`workflow_attachment` files, joined safely under a run's attachment directory.

A name is a relative path of plain components: no `..` or `.`, no empty component, not absolute,
no backslash (a Windows separator) or control character. Files are written walking from a directory descriptor with
`O_NOFOLLOW` and created with `O_EXCL`, so nothing can make a write leave the directory, and
nothing but plain files and directories is ever created. Sizes are capped per file and per run.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A directory only passed through: O_PATH needs search permission on it, not read permission.
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 16
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_NAME = 4096
MAX_COMPONENT = 255


class AttachmentError(ValueError):
    """A name or a file that is refused; the message names it and says why (a 400)."""


def check_name(name: str) -> str:
    """The attachment name as a clean relative path, or AttachmentError."""
    shown = repr(name)
    if not name:
        raise AttachmentError("workflow_attachment: a part has no filename")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise AttachmentError(f"workflow_attachment {shown[:80]}...: name too long")
    if name.startswith("/"):
        raise AttachmentError(f"workflow_attachment {shown}: absolute names are not allowed")
    bad = _FORBIDDEN.search(name)
    if bad:
        raise AttachmentError(f"workflow_attachment {shown}: the character {bad[0]!r} is not allowed")
    parts = name.split("/")
    for part in parts:
        if part in ("..", "."):
            raise AttachmentError(f"workflow_attachment {shown}: '{part}' components are not allowed")
        if not part:
            raise AttachmentError(f"workflow_attachment {shown}: empty path component")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT:
            raise AttachmentError(f"workflow_attachment {shown}: a component is longer than "
                                  f"{MAX_COMPONENT} bytes")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise AttachmentError(f"workflow_attachment {shown}: invalid Unicode") from None
    return name


class Attachments:
    """The attachment directory of one run (created by `create`, filled by `add`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []
        self.total = 0

    def create(self) -> None:
        os.mkdir(self.root, 0o750)

    @contextmanager
    def _dir(self, parts: list[str], create: bool) -> Iterator[int]:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o750, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except (NotADirectoryError, FileNotFoundError, OSError) as exc:
                    raise AttachmentError(f"workflow_attachment: {'/'.join(parts)} is not a "
                                          f"directory ({exc.strerror})") from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def add(self, name: str, stream: IO[bytes], *, max_bytes: int, max_total: int) -> int:
        """Write one attachment; returns its size. Raises AttachmentError (duplicate, too big, a
        name clashing with a directory of another attachment)."""
        name = check_name(name)
        *parents, base = name.split("/")
        with self._dir(parents, create=True) as dfd:
            try:
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o640, dir_fd=dfd)
            except FileExistsError:
                raise AttachmentError(f"workflow_attachment {name!r}: given twice (or also used as "
                                      "a directory)") from None
            size = 0
            try:
                with os.fdopen(fd, "wb", closefd=True) as out:
                    while chunk := stream.read(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise AttachmentError(f"workflow_attachment {name!r}: larger than "
                                                  f"{max_bytes} bytes, the maximum per file here")
                        if self.total + size > max_total:
                            raise AttachmentError(f"workflow_attachment: the attachments add up to more "
                                                  f"than {max_total} bytes, the maximum per run here")
                        out.write(chunk)
            except BaseException:
                os.unlink(base, dir_fd=dfd)
                raise
        self.names.append(name)
        self.total += size
        return size

    def by_suffix(self, path: str, *, directory: bool) -> str | None:
        """The attachment a client-side absolute path stands for: the longest attached name (a
        directory: a parent of attached files) that `path` ends with, component-wise. wes-client
        sends job files as absolute paths of the client's machine and attaches them relative to
        the workflow's directory; this maps them back."""
        candidates = self.names if not directory else {
            "/".join(n.split("/")[:i]) for n in self.names for i in range(1, n.count("/") + 1)}
        matches = [n for n in candidates if path == "/" + n or path.endswith("/" + n)]
        return max(matches, key=len) if matches else None

    def resolve(self, name: str, *, what: str) -> tuple[str, bool]:
        """(real path, is_dir) of an attachment named by a relative URL (e.g. `wf.cwl`, `data/x`);
        AttachmentError if it is not one (`what` names the field in the message)."""
        while name.startswith("./"):  # `./a:b` is how a relative URL names `a:b`
            name = name[2:]
        try:
            clean = check_name(name)
        except AttachmentError as exc:
            raise AttachmentError(f"{what}: {exc}".replace("workflow_attachment ", "")) from None
        path = os.path.join(self.root, clean)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = None
        real = os.path.realpath(path)
        if (mode is None or os.path.commonpath([real, os.path.realpath(self.root)]) != os.path.realpath(
                self.root) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
            attached = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
            raise AttachmentError(f"{what}: {name!r} is not one of the attached files "
                                  f"({attached or 'none were attached'})")
        return real, stat.S_ISDIR(mode)


def open_beneath(root: str, rel: str) -> int:
    """An O_RDONLY descriptor for `root/rel`, walking one component at a time without following
    any symlink (a job user may own the directories on the way and swap one for a symlink at any
    moment: no check-then-open). The directories on the way are only passed through (O_PATH), so
    the server's account needs search permission on them, not read permission: a data root or a
    site directory of mode 0711 on the way is fine. Raises FileNotFoundError, or OSError for a
    symlink or an odd name."""
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise FileNotFoundError(rel)
    if not parts:
        return os.open(root, _DIR_FLAGS)
    fd = os.open(root, _PATH_FLAGS)
    try:
        for part in parts[:-1]:
            child = os.open(part, _PATH_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
