"""URL schemes for task inputs and outputs: what each one supports, and how its data reaches a job.

A scheme turns an input URL into an `InputSource` (a host path to bind, link or copy, or a URL the
daemon downloads before submission) and an output URL into a host destination (or into an upload
the daemon makes after the job). The built-in ones are `file` (inside the site's data roots) and
`http`/`https` (inputs only); more plug in through the `hpc_bridge.schemes` entry-point group, each
entry a callable `(SiteConfig) -> Scheme | None` (None: not enabled at this site), without touching
the core: this package's own `s3` (`staging/s3.py`) is one. Every call names the task's owner, whose
areas (`staging.areas`) bound what a `file` URL may reach. The same list feeds service-info `storage`
and the 400 for an unsupported URL, so the two can never disagree.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

from hpc_bridge.config import SiteConfig
from hpc_bridge.staging import http
from hpc_bridge.staging.areas import AreaPolicy, RunOwner
from hpc_bridge.staging.paths import resolve_destination

ENTRY_POINT_GROUP = "hpc_bridge.schemes"
FILE, DIRECTORY = "FILE", "DIRECTORY"


class SchemeError(ValueError):
    """A URL this site cannot use; the message says why (it becomes a 400)."""


class TransferError(Exception):
    """A download or upload by the daemon that failed; the message names the URL (never any
    credentials) and the reason, for the task's system logs."""


@dataclass(frozen=True)
class InputSource:
    """How an input's data reaches the job: `bind` mounts `source` read-only (zero copy),
    `hardlink`/`copy` put it into the work area inside the job (as the job user, so file
    permissions hold), `download` is fetched by the daemon before the job is submitted."""

    how: Literal["bind", "hardlink", "copy", "download"]
    source: str
    type: str


class Scheme(Protocol):
    names: tuple[str, ...]
    sends_outputs: bool  # whether the daemon uploads outputs (`output` may answer None)

    def locations(self) -> list[str]:
        """What service-info `storage` advertises for this scheme."""
        ...

    def input(self, url: str, declared_type: str | None, owner: str) -> InputSource: ...

    def output(self, url: str, owner: str, *, directory: bool = False) -> str | None:
        """The host path an output is copied to (inside the job), or None: the job leaves it in
        the work area and the daemon `upload`s it once the job has ended."""
        ...

    def download(self, url: str, dest: Path, type: str, owner: str, stop: threading.Event | None = None) -> None:
        """An input of `how="download"`, into the new file or directory `dest`; `stop` set: give up
        (the daemon is stopping)."""
        ...

    def upload(self, url: str, files: Iterator[tuple[str, int]], owner: str, *, directory: bool,
               stop: threading.Event | None = None) -> list[str]:
        """An output `output` answered None for: (relative path, open descriptor) pairs, all or
        nothing; the URLs written. `stop` set: give up (a cancel), leaving nothing."""
        ...

    def discard(self, urls: list[str], owner: str) -> None:
        """Remove what `upload` wrote (a later output of the task failed)."""
        ...


class _NoTransfers:
    """For schemes whose data the job itself reads and writes: the daemon never moves any."""

    sends_outputs = False

    def download(self, url: str, dest: Path, type: str, owner: str, stop: threading.Event | None = None) -> None:
        raise TransferError(f"{url!r}: not downloaded by the service")

    def upload(self, url: str, files: Iterator[tuple[str, int]], owner: str, *, directory: bool,
               stop: threading.Event | None = None) -> list[str]:
        raise TransferError(f"{url!r}: not uploaded by the service")

    def discard(self, urls: list[str], owner: str) -> None:
        raise TransferError("nothing is uploaded by the service here")


