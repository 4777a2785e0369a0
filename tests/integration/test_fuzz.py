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

The spec's schemas rarely produce what breaks parsers and databases, so hostile inputs are fuzzed
as well, with the same two checks (no 5xx, GA4GH errors): JSON nested far too deeply in TES and WES
bodies, WES form fields and bearer tokens; numbers beyond any float (1e400, Infinity, NaN, 400-digit
integers) in resources and query parameters; page tokens of any length and content, also ones
that decode to integers beyond SQLite's; and thousands of tag filters.

Size: `HPCB_FUZZ_EXAMPLES` examples per operation (default 25; `make test FUZZ_EXAMPLES=500`);
`HPCB_FUZZ_SEED` fixes the random seed (otherwise each run explores new inputs).
Both APIs must be served: an operation of an API the app does not serve fails.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest
import yaml

from hpc_bridge.config import SiteConfig

from ..conftest import SPECS
from ..oidc import b64, jwk

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


# -- hostile inputs ---------------------------------------------------------------------------

TES, WES = APIS["tes"][1], APIS["wes"][1]
RUN_ID = "00000000-0000-4000-8000-00000000f022"  # a run of the hostile app's user, for its task list
TASK = '{"executors": [{"image": "busybox", "command": ["true"]}]'
TASK_SLOTS = [  # a tesTask with one value left out (%s)
    "%s", TASK + ', "tags": %s}', TASK + ', "resources": %s}', TASK + ', "description": %s}',
    TASK + ', "inputs": [%s]}', '{"executors": [{"image": "busybox", "command": %s}]}',
    '{"executors": [{"image": "busybox", "command": ["true"], "env": {"A": %s}}]}',
    TASK + ', "resources": {"backend_parameters": %s}}',
]
RUN_SLOTS = [  # a WES RunRequest as a JSON body
    "%s", '{"workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "x.cwl", '
    '"workflow_params": %s}', '{"workflow_type": "CWL", "tags": {"a": %s}}',
]
FORM_FIELDS = ("workflow_params", "tags", "workflow_engine_parameters")
NUMBERS = ("1e308", "-1e308", "1e400", "-1e400", "Infinity", "-Infinity", "NaN", "1e-400", "-0",
           "9" * 400, "-" + "9" * 400, "9" * 5000, "1" + "0" * 19, str(2**63), str(-(2**63) - 1))


