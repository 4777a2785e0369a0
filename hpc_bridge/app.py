"""The Flask application factory: one app per SiteConfig, no module-level state."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from hpc_bridge.config import SiteConfig
from hpc_bridge.tes.api import bp as tes_bp


def _error(exc: HTTPException) -> ResponseReturnValue:
    """GA4GH-style error body (`msg` + `status_code`, as TES/WES ErrorResponse) for every HTTP error."""
    code = exc.code or 500
    return jsonify({"msg": exc.description or exc.name, "status_code": code}), code


def create_app(config: SiteConfig) -> Flask:
    app = Flask("hpc_bridge")
    app.config["SITE"] = config
    app.config["STARTED_AT"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    app.json.sort_keys = False
    app.register_blueprint(tes_bp)
    app.register_error_handler(HTTPException, _error)
    return app
