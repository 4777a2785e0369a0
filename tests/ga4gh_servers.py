"""Small GA4GH servers for the tests, over https on loopback (test_http_download's certificate for
"localhost"): a DRS 1.x server and a TRS 2.0.1 server.

The DRS server validates every object it sends against GA4GH's own JSON Schemas of DRS 1.2.0
(tests/data/drs-1.2.0, from the GA4GH DRS compliance suite on PyPI), so the fixture cannot drift from
the spec. The TRS server's answers are validated likewise, against the models trs-cli (PyPI) generated
from the TRS OpenAPI document: no package ships that document itself (tests/data/README.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import ssl
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import jsonschema
import referencing

from .unit.test_http_download import _serve

DRS_SCHEMAS = Path(__file__).parent / "data" / "drs-1.2.0"
DRS_SHA256 = {
    "access_method.json": "46afdbf31a281347a064f0b2d8ce20145e0888d8e595a1322d946eda9b2f3d03",
    "access_url.json": "c5138bc32b077518b1a6cec7dc786e2a84fbb6b307b407b3ba41db0ad6cdb958",
    "checksum.json": "fc7426d42c8672b5182db4d61121525bd92f4fc5fbcb7d1d49ea5c112c210e53",
    "contents_object.json": "6a696feb4c629812d983cb838b9f36c6308720d4153b0fdf7745d517ee413426",
    "drs_bundle.json": "45db0e95ba66f6519b6fae300051731a43ee5a6d9e30d1e97a06ea792d0c8aed",
    "drs_object.json": "8fec549d40d4e06623195ab7bdbbca32b0a5f9cd0876b502bd55820663ef4931",
    "error.json": "e75782e750c2c40f9e1a1ab9ed71b773d1b2b71323df454d4fdf7353b94d5244",
}


def _drs_validators() -> dict[str, jsonschema.Draft7Validator]:
    resources = []
    for name, digest in DRS_SHA256.items():
        raw = (DRS_SCHEMAS / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest, f"tests/data/drs-1.2.0/{name} changed"
        resources.append((name, referencing.Resource.from_contents(json.loads(raw),
                                                                  referencing.jsonschema.DRAFT7)))
    registry = referencing.Registry().with_resources(resources)
    return {name: jsonschema.Draft7Validator(registry[name].contents, registry=registry)
            for name in ("drs_object.json", "access_url.json", "error.json")}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GA4GHServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append((self.path, dict(self.headers.items())))
        status, body, kind = self.server.answer(urlsplit(self.path).path, dict(self.headers.items()))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


class GA4GHServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cert_files: tuple[Path, Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert_files)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.requests: list[tuple[str, dict[str, str]]] = []

    @property
    def host(self) -> str:
        """host:port as a drs:// or trs:// URI names it."""
        return f"localhost:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return f"https://{self.host}{path}"

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        raise NotImplementedError

    def serve(self) -> Iterator[GA4GHServer]:
        yield from _serve(self)  # type: ignore[arg-type, misc]  # the same thread and shutdown as the others


