"""HTTP Basic for service accounts (Pulsar, proTES): stored as scrypt hashes only, refused like a bad
token, and an owner like any other (tenancy, limits) next to bearer tokens."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from pydantic import ValidationError

from hpc_bridge.app import create_app
from hpc_bridge.auth import AuthSettings, passwords
from hpc_bridge.auth import basic as basic_module
from hpc_bridge.auth.passwords import check_hash, hash_password, verify_password
from hpc_bridge.config import LimitSettings, SiteConfig
from hpc_bridge.store import Store

from ..oidc import Issuer, claims, token
from .test_tenancy_api import idp, key  # noqa: F401 - fixtures

BASE = "/ga4gh/tes/v1"
TASK = {"executors": [{"image": "busybox", "command": ["true"]}]}
CHEAP = 2**10  # a cost these tests allow themselves (fixture `cheap`); the site's floor is 2^17
PASSWORDS = {"pulsar": "pulsar-long-secret", "protes": "protes-long-secret"}


@pytest.fixture(autouse=True)
def cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "N", CHEAP)


def site(dev_config: SiteConfig, idp: Issuer, **limits: Any) -> SiteConfig:
    auth = AuthSettings.model_validate({
        "issuers": [{"issuer": idp.issuer}],
        "basic_users": {name: {"password_hash": hash_password(pw, n=CHEAP)} for name, pw in PASSWORDS.items()}})
    return dev_config.model_copy(update={"auth": auth, "limits": LimitSettings.model_validate(limits)})


@pytest.fixture
def client(dev_config: SiteConfig, idp: Issuer, tmp_path: Path) -> FlaskClient:
    return create_app(site(dev_config, idp), store=Store(tmp_path / "db.sqlite")).test_client()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_hashes_are_scrypt_and_a_plain_password_or_weak_parameters_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "N", 2**17)  # the site's floor, as shipped
    stored = hash_password("correct horse battery")
    assert check_hash(stored) == stored and stored.startswith("scrypt$131072$8$1$")
    assert verify_password("correct horse battery", stored) and not verify_password("wrong", stored)
    assert verify_password("caf\u00e9-password", hash_password("cafe\u0301-password"))  # NFC, as RFC 7617 asks
    assert hash_password("same") != hash_password("same")  # salted
    key = "$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "="
    for bad in ("hunter2", "scrypt$65536$8$1" + key, "scrypt$2097152$8$1" + key, "scrypt$131072$32$16" + key):
        with pytest.raises(ValidationError, match="scrypt"):
            AuthSettings.model_validate({"basic_users": {"pulsar": {"password_hash": bad}}})
    with pytest.raises(ValidationError, match="basic user names"):
        AuthSettings.model_validate({"basic_users": {"a:b": {"password_hash": stored}}})
    with pytest.raises(ValidationError, match="mode 'jwt'"):
        AuthSettings.model_validate({"mode": "none", "basic_users": {"pulsar": {"password_hash": stored}}})


@pytest.mark.parametrize(("user", "password"), [("pulsar", "wrong-password-xx"), ("nobody", "pulsar-long-secret"),
                                                ("pulsar", "")])
def test_a_wrong_password_or_unknown_user_is_401_with_a_basic_challenge(client: FlaskClient, user: str,
                                                                          password: str) -> None:
    resp = client.get(f"{BASE}/tasks", headers=basic(user, password))
    assert resp.status_code == 401
    assert resp.json["msg"] == "wrong user name or password" and resp.json["status_code"] == 401
    assert resp.headers["WWW-Authenticate"].startswith('Basic realm="hpc-bridge"')


def test_malformed_basic_credentials_are_401(client: FlaskClient) -> None:
    for value in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic"):
        resp = client.get(f"{BASE}/tasks", headers={"Authorization": value})
        assert resp.status_code == 401, value


def test_without_credentials_both_schemes_are_offered(client: FlaskClient) -> None:
    resp = client.get(f"{BASE}/tasks")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer, Basic realm="hpc-bridge", charset="UTF-8"'


def test_tenancy_through_basic_is_that_of_tokens(client: FlaskClient, idp: Issuer,
                                                 key: rsa.RSAPrivateKey) -> None:
    pulsar, protes = basic("pulsar", PASSWORDS["pulsar"]), basic("protes", PASSWORDS["protes"])
    alice = {"Authorization": "Bearer " + token(key, claims(idp, sub="alice"))}
    created = client.post(f"{BASE}/tasks", json=TASK, headers=pulsar)
    assert created.status_code == 200, created.json
    task_id = created.json["id"]
    assert client.get(f"{BASE}/tasks/{task_id}", headers=pulsar).status_code == 200
    for other in (protes, alice):
        assert client.get(f"{BASE}/tasks/{task_id}", headers=other).status_code == 404
        assert client.post(f"{BASE}/tasks/{task_id}:cancel", headers=other).status_code == 404
        assert client.get(f"{BASE}/tasks", headers=other).json.get("tasks", []) == []
    assert [t["id"] for t in client.get(f"{BASE}/tasks", headers=pulsar).json["tasks"]] == [task_id]


def test_limits_apply_to_basic_owners(dev_config: SiteConfig, idp: Issuer, tmp_path: Path) -> None:
    config = site(dev_config, idp, users={"basic#pulsar": {"max_active_tasks": 1}})
    client = create_app(config, store=Store(tmp_path / "db.sqlite")).test_client()
    pulsar = basic("pulsar", PASSWORDS["pulsar"])
    assert client.post(f"{BASE}/tasks", json=TASK, headers=pulsar).status_code == 200
    assert client.post(f"{BASE}/tasks", json=TASK, headers=pulsar).status_code == 429
    assert client.post(f"{BASE}/tasks", json=TASK, headers=basic("protes", PASSWORDS["protes"])).status_code == 200


def test_basic_is_refused_where_no_basic_user_is_configured(dev_config: SiteConfig, idp: Issuer,
                                                            tmp_path: Path) -> None:
    auth = AuthSettings.model_validate({"issuers": [{"issuer": idp.issuer}]})
    client = create_app(dev_config.model_copy(update={"auth": auth}),
                        store=Store(tmp_path / "db.sqlite")).test_client()
    resp = client.get(f"{BASE}/tasks", headers=basic("pulsar", PASSWORDS["pulsar"]))
    assert resp.status_code == 401 and "not enabled" in resp.json["msg"]
    assert resp.headers["WWW-Authenticate"] == "Bearer"  # no Basic challenge for a scheme not offered
    assert client.get(f"{BASE}/tasks").headers["WWW-Authenticate"] == "Bearer"


def test_failures_are_throttled_before_the_kdf_but_a_known_good_client_goes_on(
        client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    pulsar = basic("pulsar", PASSWORDS["pulsar"])
    assert client.get(f"{BASE}/tasks", headers=pulsar).status_code == 200  # remembered from now on
    checks: list[str] = []
    real = basic_module.verify_password
    monkeypatch.setattr(basic_module, "verify_password", lambda pw, h: checks.append(pw) or real(pw, h))
    for i in range(basic_module.MAX_FAILURES):
        assert client.get(f"{BASE}/tasks", headers=basic("pulsar", f"guess-{i}")).status_code == 401
    throttled = client.get(f"{BASE}/tasks", headers=basic("pulsar", "one-more-guess"))
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert len(checks) == basic_module.MAX_FAILURES  # the throttled guess cost no KDF
    assert client.get(f"{BASE}/tasks", headers=pulsar).status_code == 200 and len(checks) == 10
    # a name no account can have is refused without a KDF
    assert client.get(f"{BASE}/tasks", headers=basic("no such user!", "x")).status_code == 401
    assert len(checks) == basic_module.MAX_FAILURES


def test_the_openapi_document_declares_the_enabled_schemes(client: FlaskClient, dev_config: SiteConfig,
                                                           tmp_path: Path) -> None:
    """TES 1.1 service-info has no field for auth: the served OpenAPI document says, as the TES 1.2
    draft declares it (BearerAuth, BasicAuth), and it is a valid OpenAPI document."""
    from openapi_spec_validator import validate

    doc = client.get(f"{BASE}/openapi.json").get_json()  # public, like service-info
    validate(doc)
    assert doc["components"]["securitySchemes"] == {
        "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "BasicAuth": {"type": "http", "scheme": "basic"}}
    operations = {op["operationId"]: op for path in doc["paths"].values() for op in path.values()}
    assert set(operations) == {"GetServiceInfo", "ListTasks", "CreateTask", "GetTask", "CancelTask"}
    assert "security" not in operations["GetServiceInfo"]
    assert all(op["security"] == [{"BearerAuth": []}, {"BasicAuth": []}]
               for name, op in operations.items() if name != "GetServiceInfo")
    # Basic off (the default): only bearer tokens are declared; auth off: nothing is.
    tokens_only = dev_config.model_copy(update={"auth": AuthSettings.model_validate({"issuers": [
        {"issuer": "https://aai.example.org"}]})})
    doc = create_app(tokens_only, store=Store(tmp_path / "b.sqlite")).test_client().get(
        f"{BASE}/openapi.json").get_json()
    assert list(doc["components"]["securitySchemes"]) == ["BearerAuth"]
    doc = create_app(dev_config, store=Store(tmp_path / "c.sqlite")).test_client().get(
        f"{BASE}/openapi.json").get_json()
    assert "securitySchemes" not in doc["components"]
    assert "security" not in doc["paths"]["/tasks"]["post"]
