"""One fetcher for everything a CWL document names: `run:`, `$import`, `$include`, `$schemas`, and
the File/Directory literals it carries (input and step defaults, InitialWorkDir listings).

schema-salad's default fetcher reads any file the process can read and reaches any URL it can: in
the API process (the service account) and again in the engine. Here a document may name only
files inside the run's own directories (`attachments/`, `remote/`) and the site's data roots, but
never other runs' directories (the runs root lies inside a data root), and only http(s) URLs the
address policy of `storage.http` allows, fetched with its caps and a timeout. Anything else is
refused with a message naming the reference and the reason, never the content.

The policy is plain data (`to_json`/`from_json`): the WES layer builds it per run and the engine
gets it through the run's request.json, so both processes refuse the same things.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwltool.process import Process, shortname
from schema_salad.exceptions import ValidationException
from schema_salad.fetcher import Fetcher
from schema_salad.utils import CacheType, FetcherCallableType

from hpc_bridge.config import HttpInputSettings, SiteConfig
from hpc_bridge.staging import http
from hpc_bridge.staging.paths import within
from hpc_bridge.staging.schemes import FileScheme, SchemeError
from hpc_bridge.wes.attachments import open_beneath

__all__ = ["FetchPolicy", "FetchRefused", "PolicyFetcher", "check_documents", "check_literals",
           "fetcher_constructor"]

OUTSIDE = "is outside the run's attachments and the data roots"
_HTTP = ("http", "https")
_POLICY_KEYS = frozenset({"roots", "exclude", "http"})


class FetchRefused(ValidationException):
    """A reference the policy does not allow; the message names it and why, never its content."""


def _scheme(url: str) -> str:
    if url.startswith("/"):
        return "file"
    try:
        return urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def _deepest(real: str, dirs: tuple[str, ...]) -> str | None:
    """The most specific of `dirs` (symlinks resolved) that holds `real`."""
    holding = [d for d in map(os.path.realpath, dirs) if within(real, d)]
    return max(holding, key=len, default=None)


def document_http(config: SiteConfig) -> HttpInputSettings:
    """`storage.http` for a workflow document (an https workflow_url, a TRS descriptor, a `run:`):
    with the timeout and size of a submitted document when those are smaller."""
    settings = config.storage.http
    return settings.model_copy(update={"timeout": min(settings.timeout, config.wes.https_timeout),
                                       "max_bytes": min(settings.max_bytes, config.wes.max_attachment_bytes)})


@dataclass(frozen=True)
class FetchPolicy:
    """What one run's documents may name. `roots`: directories whose files they may read;
    `exclude`: directories inside a root that stay closed unless a more specific root opens them
    (the runs root: a run's own directories are roots, its neighbours' are not); `http`: the
    address policy, caps and timeout for http(s) references."""

    roots: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    http: HttpInputSettings = field(default_factory=HttpInputSettings)

    @classmethod
    def for_run(cls, config: SiteConfig, run_dir: Path, readable: Sequence[str]) -> FetchPolicy:
        """The run's attachments and remote document, what its owner may read of the data roots
        (`readable`: their areas, or every data root without owner areas), never the runs root nor a
        controlled-access dataset (`storage.passport_areas`: a document is read by the service);
        http(s) as `storage.http`, with the timeout and size of a submitted document
        (`wes.https_timeout`, `wes.max_attachment_bytes`) when those are smaller."""
        runs_root = config.wes.root(config.storage.data_roots)
        excluded = [str(area.path) for area in config.storage.passport_areas]
        if runs_root is not None:
            excluded.append(str(runs_root))
        return cls(roots=(str(run_dir / "attachments"), str(run_dir / "remote"), *readable),
                   exclude=tuple(excluded), http=document_http(config))

    def to_json(self) -> dict[str, Any]:
        return {"roots": list(self.roots), "exclude": list(self.exclude),
                "http": self.http.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: Any) -> FetchPolicy:
        """The policy back from `to_json` (the engine's request.json). Raises ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError("fetch policy: must be an object")
        unknown = sorted(set(data) - _POLICY_KEYS)
        if unknown:
            raise ValueError(f"fetch policy: unknown key {unknown[0]!r}")
        paths: dict[str, tuple[str, ...]] = {}
        for key in ("roots", "exclude"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(p, str) and os.path.isabs(p) for p in value):
                raise ValueError(f"fetch policy: {key!r} must be a list of absolute paths")
            paths[key] = tuple(value)
        return cls(paths["roots"], paths["exclude"], HttpInputSettings.model_validate(data.get("http") or {}))

    def local_path(self, url: str) -> tuple[str, str]:
        """(root, real path) of a file: URL or absolute path the policy allows; FetchRefused
        otherwise. The path need not exist, and nothing is opened."""
        try:
            path = FileScheme.host_path(url)
        except SchemeError:
            raise FetchRefused(f"{url}: not a local file:///path") from None
        real = os.path.realpath(path)
        root = _deepest(real, self.roots)
        closed = _deepest(real, self.exclude)
        if root is None or (closed is not None and len(root) <= len(closed)):
            raise FetchRefused(f"{url} {OUTSIDE}")
        return root, real

    def check_location(self, url: str) -> None:
        """Raise FetchRefused unless `url` may be named (read later by cwltool or a task): a file
        inside the roots, or an http(s) URL that passes the offline address check."""
        scheme = _scheme(url)
        if scheme == "file":
            self.local_path(url)
        elif scheme in _HTTP:
            try:
                http.check_url(url, self.http)
            except ValueError as exc:  # names the URL (credentials stripped) and the reason
                raise FetchRefused(str(exc)) from None
        else:
            raise FetchRefused(f"{url}: the scheme {scheme or '(none)'!r} is not allowed (documents may "
                               "name files inside the run's attachments and the data roots, and "
                               "http(s) URLs)")

    def read_file(self, url: str) -> bytes:
        """The bytes of an allowed file, opened from its root without following any symlink (one
        swapped in since the check is refused, not followed), capped at `http.max_bytes`."""
        root, real = self.local_path(url)
        try:
            fd = open_beneath(root, os.path.relpath(real, root))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise FetchRefused(f"{url}: refused (a symlink on the way; documents are opened "
                                   "without following symlinks)") from None
            reason = exc.strerror or type(exc).__name__
            raise ValidationException(f"{url}: cannot be read ({reason})") from None
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise ValidationException(f"{url}: not a regular file")
            data = stream.read(self.http.max_bytes + 1)
        if len(data) > self.http.max_bytes:
            raise ValidationException(f"{url}: larger than {self.http.max_bytes} bytes, the limit for "
                                      "a document")
        return data


class _Budget:
    """The time all http(s) fetches of one load may take together (the policy's timeout), counted
    from the first: each gets what is left, so a document naming many slow URLs cannot hold a
    request for their sum."""

    def __init__(self, total: float) -> None:
        self.total = total
        self._deadline: float | None = None
        self._lock = threading.Lock()

    def settings(self, url: str, settings: HttpInputSettings) -> HttpInputSettings:
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + self.total
                return settings
            left = self._deadline - time.monotonic()
        if left <= 0:
            raise ValidationException(f"{url}: not fetched: the documents' http(s) fetches used up "
                                      f"the {self.total:g} s allowed")
        return settings.model_copy(update={"timeout": left})


class PolicyFetcher(Fetcher):
    """schema-salad's Fetcher held to a FetchPolicy. Refusals are also appended to `refusals`,
    since schema-salad swallows some failures (an unreadable `$schemas` is only a warning)."""

    def __init__(self, cache: CacheType, policy: FetchPolicy, refusals: list[str], budget: _Budget) -> None:
        self.cache = cache
        self.policy = policy
        self.refusals = refusals
        self._budget = budget

    def _refused(self, exc: FetchRefused) -> FetchRefused:
        self.refusals.append(str(exc))
        return exc

    def fetch_text(self, url: str, content_types: list[str] | None = None) -> str:
        url = urllib.parse.urldefrag(url)[0]
        cached = self.cache.get(url)
        if isinstance(cached, str):  # cwltool's own CWL schemas, preloaded; nothing else stores text
            return cached
        try:
            data = self._fetch(url)
        except FetchRefused as exc:
            raise self._refused(exc) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationException(f"{url}: not UTF-8 text") from None

    def _fetch(self, url: str) -> bytes:
        scheme = _scheme(url)
        if scheme == "file":
            return self.policy.read_file(url)
        self.policy.check_location(url)  # refuses other schemes; http(s): before any connection
        try:
            return http.fetch(url, self._budget.settings(url, self.policy.http))
        except http.DownloadError as exc:
            raise ValidationException(str(exc)) from None

    def check_exists(self, url: str) -> bool:
        """Existence inside the policy only: a refused reference is refused whether or not it
        exists (no probing of the service's files). An allowed http(s) URL is taken to exist
        without a request: it is settled when (and if) it is fetched."""
        url = urllib.parse.urldefrag(url)[0]
        if url in self.cache or _scheme(url) == "mailto":
            return True
        try:
            if _scheme(url) == "file":
                return os.path.exists(self.policy.local_path(url)[1])
            self.policy.check_location(url)
        except FetchRefused as exc:
            raise self._refused(exc) from None
        return True

    def urljoin(self, base_url: str, url: str) -> str:
        if url.startswith("_:"):
            return url
        if _scheme(url) == "file" and _scheme(base_url) not in ("", "file"):
            raise self._refused(FetchRefused(f"{url}: a remote document ({base_url}) cannot name a "
                                             "local file"))
        return urllib.parse.urljoin(base_url, url)


def fetcher_constructor(policy: FetchPolicy, refusals: list[str] | None = None) -> FetcherCallableType:
    """For LoadingContext.fetcher_constructor (and a job Loader's): schema-salad calls it with
    (cache, session) for every Loader it makes; the session is never used. All fetchers made by one
    constructor share `refusals` and the http(s) time budget."""
    budget = _Budget(policy.http.timeout)
    found = refusals if refusals is not None else []

    def construct(cache: CacheType, session: Any) -> Fetcher:
        return PolicyFetcher(cache, policy, found, budget)

    return construct


def _label(item: Any, where: str, index: int) -> str:
    if isinstance(item, Mapping) and isinstance(item.get("id"), str) and not item["id"].startswith("_:"):
        return f"{where}.{shortname(item['id'])}" if where else shortname(item["id"])
    return f"{where}[{index}]"


def check_literals(value: Any, where: str, base: str, policy: FetchPolicy) -> None:
    """Raise FetchRefused for the first File/Directory literal or `$schemas` entry of a document
    tree (or job object) the policy does not allow, naming its field from `where`; relative
    `$schemas` are taken against `base`. Embedded processes (`run`) are left to check_documents."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_literals(item, _label(item, where, index), base, policy)
        return
    if not isinstance(value, Mapping):
        return
    named: list[tuple[str, Any]] = []
    if value.get("class") in ("File", "Directory"):
        named = [(key, value.get(key)) for key in ("location", "path")]
    schemas = value.get("$schemas")
    entries = schemas if isinstance(schemas, list) else [schemas]
    named += [(f"$schemas[{i}]", urllib.parse.urljoin(base, s)) for i, s in enumerate(entries) if isinstance(s, str)]
    for key, location in named:
        if isinstance(location, str) and location and not location.startswith(("$(", "${", "_:")):
            try:
                policy.check_location(location)
            except FetchRefused as exc:
                raise FetchRefused(f"{where + '.' if where else ''}{key}: {exc}") from None
    for key, item in value.items():
        if key not in ("run", "$schemas"):  # embedded processes are walked as processes
            check_literals(item, f"{where}.{key}" if where else str(key), base, policy)


def check_documents(process: Process, policy: FetchPolicy, prefix: str = "") -> None:
    """After loading: raise FetchRefused for the first File/Directory literal (input and step `in`
    defaults, listings, ...) or `$schemas` entry of the process, or of any process embedded in it,
    that the policy does not allow, naming the field (`inputs.ref.default.location: ...`). cwltool
    reads such files itself (it copies a default into the outputs), outside any TES check; the
    fetcher has already vetted what loading read (`run:`, `$import`, `$include`)."""
    base = urllib.parse.urldefrag(str(process.tool.get("id", "")))[0]
    check_literals(process.tool, prefix.rstrip("."), base, policy)
    schemas = process.metadata.get("$schemas") if isinstance(process.metadata, Mapping) else None
    if schemas is not None:
        check_literals({"$schemas": schemas}, prefix.rstrip("."), base, policy)
    for step in getattr(process, "steps", ()):  # a Workflow: each step's own process
        check_documents(step.embedded_tool, policy, f"{prefix}steps.{shortname(step.id)}.run.")
