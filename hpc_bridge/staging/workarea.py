"""The daemon's only way into a task's work area, which belongs to the job user.

The daemon may run as root, and the job user can change anything in its own work area (a job of
the same user runs there), so no path-based call may be used: `open`, `mkdir` and `chown` would
follow a symlink swapped in to `/etc`. Every operation here walks from a directory descriptor,
one component at a time, with `O_NOFOLLOW`, and hands ownership over with `fchown`/`lchown`. A new
work area is filled while it still belongs to the daemon and handed to the job user last.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpc_bridge.jobside.collect import MAX_DEPTH
from hpc_bridge.runas.helper import STATUS_DIR

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directory levels `files` walks: the collector copies at most MAX_DEPTH levels below an output,
# plus the few of a wildcard's own path.
_MAX_WALK = MAX_DEPTH + 64


def status_root(work_root: Path) -> Path:
    """Per-user execution: the directory holding each task's status directory (made by the daemon)."""
    return work_root / STATUS_DIR


def status_dir(work_root: Path, task_id: str) -> Path:
    """Per-user execution: where a task's job leaves its record, slurm.out and executor logs. The
    root helper makes it (owner the job user, group the service account's, mode 2750) because the
    work area itself is private to the user; the same layout is fixed in the helper."""
    return status_root(work_root) / task_id


class WorkAreaError(OSError):
    """Something in the work area is not what the daemon put there (a symlink, a file for a dir)."""


class WorkArea:
    def __init__(self, path: Path, uid: int | None = None, gid: int | None = None) -> None:
        """`uid`/`gid`: the job user the area is handed to (None: it stays the daemon's)."""
        self.path = path
        self._owner = (uid, gid if gid is not None else -1) if uid is not None else None

    def create(self) -> None:
        """Make the area (0700) if it is new; an existing one must be a real directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(self.path).st_mode):
                raise WorkAreaError(f"{self.path} exists and is not a directory") from None

    def hand_over(self) -> None:
        """Give the area to the job user: done last, so it never holds a half-made area."""
        with self._dir("") as fd:
            self._chown_fd(fd)

    @contextmanager
    def _dir(self, rel: str, create: bool = False) -> Iterator[int]:
        fd = os.open(self.path, _DIR_FLAGS)
        try:
            for part in [p for p in rel.split("/") if p]:
                if part in (".", ".."):
                    raise WorkAreaError(f"{rel!r}: no . or .. in work-area paths")
                if create:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass
                    else:
                        if self._owner:
                            os.chown(part, *self._owner, dir_fd=fd, follow_symlinks=False)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise WorkAreaError(f"{self.path}/{rel}: not a plain directory ({exc.strerror})") from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def make_dirs(self, rel: str) -> None:
        with self._dir(rel, create=True):
            pass

    def write(self, rel: str, content: str) -> None:
        """Create or replace the file `rel`; a symlink at its name is refused, never followed."""
        parent, name = os.path.split(rel)
        with self._dir(parent, create=True) as dfd:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600, dir_fd=dfd)
            except OSError as exc:
                raise WorkAreaError(f"{self.path}/{rel}: cannot write ({exc.strerror})") from None
            with os.fdopen(fd, "w") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise WorkAreaError(f"{self.path}/{rel}: not a regular file")
                self._chown_fd(fd)
                fh.write(content)

    def open_read(self, rel: str) -> int:
        """A descriptor to read `rel`, no symlink followed on the way and no FIFO blocking; what
        it is (type, links, owner) is the caller's to check on the descriptor."""
        parent, name = os.path.split(rel)
        with self._dir(parent) as dfd:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)

    def kind(self, rel: str) -> str | None:
        """"file" or "dir" for a regular file or a real directory at `rel`; None for anything else
        (nothing, a symlink, a FIFO)."""
        parent, name = os.path.split(rel)
        try:
            with self._dir(parent) as dfd:
                mode = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
        except OSError:
            return None
        return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else None

    def exists(self, rel: str) -> bool:
        return self.kind(rel) is not None

    def move_in(self, source: Path, rel: str) -> None:
        """Rename a file or tree the daemon prepared elsewhere (same filesystem, private to the
        daemon, so nothing in it can be swapped meanwhile) to `rel`, handed over first."""
        if self._owner:
            for top, dirs, files in os.walk(source):
                for name in [*dirs, *files]:
                    os.chown(os.path.join(top, name), *self._owner, follow_symlinks=False)
            os.chown(source, *self._owner, follow_symlinks=False)
        parent, name = os.path.split(rel)
        with self._dir(parent, create=True) as dfd:
            os.rename(source, name, dst_dir_fd=dfd)

    def files(self, rel: str) -> Iterator[tuple[str, int]]:
        """The regular files at `rel` (itself a file: one pair with path "") as (path relative to
        `rel`, open descriptor; the caller closes it), walked without following any symlink.
        Symlinks and special files are skipped, and so are files that are not the job user's own
        or have other links: a job could otherwise have the daemon read what the job user cannot."""
        parent, name = os.path.split(rel)
        with self._dir(parent) as dfd:
            yield from self._walk(dfd, name, "")

    def _walk(self, dfd: int, name: str, path: str, depth: int = 0) -> Iterator[tuple[str, int]]:
        if depth > _MAX_WALK:  # one open descriptor per level: a deep tree must not exhaust them
            raise WorkAreaError(f"{self.path}: more than {_MAX_WALK} directory levels below {path.split('/')[0]}")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink
                return
            raise
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            try:
                for entry in sorted(os.listdir(fd)):
                    yield from self._walk(fd, entry, f"{path}/{entry}" if path else entry, depth + 1)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and (not self._owner or st.st_uid == self._owner[0]):
            yield path, fd
        else:
            os.close(fd)

    def relative(self, path: str) -> str:
        """A path the planner gave (absolute, inside the area) -> relative to the area."""
        rel = os.path.relpath(path, self.path)
        if rel == "." or rel.startswith(".."):
            raise WorkAreaError(f"{path} is not inside the work area {self.path}")
        return rel

    def _chown_fd(self, fd: int) -> None:
        if self._owner:
            os.fchown(fd, *self._owner)
