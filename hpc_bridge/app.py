"""The Flask application factory: one app per SiteConfig, no module-level state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from hpc_bridge.config import SiteConfig
from hpc_bridge.errors import ServiceError
from hpc_bridge.store import Store
from hpc_bridge.tes.api import bp as tes_bp
from hpc_bridge.tes.service import TaskService


def _body(message: str, code: int) -> ResponseReturnValue:
    """GA4GH ErrorResponse shape (`msg` + `status_code`), shared by TES and WES."""
    return jsonify({"msg": message, "status_code": code}), code


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    return _body(exc.description or exc.name, exc.code or 500)


def _service_error(exc: ServiceError) -> ResponseReturnValue:
    return _body(exc.message, exc.status)


def create_app(config: SiteConfig, *, store: Store | None = None,
               on_change: Callable[[], None] = lambda: None) -> Flask:
    """`on_change` wakes the daemon when a task is created or cancelled (same process)."""
    app = Flask("hpc_bridge")
    app.config["SITE"] = config
    app.config["STARTED_AT"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    app.config["DEFAULT_OWNER"] = "local"
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    app.json.sort_keys = False
    store = store or Store(config.database)
    app.extensions["hpc_bridge.store"] = store
    app.extensions["hpc_bridge.tasks"] = TaskService(store, config, on_change)
    app.register_blueprint(tes_bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ServiceError, _service_error)
    return app
