"""Verification of OIDC bearer tokens (JWT access tokens) against an allow-list of issuers.

Order of checks, chosen so that nothing attacker-controlled reaches the network or a key before it
is known to be acceptable: Authorization header syntax → unverified JOSE header (`alg` from the
configured asymmetric list, `kid` present, no `crit`) → unverified `iss` looked up in the allow-list
(an unknown issuer is refused without any fetch) → the issuer's key for that `kid`, whose type must
fit `alg` → signature and claims (`exp`, `nbf`, `iss`, `aud`, `sub`) with pyjwt.

Remote keys are fetched by pyjwt's `PyJWKClient` (https/http only, no redirects, timeout), but the
decision *when* to go to the network is this module's own: a fetched key set is trusted for
`jwks_cache_lifespan`; an unknown `kid` forces at most one refetch per `jwks_refresh_min_interval`
per issuer, and so does a failed fetch. When keys cannot be obtained the token is refused with 401
(fail closed; the client may retry, and a 503 would let callers probe the IdP's state).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.error import URLError
from urllib.parse import urlsplit

import jwt
import jwt.exceptions
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK, PyJWKClient
from jwt.utils import base64url_decode

from hpc_bridge import jsonlimit

from .settings import AuthSettings, IssuerSettings, check_jwks_uri

log = logging.getLogger(__name__)

NO_AUTH_ISSUER = "urn:hpc-bridge:no-auth"
NO_AUTH_SUBJECT = "local"

_PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES = {"ES256": "secp256r1", "ES256K": "secp256k1", "ES384": "secp384r1", "ES512": "secp521r1"}
_MIN_RSA_BITS = 2048
_MAX_TOKEN_CHARS = 32 * 1024
_MAX_DISCOVERY_BYTES = 1024 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_KEYS_UNAVAILABLE = "cannot verify token: issuer keys unavailable"


VISA_CLAIM = "ga4gh_visa_v1"


@dataclass(frozen=True)
class Identity:
    """Who made a request. `owner` is the key the task store files resources under."""

    issuer: str
    subject: str
    claims: dict[str, Any] = field(default_factory=dict, compare=False)
    admin: bool = False
    # Set for a workflow engine's run credential: it may touch only this run's TES tasks, whose
    # jobs run as `run_as` (the run's Unix user, fixed when the run was created).
    run_id: str | None = None
    run_as: str | None = None

    def __post_init__(self) -> None:
        if "#" in self.issuer:
            raise ValueError("issuer must not contain '#': it separates issuer and subject in owner")

    @property
    def owner(self) -> str:
        """`<issuer>#<subject>`: readable, and unambiguous because issuers never contain '#'
        (OIDC forbids fragments; settings and __post_init__ enforce it), so the first '#' splits.
        The no-auth identity owns "local", which is what data stored before auth existed uses."""
        if self.issuer == NO_AUTH_ISSUER:
            return self.subject
        return f"{self.issuer}#{self.subject}"

    @classmethod
    def of_run(cls, owner: str, run_id: str, run_as: str | None) -> Identity:
        """The identity a run's engine acts with: the run's owner, scoped to the run."""
        issuer, sep, subject = owner.partition("#")
        if not sep:
            issuer, subject = NO_AUTH_ISSUER, owner
        return cls(issuer=issuer, subject=subject, run_id=run_id, run_as=run_as)


NO_AUTH_IDENTITY = Identity(issuer=NO_AUTH_ISSUER, subject=NO_AUTH_SUBJECT)


BASIC_CHALLENGE = 'Basic realm="hpc-bridge", charset="UTF-8"'


class AuthError(Exception):
    """A refused request: `status` 401 (no or bad credentials) or 403 (not allowed).

    `error` is the RFC 6750 error code (None when no credentials were sent at all, as §3.1 asks);
    `instructions_url` tells a human where to get a token (from the settings)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 401,
        error: str | None = "invalid_token",
        instructions_url: str | None = None,
        scheme: str = "Bearer",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error
        self.instructions_url = instructions_url
        self.scheme = scheme
        self.other_challenge: str | None = None  # e.g. Basic next to Bearer, where both are accepted

    @property
    def www_authenticate(self) -> str | None:
        """The WWW-Authenticate value (RFC 6750 §3): always for 401, for 403 when an error is set."""
        if self.status != 401 and self.error is None:
            return None
        if self.scheme == "Basic":
            challenge = BASIC_CHALLENGE
        elif self.error is None:
            challenge = "Bearer"
        else:
            description = re.sub(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]', "?", self.message)
            challenge = f'Bearer error="{self.error}", error_description="{description}"'
        return f"{challenge}, {self.other_challenge}" if self.other_challenge else challenge