@functools.cache
def _strategies() -> dict[str, Any]:
    from hypothesis import strategies as st

    deep = st.builds(lambda depth, opener, leaf: (opener * depth + leaf + {"[": "]", '{"a": ': "}"}[opener] * depth),
                     st.integers(60, 30000), st.sampled_from(["[", '{"a": ']), st.sampled_from(["1", '"x"', "[]"]))
    number = st.one_of(st.sampled_from(NUMBERS), st.floats().map(json.dumps),
                       st.integers(-(10**30), 10**30).map(str))
    deep_requests = st.one_of(
        st.builds(lambda slot, value: ("post", f"{TES}/tasks", {"data": slot % value}),
                  st.sampled_from(TASK_SLOTS), deep),
        st.builds(lambda slot, value: ("post", f"{WES}/runs", {"data": slot % value}),
                  st.sampled_from(RUN_SLOTS), deep),
        st.builds(lambda field, value: ("post", f"{WES}/runs", {"form": {
            "workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "x.cwl", field: value}}),
            st.sampled_from(FORM_FIELDS), st.one_of(deep, deep.map(lambda d: '{"a": ' + d + "}"))),
        st.builds(lambda header, payload: ("get", f"{TES}/tasks", {"headers": {
            "Authorization": f"Bearer {b64(header.encode())}.{b64(payload.encode())}.c2ln"}}),
            st.one_of(deep, st.just('{"alg": "RS256", "kid": "k"}')), deep),
    )
    number_requests = st.one_of(
        st.builds(lambda field, value: ("post", f"{TES}/tasks",
                                        {"data": TASK + f', "resources": {{"{field}": {value}}}}}'}),
                  st.sampled_from(["ram_gb", "disk_gb", "cpu_cores"]), number),
        st.builds(lambda value: ("post", f"{TES}/tasks", {"data": TASK[:-2] + f', "ignore_error": {value}}}]}}'}),
                  number),
        st.builds(lambda path, value: ("get", f"{path}?page_size={value}", {}),
                  st.sampled_from([f"{TES}/tasks", f"{WES}/runs", f"{WES}/runs/{RUN_ID}/tasks"]), number),
    )
    digits = st.one_of(st.integers(0, 10**30).map(str), st.integers(1, 6000).map(lambda n: "9" * n),
                       st.text(max_size=40))
    token = st.one_of(
        st.builds(lambda kind, rest: b64((kind + rest).encode()), st.sampled_from(["t", "r", ""]), digits),
        st.text(max_size=300), st.binary(max_size=300).map(b64), st.integers(1, 100000).map(lambda n: "A" * n))
    token_requests = st.builds(lambda path, value: ("get", path, {"query_string": {"page_token": value}}),
                               st.sampled_from([f"{TES}/tasks", f"{WES}/runs", f"{WES}/runs/{RUN_ID}/tasks"]), token)
    filter_requests = st.builds(
        lambda keys, values, key: ("get", f"{TES}/tasks", {"query_string": [
            *(("tag_key", f"{key}{i}") for i in range(keys)), *(("tag_value", "v") for _ in range(values))]}),
        st.integers(0, 3000), st.integers(0, 3002), st.text(max_size=8))
    return {"deep": deep_requests, "numbers": number_requests, "tokens": token_requests,
            "filters": filter_requests}


@pytest.fixture(scope="module")
def hostile_app(dev_config: SiteConfig, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The fuzz app's setup, with JWT authentication on (a static key, so no network): tokens are
    fuzzed too, and every other request carries a valid token of the same user."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from hpc_bridge.app import create_app
    from hpc_bridge.auth import AuthSettings
    from hpc_bridge.store import Store
    from hpc_bridge.store.runs import RunStore

    base = tmp_path_factory.mktemp("hostile")
    (base / "data").mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (base / "jwks.json").write_text(json.dumps({"keys": [jwk(key, "k")]}))
    issuer = "https://idp.example.org/"
    auth = AuthSettings.model_validate({"issuers": [{"issuer": issuer, "jwks_file": str(base / "jwks.json")}]})
    storage = dev_config.storage.model_copy(update={"data_roots": [base / "data"], "work_root": base / "work",
                                                    "one_shared_space": True})
    config = dev_config.model_copy(update={
        "database": base / "hostile.sqlite", "storage": storage, "auth": auth,
        "wes": dev_config.wes.model_copy(update={"runs_root": base / "data" / "runs"})})
    store = Store(config.database)
    RunStore(store).create(id=RUN_ID, owner=f"{issuer}#fuzz", request={}, tags={}, run_dir=str(base / "run"),
                           workflow="file:///x.cwl")
    app = create_app(config, store=store)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    app.config["FUZZ_TOKEN"] = jwt.encode({"iss": issuer, "sub": "fuzz", "exp": 2**40}, key,
                                          algorithm="RS256", headers={"kid": "k"})
    return app


@pytest.mark.parametrize("kind", ["deep", "numbers", "tokens", "filters"])
def test_fuzz_hostile_inputs(kind: str, hostile_app: Any) -> None:
    from hypothesis import HealthCheck, given, seed, settings

    client = hostile_app.test_client()
    statuses: list[int] = []

    @given(request=_strategies()[kind])
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def fuzz(request: tuple[str, str, dict[str, Any]]) -> None:
        method, path, kwargs = request
        kwargs = dict(kwargs)
        headers = {"Authorization": f"Bearer {hostile_app.config['FUZZ_TOKEN']}", **kwargs.pop("headers", {})}
        if "data" in kwargs:
            kwargs["content_type"] = "application/json"
        if "form" in kwargs:
            kwargs["data"], kwargs["content_type"] = kwargs.pop("form"), "multipart/form-data"
        response = getattr(client, method)(path, headers=headers, **kwargs)
        statuses.append(response.status_code)
        assert response.status_code < 500, (response.status_code, response.get_data()[:300])
        if response.status_code >= 400:
            body = response.get_json()
            assert isinstance(body, dict) and set(body) == {"msg", "status_code"}, body
            assert isinstance(body["msg"], str) and body["msg"] and body["status_code"] == response.status_code

    (seed(int(SEED))(fuzz) if SEED else fuzz)()
    assert any(400 <= status < 500 for status in statuses), statuses  # the hostile part was reached
