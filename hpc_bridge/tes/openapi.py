"""This service's TES API as an OpenAPI 3.1 document (GET /ga4gh/tes/v1/openapi.json); 3.1 because
its schemas are JSON Schema 2020-12, as pydantic writes them.

TES 1.1 service-info has no field for how to authenticate (and py-tes refuses unknown ones), so
the schemes a site has enabled are advertised here, as the TES 1.2 draft declares them:
`BearerAuth` (JWT) with issuers, `BasicAuth` with `auth.basic_users`. The schemas are the
models' own (pydantic), so the document cannot drift from what the API accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from hpc_bridge import __version__
from hpc_bridge.auth.settings import AuthSettings
from hpc_bridge.tes.models import CreateTaskResponse, ServiceInfo, Task

_REF = "#/components/schemas/{model}"


def security_schemes(auth: AuthSettings) -> dict[str, dict[str, str]]:
    schemes: dict[str, dict[str, str]] = {}
    if auth.mode == "jwt" and auth.issuers:
        schemes["BearerAuth"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    if auth.mode == "jwt" and auth.basic_users:
        schemes["BasicAuth"] = {"type": "http", "scheme": "basic"}
    return schemes


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def document(auth: AuthSettings, server_url: str) -> dict[str, Any]:
    (refs, schemas) = models_json_schema(
        [(Task, "validation"), (Task, "serialization"), (CreateTaskResponse, "serialization"),
         (ServiceInfo, "serialization")], ref_template=_REF)
    task_in, task_out = refs[(Task, "validation")]["$ref"], refs[(Task, "serialization")]["$ref"]
    created, info = refs[(CreateTaskResponse, "serialization")]["$ref"], refs[(ServiceInfo, "serialization")]["$ref"]
    components: dict[str, Any] = {"schemas": {
        **schemas["$defs"],
        "ErrorResponse": {"type": "object", "required": ["msg", "status_code"],
                          "properties": {"msg": {"type": "string"}, "status_code": {"type": "integer"}}},
        "ListTasksResponse": {"type": "object", "required": ["tasks"], "properties": {
            "tasks": {"type": "array", "items": {"$ref": task_out}}, "next_page_token": {"type": "string"}}},
    }}
    schemes = security_schemes(auth)
    if schemes:
        components["securitySchemes"] = schemes
    error = _json("#/components/schemas/ErrorResponse", "a GA4GH ErrorResponse")
    errors: dict[str, Any] = {str(code): error for code in (400, 401, 403, 404, 429, 500)}
    view = {"name": "view", "in": "query", "schema": {"type": "string", "enum": ["MINIMAL", "BASIC", "FULL"]}}
    task_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    secured: dict[str, Any] = {"security": [{name: []} for name in schemes]} if schemes else {}
    paths = {
        "/service-info": {"get": {"operationId": "GetServiceInfo", "responses": {
            "200": _json(info, "the service")}}},
        "/tasks": {
            "get": {"operationId": "ListTasks", **secured, "parameters": [
                view, *({"name": n, "in": "query", "schema": {"type": t}} for n, t in (
                    ("name_prefix", "string"), ("state", "string"), ("page_size", "integer"),
                    ("page_token", "string"))),
                *({"name": n, "in": "query", "schema": {"type": "array", "items": {"type": "string"}},
                   "explode": True} for n in ("tag_key", "tag_value"))],
                "responses": {"200": _json("#/components/schemas/ListTasksResponse", "tasks"), **errors}},
            "post": {"operationId": "CreateTask", **secured, "requestBody": {
                "required": True, "content": {"application/json": {"schema": {"$ref": task_in}}}},
                "responses": {"200": _json(created, "the new task's id"), **errors}}},
        "/tasks/{id}": {"get": {"operationId": "GetTask", **secured, "parameters": [task_id, view],
                                "responses": {"200": _json(task_out, "the task"), **errors}}},
        "/tasks/{id}:cancel": {"post": {"operationId": "CancelTask", **secured, "parameters": [task_id],
                                        "responses": {"200": {"description": "cancellation requested",
                                                              "content": {"application/json": {"schema": {
                                                                  "type": "object"}}}}, **errors}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "hpc-bridge Task Execution Service", "version": __version__,
                     "description": "GA4GH TES 1.1 on Slurm with Apptainer"},
            "servers": [{"url": server_url}], "paths": paths, "components": components}
