from hpc_bridge.app import create_app
from hpc_bridge.config import SiteConfig


def test_service_info_follows_the_tes_spec(dev_config: SiteConfig, spec_validator) -> None:
    resp = create_app(dev_config).test_client().get("/ga4gh/tes/v1/service-info")
    assert resp.status_code == 200
    spec_validator("tes-1.1.0.openapi.yaml", "get", "/ga4gh/tes/v1/service-info", 200, resp.data)
    body = resp.get_json()
    assert body["type"] == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}
    assert body["storage"] == ["file:///srv/hpc-bridge/data", "http://", "https://"]
    assert "partition" in body["tesResources_backend_parameters"]


def test_unknown_route_gets_a_ga4gh_error(dev_config: SiteConfig) -> None:
    resp = create_app(dev_config).test_client().get("/ga4gh/tes/v1/nope")
    assert resp.status_code == 404
    assert resp.get_json()["status_code"] == 404 and resp.get_json()["msg"]