class AuthConfigError(ValueError):
    """A static key file that cannot be used; raised when the verifier is built (at startup)."""


class _KeysUnavailable(Exception):
    """The issuer's keys could not be obtained (network, discovery or JWKS content)."""


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    key: _PublicKey
    alg: str | None  # the JWK's own `alg`, which then is the only algorithm it may verify

    def fits(self, alg: str) -> bool:
        """Key type and curve must match the algorithm family (no RSA key for ES256 and so on)."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg in _RSA_ALGS:
            return isinstance(self.key, RSAPublicKey) and self.key.key_size >= _MIN_RSA_BITS
        if alg in _EC_CURVES:
            return isinstance(self.key, EllipticCurvePublicKey) and self.key.curve.name == _EC_CURVES[alg]
        if alg == "EdDSA":
            return isinstance(self.key, Ed25519PublicKey | Ed448PublicKey)
        return False


@dataclass(frozen=True)
class _KeySet:
    by_kid: Mapping[str, tuple[_Key, ...]]
    any_kid: tuple[_Key, ...] = ()  # a PEM key without pem_kid

    def lookup(self, kid: str) -> tuple[_Key, ...] | None:
        """Keys that may have signed a token with this kid; None when the kid is unknown."""
        found = self.by_kid.get(kid, ()) + self.any_kid
        return found or None


def _parse_jwks(data: object) -> _KeySet:
    """Usable public signing keys of a JWK Set; anything else in it is skipped, not fatal."""
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise _KeysUnavailable("not a JWK Set (no 'keys' list)")
    by_kid: dict[str, list[_Key]] = {}
    for jwk in entries:
        if not isinstance(jwk, dict):
            continue
        kid, use, ops, alg = jwk.get("kid"), jwk.get("use"), jwk.get("key_ops"), jwk.get("alg")
        if not isinstance(kid, str) or not kid or use not in (None, "sig"):
            continue
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        if jwk.get("kty") not in ("RSA", "EC", "OKP") or (alg is not None and not isinstance(alg, str)):
            continue
        try:
            key = PyJWK(jwk).key
        except Exception as exc:  # noqa: BLE001  untrusted input: a bad key is skipped, not fatal
            log.debug("skipping JWK %r: %s", kid, exc)
            continue
        if isinstance(key, _PublicKey):
            by_kid.setdefault(kid, []).append(_Key(key, alg))
    return _KeySet({kid: tuple(keys) for kid, keys in by_kid.items()})


def _load_static(issuer: IssuerSettings) -> _KeySet:
    """Keys from jwks_file or pem_file, read once at startup."""
    path = issuer.jwks_file or issuer.pem_file
    assert path is not None
    try:
        data = path.read_bytes()
        if issuer.jwks_file is not None:
            keys = _parse_jwks(json.loads(data))
            if not keys.by_kid:
                raise ValueError("no usable public signing key with a kid")
            return keys
        key: object
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (OSError, ValueError, TypeError, _KeysUnavailable) as exc:
        raise AuthConfigError(f"issuer {issuer.issuer}: cannot use key file {path}: {exc}") from exc
    if not isinstance(key, _PublicKey):
        raise AuthConfigError(f"issuer {issuer.issuer}: {path} holds no RSA, EC or EdDSA public key")
    entry = _Key(key, None)
    if issuer.pem_kid is None:
        return _KeySet({}, (entry,))
    return _KeySet({issuer.pem_kid: (entry,)})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect becomes an HTTPError: keys come from the configured place only


class _RemoteKeys:
    """One issuer's keys from discovery or jwks_uri, with a network-fetch budget (thread-safe)."""

    def __init__(self, issuer: IssuerSettings, settings: AuthSettings, clock: Callable[[], float]):
        self._issuer = issuer
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._client: PyJWKClient | None = None
        self._keys: _KeySet | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._last_ok = False

    def lookup(self, kid: str) -> tuple[_Key, ...] | None:
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._settings.jwks_cache_lifespan:
                self._keys = None  # never verify with an expired set (fail closed)
                if not (self._last_ok or self._may_fetch(now)):
                    raise _KeysUnavailable("last fetch failed recently")
                self._refresh(now)
            assert self._keys is not None
            found = self._keys.lookup(kid)
            if found is None and self._may_fetch(now):
                self._refresh(now)
                found = self._keys.lookup(kid)
            return found

    def _may_fetch(self, now: float) -> bool:
        last = self._last_attempt
        return last is None or now - last >= self._settings.jwks_refresh_min_interval

    def _refresh(self, now: float) -> None:
        self._last_attempt, self._last_ok = now, False
        try:
            if self._client is None:
                uri = self._issuer.jwks_uri or self._discover()
                # The verifier keeps the parsed set itself (see module doc), so pyjwt's own cache
                # and its refetch-on-unknown-kid are not used: only fetch_data() touches the network.
                self._client = PyJWKClient(uri, cache_jwk_set=False, timeout=self._settings.http_timeout)
            keys = _parse_jwks(self._client.fetch_data())
        except (jwt.PyJWTError, _KeysUnavailable, URLError, OSError, http.client.HTTPException,
                ValueError) as exc:
            if self._issuer.uses_discovery:
                self._client = None  # rediscover next time: the jwks_uri may have moved
            log.warning("issuer %s: cannot fetch signing keys: %s", self._issuer.issuer, exc)
            raise _KeysUnavailable(str(exc)) from exc
        if not keys.by_kid:
            log.warning("issuer %s: JWK Set has no usable signing keys", self._issuer.issuer)
        self._keys, self._fetched_at, self._last_ok = keys, now, True

    def _discover(self) -> str:
        """jwks_uri from the OIDC discovery document, which must name exactly this issuer."""
        url = self._issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        opener = urllib.request.build_opener(_NoRedirect())
        with opener.open(request, timeout=self._settings.http_timeout) as response:
            body = response.read(_MAX_DISCOVERY_BYTES + 1)
        if len(body) > _MAX_DISCOVERY_BYTES:
            raise _KeysUnavailable("discovery document too large")
        doc = json.loads(body)
        if not isinstance(doc, dict) or doc.get("issuer") != self._issuer.issuer:
            raise _KeysUnavailable("discovery document names another issuer")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise _KeysUnavailable("discovery document has no jwks_uri")
        return check_jwks_uri(self._issuer.issuer, jwks_uri)


