"""Validating run crates with roc-validator offline: the RO-Crate 1.1 context comes from a per-test
cache seeded with the copy in tests/data (see its README), the workflow-run terms are inline in the
crates themselves (wes/crate.py). And an https server on loopback that serves crates (test_http_download's,
with its certificate for "localhost"), for runs from a crate's URL."""

from __future__ import annotations

import hashlib
import io
import ssl
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from requests import Request
from requests.structures import CaseInsensitiveDict
from requests_cache import CachedResponse, CachedSession
from requests_cache.models import CachedRequest

from .unit.test_http_download import Handler, LocalServer, _serve

CONTEXT_URL = "https://w3id.org/ro/crate/1.1/context"
CONTEXT_FILE = Path(__file__).parent / "data" / "ro-crate-1.1-context.jsonld"
CONTEXT_SHA256 = "bb5dd0a79ebd5a3b074e2faf96f437503234f8a4b8e84c7149de91eae0d2222a"
PROFILE = "provenance-run-crate-0.5"


def seeded_cache(directory: Path) -> Path:
    """A requests-cache for the validator that answers the 1.1 context URL, never expiring."""
    body = CONTEXT_FILE.read_bytes()
    assert hashlib.sha256(body).hexdigest() == CONTEXT_SHA256, "tests/data/ro-crate-1.1-context.jsonld changed"
    name = directory / "http_cache"
    session = CachedSession(str(name), backend="sqlite", expire_after=-1)
    request = CachedRequest.from_request(session.prepare_request(Request("GET", CONTEXT_URL)))
    session.cache.save_response(CachedResponse(
        status_code=200, reason="OK", url=CONTEXT_URL, encoding="utf-8", content=body,
        headers=CaseInsensitiveDict({"Content-Type": "application/ld+json"}), request=request))
    session.close()
    return name


def validate(crate: Path, cache: Path, severity: str = "REQUIRED") -> list[Any]:
    """The issues roc-validator finds at `severity` and above (offline), for a crate dir or zip."""
    from rocrate_validator import services
    from rocrate_validator.models import Severity, ValidationSettings

    result = services.validate(ValidationSettings(
        rocrate_uri=str(crate), profile_identifier=PROFILE, requirement_severity=Severity[severity],
        offline=True, cache_path=cache))
    return list(result.get_issues(min_severity=Severity[severity]))


def unzip(data: bytes, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(dest)
    return dest


class _Documents(Handler):
    server: DocumentServer

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        body = self.server.documents.get(path)
        if body is None:
            self._send(404, b"not here")
        else:
            self._send(200, body)


class DocumentServer(LocalServer):
    """https://localhost:PORT/PATH -> `documents[PATH]` (bodies the test puts there)."""

    def __init__(self, cert_files: tuple[Path, Path]) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert_files)
        super().__init__("127.0.0.1", context)
        self.RequestHandlerClass = _Documents
        self.documents: dict[str, bytes] = {}


@pytest.fixture()
def documents(cert_files: tuple[Path, Path]) -> Iterator[DocumentServer]:
    """Needs test_http_download's `cert_files` fixture imported beside it."""
    yield from _serve(DocumentServer(cert_files))
