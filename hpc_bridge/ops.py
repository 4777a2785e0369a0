"""Operations endpoints beside the GA4GH APIs: `/metrics` (Prometheus text format), `/healthz` (the
process answers) and `/readyz` (the database takes a write, this process holds the daemon lock, Slurm
answers). None needs a user's token; who may scrape `/metrics` is the site's choice
(`server.metrics`): loopback callers only (the default: a reverse proxy in front must not pass
/metrics on), a bearer token from a file, or off.
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hpc_bridge.auth.context import public
from hpc_bridge.config import SiteConfig
from hpc_bridge.errors import Forbidden, NotFound
from hpc_bridge.metrics import Check

bp = Blueprint("ops", __name__)


@bp.get("/metrics")
@public
def metrics() -> ResponseReturnValue:
    config: SiteConfig = current_app.config["SITE"]
    mode = config.server.metrics
    if mode == "off":
        raise NotFound("metrics are off here (server.metrics)")
    if mode == "loopback" and not _loopback(request.remote_addr or ""):
        raise Forbidden("metrics are served to loopback callers only here (server.metrics)")
    if mode == "token":
        expected = current_app.config["METRICS_TOKEN"]
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise Forbidden("a valid metrics bearer token is required (server.metrics_token_file)")
    registry = current_app.extensions["hpc_bridge.metrics"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
@public
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@public
def readyz() -> ResponseReturnValue:
    checks: list[tuple[str, Check]] = current_app.extensions["hpc_bridge.ready"]
    problems = {name: why for name, check in checks if (why := check()) is not None}
    body = {"status": "ready" if not problems else "not ready", "problems": problems}
    return jsonify(body), 200 if not problems else 503


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
