"""Remote File and Directory locations (http, https, s3, drs): the engine never reads them itself.

Each becomes a TES input by its URL, so the service fetches it under the site's policy (address
checks, caps, DRS resolution and checksums) for the job alone. cwltool would otherwise download an
http(s) input on the login node (its PathMapper), outside every policy, or fail on the others; the
path mapper (cwl/tool.py), the job's local-file check and the stager (cwl/taskspec.py) leave them as
they are, and this file-system access answers for them without touching the network.
"""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import urlsplit

from cwltool.errors import WorkflowException
from cwltool.stdfsaccess import StdFsAccess

REMOTE = frozenset({"http", "https", "s3", "drs"})


def is_remote(location: str) -> bool:
    return urlsplit(location).scheme.lower() in REMOTE


class RemoteFsAccess(StdFsAccess):
    """cwltool's file-system access, refusing to read remote locations (a clear error for
    `loadContents` or a listing, no size: the WES service records the size of a DRS object)."""

    def exists(self, fn: str) -> bool:
        return False if is_remote(fn) else super().exists(fn)

    def size(self, fn: str) -> int:
        if is_remote(fn):
            raise OSError(f"{fn}: a remote input; the engine does not read it")
        return super().size(fn)

    def open(self, fn: str, mode: str) -> IO[Any]:
        if is_remote(fn):
            raise WorkflowException(f"{fn}: a remote input is not read by the engine (loadContents needs a "
                                    "file in a data root or an attachment)")
        return super().open(fn, mode)

    def listdir(self, fn: str) -> list[str]:
        if is_remote(fn):
            raise WorkflowException(f"{fn}: a remote Directory cannot be listed by the engine")
        return super().listdir(fn)
