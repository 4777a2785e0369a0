"""Authentication, tenancy and per-user limits through the TES API (Flask test client, real
signed tokens, a local OIDC issuer on loopback; no Slurm: tasks stay QUEUED)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient

from hpc_bridge.app import create_app
from hpc_bridge.auth import AuthSettings
from hpc_bridge.config import LimitSettings, SiteConfig
from hpc_bridge.store import Store, TaskFilter

from ..oidc import Issuer, claims, jwk, token

BASE = "/ga4gh/tes/v1"
TASK = {"executors": [{"image": "busybox", "command": ["true"]}]}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def idp(key: rsa.RSAPrivateKey) -> Iterator[Issuer]:
    server = Issuer()
    server.jwks = {"keys": [jwk(key, "rsa-1")]}
    yield server
    server.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite")


def site(dev_config: SiteConfig, idp: Issuer, **limits: Any) -> SiteConfig:
    auth = AuthSettings.model_validate({
        "issuers": [{"issuer": idp.issuer}], "admin_claim": "entitlements",
        "admin_values": ["urn:example:hpc-admin"], "auth_instructions_url": "https://example.org/token"})
    return dev_config.model_copy(update={"auth": auth, "limits": LimitSettings.model_validate(limits)})


@pytest.fixture
def client(dev_config: SiteConfig, idp: Issuer, store: Store) -> FlaskClient:
    return create_app(site(dev_config, idp), store=store).test_client()


def bearer(idp: Issuer, key: rsa.RSAPrivateKey, sub: str = "alice", **extra: Any) -> dict[str, str]:
    return {"Authorization": "Bearer " + token(key, claims(idp, sub=sub, **extra))}


def create(client: FlaskClient, headers: dict[str, str], body: dict[str, Any] = TASK) -> str:
    resp = client.post(f"{BASE}/tasks", json=body, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["id"]


def test_no_token_is_401_with_challenge_and_instructions(client: FlaskClient) -> None:
    """TES 1.1 declares no 401 response; the body is the GA4GH ErrorResponse WES declares for it."""
    for method, path in (("get", "/tasks"), ("post", "/tasks"), ("get", "/tasks/x"),
                         ("post", "/tasks/x:cancel")):
        resp = getattr(client, method)(BASE + path, json=TASK if method == "post" else None)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        body = resp.get_json()
        assert set(body) == {"msg", "status_code"}
        assert body["status_code"] == 401 and "https://example.org/token" in body["msg"]


def test_bad_token_is_401_and_nothing_is_created(client: FlaskClient, idp: Issuer, store: Store,
                                                 key: rsa.RSAPrivateKey) -> None:
    expired = {"Authorization": "Bearer " + token(key, claims(idp, exp=1))}
    resp = client.post(f"{BASE}/tasks", json=TASK, headers=expired)
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []


def test_service_info_is_public(client: FlaskClient) -> None:
    assert client.get(f"{BASE}/service-info").status_code == 200


def test_tasks_belong_to_issuer_and_subject(client: FlaskClient, idp: Issuer, store: Store,
                                            key: rsa.RSAPrivateKey) -> None:
    task_id = create(client, bearer(idp, key, "alice"))
    row = store.tasks.get(task_id)
    assert row is not None and row.owner == f"{idp.issuer}#alice"


def test_other_users_tasks_do_not_exist_for_them(client: FlaskClient, idp: Issuer,
                                                 key: rsa.RSAPrivateKey, store: Store) -> None:
    alice, bob = bearer(idp, key, "alice"), bearer(idp, key, "bob")
    mine = create(client, alice)
    theirs = create(client, bob)
    listed = client.get(f"{BASE}/tasks", headers=alice).get_json()["tasks"]
    assert [t["id"] for t in listed] == [mine]
    for path in (f"/tasks/{theirs}", f"/tasks/{theirs}?view=FULL"):
        resp = client.get(BASE + path, headers=alice)
        assert resp.status_code == 404 and theirs in resp.get_json()["msg"]
    assert client.post(f"{BASE}/tasks/{theirs}:cancel", headers=alice).status_code == 404
    assert store.tasks.get(theirs).state == "QUEUED"  # type: ignore[union-attr]
    assert client.post(f"{BASE}/tasks/{mine}:cancel", headers=alice).status_code == 200


def test_admin_claim_sees_and_cancels_everything(client: FlaskClient, idp: Issuer,
                                                 key: rsa.RSAPrivateKey) -> None:
    ids = {create(client, bearer(idp, key, "alice")), create(client, bearer(idp, key, "bob"))}
    admin = bearer(idp, key, "carol", entitlements=["urn:example:hpc-admin"])
    assert {t["id"] for t in client.get(f"{BASE}/tasks", headers=admin).get_json()["tasks"]} == ids
    for task_id in ids:
        assert client.get(f"{BASE}/tasks/{task_id}", headers=admin).status_code == 200
        assert client.post(f"{BASE}/tasks/{task_id}:cancel", headers=admin).status_code == 200
    not_admin = bearer(idp, key, "dave", entitlements=["urn:example:other"])
    assert client.get(f"{BASE}/tasks", headers=not_admin).get_json()["tasks"] == []


def test_same_subject_of_another_issuer_is_another_user(dev_config: SiteConfig, store: Store,
                                                        key: rsa.RSAPrivateKey) -> None:
    first, second = Issuer(), Issuer()
    try:
        for server in (first, second):
            server.jwks = {"keys": [jwk(key, "rsa-1")]}
        auth = AuthSettings.model_validate({"issuers": [{"issuer": first.issuer}, {"issuer": second.issuer}]})
        client = create_app(dev_config.model_copy(update={"auth": auth}), store=store).test_client()
        task_id = create(client, bearer(first, key, "alice"))
        assert client.get(f"{BASE}/tasks/{task_id}", headers=bearer(second, key, "alice")).status_code == 404
    finally:
        first.close()
        second.close()


def limited(dev_config: SiteConfig, idp: Issuer, store: Store, **limits: Any) -> FlaskClient:
    return create_app(site(dev_config, idp, **limits), store=store).test_client()


def test_active_task_limit_is_429_and_creates_nothing(dev_config: SiteConfig, idp: Issuer, store: Store,
                                                      key: rsa.RSAPrivateKey) -> None:
    client = limited(dev_config, idp, store, max_active_tasks=2,
                     users={f"{idp.issuer}#bob": {"max_active_tasks": 3}})
    alice, bob = bearer(idp, key, "alice"), bearer(idp, key, "bob")
    first = create(client, alice)
    create(client, alice)
    resp = client.post(f"{BASE}/tasks", json=TASK, headers=alice)
    assert resp.status_code == 429 and "2 active tasks" in resp.get_json()["msg"]
    assert len(store.tasks.list(TaskFilter(), before_seq=None, limit=10)) == 2
    for _ in range(3):  # bob's own, larger limit; alice's tasks do not count against him
        create(client, bob)
    assert client.post(f"{BASE}/tasks", json=TASK, headers=bob).status_code == 429
    store.tasks.update(first, state="COMPLETE")  # a finished task frees its slot
    create(client, alice)


@pytest.mark.parametrize(("limits", "resources", "field"), [
    ({"max_cpu_cores": 2}, {"cpu_cores": 3}, "resources.cpu_cores"),
    ({"max_ram_gb": 1}, {"ram_gb": 2}, "resources.ram_gb"),
    ({"max_gpus": 1}, {"backend_parameters": {"gpus": "a100:2"}}, "gpus"),
    ({"max_gpus": 0}, {"backend_parameters": {"gres": "gpu:1"}}, "gpus"),
    ({"max_time_minutes": 60}, {"backend_parameters": {"time": "1-00:00"}}, "time"),
    ({"max_time_minutes": 60}, {"backend_parameters": {"time": "UNLIMITED"}}, "time"),
])
def test_per_task_limits_are_400(dev_config: SiteConfig, idp: Issuer, store: Store, key: rsa.RSAPrivateKey,
                                 limits: dict[str, Any], resources: dict[str, Any], field: str) -> None:
    client = limited(dev_config, idp, store, **limits)
    resp = client.post(f"{BASE}/tasks", json={**TASK, "resources": resources}, headers=bearer(idp, key))
    assert resp.status_code == 400, resp.get_json()
    assert field in resp.get_json()["msg"] and "maximum" in resp.get_json()["msg"]
    assert store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []


def test_time_cap_bounds_a_task_without_a_time_limit(dev_config: SiteConfig, idp: Issuer, store: Store,
                                                     key: rsa.RSAPrivateKey) -> None:
    from hpc_bridge.staging.schemes import Schemes
    from hpc_bridge.tes.jobspec import plan_job
    from hpc_bridge.tes.models import Task

    config = site(dev_config, idp, max_time_minutes=90)
    plan = plan_job(Task.model_validate(TASK), task_id="t", workdir="/srv/w/t", config=config,
                    schemes=Schemes(config), owner="x", limits=config.limits.for_owner("x"))
    assert ("time", "90") in plan.script.options
    client = limited(dev_config, idp, store, max_time_minutes=90)
    ok = {**TASK, "resources": {"backend_parameters": {"time": "01:30:00"}}}
    create(client, bearer(idp, key), ok)


def test_inline_content_limit_per_user(dev_config: SiteConfig, idp: Issuer, store: Store,
                                       key: rsa.RSAPrivateKey) -> None:
    client = limited(dev_config, idp, store, max_content_bytes=10)
    body = {**TASK, "inputs": [{"path": "/in/a", "content": "x" * 11}]}
    resp = client.post(f"{BASE}/tasks", json=body, headers=bearer(idp, key))
    assert resp.status_code == 400 and "inputs[0].content" in resp.get_json()["msg"]


def test_request_body_limit_per_user(dev_config: SiteConfig, idp: Issuer, store: Store,
                                     key: rsa.RSAPrivateKey) -> None:
    client = limited(dev_config, idp, store, max_request_bytes=2048)
    body = {**TASK, "description": "x" * 4096}
    resp = client.post(f"{BASE}/tasks", json=body, headers=bearer(idp, key))
    assert resp.status_code == 413 and resp.get_json()["status_code"] == 413
    assert store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []
    create(client, bearer(idp, key), {**TASK, "description": "short"})


def test_request_rate_limit_is_429_with_retry_after(dev_config: SiteConfig, idp: Issuer, store: Store,
                                                    key: rsa.RSAPrivateKey) -> None:
    client = limited(dev_config, idp, store, requests_per_second=0.5, burst=3)
    alice, bob = bearer(idp, key, "alice"), bearer(idp, key, "bob")
    assert [client.get(f"{BASE}/tasks", headers=alice).status_code for _ in range(4)] == [200, 200, 200, 429]
    resp = client.get(f"{BASE}/tasks", headers=alice)
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "per second" in resp.get_json()["msg"]
    assert client.get(f"{BASE}/tasks", headers=bob).status_code == 200  # buckets are per user


AUD = "hpc-bridge"


def _forged(idp: Issuer, key: rsa.RSAPrivateKey, kind: str) -> str:
    """A token that must be refused, made the way an attacker would."""
    import hashlib
    import hmac
    import time

    from cryptography.hazmat.primitives import serialization

    from ..oidc import b64, b64json

    now = int(time.time())
    if kind == "alg-none":
        return f"{b64json({'alg': 'none', 'kid': 'rsa-1'})}.{b64json(claims(idp, aud=AUD))}."
    if kind == "hs256-with-public-key":
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = f"{b64json({'alg': 'HS256', 'kid': 'rsa-1'})}.{b64json(claims(idp, aud=AUD))}"
        return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"
    if kind == "tampered-payload":
        header, _, signature = token(key, claims(idp, sub="alice", aud=AUD)).split(".")
        return f"{header}.{b64json(claims(idp, sub='bob', aud=AUD))}.{signature}"
    payload = {
        "expired": claims(idp, exp=now - 3600, aud=AUD),
        "not-yet-valid": claims(idp, nbf=now + 3600, aud=AUD),
        "wrong-issuer": claims(idp, iss="https://evil.example.org/", aud=AUD),
        "wrong-audience": claims(idp, aud="another-service"),
        "missing-sub": claims(idp, sub=None, aud=AUD),
        "unknown-kid": claims(idp, aud=AUD),
    }[kind]
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return token(other, payload, kid="rsa-9") if kind == "unknown-kid" else token(key, payload)


@pytest.mark.parametrize("kind", ["expired", "not-yet-valid", "wrong-issuer", "wrong-audience",
                                  "alg-none", "hs256-with-public-key", "unknown-kid",
                                  "tampered-payload", "missing-sub"])
def test_forged_and_invalid_tokens_are_refused(dev_config: SiteConfig, idp: Issuer, store: Store,
                                               key: rsa.RSAPrivateKey, kind: str) -> None:
    auth = AuthSettings.model_validate({"issuers": [{"issuer": idp.issuer, "audience": AUD}]})
    client = create_app(dev_config.model_copy(update={"auth": auth}), store=store).test_client()
    valid = {"Authorization": "Bearer " + token(key, claims(idp, aud=AUD))}
    assert client.get(f"{BASE}/tasks", headers=valid).status_code == 200
    resp = client.post(f"{BASE}/tasks", json=TASK, headers={"Authorization": "Bearer " + _forged(idp, key, kind)})
    assert resp.status_code == 401, resp.get_json()
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert store.tasks.list(TaskFilter(), before_seq=None, limit=10) == []
