"""Flask blueprint for /ga4gh/tes/v1: parses and validates requests, then calls the service layer."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from hpc_bridge import __version__
from hpc_bridge.config import SiteConfig
from hpc_bridge.tes.models import ServiceInfo, ServiceOrganization

bp = Blueprint("tes", __name__, url_prefix="/ga4gh/tes/v1")


def service_info(config: SiteConfig, started_at: str) -> ServiceInfo:
    svc = config.service
    return ServiceInfo(
        id=svc.id,
        name=svc.name,
        description=svc.description,
        organization=ServiceOrganization(name=svc.organization.name, url=svc.organization.url),
        contact_url=svc.contact_url,
        documentation_url=svc.documentation_url,
        environment=svc.environment,
        version=__version__,
        updated_at=started_at,
        storage=[root.as_uri() for root in config.storage.data_roots],
        backend_parameters=list(config.backend_parameters),
    )


@bp.get("/service-info")
def get_service_info() -> ResponseReturnValue:
    info = service_info(current_app.config["SITE"], current_app.config["STARTED_AT"])
    return jsonify(info.to_json())
