"""The Flask application factory: one app per SiteConfig, no module-level state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from hpc_bridge import jsonlimit
from hpc_bridge.auth import AuthError, TokenVerifier
from hpc_bridge.auth.basic import BasicAuthenticator
from hpc_bridge.auth.context import authenticate, current_identity, is_public
from hpc_bridge.config import DEFAULT_MAX_REQUEST_BYTES, SiteConfig
from hpc_bridge.errors import BadRequest, ServiceError, TooManyRequests
from hpc_bridge.metrics import Check, Metrics, database_writable
from hpc_bridge.ops import bp as ops_bp
from hpc_bridge.ratelimit import RateLimiter
from hpc_bridge.store import Store
from hpc_bridge.tes.api import bp as tes_bp
from hpc_bridge.tes.service import TaskService
from hpc_bridge.wes.api import bp as wes_bp
from hpc_bridge.wes.service import RunService

log = logging.getLogger(__name__)


class _JSONProvider(DefaultJSONProvider):
    """JSON bodies nested too deeply are a 400 saying so (see hpc_bridge.jsonlimit), raised as
    such: a ValueError would make `get_json(silent=True)` call the body "not JSON"."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return jsonlimit.loads(s)
        except jsonlimit.TooDeep as exc:
            raise BadRequest(f"body: {exc}") from None


def _body(message: str, code: int) -> tuple[Response, int]:
    """GA4GH ErrorResponse shape (`msg` + `status_code`), shared by TES and WES."""
    return jsonify({"msg": message, "status_code": code}), code


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    return _body(exc.description or exc.name, exc.code or 500)


def _service_error(exc: ServiceError) -> ResponseReturnValue:
    response, code = _body(exc.message, exc.status)
    if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response, code


def _auth_error(exc: AuthError) -> ResponseReturnValue:
    message = exc.message
    if exc.instructions_url:
        message += f" (how to get a token: {exc.instructions_url})"
    response, code = _body(message, exc.status)
    if exc.www_authenticate:
        response.headers["WWW-Authenticate"] = exc.www_authenticate
    return response, code


def _admit() -> None:
    """before_request: who is calling, and may they send this now (rate, body size)?
    Service-info stays public so that clients can discover how to authenticate."""
    if is_public():
        return
    authenticate()
    config: SiteConfig = current_app.config["SITE"]
    limits = config.limits.for_owner(current_identity().owner)
    if limits.requests_per_second is not None:
        burst = limits.burst or max(1, round(limits.requests_per_second))
        current_app.extensions["hpc_bridge.ratelimit"].check(current_identity().owner,
                                                            limits.requests_per_second, burst)
    request.max_content_length = limits.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES


def _start_clock() -> None:
    g.started = time.perf_counter()


def _observe(response: Response) -> Response:
    """Latency per route (its rule, never the path: ids would make the labels unbounded)."""
    if (started := g.get("started")) is not None:
        route = request.url_rule.rule if request.url_rule is not None else "(no route)"
        current_app.extensions["hpc_bridge.metrics"].requests.labels(
            request.method, route, str(response.status_code)).observe(time.perf_counter() - started)
    return response


def create_app(config: SiteConfig, *, store: Store | None = None,
               on_change: Callable[[], None] = lambda: None,
               on_run_change: Callable[[], None] = lambda: None,
               verifier: TokenVerifier | None = None, metrics: Metrics | None = None,
               ready: list[tuple[str, Check]] | None = None) -> Flask:
    """`on_change` wakes the daemon when a task is created or cancelled, `on_run_change` the WES
    supervisor when a run is (both in the same process: `bridge.Bridge` wires them).
    `verifier` holds the issuers' key caches: one per process, built here unless passed in;
    `metrics` the process's metrics (the daemon counts there too), `ready` what /readyz checks
    (default: the database)."""
    app = Flask("hpc_bridge")
    app.config["SITE"] = config
    app.config["STARTED_AT"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    app.json = _JSONProvider(app)
    app.json.sort_keys = False
    if config.auth.mode == "none":
        log.warning("AUTHENTICATION IS OFF (auth.mode: none): every caller is the same user "
                    "and sees every task. Use this for development only.")
    store = store or Store(config.database)
    app.extensions["hpc_bridge.store"] = store
    app.extensions["hpc_bridge.verifier"] = verifier or TokenVerifier(config.auth)
    app.extensions["hpc_bridge.basic"] = BasicAuthenticator(config.auth.basic_users)
    app.extensions["hpc_bridge.ratelimit"] = RateLimiter()
    app.extensions["hpc_bridge.tasks"] = TaskService(store, config, on_change)
    app.extensions["hpc_bridge.runs"] = RunService(store, config, on_change=on_run_change)
    app.extensions["hpc_bridge.metrics"] = metrics or Metrics(store)
    app.extensions["hpc_bridge.ready"] = ready if ready is not None else [("database", database_writable(store))]
    token_file = config.server.metrics_token_file
    app.config["METRICS_TOKEN"] = token_file.read_text().strip() if token_file is not None else None
    app.before_request(_start_clock)
    app.after_request(_observe)
    app.before_request(_admit)
    app.register_blueprint(tes_bp)
    app.register_blueprint(wes_bp)
    app.register_blueprint(ops_bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(AuthError, _auth_error)
    return app
