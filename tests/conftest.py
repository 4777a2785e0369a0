"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc_bridge.config import SiteConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT.parent / "shared" / "specs"


@pytest.fixture(scope="session")
def dev_config() -> SiteConfig:
    return load_config(ROOT / "site_config" / "dev.yaml")


@pytest.fixture(scope="session")
def spec_validator():
    """validate(spec_file, method, path, status, body): raises if the response breaks the official spec.

    The GA4GH specs are read from ../shared (never copied into the project); a checkout without
    them cannot run these checks, and only these tests skip, saying so.
    """
    if not SPECS.is_dir():
        pytest.skip(f"official GA4GH specs not found at {SPECS} (they live in ../shared)")
    from openapi_core import OpenAPI
    from openapi_core.testing import MockRequest, MockResponse

    loaded: dict[str, OpenAPI] = {}

    def validate(spec: str, method: str, path: str, status: int, body: object) -> None:
        api = loaded.setdefault(spec, OpenAPI.from_file_path(SPECS / spec))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        api.validate_response(MockRequest("http://localhost", method.lower(), path),
                              MockResponse(data, status_code=status, content_type="application/json"))

    return validate
