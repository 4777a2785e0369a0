"""Property-based fuzzing of every operation of the official GA4GH specs (schemathesis).

The Flask app runs in-process (WSGI transport, no network, no daemon, so nothing reaches Slurm) on
the dev site config with its own database, data root and work root in a tmp dir. For each operation
of `../shared/specs/tes-1.1.0.openapi.yaml` and `wes-1.1.0.openapi.yaml`, schemathesis generates
requests that fit the spec and requests that do not, and every response must be

* no server error (no 5xx, no exception escaping the app),
* conformant to the spec's response schema and content type where the spec documents the status,
* for every error, a GA4GH ErrorResponse `{"msg": str, "status_code": <the HTTP status>}`.

(TES 1.1 documents only 200 responses, so the status code itself is not checked against the spec;
the 400/404 bodies are checked for the ErrorResponse shape instead.)

Size: `HPCB_FUZZ_EXAMPLES` examples per operation (default 25; `make test FUZZ_EXAMPLES=500`);
`HPCB_FUZZ_SEED` fixes the random seed (otherwise each run explores new inputs).
Both APIs must be served: an operation of an API the app does not serve fails.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import yaml

from hpc_bridge.config import SiteConfig

from ..conftest import SPECS

EXAMPLES = int(os.environ.get("HPCB_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("HPCB_FUZZ_SEED")  # replays a run (hypothesis prints the seed of a failure)
APIS = {  # name -> (spec file in ../shared/specs, base path the app serves it under)
    "tes": ("tes-1.1.0.openapi.yaml", "/ga4gh/tes/v1"),
    "wes": ("wes-1.1.0.openapi.yaml", "/ga4gh/wes/v1"),
}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _operations() -> list[Any]:
    """(api, method, path) of every operation in the specs, read at collection time."""
    params = []
    for api, (spec, _) in APIS.items():
        path = SPECS / spec
        if not path.is_file():
            params.append(pytest.param(api, "", "", id=api, marks=pytest.mark.skip(
                reason=f"official GA4GH spec not found at {path} (it lives in ../shared)")))
            continue
        for route, item in yaml.safe_load(path.read_text())["paths"].items():
            for method in item:
                if method in METHODS:
                    params.append(pytest.param(api, method.upper(), route,
                                               id=f"{api}-{method.upper()} {route}"))
    return params


@pytest.fixture(scope="module")
def fuzz_app(dev_config: SiteConfig, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from hpc_bridge.app import create_app

    base = tmp_path_factory.mktemp("fuzz")
    (base / "data").mkdir()
    storage = dev_config.storage.model_copy(update={"data_roots": [base / "data"],
                                                    "work_root": base / "work"})
    update: dict[str, Any] = {"database": base / "fuzz.sqlite", "storage": storage}
    if "wes" in type(dev_config).model_fields:
        update["wes"] = dev_config.wes.model_copy(update={"runs_root": base / "data" / "runs"})
    app = create_app(dev_config.model_copy(update=update))
    app.config["PROPAGATE_EXCEPTIONS"] = True  # an exception is a failure, never a quiet 500
    return app


@functools.cache
def _schema(api: str) -> Any:
    import schemathesis

    return schemathesis.openapi.from_path(SPECS / APIS[api][0])


def _ga4gh_error(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"msg", "status_code"}, body
    assert isinstance(body["msg"], str) and body["msg"], body
    assert body["status_code"] == response.status_code, body


@pytest.mark.parametrize(("api", "method", "route"), _operations())
def test_fuzz_operation(api: str, method: str, route: str, fuzz_app: Any) -> None:
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
    )

    base = APIS[api][1]
    assert any(rule.rule.startswith(base + "/") for rule in fuzz_app.url_map.iter_rules()), \
        f"the app does not serve {base}"
    operation = _schema(api)[route][method]
    base_url = f"http://localhost{base}"
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]

    @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE)))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])
    def fuzz(case: Any) -> None:
        response = case.call(app=fuzz_app, base_url=base_url)
        case.validate_response(response, checks=checks, transport_kwargs={"app": fuzz_app})
        _ga4gh_error(response)

    (seed(int(SEED))(fuzz) if SEED else fuzz)()


def test_fuzz_size_comes_from_the_environment() -> None:
    assert EXAMPLES == int(os.environ.get("HPCB_FUZZ_EXAMPLES", "25")) and EXAMPLES >= 1
