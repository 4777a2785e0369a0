"""TokenVerifier against real signed tokens and a local OIDC issuer (discovery + JWKS over http)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from hpc_bridge.auth import (
    NO_AUTH_IDENTITY,
    AuthConfigError,
    AuthError,
    AuthSettings,
    Identity,
    IssuerSettings,
    TokenVerifier,
)

from ..oidc import Issuer, b64, b64json, claims, jwk, token

# --- keys, tokens, issuer server ------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def idp(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Iterator[Issuer]:
    server = Issuer()
    server.jwks = {"keys": [jwk(rsa_key, "rsa-1", use="sig", alg="RS256"), jwk(ec_key, "ec-1")]}
    yield server
    server.close()


@pytest.fixture
def other_idp() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(issuers: list[IssuerSettings] | list[dict[str, Any]], **extra: Any) -> AuthSettings:
    return AuthSettings.model_validate({"issuers": issuers, **extra})


def verifier_for(
    idp: Issuer, clock: Callable[[], float] | None = None, audience: Any = None, **extra: Any
) -> TokenVerifier:
    config = settings([{"issuer": idp.issuer, "audience": audience}], **extra)
    return TokenVerifier(config, clock=clock or Clock())


def refused(verifier: TokenVerifier, header: str | None, message: str = "") -> AuthError:
    with pytest.raises(AuthError) as caught:
        verifier.verify(header)
    assert caught.value.status == 401
    assert message in caught.value.message
    return caught.value


# --- accepted tokens ------------------------------------------------------------------------


def test_valid_rs256_token(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = verifier_for(idp)
    identity = verifier.verify("Bearer " + token(rsa_key, claims(idp, scope="openid")))
    assert identity.issuer == idp.issuer
    assert identity.subject == "alice@example.org"
    assert identity.claims["scope"] == "openid"
    assert identity.admin is False
    assert identity.owner == f"{idp.issuer}#alice@example.org"
    assert idp.requests == {"/oidc/.well-known/openid-configuration": 1, "/jwks": 1}
    verifier.verify("bearer " + token(rsa_key, claims(idp)))  # scheme is case-insensitive
    assert idp.total == 2  # keys cached


def test_valid_es256_token(idp: Issuer, ec_key: ec.EllipticCurvePrivateKey) -> None:
    identity = verifier_for(idp).verify("Bearer " + token(ec_key, claims(idp), "ec-1", "ES256"))
    assert identity.subject == "alice@example.org"


def test_audience_checked_when_configured(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = verifier_for(idp, audience=["hpc-bridge", "other"])
    assert verifier.verify("Bearer " + token(rsa_key, claims(idp, aud=["x", "hpc-bridge"])))
    refused(verifier, "Bearer " + token(rsa_key, claims(idp, aud="someone-else")), "audience")
    refused(verifier, "Bearer " + token(rsa_key, claims(idp)), "'aud'")


# --- time -----------------------------------------------------------------------------------


def test_expired_token(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    expired = claims(idp, exp=int(time.time()) - 120)
    refused(verifier_for(idp), "Bearer " + token(rsa_key, expired), "expired")


def test_nbf_in_the_future(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    early = claims(idp, nbf=int(time.time()) + 120)
    refused(verifier_for(idp), "Bearer " + token(rsa_key, early), "not yet valid")


def test_within_leeway_passes(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    verifier = verifier_for(idp, leeway=30)
    assert verifier.verify("Bearer " + token(rsa_key, claims(idp, exp=now - 10)))
    assert verifier.verify("Bearer " + token(rsa_key, claims(idp, nbf=now + 10)))


# --- issuers --------------------------------------------------------------------------------


def test_issuer_not_in_allow_list_makes_no_request(
    idp: Issuer, other_idp: Issuer, rsa_key: rsa.RSAPrivateKey
) -> None:
    other_idp.jwks = {"keys": [jwk(rsa_key, "rsa-1")]}
    forged = token(rsa_key, claims(idp, iss=other_idp.issuer))
    refused(verifier_for(idp), "Bearer " + forged, "issuer is not accepted")
    refused(verifier_for(idp), "Bearer " + token(rsa_key, claims(idp, iss=None)), "issuer")
    refused(verifier_for(idp), "Bearer " + token(rsa_key, claims(idp, iss=["x"])), "issuer")
    assert idp.total == 0 and other_idp.total == 0


def test_discovery_naming_another_issuer_is_refused(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    idp.discovery_issuer = "http://evil.example/"
    refused(verifier_for(idp), "Bearer " + token(rsa_key, claims(idp)), "issuer keys unavailable")
    assert idp.requests["/jwks"] == 0


# --- forged algorithms and keys -------------------------------------------------------------


def test_alg_none_is_refused_before_any_fetch(idp: Issuer) -> None:
    forged = f"{b64json({'alg': 'none', 'kid': 'rsa-1'})}.{b64json(claims(idp))}."
    refused(verifier_for(idp), "Bearer " + forged, "algorithm is not accepted")
    unsigned = f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims(idp))}."
    refused(verifier_for(idp), "Bearer " + unsigned, "algorithm is not accepted")
    assert idp.total == 0


def test_hs256_with_public_key_as_secret_is_refused(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64json(claims(idp))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    refused(verifier_for(idp), f"Bearer {signing_input}.{b64(signature)}", "algorithm is not accepted")
    assert idp.total == 0


def test_key_type_must_fit_the_algorithm(
    idp: Issuer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = verifier_for(idp, algorithms=["RS256", "PS256", "ES256"])
    # ES256 token naming the RSA key, and RS256 token naming the EC key.
    refused(verifier, "Bearer " + token(ec_key, claims(idp), "rsa-1", "ES256"), "does not fit")
    refused(verifier, "Bearer " + token(rsa_key, claims(idp), "ec-1", "RS256"), "does not fit")
    # The RSA JWK declares alg RS256: a PS256 signature by the same key is not accepted.
    refused(verifier, "Bearer " + token(rsa_key, claims(idp), "rsa-1", "PS256"), "does not fit")


def test_crit_header_is_refused(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    encoded = jwt.encode(claims(idp), rsa_key, algorithm="RS256", headers={"kid": "rsa-1", "crit": ["x"]})
    refused(verifier_for(idp), "Bearer " + encoded, "critical")


def test_tampered_payload_is_refused(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = verifier_for(idp)
    header, payload, signature = token(rsa_key, claims(idp)).split(".")
    swapped = b64json(claims(idp, sub="mallory@example.org"))
    refused(verifier, f"Bearer {header}.{swapped}.{signature}", "signature is invalid")
    flipped = payload[:-3] + ("A" if payload[-3] != "A" else "B") + payload[-2:]
    refused(verifier, f"Bearer {header}.{flipped}.{signature}")


# --- required claims and header fields ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sub": None}, "'sub'"),
        ({"exp": None}, "'exp'"),
        ({"sub": ""}, "sub"),
        ({"sub": 42}, "sub"),
    ],
)
def test_missing_or_bad_claims(
    idp: Issuer, rsa_key: rsa.RSAPrivateKey, overrides: dict[str, Any], message: str
) -> None:
    refused(verifier_for(idp), "Bearer " + token(rsa_key, claims(idp, **overrides)), message)


def test_missing_kid_is_refused(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    refused(verifier_for(idp), "Bearer " + token(rsa_key, claims(idp), kid=None), "kid")
    assert idp.total == 0


@pytest.mark.parametrize("header", [None, "", "   ", "Basic dXNlcjpwdw==", "Token abc"])
def test_no_bearer_credentials(idp: Issuer, header: str | None) -> None:
    error = refused(verifier_for(idp, auth_instructions_url="https://example.org/token"), header)
    assert error.error is None
    assert error.www_authenticate == "Bearer"
    assert error.instructions_url == "https://example.org/token"


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer a b", "Bearer a\"b", "Bearer " + "a" * 40000])
def test_malformed_bearer_header(idp: Issuer, header: str) -> None:
    error = refused(verifier_for(idp), header)
    assert error.www_authenticate is not None
    assert error.www_authenticate.startswith('Bearer error="invalid_request", error_description="')


@pytest.mark.parametrize("value", ["abc", "a.b", "a.b.c", "e30.W10.c", "!!!.e30.x"])
def test_garbage_tokens(idp: Issuer, value: str) -> None:
    refused(verifier_for(idp), "Bearer " + value)
    assert idp.total == 0


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("segment", [0, 1])
@pytest.mark.parametrize("nested", [
    _deep(10000),  # Python's parser would raise RecursionError (and the token stays under 32 KiB)
    '{"alg": "RS256", "kid": "rsa-1", "iss": "x", "x": ' + _deep(100) + "}",  # parsed, too deep to pass on
])
def test_deeply_nested_segments_are_malformed_before_any_fetch(idp: Issuer, rsa_key: rsa.RSAPrivateKey,
                                                              segment: int, nested: str) -> None:
    parts = token(rsa_key, claims(idp)).split(".")
    parts[segment] = b64(nested.encode())
    refused(verifier_for(idp), "Bearer " + ".".join(parts), "token is malformed")
    assert idp.total == 0


def test_nesting_within_the_limit_is_verified(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    nested = json.loads(_deep(60))
    assert verifier_for(idp).verify("Bearer " + token(rsa_key, claims(idp, x=nested))).claims["x"] == nested


# --- key refresh, rotation, throttle --------------------------------------------------------


def test_unknown_kid_refreshes_once_then_refuses(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    clock = Clock()
    verifier = verifier_for(idp, clock, jwks_refresh_min_interval=60)
    verifier.verify("Bearer " + token(rsa_key, claims(idp)))
    assert idp.requests["/jwks"] == 1
    clock.now += 61
    refused(verifier, "Bearer " + token(rsa_key, claims(idp), kid="nope-1"), "unknown key")
    assert idp.requests["/jwks"] == 2
    for n in range(5):  # within the interval: no fetch at all
        clock.now += 1
        refused(verifier, "Bearer " + token(rsa_key, claims(idp), kid=f"nope-{n + 2}"), "unknown key")
    assert idp.requests["/jwks"] == 2
    assert idp.requests["/oidc/.well-known/openid-configuration"] == 1


def test_unknown_kid_on_a_cold_cache_fetches_once(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = verifier_for(idp)
    refused(verifier, "Bearer " + token(rsa_key, claims(idp), kid="nope"), "unknown key")
    assert idp.requests == {"/oidc/.well-known/openid-configuration": 1, "/jwks": 1}


def test_key_rotation_without_restart(
    idp: Issuer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    verifier = verifier_for(idp, time.monotonic, jwks_refresh_min_interval=0.3)
    verifier.verify("Bearer " + token(rsa_key, claims(idp)))
    idp.jwks = {"keys": [jwk(rsa_key2, "rsa-2")]}
    new = "Bearer " + token(rsa_key2, claims(idp), kid="rsa-2")
    for _ in range(3):  # straight after the first fetch: throttled, no network
        refused(verifier, new, "unknown key")
    assert idp.requests["/jwks"] == 1
    time.sleep(0.35)
    assert verifier.verify(new).subject == "alice@example.org"
    assert idp.requests["/jwks"] == 2
    refused(verifier, "Bearer " + token(rsa_key, claims(idp)), "unknown key")  # old key gone
    assert idp.requests["/jwks"] == 2


def test_expired_key_set_is_refetched_and_never_used_stale(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    clock = Clock()
    verifier = verifier_for(idp, clock, jwks_cache_lifespan=300, jwks_refresh_min_interval=60)
    good = "Bearer " + token(rsa_key, claims(idp))
    verifier.verify(good)
    clock.now += 301
    verifier.verify(good)
    assert idp.requests["/jwks"] == 2
    idp.fail_jwks = True
    clock.now += 301
    refused(verifier, good, "issuer keys unavailable")
    assert idp.requests["/jwks"] == 3
    refused(verifier, good, "issuer keys unavailable")  # failure is throttled too
    assert idp.requests["/jwks"] == 3
    idp.fail_jwks = False
    clock.now += 61
    assert verifier.verify(good)
    assert idp.requests["/jwks"] == 4


def test_keys_unavailable_fails_closed(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    idp.fail_jwks = True
    refused(verifier_for(idp), "Bearer " + token(rsa_key, claims(idp)), "issuer keys unavailable")


def test_issuer_down_fails_closed(rsa_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    issuer = f"http://127.0.0.1:{port}/"
    verifier = TokenVerifier(settings([{"issuer": issuer}], http_timeout=1))
    payload = {"iss": issuer, "sub": "a", "exp": int(time.time()) + 60}
    error = refused(verifier, "Bearer " + token(rsa_key, payload), "issuer keys unavailable")
    assert error.www_authenticate.startswith('Bearer error="invalid_token"')


def test_concurrent_cold_start_fetches_once(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = verifier_for(idp)
    header = "Bearer " + token(rsa_key, claims(idp))
    barrier = threading.Barrier(12)
    results: list[Identity | Exception] = []

    def work() -> None:
        barrier.wait()
        try:
            results.append(verifier.verify(header))
        except Exception as exc:  # noqa: BLE001  collected, asserted below
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Identity) for r in results) and len(results) == 12
    assert idp.requests == {"/oidc/.well-known/openid-configuration": 1, "/jwks": 1}


def test_explicit_jwks_uri_skips_discovery(idp: Issuer, rsa_key: rsa.RSAPrivateKey) -> None:
    config = settings([{"issuer": idp.issuer, "jwks_uri": idp.base + "/jwks"}])
    assert TokenVerifier(config).verify("Bearer " + token(rsa_key, claims(idp)))
    assert idp.requests == {"/jwks": 1}


# --- static keys ----------------------------------------------------------------------------

STATIC = "https://static.example.org"


def test_static_jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key, "k1"), {"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}))
    verifier = TokenVerifier(settings([{"issuer": STATIC, "jwks_file": str(path)}]))
    payload = {"iss": STATIC, "sub": "bob", "exp": int(time.time()) + 60}
    assert verifier.verify("Bearer " + token(rsa_key, payload, kid="k1")).owner == f"{STATIC}#bob"
    refused(verifier, "Bearer " + token(rsa_key, payload, kid="k2"), "unknown key")
    refused(verifier, "Bearer " + token(rsa_key, payload, kid="h"), "unknown key")  # no HMAC keys


def _pem(private_key: Any, path: Path) -> Path:
    path.write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))
    return path


def test_static_pem_file_with_and_without_kid(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    pem = _pem(rsa_key, tmp_path / "key.pem")
    payload = {"iss": STATIC, "sub": "bob", "exp": int(time.time()) + 60}
    pinned = TokenVerifier(settings([{"issuer": STATIC, "pem_file": str(pem), "pem_kid": "main"}]))
    assert pinned.verify("Bearer " + token(rsa_key, payload, kid="main"))
    refused(pinned, "Bearer " + token(rsa_key, payload, kid="other"), "unknown key")
    any_kid = TokenVerifier(settings([{"issuer": STATIC, "pem_file": str(pem)}]))
    assert any_kid.verify("Bearer " + token(rsa_key, payload, kid="whatever"))
    refused(any_kid, "Bearer " + token(rsa_key, payload, kid=None), "kid")  # kid still required
    refused(any_kid, "Bearer " + token(ec_key, payload, kid="x", alg="ES256"), "does not fit")


def test_unusable_static_key_file_fails_at_startup(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(AuthConfigError, match="bad.pem"):
        TokenVerifier(settings([{"issuer": STATIC, "pem_file": str(bad)}]))
    with pytest.raises(AuthConfigError, match="no usable"):
        (tmp_path / "empty.json").write_text('{"keys": []}')
        TokenVerifier(settings([{"issuer": STATIC, "jwks_file": str(tmp_path / "empty.json")}]))
    with pytest.raises(AuthConfigError):
        TokenVerifier(settings([{"issuer": STATIC, "jwks_file": str(tmp_path / "missing.json")}]))


# --- admin, dev mode, identity --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "admin"),
    [
        ("hpc-admins", True),
        (["users", "hpc-admins"], True),
        ("hpc-admins-not", False),
        (["users"], False),
        (None, False),
        ({"hpc-admins": True}, False),
    ],
)
def test_admin_claim(idp: Issuer, rsa_key: rsa.RSAPrivateKey, value: Any, admin: bool) -> None:
    verifier = verifier_for(idp, admin_claim="groups", admin_values=["hpc-admins", "root"])
    assert verifier.verify("Bearer " + token(rsa_key, claims(idp, groups=value))).admin is admin


def test_no_auth_mode_returns_the_local_identity() -> None:
    verifier = TokenVerifier(AuthSettings(mode="none"))
    for header in (None, "Bearer garbage"):
        identity = verifier.verify(header)
        assert identity == NO_AUTH_IDENTITY
        assert identity.owner == "local" and identity.admin is False


def test_identity_owner_is_unambiguous() -> None:
    assert Identity("https://a.example/", "x#y").owner == "https://a.example/#x#y"
    with pytest.raises(ValueError):
        Identity("https://a.example/#x", "y")


def test_www_authenticate_is_a_valid_quoted_string() -> None:
    error = AuthError('bad "token" \\ é')
    assert error.www_authenticate == 'Bearer error="invalid_token", error_description="bad ?token? ? ?"'
    assert AuthError("no", status=403, error=None).www_authenticate is None


# --- settings validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"algorithms": ["none"]}, "refused algorithm"),
        ({"algorithms": ["RS256", "HS256"]}, "refused algorithm"),
        ({"algorithms": []}, "at least one"),
        ({"issuers": [{"issuer": STATIC, "jwks_file": "a", "pem_file": "b"}]}, "exactly one key source"),
        ({"issuers": [{"issuer": STATIC, "jwks_uri": STATIC + "/j", "jwks_file": "a"}]}, "exactly one"),
        ({"issuers": [{"issuer": STATIC, "discovery": True, "pem_file": "b"}]}, "exclusive"),
        ({"issuers": [{"issuer": STATIC, "discovery": False}]}, "no key source"),
        ({"issuers": [{"issuer": STATIC, "pem_kid": "k"}]}, "pem_kid needs pem_file"),
        ({"issuers": [{"issuer": STATIC, "jwks_uri": "http://static.example.org/j"}]}, "must be https"),
        ({"issuers": [{"issuer": "https://a.example/#frag"}]}, "fragment"),
        ({"issuers": [{"issuer": "ftp://a.example/"}]}, "http(s)"),
        ({"issuers": [{"issuer": STATIC, "audience": []}]}, "audience"),
        ({"issuers": [{"issuer": STATIC}, {"issuer": STATIC}]}, "more than once"),
        ({"issuers": []}, "at least one entry"),
        ({"admin_claim": "groups"}, "together"),
        ({"leeway": 301}, "leeway"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_settings_validation(data: dict[str, Any], message: str) -> None:
    data = {"issuers": [{"issuer": STATIC}], **data}
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AuthSettings.model_validate(data)


def test_settings_defaults_and_discovery_flag() -> None:
    config = AuthSettings.model_validate({"issuers": [{"issuer": STATIC, "jwks_file": "k.json"}]})
    assert config.algorithms == ["RS256", "ES256"] and config.leeway == 30
    assert config.issuers[0].uses_discovery is False
    assert AuthSettings(mode="none").issuers == []
    with pytest.raises(ValidationError):
        config.leeway = 1  # type: ignore[misc]
