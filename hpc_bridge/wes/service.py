"""WES operations: create (parse, attach, resolve, validate, record), list, get, status, cancel,
the run's TES tasks, and its log streams. No engine process here: the supervisor starts, watches
and cancels engines; this layer validates, records and reads.

A run lives in `<runs_root>/<run id>/`: `attachments/` (the client's files), `remote/` (an https
workflow document fetched at submission), `request.json` (what the engine runs), `stdout.log` and
`stderr.log` (the engine's), `outputs.json` (written by the engine on success).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

from hpc_bridge import jsonlimit
from hpc_bridge.auth.passport import Passports, area_datasets
from hpc_bridge.auth.verifier import Identity
from hpc_bridge.c4gh.keys import Crypt4ghKeyError, parse_recipients, required_root
from hpc_bridge.config import SiteConfig
from hpc_bridge.containers.digest import SIF_DIGESTS, SifDigest
from hpc_bridge.containers.images import ImageError, resolve_image
from hpc_bridge.cwl.encrypt import PARAMETER as ENCRYPT_PARAMETER
from hpc_bridge.cwl.fetch import FetchPolicy, document_http
from hpc_bridge.cwl.objects import file_objects
from hpc_bridge.errors import BadRequest, Conflict, NotFound, ServiceError, TooManyRequests
from hpc_bridge.lifecycle import RUN_FINAL
from hpc_bridge.staging import drs, http
from hpc_bridge.staging.schemes import FileScheme, SchemeError, Schemes
from hpc_bridge.store import Store, TaskRow
from hpc_bridge.store.runs import (
    ActiveRunsLimit,
    RunRow,
    RunStore,
    decode_token,
    encode_token,
)
from hpc_bridge.tes.models import State
from hpc_bridge.wes import CRATE_OUTPUT, crate, fromcrate, trs
from hpc_bridge.wes.attachments import AttachmentError, Attachments, open_beneath
from hpc_bridge.wes.models import (
    CWL_VERSIONS,
    ENGINE,
    DefaultWorkflowEngineParameter,
    Log,
    RunListResponse,
    RunLog,
    RunRequest,
    RunStatus,
    RunSummary,
    ServiceInfo,
    TaskListResponse,
    TaskLog,
    WorkflowEngineVersion,
    WorkflowTypeVersion,
)
from hpc_bridge.wes.rundir import engine_launch_refusal

DEFAULT_PAGE_SIZE = 256
MAX_PAGE_SIZE = 2047
FORM_FIELDS = ("workflow_params", "workflow_type", "workflow_type_version", "tags", "workflow_engine",
               "workflow_engine_version", "workflow_engine_parameters", "workflow_url")
ATTACHMENT_FIELD = "workflow_attachment"
STREAMS = ("stdout", "stderr")
CHUNK = 1 << 20


class ServiceUnavailable(ServiceError):
    status = 503


def engine_version() -> str | None:
    try:
        return version(ENGINE)
    except PackageNotFoundError:
        return None


def wes_time(stamp: str | None) -> str | None:
    """The store's microsecond timestamps in the spec's "%Y-%m-%dT%H:%M:%SZ"."""
    return stamp[:19] + "Z" if stamp else None


@dataclass(frozen=True)
class Links:
    """Absolute URLs this service serves, built from the request's own base URL."""

    wes: str  # .../ga4gh/wes/v1
    tes: str  # .../ga4gh/tes/v1

    def run_stream(self, run_id: str, stream: str) -> str:
        return f"{self.wes}/runs/{run_id}/{stream}"

    def tasks(self, run_id: str) -> str:
        return f"{self.wes}/runs/{run_id}/tasks"

    def task_stream(self, run_id: str, task_id: str, stream: str) -> str:
        return f"{self.wes}/runs/{run_id}/tasks/{task_id}/{stream}"

    def tes_task(self, task_id: str) -> str:
        return f"{self.tes}/tasks/{task_id}"

    def crate(self, run_id: str) -> dict[str, str]:
        """How an ended run lists its Provenance Run Crate among its outputs."""
        return {"url": f"{self.wes}/runs/{run_id}/ro-crate", "encodingFormat": "application/zip",
                "conformsTo": crate.PROVENANCE_PROFILE}


