"""The SHA-256 of a SIF file, for the crate of a run whose tasks ran it (wes/crate.py).

A SIF is the site's (an image directory, or the cache the daemon pulls into), never a user's, so
the service reads it itself: opened without following a final symlink, regular files only. SIFs
are often gigabytes, so each digest is remembered in memory per version of the file -- its path,
device, inode, size, mtime and ctime as fstat gives them for the descriptor that was read -- and a
SIF is read once per process however many crates name it. In memory rather than in a sidecar file
written at pull time: it covers the site's own SIFs too, whose directories the service need not be
able to write, and adds no second writer to the image cache; its cost is one read of each SIF after
a restart (about a second per GB).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
_Key = tuple[str, int, int, int, int, int]


@dataclass(frozen=True)
class SifDigest:
    sha256: str
    changed_ns: int  # the file's ctime: when its content or inode last changed


class SifDigests:
    """Digests of the last `size` SIF versions read; `reads` counts the files actually hashed. Two
    requests for a new version at once may both read it: nothing is held while a SIF is read."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._known: OrderedDict[_Key, str] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0

    def of(self, path: Path) -> SifDigest | None:
        """None when there is no regular file at `path` (the image was removed since) or it changed
        while it was read."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return self._of(fd, path)
        finally:
            os.close(fd)

    def _of(self, fd: int, path: Path) -> SifDigest | None:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        key = _key(path, before)
        with self._lock:
            sha256 = self._known.get(key)
            if sha256 is not None:
                self._known.move_to_end(key)
        if sha256 is None:
            sha256 = self._read(fd)
            if _key(path, os.fstat(fd)) != key:  # written to while read: the digest of no version
                return None
            self._remember(key, sha256)
        return SifDigest(sha256, before.st_ctime_ns)

    def _read(self, fd: int) -> str:
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
        with self._lock:
            self.reads += 1
        return digest.hexdigest()

    def _remember(self, key: _Key, sha256: str) -> None:
        with self._lock:
            self._known[key] = sha256
            while len(self._known) > self._size:
                self._known.popitem(last=False)


def _key(path: Path, st: os.stat_result) -> _Key:
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


SIF_DIGESTS = SifDigests()  # the service's, shared by its threads
