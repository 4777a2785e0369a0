"""Workflows from a GA4GH TRS v2 registry: a `workflow_url` that is `trs://HOST/ID/VERSION` (ID and
VERSION each percent-encoded, as the TRS data model writes them) or the https URL of a version's
descriptor (`https://HOST/ga4gh/trs/v2/tools/ID/versions/VERSION/TYPE/descriptor`).

Resolved at submission, from the hosts the site allows (`wes.trs_hosts`): the version's file list
(`.../CWL/files`), then each primary and secondary descriptor (`.../CWL/descriptor/PATH`, a
FileWrapper, its checksum checked when it has one). They become the run's attachments under
`trs/`, so relative `run:` references resolve among them under the run's ordinary fetch policy,
and nothing of the registry is fetched again by the engine. Every request goes through the same
address policy, caps and timeouts as any other fetch (staging/http.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from hpc_bridge.config import HttpInputSettings
from hpc_bridge.staging import http

API = "/ga4gh/trs/v2"
DESCRIPTORS = ("PRIMARY_DESCRIPTOR", "SECONDARY_DESCRIPTOR")
PREFIX = "trs/"  # where a TRS workflow's files are attached
MAX_FILES = 500
_DESCRIPTOR_URL = re.compile(rf"^{API}/tools/([^/]+)/versions/([^/]+)/(CWL|PLAIN_CWL)/descriptor(/.*)?$")
_CHECKSUMS = {"sha-256": "sha256", "sha256": "sha256", "sha-512": "sha512", "sha-1": "sha1", "sha1": "sha1"}


class TrsError(ValueError):
    """A TRS workflow that cannot be run here; the message names the tool and version."""


@dataclass(frozen=True)
class TrsRef:
    host: str  # host[:port]
    tool_id: str
    version: str

    @property
    def uri(self) -> str:
        return f"trs://{self.host}/{quote(self.tool_id, safe='')}/{quote(self.version, safe='')}"

    @property
    def version_url(self) -> str:
        return (f"https://{self.host}{API}/tools/{quote(self.tool_id, safe='')}/versions/"
                f"{quote(self.version, safe='')}")

    def __str__(self) -> str:
        return f"TRS tool {self.tool_id!r} version {self.version!r} at {self.host}"


@dataclass(frozen=True)
class TrsFile:
    path: str
    content: bytes
    primary: bool


def parse(url: str) -> TrsRef | None:
    """The tool version a workflow_url names, or None when it is no TRS URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "trs":
        segments = parts.path.split("/")
        if len(segments) != 3 or not all(segments[1:]) or not parts.netloc:
            raise TrsError(f"{url!r}: a TRS URI is trs://HOST/ID/VERSION (ID and VERSION percent-encoded)")
        return TrsRef(parts.netloc, unquote(segments[1]), unquote(segments[2]))
    if scheme == "https" and (match := _DESCRIPTOR_URL.match(parts.path)):
        return TrsRef(parts.netloc, unquote(match.group(1)), unquote(match.group(2)))
    return None


def fetch(ref: TrsRef, hosts: list[str], settings: HttpInputSettings, max_bytes: int,
          max_total: int = 1 << 62) -> list[TrsFile]:
    """The version's CWL descriptors, the primary one first: each at most `max_bytes`, all together
    `max_total`, and at most MAX_FILES of them."""
    if ref.host.lower() not in (h.lower() for h in hosts):
        raise TrsError(f"{ref}: TRS host {ref.host!r} is not one this site allows (wes.trs_hosts: "
                       f"{', '.join(hosts) or 'none'})")
    limited = settings.model_copy(update={"max_bytes": min(settings.max_bytes, max_bytes)})
    listing = _get(f"{ref.version_url}/CWL/files", ref, limited)
    if not isinstance(listing, list):
        raise TrsError(f"{ref}: the registry's file list is not a list of ToolFiles")
    if len(listing) > MAX_FILES:
        raise TrsError(f"{ref}: {len(listing)} files, more than the {MAX_FILES} a run may take from a registry")
    files: list[TrsFile] = []
    total = 0
    for entry in listing:
        if not isinstance(entry, dict) or entry.get("file_type") not in DESCRIPTORS:
            continue
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise TrsError(f"{ref}: a descriptor without a path in the registry's file list")
        wrapper = _get(f"{ref.version_url}/CWL/descriptor/{quote(path)}", ref, limited)
        files.append(TrsFile(path, _content(wrapper, path, ref, limited), entry["file_type"] == DESCRIPTORS[0]))
        total += len(files[-1].content)
        if total > max_total:
            raise TrsError(f"{ref}: its descriptors are more than {max_total} bytes together")
    primary = [f for f in files if f.primary]
    if len(primary) != 1:
        raise TrsError(f"{ref}: {len(primary)} primary CWL descriptors, not one")
    return primary + [f for f in files if not f.primary]


def _content(wrapper: Any, path: str, ref: TrsRef, settings: HttpInputSettings) -> bytes:
    if not isinstance(wrapper, dict):
        raise TrsError(f"{ref}: descriptor {path!r} is not a FileWrapper")
    content: bytes
    if isinstance(wrapper.get("content"), str):
        content = wrapper["content"].encode()
    elif isinstance(wrapper.get("url"), str):
        try:
            content = http.fetch(wrapper["url"], settings)
        except http.DownloadError as exc:
            raise TrsError(f"{ref}: descriptor {path!r}: {exc}") from None
    else:
        raise TrsError(f"{ref}: descriptor {path!r} has neither content nor url")
    checksums = wrapper.get("checksum")
    for checksum in checksums if isinstance(checksums, list) else []:
        name = _CHECKSUMS.get(str(checksum.get("type", "")).lower()) if isinstance(checksum, dict) else None
        if name and hashlib.new(name, content).hexdigest() != str(checksum.get("checksum", "")).lower():
            raise TrsError(f"{ref}: descriptor {path!r} does not match its {checksum['type']} checksum")
    return content


def _get(url: str, ref: TrsRef, settings: HttpInputSettings) -> Any:
    try:
        return http.fetch_json(url, settings)
    except http.DownloadError as exc:
        if exc.status == 404:
            raise TrsError(f"{ref}: no such tool or version in the registry (HTTP 404)") from None
        raise TrsError(f"{ref}: {exc}") from None
