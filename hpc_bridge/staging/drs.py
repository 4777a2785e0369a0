"""GA4GH DRS ids as inputs: `drs://HOST/ID`, or `drs://PREFIX:ACCESSION` where the site maps the
prefix to a host. Resolved once, when the task is created (an unknown id is then a 400), into what
the task's job will actually read: a `file://` URL (the object already sits in a data root: the
same zero-copy bind as a path, held to the same path policy) or an `https://` URL (downloaded on
the login node under `storage.http`'s rules, then checked against the object's size and checksum).

Lookups are DRS 1.x: `GET https://HOST/ga4gh/drs/v1/objects/{id}`, then, for an access method that
has only an `access_id`, `GET .../objects/{id}/access/{access_id}`. They go through the same
address policy, caps and timeouts as every other fetch (staging/http.py), only to the hosts the
site lists, and carry the user's bearer token only to those the site marks `forward_token`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from hpc_bridge.config import DrsHost, DrsSettings, HttpInputSettings
from hpc_bridge.staging import http
from hpc_bridge.staging.schemes import TransferError

API = "/ga4gh/drs/v1"
MAX_DOCUMENT_BYTES = 1024 * 1024
# DRS checksum types (IANA hash names) -> hashlib names, strongest first: the first one an object
# lists of these is what a download is checked against.
CHECKSUMS = {"sha-256": "sha256", "sha256": "sha256", "sha-512": "sha512", "sha-1": "sha1", "sha1": "sha1",
             "md5": "md5"}


class DrsError(ValueError):
    """A DRS id that cannot be an input here; the message names it and says why."""


@dataclass(frozen=True)
class DrsRef:
    uri: str
    host: DrsHost
    object_id: str

    @property
    def base(self) -> str:
        return f"https://{self.host.host}{API}/objects/{quote(self.object_id, safe='')}"


@dataclass(frozen=True)
class Resolved:
    """What a DRS input is read from; kept with the task (its `resolved` column) for the daemon."""

    drs: str
    url: str
    size: int | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    dataset: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resolved:
        return cls(**data)

    def expected(self) -> tuple[str, str] | None:
        """(hashlib name, hex digest) a download must have: the strongest checksum listed."""
        for kind, name in CHECKSUMS.items():
            if kind in self.checksums:
                return name, self.checksums[kind].lower()
        return None


def is_drs(url: str) -> bool:
    return url[:6].lower() == "drs://"


def parse(uri: str, settings: DrsSettings) -> DrsRef:
    """`drs://HOST/ID` or `drs://PREFIX:ACCESSION` -> the host the site allows and the object id."""
    rest = uri[6:]
    if "/" in rest:
        name, _, object_id = rest.partition("/")
        object_id = unquote(object_id)
    elif ":" in rest and rest.split(":", 1)[0] in settings.prefixes:
        prefix, _, object_id = rest.partition(":")
        name = settings.prefixes[prefix]
    else:
        known = ", ".join(settings.prefixes) or "none"
        raise DrsError(f"{uri}: not drs://HOST/ID, nor a compact id with a prefix this site knows ({known})")
    host = settings.host(name)
    if host is None:
        raise DrsError(f"{uri}: DRS server {name!r} is not one this site uses (storage.drs.hosts)")
    if not object_id or any(c in object_id for c in "\0\r\n"):
        raise DrsError(f"{uri}: no object id")
    return DrsRef(uri, host, object_id)


class Resolver:
    def __init__(self, settings: DrsSettings, http_settings: HttpInputSettings) -> None:
        self._settings = settings
        self._http = http_settings.model_copy(update={"max_bytes": min(http_settings.max_bytes, MAX_DOCUMENT_BYTES),
                                                      "timeout": min(http_settings.timeout, settings.timeout)})

    def resolve(self, uri: str, token: str | None) -> Resolved:
        if not self._settings.enabled:
            raise DrsError("drs:// inputs are not enabled here (storage.drs)")
        ref = parse(uri, self._settings)
        headers = {}
        if token and ref.host.forward_token:
            headers["Authorization"] = f"Bearer {token}"
        obj = self._get(ref.base, headers, uri)
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise DrsError(f"{uri}: the DRS server's answer is not a DrsObject")
        if obj.get("contents"):
            raise DrsError(f"{uri}: a DRS bundle (a collection of objects); name its objects one by one")
        size = obj.get("size")
        checksums = {str(c.get("type", "")).lower(): str(c.get("checksum", ""))
                     for c in _list(obj.get("checksums")) if isinstance(c, dict)}
        methods = [m for m in _list(obj.get("access_methods")) if isinstance(m, dict)]
        for kind in self._settings.prefer:
            for method in methods:
                if str(method.get("type", "")).lower() != kind:
                    continue
                access = method.get("access_url")
                if not isinstance(access, dict) and isinstance(method.get("access_id"), str):
                    access = self._get(f"{ref.base}/access/{quote(method['access_id'], safe='')}", headers, uri)
                if not isinstance(access, dict) or not isinstance(access.get("url"), str):
                    continue
                url = access["url"]
                if urlsplit(url).scheme.lower() != kind:
                    continue
                extra = _headers(access.get("headers"))
                return Resolved(drs=uri, url=url, size=size if isinstance(size, int) else None,
                                checksums=checksums, headers=extra if kind == "https" else {},
                                name=obj.get("name") if isinstance(obj.get("name"), str) else None,
                                dataset=ref.host.dataset)
        offered = sorted({str(m.get("type")) for m in methods}) or ["none"]
        raise DrsError(f"{uri}: no access method this site can use (it offers {', '.join(offered)}; "
                       f"this site takes {', '.join(self._settings.prefer)})")

    def _get(self, url: str, headers: dict[str, str], uri: str) -> Any:
        try:
            return http.fetch_json(url, self._http, headers)
        except http.DownloadError as exc:
            if exc.status in (401, 403, 404):
                what = "no such DRS object" if exc.status == 404 else "access refused by the DRS server"
                raise DrsError(f"{uri}: {what} (HTTP {exc.status})") from None
            raise DrsError(f"{uri}: the DRS server could not be asked: {exc}") from None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _headers(value: Any) -> dict[str, str]:
    """An AccessURL's `headers`: `Name: value` strings (DRS 1.x); anything else is ignored."""
    headers = {}
    for line in value if isinstance(value, list) else []:
        name, sep, text = str(line).partition(":")
        if sep and name.strip() and "\n" not in line and "\r" not in line:
            headers[name.strip()] = text.strip()
    return headers


def download(resolved: Resolved, dest: Path, settings: HttpInputSettings) -> None:
    """The object from its https access URL (with the headers DRS gave for it) into `dest`, which
    must then have its size and checksum; TransferError names the object otherwise."""
    try:
        http.download(resolved.url, dest, settings, resolved.headers)
    except http.DownloadError as exc:  # its access URL is never shown: it may be presigned
        raise TransferError(f"{resolved.drs}: the download from its https access URL failed: {exc.reason}") from None
    if (problem := verify(dest, resolved)) is not None:
        dest.unlink()
        raise TransferError(problem)


def verify(path: Path, resolved: Resolved) -> str | None:
    """Why a downloaded object is not the one DRS described (size, then checksum); None if it is."""
    size = path.stat().st_size
    if resolved.size is not None and size != resolved.size:
        return f"{resolved.drs}: {size} bytes downloaded, the DRS object has {resolved.size}"
    expected = resolved.expected()
    if expected is None:
        return None
    name, digest = expected
    h = hashlib.new(name)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != digest:
        return f"{resolved.drs}: checksum mismatch: the DRS object's {name} is {digest}, the download's {h.hexdigest()}"
    return None
