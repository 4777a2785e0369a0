"""Flask blueprint for /ga4gh/tes/v1: parse the request, call TaskService, shape the response."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from hpc_bridge import __version__
from hpc_bridge.auth.context import (
    check_run_may_create,
    current_bearer,
    current_identity,
    current_run,
    current_run_as,
    optional_owner,
    owner_filter,
    public,
)
from hpc_bridge.errors import BadRequest
from hpc_bridge.query import int_arg
from hpc_bridge.tes import openapi
from hpc_bridge.tes.models import CreateTaskResponse, ServiceInfo
from hpc_bridge.tes.service import TaskService, parse_view

bp = Blueprint("tes", __name__, url_prefix="/ga4gh/tes/v1")


def _service() -> TaskService:
    service: TaskService = current_app.extensions["hpc_bridge.tasks"]
    return service


@bp.get("/service-info")
@public
def get_service_info() -> ResponseReturnValue:
    info = ServiceInfo.for_site(current_app.config["SITE"], __version__, current_app.config["STARTED_AT"],
                                storage=_service().schemes.locations(optional_owner()))
    return jsonify(info.to_json())


@bp.get("/openapi.json")
@public
def get_openapi() -> ResponseReturnValue:
    base = request.url_root.rstrip("/") + (bp.url_prefix or "")
    return jsonify(openapi.document(current_app.config["SITE"].auth, base))


@bp.post("/tasks")
def create_task() -> ResponseReturnValue:
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body: a JSON tesTask is required (Content-Type: application/json)")
    check_run_may_create()
    task_id = _service().create(body, current_identity().owner, run_as=current_run_as(),
                                run_id=current_run(), token=current_bearer(), identity=current_identity())
    current_app.extensions["hpc_bridge.metrics"].task_submissions.inc()
    return jsonify(CreateTaskResponse(id=task_id).to_json())


@bp.get("/tasks")
def list_tasks() -> ResponseReturnValue:
    return jsonify(_service().list(
        owner_filter(),
        view=parse_view(request.args.get("view")),
        page_size=int_arg("page_size"),
        page_token=request.args.get("page_token") or None,
        name_prefix=request.args.get("name_prefix") or None,
        state=request.args.get("state") or None,
        tag_keys=request.args.getlist("tag_key"),
        tag_values=request.args.getlist("tag_value"),
        run_id=current_run(),
    ))


@bp.get("/tasks/<task_id>")
def get_task(task_id: str) -> ResponseReturnValue:
    return jsonify(_service().get(task_id, owner_filter(), parse_view(request.args.get("view")),
                                  run_id=current_run()))


@bp.post("/tasks/<task_id>:cancel")
def cancel_task(task_id: str) -> ResponseReturnValue:
    _service().cancel(task_id, owner_filter(), run_id=current_run())
    return jsonify({})