class _StaticKeys:
    def __init__(self, keys: _KeySet) -> None:
        self._keys = keys

    def lookup(self, kid: str) -> tuple[_Key, ...] | None:
        return self._keys.lookup(kid)


# --- tokens ---------------------------------------------------------------------------------


def _segment_json(token: str, index: int) -> dict[str, Any]:
    """One JOSE segment, decoded WITHOUT verification: only to choose what to verify against.
    Depth-limited: it is parsed before authentication, and again by pyjwt."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("token is malformed")
    try:
        value = jsonlimit.loads(base64url_decode(parts[index]))
    except (ValueError, TypeError):
        raise AuthError("token is malformed") from None
    if not isinstance(value, dict):
        raise AuthError("token is malformed")
    return value


_SUB_MESSAGE = "token subject (sub) must be a non-empty string"
# pyjwt >= 2.10 checks `sub` itself; older releases leave it to the check in _verify.
_INVALID_SUBJECT: type[jwt.PyJWTError] | None = getattr(jwt.exceptions, "InvalidSubjectError", None)
_DECODE_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    *(((_INVALID_SUBJECT, _SUB_MESSAGE),) if _INVALID_SUBJECT is not None else ()),
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not yet valid"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.DecodeError, "token is malformed"),
)


class TokenVerifier:
    """Turns an Authorization header into an Identity or raises AuthError. Safe to share between
    threads; build one per process (it holds the key caches)."""

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] = time.monotonic,
                 visas: bool = False) -> None:
        """`visas`: verify GA4GH visas (auth/passport.py) rather than access tokens; each refuses the other."""
        self.settings = settings
        self.visas = visas
        self._sources: dict[str, _RemoteKeys | _StaticKeys] = {}
        for issuer in settings.issuers if settings.mode == "jwt" else []:
            if urlsplit(issuer.issuer).scheme != "https":
                log.warning("issuer %s is plain http: acceptable for tests only", issuer.issuer)
            if issuer.uses_discovery or issuer.jwks_uri is not None:
                self._sources[issuer.issuer] = _RemoteKeys(issuer, settings, clock)
            else:
                self._sources[issuer.issuer] = _StaticKeys(_load_static(issuer))
        self._issuers = {i.issuer: i for i in settings.issuers}

    def verify(self, authorization_header: str | None) -> Identity:
        if self.settings.mode == "none":
            return NO_AUTH_IDENTITY
        try:
            return self._verify(authorization_header)
        except AuthError as exc:
            exc.instructions_url = self.settings.auth_instructions_url
            log.debug("token refused: %s", exc.message)
            raise

    def _verify(self, authorization_header: str | None) -> Identity:
        token = _bearer_token(authorization_header)
        header = _segment_json(token, 0)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise AuthError("token algorithm is not accepted")
        if "crit" in header:
            raise AuthError("token uses critical header extensions this server does not support")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("token has no key id (kid)")
        iss = _segment_json(token, 1).get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError("token issuer is not accepted")
        try:
            candidates = self._sources[issuer.issuer].lookup(kid)
        except _KeysUnavailable:
            raise AuthError(_KEYS_UNAVAILABLE) from None
        if candidates is None:
            raise AuthError("token is signed with an unknown key")
        key = next((c.key for c in candidates if c.fits(alg)), None)
        if key is None:
            raise AuthError("token key does not fit its algorithm")
        claims = self._decode(token, key, alg, issuer)
        if (VISA_CLAIM in claims) != self.visas:  # a broker may sign both with one key and no audience
            raise AuthError("a GA4GH visa is not an access token" if not self.visas else "not a GA4GH visa")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError(_SUB_MESSAGE)
        return Identity(issuer=issuer.issuer, subject=sub, claims=claims, admin=self._is_admin(claims))

    def _decode(self, token: str, key: _PublicKey, alg: str, issuer: IssuerSettings) -> dict[str, Any]:
        audiences = issuer.audiences
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=issuer.issuer,
                audience=audiences,
                leeway=self.settings.leeway,
                options={"require": ["exp", "iss", "sub"], "verify_aud": audiences is not None},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the required claim {exc.claim!r}") from None
        except jwt.PyJWTError as exc:
            message = next((m for t, m in _DECODE_ERRORS if isinstance(exc, t)), "token is invalid")
            raise AuthError(message) from None

    def _is_admin(self, claims: Mapping[str, Any]) -> bool:
        name = self.settings.admin_claim
        if name is None:
            return False
        value = claims.get(name)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        return any(isinstance(v, str) and v in self.settings.admin_values for v in values)


def _bearer_token(header: str | None) -> str:
    """RFC 6750 §2.1. No (Bearer) credentials: no error code (§3.1); a broken one: invalid_request
    (with 401 rather than §3.1's 400, so that every authentication failure has the same status)."""
    scheme, _, rest = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("a bearer token is required", error=None)
    token = rest.strip()
    if not token or len(token) > _MAX_TOKEN_CHARS or not _B64TOKEN.fullmatch(token):
        raise AuthError("Authorization header must be 'Bearer <token>'", error="invalid_request")
    return token
