"""One daemon per database."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class DaemonLock:
    """An exclusive lock file next to the database; a second daemon cannot take it."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".daemon.lock")
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
