"""Flask blueprint for /ga4gh/wes/v1: parse the request, call RunService, shape the response.

Besides the spec's endpoints it serves what the responses point at, behind the same
authentication and ownership checks: a run's stdout/stderr (`run_log.stdout`/`stderr`), a task's
(`TaskLog.stdout`/`stderr`), the run's output files (`/runs/{id}/outputs?location=...`, for
clients that do not share the service's filesystem, such as hpc-bridge-cwl-runner), and the run's
Provenance Run Crate (`/runs/{id}/ro-crate`, a zip, once the run has ended).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_file
from flask.typing import ResponseReturnValue

from hpc_bridge import __version__
from hpc_bridge.auth.context import (
    current_identity,
    current_run_as,
    owner_filter,
    public,
)
from hpc_bridge.errors import BadRequest
from hpc_bridge.query import int_arg
from hpc_bridge.wes.attachments import open_beneath
from hpc_bridge.wes.service import (
    ATTACHMENT_FIELD,
    Links,
    RunService,
    Submission,
)

bp = Blueprint("wes", __name__, url_prefix="/ga4gh/wes/v1")
TEXT = "text/plain; charset=utf-8"


def _service() -> RunService:
    service: RunService = current_app.extensions["hpc_bridge.runs"]
    return service


def _links() -> Links:
    root = request.url_root.rstrip("/")
    return Links(wes=f"{root}/ga4gh/wes/v1", tes=f"{root}/ga4gh/tes/v1")


@bp.get("/service-info")
@public
def get_service_info() -> ResponseReturnValue:
    return jsonify(_service().service_info(__version__, current_app.config["STARTED_AT"]))


@bp.get("/runs")
def list_runs() -> ResponseReturnValue:
    return jsonify(_service().list(owner_filter(), page_size=int_arg("page_size"),
                                   page_token=request.args.get("page_token") or None))


def _submission() -> Submission:
    """The RunRequest of a multipart/form-data POST (the spec's form), or of a JSON body."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest("body: must be a JSON object (a RunRequest)")
        return Submission(fields=body, attachments=[])
    site = current_app.config["SITE"]
    # Form fields (workflow_params may be large) are held in memory up to this; files stream to disk.
    request.max_form_memory_size = site.wes.max_params_bytes
    if site.limits.for_owner(current_identity().owner).max_request_bytes is None:
        # No per-user cap: a run may carry its attachments (wes.max_attachments_bytes) and params.
        request.max_content_length = site.wes_request_bytes
    fields: dict[str, str] = {}
    if any(not key for key in [*request.form, *request.files]):
        raise BadRequest("body: every multipart part needs a name in its Content-Disposition header")
    for key in request.form:
        values = request.form.getlist(key)
        if key == ATTACHMENT_FIELD:
            raise BadRequest(f"{ATTACHMENT_FIELD}: every part needs a filename in its "
                             "Content-Disposition header")
        if len(values) > 1:
            raise BadRequest(f"{key}: given more than once")
        fields[key] = values[0]
    for key in request.files:
        if key != ATTACHMENT_FIELD:
            raise BadRequest(f"{key}: unexpected file part (attachments go in {ATTACHMENT_FIELD})")
    parts = [(f.filename, f.stream) for f in request.files.getlist(ATTACHMENT_FIELD)]
    return Submission(fields=fields, attachments=parts)


@bp.post("/runs")
def run_workflow() -> ResponseReturnValue:
    run_id = _service().create(_submission(), current_identity().owner, run_as=current_run_as(),
                               identity=current_identity())
    current_app.extensions["hpc_bridge.metrics"].run_submissions.inc()
    return jsonify({"run_id": run_id})


@bp.get("/runs/<run_id>")
def get_run_log(run_id: str) -> ResponseReturnValue:
    return jsonify(_service().get(run_id, owner_filter(), _links()))


@bp.get("/runs/<run_id>/status")
def get_run_status(run_id: str) -> ResponseReturnValue:
    return jsonify(_service().status(run_id, owner_filter()))


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str) -> ResponseReturnValue:
    return jsonify(_service().cancel(run_id, owner_filter()))


@bp.get("/runs/<run_id>/ro-crate")
def get_run_crate(run_id: str) -> ResponseReturnValue:
    """The run's Provenance Run Crate 0.5 as a zip (as sapporo serves one; not in WES 1.1)."""
    data = _service().crate(run_id, owner_filter(), _links(), __version__)
    return Response(data, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="run-{run_id}-ro-crate.zip"'})


@bp.get("/runs/<run_id>/tasks")
def list_tasks(run_id: str) -> ResponseReturnValue:
    return jsonify(_service().tasks(run_id, owner_filter(), _links(), page_size=int_arg("page_size"),
                                    page_token=request.args.get("page_token") or None))


@bp.get("/runs/<run_id>/tasks/<task_id>")
def get_task(run_id: str, task_id: str) -> ResponseReturnValue:
    return jsonify(_service().task(run_id, task_id, owner_filter(), _links()))


@bp.get("/runs/<run_id>/tasks/<task_id>/stdout", defaults={"name": "stdout"})
@bp.get("/runs/<run_id>/tasks/<task_id>/stderr", defaults={"name": "stderr"})
def get_task_stream(run_id: str, task_id: str, name: str) -> ResponseReturnValue:
    text = _service().task_stream(run_id, task_id, owner_filter(), name)
    return Response(text, mimetype=TEXT)


@bp.get("/runs/<run_id>/stdout", defaults={"name": "stdout"})
@bp.get("/runs/<run_id>/stderr", defaults={"name": "stderr"})
def get_run_stream(run_id: str, name: str) -> ResponseReturnValue:
    """The engine's stdout or stderr: empty until the engine has started."""
    path = _service().run_log_file(run_id, owner_filter(), name)
    try:
        fd = open_beneath(str(path.parent), path.name)
    except OSError:
        return Response("", mimetype=TEXT)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return Response("", mimetype=TEXT)
    return send_file(os.fdopen(fd, "rb"), mimetype=TEXT, conditional=False, etag=False,
                     max_age=0)


@bp.get("/runs/<run_id>/outputs")
def get_output(run_id: str) -> ResponseReturnValue:
    location = request.args.get("location")
    if not location:
        raise BadRequest("location: required (the location of one of the run's outputs)")
    fd, path = _service().output(run_id, owner_filter(), location)
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        try:
            entries = []
            for entry in sorted(os.listdir(fd)):
                try:
                    mode = os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode
                except OSError:
                    continue
                kind = "Directory" if stat.S_ISDIR(mode) else "File" if stat.S_ISREG(mode) else None
                if kind:
                    entries.append({"class": kind, "basename": entry,
                                    "location": Path(path, entry).as_uri()})
        finally:
            os.close(fd)
        return jsonify({"class": "Directory", "location": Path(path).as_uri(), "listing": entries})
    return send_file(os.fdopen(fd, "rb"), mimetype="application/octet-stream", as_attachment=True,
                     download_name=os.path.basename(path), conditional=False, etag=False, max_age=0)