@dataclass
class Submission:
    """A run request as the API received it: single-valued fields (strings from a multipart form,
    or JSON values from a JSON body) and the attachment parts."""

    fields: dict[str, Any]
    attachments: list[tuple[str | None, IO[bytes]]]


def _json_object(value: Any, field: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = jsonlimit.loads(value)
        except ValueError as exc:
            raise BadRequest(f"{field}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{field}: must be a JSON object")
    return value


def _string_map(value: Any, field: str, *, scalars: bool = False) -> dict[str, str]:
    result = {}
    for key, item in _json_object(value, field).items():
        if scalars and isinstance(item, bool):
            item = "true" if item else "false"
        elif scalars and isinstance(item, int | float):
            item = str(item)
        if not isinstance(item, str):
            raise BadRequest(f"{field}.{key}: must be a string")
        result[key] = item
    return result



def _page(page_size: int | None, page_token: str | None) -> tuple[int, int | None]:
    """A page request -> (size, the seq the page continues from); the spec lets a server cap the
    size, so a large one is clamped, not refused."""
    size = DEFAULT_PAGE_SIZE if page_size is None else min(page_size, MAX_PAGE_SIZE)
    if size < 1:
        raise BadRequest("page_size: must be at least 1")
    try:
        return size, decode_token(page_token) if page_token else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None

class RunService:
    def __init__(self, store: Store, config: SiteConfig, *, on_change: Callable[[], None] = lambda: None,
                 schemes: Schemes | None = None) -> None:
        self.runs = RunStore(store)
        self._config = config
        self._settings = config.wes
        self.on_change = on_change
        self.schemes = schemes or Schemes(config, self.runs.owner_of)
        self.root = config.wes.root(config.storage.data_roots)
        self._drs = drs.Resolver(config.storage.drs, config.storage.http)
        self._passports = Passports(config.auth)

    # -- creating a run ------------------------------------------------------------------------

    def reload_keys(self) -> None:
        """SIGHUP: the visa issuers' keys read (or fetched) again."""
        self._passports = Passports(self._config.auth)

    def _check_crypt4gh(self, engine_params: dict[str, str]) -> None:
        """Recipients of the run's encrypted outputs, checked now; a run whose directory lies under
        one of `crypt4gh.required_roots` must name some."""
        name = f"workflow_engine_parameters.{ENCRYPT_PARAMETER}"
        text = engine_params.get(ENCRYPT_PARAMETER)
        if text is None:
            if self.root is not None and (root := required_root(self.root, self._config.crypt4gh)):
                raise BadRequest(f"{name}: required here (runs live under {root}, whose outputs must be "
                                 "encrypted): base64 Crypt4GH public keys of the outputs' readers")
            return
        if not self._config.crypt4gh.enabled:
            raise BadRequest(f"{name}: this site does not offer Crypt4GH (crypt4gh.enabled is off)")
        try:
            parse_recipients(text)
        except Crypt4ghKeyError as exc:
            raise BadRequest(f"{name}: {exc}") from None

    def create(self, submission: Submission, owner: str, *, run_as: str | None = None,
               identity: Identity | None = None) -> str:
        """Validate and record a run; `run_as` is the Unix user its tasks run as (None: the
        service account); `identity` the caller's, whose Passport visas may be needed."""
        request = self._parse(submission.fields)
        if self.root is None:
            raise ServiceUnavailable("workflow runs are not available: this site has no data root "
                                     "(storage.data_roots) to hold them")
        refused = engine_launch_refusal(self._config, run_as)
        if refused:
            raise ServiceUnavailable(f"workflow runs are not available here: {refused}")
        run_id = str(uuid.uuid4())
        run_dir = self.root / run_id
        self._make_root()
        os.mkdir(run_dir, 0o700)  # the service's until the engine starts, then the run user's
        try:
            attachments = Attachments(run_dir / "attachments")
            attachments.create()
            self._attach(attachments, submission.attachments)
            url, params = request.workflow_url, request.workflow_params
            if (from_trs := self._from_trs(url, attachments)) is not None:
                url = from_trs
            elif (from_crate := self._from_crate(url, attachments, run_dir)) is not None:  # the request's params win
                url, params = from_crate.workflow, {**from_crate.params, **params}
            workflow = self._workflow(url, attachments, run_dir, owner)
            needed: dict[str, str] = {}  # controlled-access dataset -> the parameter reading it
            ids = {obj.get("location") for obj in file_objects(params) if drs.is_drs(str(obj.get("location")))}
            if len(ids) > self._config.storage.drs.max_ids:
                raise BadRequest(f"workflow_params: more than {self._config.storage.drs.max_ids} DRS ids in one "
                                 "run (storage.drs.max_ids)")
            params = self._resolve_params(params, attachments, owner, needed)
            granted = self._passports.datasets(identity) if needed and identity is not None else set()
            self._passports.check(needed, granted)
            policy = FetchPolicy.for_run(self._config, run_dir, self.schemes.areas.readable(owner))
            self._check(workflow, params, policy)
            engine_request = {"run_id": run_id, "owner": owner, "workflow": workflow, "params": params,
                              "engine_parameters": request.workflow_engine_parameters,
                              "fetch_policy": policy.to_json(),
                              # the engine resolves images, the daemon pulls them: not its account
                              "apptainer": self._config.apptainer.model_dump(mode="json", exclude={"pull_as"})}
            self._write_request(run_dir, engine_request)
            try:
                self.runs.create(id=run_id, owner=owner, request=request.to_json(), tags=request.tags,
                                 run_dir=str(run_dir), workflow=workflow, run_as=run_as,
                                 max_active=self._config.limits.for_owner(owner).max_active_tasks,
                                 grants=sorted(granted & set(needed)))
            except ActiveRunsLimit as exc:
                raise TooManyRequests(f"you already have {exc.limit} active workflow runs, the maximum "
                                      "here: wait for some to finish or cancel them") from None
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        self.on_change()
        return run_id

    def _parse(self, fields: Mapping[str, Any]) -> RunRequest:
        unknown = sorted(set(fields) - set(FORM_FIELDS))
        if unknown:
            raise BadRequest(f"{unknown[0]}: unknown field (a RunRequest has: {', '.join(FORM_FIELDS)})")
        text = {k: v for k, v in fields.items() if k not in ("workflow_params", "tags",
                                                              "workflow_engine_parameters")}
        for key, value in text.items():
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"{key}: must be a string")
        params = _json_object(fields.get("workflow_params"), "workflow_params")
        try:
            json.dumps(params, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadRequest("workflow_params: contains invalid Unicode (a lone surrogate escape)") from None
        wf_type = (text.get("workflow_type") or "").strip()
        if not wf_type:
            raise BadRequest("workflow_type: required (CWL)")
        if wf_type.upper() != "CWL":
            raise BadRequest(f"workflow_type: {wf_type!r} is not supported here (supported: CWL)")
        type_version = (text.get("workflow_type_version") or "").strip()
        if not type_version:
            raise BadRequest(f"workflow_type_version: required (one of {', '.join(CWL_VERSIONS)})")
        normalized = type_version if type_version.startswith("v") else "v" + type_version
        if normalized not in CWL_VERSIONS:
            raise BadRequest(f"workflow_type_version: CWL {type_version!r} is not supported here "
                             f"(supported: {', '.join(CWL_VERSIONS)})")
        engine = text.get("workflow_engine") or None
        engine_version = text.get("workflow_engine_version") or None
        if engine is not None and engine.lower() != ENGINE:
            raise BadRequest(f"workflow_engine: {engine!r} is not supported here (supported: {ENGINE})")
        if engine_version is not None:
            if engine is None:
                raise BadRequest("workflow_engine_version: given without workflow_engine")
            installed = engine_version_or_unknown()
            if engine_version != installed:
                raise BadRequest(f"workflow_engine_version: {ENGINE} {engine_version!r} is not "
                                 f"available here (available: {installed})")
        engine_params = _string_map(fields.get("workflow_engine_parameters"),
                                    "workflow_engine_parameters", scalars=True)
        check_engine_parameters(engine_params)
        self._check_crypt4gh(engine_params)
        url = (text.get("workflow_url") or "").strip()
        if not url:
            raise BadRequest("workflow_url: required (an attached file's name, file:// in a data "
                             "root, or https://)")
        return RunRequest(
            workflow_params=params, workflow_type="CWL", workflow_type_version=normalized,
            tags=_string_map(fields.get("tags"), "tags"),
            workflow_engine_parameters=engine_params,
            workflow_engine=ENGINE, workflow_engine_version=engine_version_or_unknown(),
            workflow_url=url)

    def _make_root(self) -> None:
        """The runs root lists run ids, which are the only secret between users of a shared data
        root: traversable (0711) but not listable by others."""
        assert self.root is not None
        if not self.root.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.root, 0o711)
            except FileExistsError:
                pass

    def _attach(self, attachments: Attachments, parts: Iterable[tuple[str | None, IO[bytes]]]) -> None:
        for count, (name, stream) in enumerate(parts, 1):
            if count > self._settings.max_attachments:
                raise BadRequest(f"workflow_attachment: more than {self._settings.max_attachments} "
                                 "files, the maximum per run here")
            try:
                attachments.add(name or "", stream, max_bytes=self._settings.max_attachment_bytes,
                                max_total=self._settings.max_attachments_bytes)
            except AttachmentError as exc:
                raise BadRequest(str(exc)) from None

    def _from_crate(self, url: str, attachments: Attachments, run_dir: Path) -> fromcrate.CrateRun | None:
        """A run from a Workflow (Run) RO-Crate zip: its files the run needs attached under crate/;
        None when `workflow_url` names no crate."""
        path = self._crate_zip(url, attachments, run_dir)
        if path is None:
            return None
        try:
            crate_run = fromcrate.read_crate(path, max_bytes=self._settings.max_attachment_bytes)
            for name, data in crate_run.members.items():
                attachments.add(name, io.BytesIO(data), max_bytes=self._settings.max_attachment_bytes,
                                max_total=self._settings.max_attachments_bytes)
        except AttachmentError as exc:
            raise BadRequest(str(exc)) from None
        except fromcrate.CrateError as exc:
            raise BadRequest(f"workflow_url: {url!r}: {exc}") from None
        return crate_run

    def _from_trs(self, url: str, attachments: Attachments) -> str | None:
        """A workflow from a TRS registry: its descriptors attached under trs/; the primary one's
        name, or None when `workflow_url` is no TRS URL."""
        try:
            ref = trs.parse(url)
            if ref is None:
                return None
            if not self._settings.https_workflows:
                raise trs.TrsError(f"{ref}: workflows from the network are disabled here (wes.https_workflows)")
            files = trs.fetch(ref, self._settings.trs_hosts, document_http(self._config),
                              self._settings.max_attachment_bytes, self._settings.max_attachments_bytes)
            for item in files:
                attachments.add(trs.PREFIX + item.path, io.BytesIO(item.content),
                                max_bytes=self._settings.max_attachment_bytes,
                                max_total=self._settings.max_attachments_bytes)
        except (trs.TrsError, AttachmentError) as exc:
            raise BadRequest(f"workflow_url: {exc}") from None
        return quote(trs.PREFIX + files[0].path)

    def _crate_zip(self, url: str, attachments: Attachments, run_dir: Path) -> str | None:
        """The crate zip `workflow_url` names: an attached .zip, or an https document that is a zip
        (it starts as one, or its URL's path ends in .zip); None for a workflow document."""
        if urlsplit(url).scheme.lower() == "https":
            fetched = self._fetch(url, run_dir)
            zipped = fromcrate.is_zip(fetched) or urlsplit(url).path.lower().endswith(".zip")
            return str(fetched) if zipped else None
        if not url.lower().endswith(".zip") or "://" in url or url.startswith("/"):
            return None
        try:
            return attachments.resolve(unquote(url), what="workflow_url")[0]
        except AttachmentError as exc:
            raise BadRequest(str(exc)) from None

    def _workflow(self, url: str, attachments: Attachments, run_dir: Path, owner: str) -> str:
        """The main document as an absolute file:// URL the engine can read (fragment kept)."""
        base, _, fragment = url.partition("#")
        suffix = f"#{fragment}" if fragment else ""
        scheme = "" if base.startswith("/") else urlsplit(base).scheme.lower()
        if len(scheme) == 1:  # C:\... is a Windows path, not a URL scheme
            scheme = ""
        if not scheme and not base.startswith("/"):
            try:
                real, is_dir = attachments.resolve(unquote(base), what="workflow_url")
            except AttachmentError as exc:
                raise BadRequest(str(exc)) from None
            if is_dir:
                raise BadRequest(f"workflow_url: {url!r} is a directory, not a workflow document")
            return Path(real).as_uri() + suffix
        if scheme in ("", "file"):
            try:
                source = self.schemes.for_url("file:").input(base, "FILE", owner)
            except SchemeError as exc:
                raise BadRequest(f"workflow_url: {exc}") from None
            return Path(source.source).as_uri() + suffix
        if scheme == "https":
            return self._fetch(url, run_dir).as_uri() + suffix
        raise BadRequest(f"workflow_url: {url!r}: use the name of an attached file, a file:// URL "
                         "inside a data root, or an https:// URL")

    def _fetch(self, url: str, run_dir: Path) -> Path:
        """An https workflow_url's document in the run's remote/, fetched once: the crate check and
        the workflow read the same bytes."""
        settings = document_http(self._config)
        if not (self._settings.https_workflows and settings.enabled):
            raise BadRequest(f"workflow_url: {url!r}: https workflows are disabled on this service; "
                             "attach the workflow instead")
        base = url.partition("#")[0]
        name = os.path.basename(urlsplit(base).path) or "workflow.cwl"
        if name in (".", "..") or not name.replace(".", "").replace("-", "").replace("_", "").isalnum():
            name = "workflow.cwl"
        dest = run_dir / "remote" / name
        if dest.exists():  # the service's own directory until the engine starts
            return dest
        dest.parent.mkdir(mode=0o750)
        try:
            http.download(base, dest, settings)
        except http.DownloadError as exc:
            raise BadRequest(f"workflow_url: {exc}") from None
        os.chmod(dest, 0o640)
        return dest

    def _resolve_params(self, params: dict[str, Any], attachments: Attachments, owner: str,
                        needed: dict[str, str]) -> dict[str, Any]:
        """A copy of the job object whose File/Directory locations are absolute: relative ones name
        attachments (file:// URLs into the run directory); absolute ones must be allowed by the TES
        schemes (data roots, http(s)) since the workflow's tasks will read them."""

        def visit(value: Any, where: str) -> Any:
            if isinstance(value, list):
                return [visit(item, f"{where}[{i}]") for i, item in enumerate(value)]
            if not isinstance(value, dict):
                return value
            result = {key: visit(item, f"{where}.{key}") for key, item in value.items()}
            if value.get("class") in ("File", "Directory"):
                self._resolve_location(result, where, attachments, owner, needed)
            return result

        resolved: dict[str, Any] = visit(params, "")
        return resolved

    def _resolve_location(self, obj: dict[str, Any], where: str, attachments: Attachments, owner: str,
                          needed: dict[str, str]) -> None:
        """`needed` gains the controlled-access dataset the location belongs to, if any."""
        cls = obj["class"]
        key = "location" if "location" in obj else "path" if "path" in obj else None
        if key is None:
            return  # a literal (`contents`, `listing`): nothing to resolve
        location = obj.pop(key)
        field = f"workflow_params{where}.{key}"
        if not isinstance(location, str) or not location:
            raise BadRequest(f"{field}: must be a non-empty string")
        scheme = "" if location.startswith("/") else urlsplit(location).scheme.lower()
        if not scheme and not location.startswith("/"):
            try:
                real, is_dir = attachments.resolve(unquote(location), what=field)
            except AttachmentError as exc:
                raise BadRequest(str(exc)) from None
            if is_dir != (cls == "Directory"):
                raise BadRequest(f"{field}: {location!r} is a {'directory' if is_dir else 'file'}, "
                                 f"but the object is a {cls}")
            obj["location"] = Path(real).as_uri()
            return
        if drs.is_drs(location):
            for dataset in self._drs_location(obj, location, field, cls):
                needed.setdefault(dataset, field)
            return
        declared = "DIRECTORY" if cls == "Directory" else "FILE"
        try:
            source = self.schemes.for_url(location).input(location, declared, owner)
        except SchemeError as exc:
            # Not a path of this site: maybe the client's own path of a file it attached.
            name = self._client_path(location, attachments, cls == "Directory")
            if name is None:
                raise BadRequest(f"{field}: {exc}") from None
            obj["location"] = Path(attachments.resolve(name, what=field)[0]).as_uri()
            return
        if source.how != "download":
            for dataset in area_datasets(source.source, self._config.storage.passport_areas):
                needed.setdefault(dataset, field)
        obj["location"] = Path(location).as_uri() if location.startswith("/") else location

    def _drs_location(self, obj: dict[str, Any], location: str, field: str, cls: str) -> list[str]:
        """A DRS id stays one (each task resolves it again, as a TES input); looked up now so an
        unknown id is a 400, and for the name and size cwltool wants of a File it cannot read.
        Returns the controlled-access datasets it belongs to."""
        if cls != "File":
            raise BadRequest(f"{field}: a DRS id names a File here, not a {cls}")
        try:
            found = self._drs.resolve(location, None)
        except drs.DrsError as exc:
            raise BadRequest(f"{field}: {exc}") from None
        obj["location"] = location
        datasets = [found.dataset] if found.dataset else []
        if urlsplit(found.url).scheme == "file":
            datasets += area_datasets(unquote(urlsplit(found.url).path), self._config.storage.passport_areas)
        name = posixpath.basename(found.name or "") or posixpath.basename(urlsplit(location).path) or "object"
        obj.setdefault("basename", name)
        if found.size is not None:
            obj.setdefault("size", found.size)
        return datasets

    @staticmethod
    def _client_path(location: str, attachments: Attachments, directory: bool) -> str | None:
        try:
            path = FileScheme.host_path(location)
        except SchemeError:
            return None
        return attachments.by_suffix(path, directory=directory)

    def _check(self, workflow: str, params: dict[str, Any], policy: FetchPolicy) -> None:
        """cwltool loads and validates the workflow and the job object now, so a broken one is a
        400 with cwltool's own message rather than a run that fails later. Everything the
        documents name is read under the run's FetchPolicy (its own directories and the owner's
        areas of the data roots, http(s) by the address policy), here in the service's account."""
        try:
            from hpc_bridge.cwl.validate import InvalidWorkflow, validate_workflow
        except ImportError as exc:
            raise ServiceUnavailable(f"the CWL engine is not available here ({exc})") from None
        try:
            validate_workflow(workflow, params=params, policy=policy)
        except InvalidWorkflow as exc:
            raise BadRequest(str(exc) or "invalid workflow") from None

    @staticmethod
    def _write_request(run_dir: Path, request: dict[str, Any]) -> None:
        fd = os.open(run_dir / "request.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "w") as out:
            json.dump(request, out, indent=1)
            out.flush()
            os.fsync(out.fileno())

    # -- reading runs --------------------------------------------------------------------------

    def list(self, owner: str | None, *, page_size: int | None, page_token: str | None) -> dict[str, Any]:
        size, before = _page(page_size, page_token)
        rows = self.runs.list(owner, before_seq=before, limit=size + 1)
        more = len(rows) > size
        return RunListResponse(
            runs=[self.summary(r) for r in rows[:size]],
            next_page_token=encode_token(rows[size - 1].seq) if more else "",
        ).to_json()

    @staticmethod
    def summary(row: RunRow) -> RunSummary:
        return RunSummary(run_id=row.id, state=State(row.state), start_time=wes_time(row.start_time),
                          end_time=wes_time(row.end_time), tags=row.tags)

    def row(self, run_id: str, owner: str | None) -> RunRow:
        row = self.runs.get(run_id, owner)
        if row is None:
            raise NotFound(f"workflow run {run_id!r} not found")
        return row

    def status(self, run_id: str, owner: str | None) -> dict[str, Any]:
        row = self.row(run_id, owner)
        return RunStatus(run_id=row.id, state=State(row.state)).to_json()

    def get(self, run_id: str, owner: str | None, links: Links) -> dict[str, Any]:
        row = self.row(run_id, owner)
        request = RunRequest.model_validate(row.request)
        return RunLog(
            run_id=row.id, request=request, state=State(row.state),
            run_log=Log(
                name=request.workflow_url, start_time=wes_time(row.start_time),
                end_time=wes_time(row.end_time), stdout=links.run_stream(row.id, "stdout"),
                stderr=links.run_stream(row.id, "stderr"), exit_code=row.exit_code,
                system_logs=row.system_logs),
            task_logs_url=links.tasks(row.id),
            outputs={**(row.outputs or {}), **({CRATE_OUTPUT: links.crate(row.id)} if row.state in RUN_FINAL else {})},
        ).to_json()

    def cancel(self, run_id: str, owner: str | None) -> dict[str, Any]:
        row = self.row(run_id, owner)
        self.runs.request_cancel(row.id)
        self.on_change()
        return {"run_id": row.id}

    def run_log_file(self, run_id: str, owner: str | None, stream: str) -> Path:
        row = self.row(run_id, owner)
        return Path(row.run_dir) / f"{stream}.log"

    def output(self, run_id: str, owner: str | None, location: str) -> tuple[int, str]:
        """An open descriptor (file or directory) for one of the run's outputs, and its path.

        Only what the run's output object names is served: a listed File or Directory, or anything
        beneath a listed Directory; always inside a data root, opened without following symlinks."""
        row = self.row(run_id, owner)
        refused = NotFound(f"{location!r} is not an output of workflow run {run_id!r}")
        try:
            path = FileScheme.host_path(location)
        except SchemeError:
            raise refused from None
        allowed = False
        for kind, item in output_locations(row.outputs or {}):
            try:
                listed = FileScheme.host_path(item)
            except SchemeError:
                continue
            if path == listed or (kind == "Directory" and path.startswith(listed.rstrip("/") + "/")):
                allowed = True
                break
        root = next((str(r) for r in self._config.storage.data_roots
                     if os.path.commonpath([path, str(r)]) == str(r)), None)
        if not allowed or root is None:
            raise refused
        try:
            fd = open_beneath(root, os.path.relpath(path, root))
        except OSError:
            raise refused from None
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            os.close(fd)
            raise refused
        return fd, path

    def crate(self, run_id: str, owner: str | None, links: Links, service_version: str) -> Iterator[bytes]:
        """The run's Provenance Run Crate (zip), once the run has ended (wes/crate.py): built now into
        an anonymous temporary file, which the response then streams (with its outputs inside, a
        crate can be large)."""
        row = self.row(run_id, owner)
        if row.state not in RUN_FINAL:
            raise Conflict(f"workflow run {run_id!r} is {row.state}: its crate is made once it has ended")
        tasks = self.runs.tasks(row.id, owner)
        include = self._settings.crate_outputs == "include"
        context = crate.CrateContext(service_name=self._config.service.name, service_version=service_version,
                                     service_url=links.wes, agent=row.owner, sif_digest=self._sif_digest,
                                     include_max_bytes=self._settings.crate_include_max_bytes if include else None)
        out = tempfile.TemporaryFile(prefix="hpcb-crate-")
        try:
            crate.write(row, tasks, crate.read_records(row.run_dir), context, out)
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return _chunks(out)

    def _sif_digest(self, reference: str) -> SifDigest | None:
        """The digest of the SIF an image reference resolves to with the site's settings now; None
        when there is none (the image was removed, or the reference no longer resolves)."""
        try:
            return SIF_DIGESTS.of(resolve_image(reference, self._config.apptainer).sif)
        except ImageError:
            return None

    # -- the run's TES tasks -------------------------------------------------------------------

    def tasks(self, run_id: str, owner: str | None, links: Links, *, page_size: int | None,
              page_token: str | None) -> dict[str, Any]:
        row = self.row(run_id, owner)
        size, after = _page(page_size, page_token)
        tasks = self.runs.tasks(row.id, owner, after_seq=after, limit=size + 1)
        more = len(tasks) > size
        return TaskListResponse(
            task_logs=[self.task_log(row.id, t, links) for t in tasks[:size]],
            next_page_token=encode_token(tasks[size - 1].seq) if more else "",
        ).to_json()

    def task_row(self, run_id: str, task_id: str, owner: str | None) -> TaskRow:
        row = self.row(run_id, owner)
        task = self.runs.task(row.id, task_id, owner)
        if task is None:
            raise NotFound(f"task {task_id!r} not found in workflow run {run_id!r}")
        return task

    def task(self, run_id: str, task_id: str, owner: str | None, links: Links) -> dict[str, Any]:
        return self.task_log(run_id, self.task_row(run_id, task_id, owner), links).to_json()

    def task_stream(self, run_id: str, task_id: str, owner: str | None, stream: str) -> str:
        """The task's executor logs (each executor's tail, as TES keeps them), in order."""
        task = self.task_row(run_id, task_id, owner)
        return "".join(log.get(stream) or "" for log in task.executor_logs)

    @staticmethod
    def task_log(run_id: str, task: TaskRow, links: Links) -> TaskLog:
        executors = task.task.get("executors") or []
        exit_codes = [e["exit_code"] for e in task.executor_logs if e.get("exit_code") is not None]
        return TaskLog(
            id=task.id, name=task.tags.get("cwl_step") or task.name or task.id,
            cmd=executors[-1].get("command") if executors else None,
            start_time=wes_time(task.start_time), end_time=wes_time(task.end_time),
            stdout=links.task_stream(run_id, task.id, "stdout"),
            stderr=links.task_stream(run_id, task.id, "stderr"),
            exit_code=exit_codes[-1] if exit_codes else None,
            system_logs=[f"TES state: {task.state}", *task.system_logs],
            tes_uri=links.tes_task(task.id),
        )

    # -- service-info --------------------------------------------------------------------------

    def service_info(self, service_version: str, started_at: str) -> dict[str, Any]:
        svc = self._config.service
        counts = dict.fromkeys((s.value for s in State), 0)
        counts.update(self.runs.state_counts())
        protocols = list(dict.fromkeys(urlsplit(loc).scheme or loc.rstrip(":/")
                                       for loc in self.schemes.locations()))
        installed = engine_version()
        return ServiceInfo(
            **ServiceInfo.site_fields(self._config, service_version, started_at, id_suffix=".wes"),
            workflow_type_versions={"CWL": WorkflowTypeVersion(workflow_type_version=list(CWL_VERSIONS))},
            supported_filesystem_protocols=protocols,
            workflow_engine_versions={ENGINE: WorkflowEngineVersion(
                workflow_engine_version=[installed] if installed else [])},
            default_workflow_engine_parameters=[
                DefaultWorkflowEngineParameter(name=name, type=kind, default_value=default)
                for name, kind, default in engine_parameters()],
            system_state_counts=counts,
            auth_instructions_url=(self._config.auth.auth_instructions_url or svc.documentation_url
                                   or svc.organization.url),
            tags={"tes_api": "/ga4gh/tes/v1", "runs_in_parallel": str(self._settings.max_parallel_runs),
                  "max_attachment_bytes": str(self._settings.max_attachment_bytes),
                  "max_attachments_bytes": str(self._settings.max_attachments_bytes)},
        ).to_json()


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """A file's content in chunks, closing it at the end (or when the response is closed early)."""
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def output_locations(value: Any) -> Iterable[tuple[str, str]]:
    """(class, location) of every File and Directory in a CWL output object."""
    return ((obj["class"], obj["location"]) for obj in file_objects(value) if isinstance(obj.get("location"), str))


def engine_version_or_unknown() -> str:
    return engine_version() or "unknown"


_ENGINE_DEFAULTS = {"default_container": "DEFAULT_IMAGE", "on_error": "stop", "max_parallel": "64"}


def engine_parameters() -> list[tuple[str, str, str]]:
    """(name, type, default) of the workflow_engine_parameters the engine accepts."""
    try:
        from hpc_bridge.cwl import engine
    except ImportError:
        return []
    result = []
    for name, kind in getattr(engine, "ENGINE_PARAMETERS", {}).items():
        default = _ENGINE_DEFAULTS.get(name, "")
        default = str(getattr(engine, default, default))
        result.append((name, {"str": "string", "int": "integer"}.get(kind.__name__, kind.__name__),
                       default))
    return result


def check_engine_parameters(values: dict[str, str]) -> None:
    """Unknown names and values of the wrong type are a 400 now rather than a warning in the log."""
    if not values:
        return
    known = {name: kind for name, kind, _ in engine_parameters()}
    if not known:
        return
    for name, value in values.items():
        if name not in known:
            raise BadRequest(f"workflow_engine_parameters.{name}: not supported (supported: "
                             f"{', '.join(known)})")
        if known[name] == "integer":
            try:
                int(value)
            except ValueError:
                raise BadRequest(f"workflow_engine_parameters.{name}: must be an integer") from None