def _json(status: int, value: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(value).encode(), "application/json"


# --- DRS ------------------------------------------------------------------------------------------

@dataclass
class DrsEntry:
    """One object: its bytes are served at /data/ID for an https access method; `file` is a path on
    this machine for a file access method; `by_access_id`: the https URL only through /access/."""

    data: bytes
    file: Path | None = None
    https: bool = True
    by_access_id: bool = False
    checksum: str | None = None  # a wrong one, to make a mismatch
    required_token: str | None = None  # the bearer token the server wants
    access_headers: dict[str, str] = field(default_factory=dict)


class DrsServer(GA4GHServer):
    PREFIX = "/ga4gh/drs/v1/objects/"

    def __init__(self, cert_files: tuple[Path, Path]) -> None:
        super().__init__(cert_files)
        self.objects: dict[str, DrsEntry] = {}
        self.validators = _drs_validators()
        self.downloads: list[str] = []

    def _checked(self, status: int, value: Any, schema: str) -> tuple[int, bytes, str]:
        self.validators[schema].validate(value)
        return _json(status, value)

    def _error(self, status: int, message: str) -> tuple[int, bytes, str]:
        return self._checked(status, {"msg": message, "status_code": status}, "error.json")

    def drs_object(self, object_id: str) -> dict[str, Any]:
        entry = self.objects[object_id]
        methods: list[dict[str, Any]] = []
        if entry.file is not None:
            methods.append({"type": "file", "access_url": {"url": entry.file.as_uri()}})
        if entry.https:
            if entry.by_access_id:
                methods.append({"type": "https", "access_id": "dl"})
            else:
                methods.append({"type": "https", "access_url": self._access(object_id)})
        digest = entry.checksum or hashlib.sha256(entry.data).hexdigest()
        return {"id": object_id, "name": f"{object_id}.bin", "self_uri": f"drs://{self.host}/{quote(object_id)}",
                "size": len(entry.data), "created_time": "2026-12-06T10:00:00Z",
                "checksums": [{"checksum": digest, "type": "sha-256"}], "access_methods": methods}

    def _access(self, object_id: str) -> dict[str, Any]:
        access: dict[str, Any] = {"url": self.url(f"/data/{quote(object_id)}")}
        if self.objects[object_id].access_headers:
            access["headers"] = [f"{k}: {v}" for k, v in self.objects[object_id].access_headers.items()]
        return access

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        if path.startswith("/data/"):
            object_id = unquote(path[len("/data/"):])
            entry = self.objects.get(object_id)
            if entry is None:
                return 404, b"", "text/plain"
            if any(headers.get(k) != v for k, v in entry.access_headers.items()):
                return 403, b"", "text/plain"
            self.downloads.append(object_id)
            return 200, entry.data, "application/octet-stream"
        if not path.startswith(self.PREFIX):
            return self._error(404, "no such endpoint")
        rest = path[len(self.PREFIX):]
        object_id, _, access = rest.partition("/access/")
        object_id = unquote(object_id)
        entry = self.objects.get(object_id)
        if entry is None:
            return self._error(404, f"no object {object_id}")
        if entry.required_token and headers.get("Authorization") != f"Bearer {entry.required_token}":
            return self._error(401, "a bearer token is required")
        if access:
            if unquote(access) != "dl":
                return self._error(404, f"no access id {access}")
            return self._checked(200, self._access(object_id), "access_url.json")
        return self._checked(200, self.drs_object(object_id), "drs_object.json")


# --- TRS ------------------------------------------------------------------------------------------

def _trs_models() -> Any:
    """The TRS models trs-cli (PyPI, in the test extras) generated from the TRS OpenAPI document with
    datamodel-codegen. trs-cli is written for pydantic 1; its models module alone is loaded here
    with pydantic's own v1 API (its package, whose client needs pydantic 1, is never imported)."""
    spec = importlib.util.find_spec("trs_cli")
    assert spec is not None and spec.submodule_search_locations, "trs-cli is not installed (make venv)"
    path = Path(next(iter(spec.submodule_search_locations))) / "models.py"
    module = sys.modules.setdefault("trs_cli_models", types.ModuleType("trs_cli_models"))
    if not hasattr(module, "FileWrapper"):  # pydantic resolves the models' forward references there
        source = path.read_text().replace("from pydantic import", "from pydantic.v1 import")
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - a PyPI package's own models
    return module


@dataclass
class TrsTool:
    """One version of a CWL workflow: path -> content; the first path is the primary descriptor."""

    files: dict[str, str]


class TrsServer(GA4GHServer):
    PREFIX = "/ga4gh/trs/v2/tools/"

    def __init__(self, cert_files: tuple[Path, Path]) -> None:
        super().__init__(cert_files)
        self.tools: dict[tuple[str, str], TrsTool] = {}
        self.models = _trs_models()

    def _checked(self, status: int, value: Any, model: str) -> tuple[int, bytes, str]:
        kind = getattr(self.models, model)
        for item in value if isinstance(value, list) else [value]:
            kind.parse_obj(item)  # extra fields are forbidden there: a drifting fixture fails here
        return _json(status, value)

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        parts = path[len(self.PREFIX):].split("/") if path.startswith(self.PREFIX) else []
        if len(parts) < 5 or parts[1] != "versions" or parts[3] not in ("CWL", "PLAIN_CWL"):
            return self._checked(404, {"code": 404, "message": "no such endpoint"}, "Error")
        tool = self.tools.get((unquote(parts[0]), unquote(parts[2])))
        if tool is None:
            return self._checked(404, {"code": 404, "message": "no such tool version"}, "Error")
        primary = next(iter(tool.files))
        if parts[4] == "files" and len(parts) == 5:
            listing = [{"path": p, "file_type": "PRIMARY_DESCRIPTOR" if p == primary else "SECONDARY_DESCRIPTOR"}
                       for p in tool.files]
            return self._checked(200, listing, "ToolFile")
        if parts[4] == "descriptor":
            relative = unquote("/".join(parts[5:])) or primary
            if relative not in tool.files:
                return self._checked(404, {"code": 404, "message": f"no file {relative}"}, "Error")
            content = tool.files[relative]
            wrapper = {"content": content, "url": self.url(path),
                       "checksum": [{"checksum": hashlib.sha256(content.encode()).hexdigest(), "type": "sha-256"}]}
            return self._checked(200, wrapper, "FileWrapper")
        return self._checked(404, {"code": 404, "message": "no such endpoint"}, "Error")