class FileScheme(_NoTransfers):
    """`file:///path` and bare absolute paths, inside the owner's areas of the data roots only."""

    names: tuple[str, ...] = ("file",)

    def __init__(self, config: SiteConfig, areas: AreaPolicy | None = None) -> None:
        self._roots = list(config.storage.data_roots)
        self._areas = areas or AreaPolicy(config)
        self._how = config.storage.file_inputs

    def locations(self) -> list[str]:
        return [root.as_uri() for root in self._roots]

    @staticmethod
    def host_path(url: str) -> str:
        if url.startswith("/"):
            path = url
        else:
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise SchemeError(f"{url!r}: file URLs must name a local path (file:///...), "
                                  f"not host {parts.netloc!r}")
            if parts.query or parts.fragment:
                raise SchemeError(f"{url!r}: file URLs cannot have a query or fragment")
            path = unquote(parts.path)
        if not path.startswith("/") or "\0" in path:
            raise SchemeError(f"{url!r}: not an absolute path")
        return os.path.normpath(path)

    def input(self, url: str, declared_type: str | None, owner: str) -> InputSource:
        real = os.path.realpath(self.host_path(url))
        if self._areas.area_of(real, owner, write=False) is None:
            raise SchemeError(f"{url!r} is outside {self._areas.describe(owner, write=False)}")
        if os.path.isdir(real):
            actual = DIRECTORY
        elif os.path.isfile(real):
            actual = FILE
        else:
            raise SchemeError(f"{url!r} does not exist (or is not a regular file or directory)")
        if declared_type and declared_type != actual:
            raise SchemeError(f"{url!r} is a {actual.lower()}, but the input says type {declared_type}")
        return InputSource(self._how, real, actual)

    def output(self, url: str, owner: str, *, directory: bool = False) -> str:
        real = resolve_destination(self.host_path(url), self._roots)
        if real is None or self._areas.area_of(real, owner, write=True) is None:
            raise SchemeError(f"{url!r} is outside {self._areas.describe(owner, write=True)}")
        return real


class HttpScheme(_NoTransfers):
    """Read-only web inputs, downloaded on the login node with the caps of `storage.http`."""

    names: tuple[str, ...] = ("http", "https")

    def __init__(self, config: SiteConfig) -> None:
        self._settings = config.storage.http

    def locations(self) -> list[str]:
        return ["http://", "https://"]

    def input(self, url: str, declared_type: str | None, owner: str) -> InputSource:
        if declared_type == DIRECTORY:
            raise SchemeError(f"{url!r}: an http(s) input can only be a FILE")
        try:
            http.check_url(url, self._settings)
        except ValueError as exc:
            raise SchemeError(str(exc)) from None
        return InputSource("download", url, FILE)

    def output(self, url: str, owner: str, *, directory: bool = False) -> str:
        raise SchemeError(f"{url!r}: http(s) is read-only here; outputs go to file:// URLs")

    def download(self, url: str, dest: Path, type: str, owner: str, stop: threading.Event | None = None) -> None:
        try:  # bounded by storage.http.timeout instead of `stop`
            http.download(url, dest, self._settings)
        except http.DownloadError as exc:
            raise TransferError(str(exc)) from None


def load_schemes(config: SiteConfig, areas: AreaPolicy) -> dict[str, Scheme]:
    """URL scheme name -> handler: built-ins, then plug-ins (which may replace a built-in)."""
    handlers: list[Scheme] = [FileScheme(config, areas)]
    if config.storage.http.enabled:
        handlers.append(HttpScheme(config))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (handler := ep.load()(config)) is not None:  # None: not enabled at this site
            handlers.append(handler)
    return {name: h for h in handlers for name in h.names}


class Schemes:
    """The schemes of one site, looked up by URL. `run_owner` (the store's answer to "whose run is
    this?") gives each owner their WES runs' directories; without it no run directory is reachable."""

    def __init__(self, config: SiteConfig, run_owner: RunOwner | None = None) -> None:
        self.areas = AreaPolicy(config, run_owner)
        self._by_name = load_schemes(config, self.areas)
        drs = config.storage.drs
        self._drs = [f"drs://{h.host}/" for h in drs.hosts] if drs.enabled else []  # resolved at creation

    def locations(self, owner: str | None = None) -> list[str]:
        """What service-info advertises: with owner areas, the caller's own and the shared ones
        (only the shared ones to a caller without a token)."""
        seen: dict[str, None] = {}
        for handler in self._by_name.values():
            if isinstance(handler, FileScheme) and self.areas.enabled:
                seen.update(dict.fromkeys(Path(p).as_uri() for p in self.areas.readable(owner)))
            else:
                seen.update(dict.fromkeys(handler.locations()))
        return [*seen, *self._drs]

    def for_url(self, url: str) -> Scheme:
        try:
            name = "file" if url.startswith("/") else urlsplit(url).scheme.lower()
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise SchemeError(f"malformed URL {url!r}: {exc}") from None
        handler = self._by_name.get(name)
        if handler is None:
            raise SchemeError(f"unsupported URL {url!r} (supported here: {', '.join(self.locations())})")
        return handler
