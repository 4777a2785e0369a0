"""Settings for bearer-token authentication (GA4GH / ELIXIR AAI / LS Login style OIDC access tokens).

Kept apart from the verifier so the site config can embed `AuthSettings` without importing any
crypto code paths. Everything here is validated at config load, so a typo in an issuer or an unsafe
algorithm stops the service from starting instead of weakening it at run time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpc_bridge.auth.passwords import check_hash

# Asymmetric algorithms only: with a shared-secret (HS*) algorithm the public JWKS key would become
# the HMAC secret (the classic key-confusion forgery), and `none` needs no key at all.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL with a host, got {value!r}")
    return value


class IssuerSettings(_Frozen):
    """One trusted token issuer and where its signing keys come from.

    Key sources (exactly one): OIDC discovery (the default: `<issuer>/.well-known/openid-configuration`
    names the `jwks_uri`), an explicit `jwks_uri`, a static `jwks_file`, or a static `pem_file` (a PEM
    public key or certificate). Tokens must always carry a `kid`; a PEM key answers to `pem_kid`, or
    to any kid when `pem_kid` is unset (sites whose issuer has a single key and no JWKS).

    Production issuers are https. An http issuer is accepted (loopback test servers, dev stacks),
    and only an http issuer may name an http `jwks_uri`.
    """

    issuer: str
    audience: str | list[str] | None = None
    discovery: bool = True
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    pem_file: Path | None = None
    pem_kid: str | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        """OIDC issuers have no query or fragment; refusing them keeps `Identity.owner` unambiguous."""
        _check_url(value, "issuer")
        parts = urlsplit(value)
        if parts.query or parts.fragment or "#" in value or "?" in value:
            raise ValueError("issuer must not contain a query or fragment ('?', '#')")
        return value

    @field_validator("audience")
    @classmethod
    def _audience_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        values = [value] if isinstance(value, str) else value or []
        if value is not None and (not values or not all(values)):
            raise ValueError("audience must be a non-empty string or list of non-empty strings")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        explicit = [
            name for name in ("jwks_uri", "jwks_file", "pem_file") if getattr(self, name) is not None
        ]
        if len(explicit) > 1:
            raise ValueError(f"give exactly one key source, not {' and '.join(explicit)}")
        if explicit and self.discovery and "discovery" in self.model_fields_set:
            raise ValueError(f"discovery and {explicit[0]} are exclusive key sources")
        if not explicit and not self.discovery:
            raise ValueError("no key source: enable discovery or set jwks_uri, jwks_file or pem_file")
        if self.pem_kid is not None and self.pem_file is None:
            raise ValueError("pem_kid needs pem_file")
        if self.jwks_uri is not None:
            check_jwks_uri(self.issuer, self.jwks_uri)
        return self

    @property
    def uses_discovery(self) -> bool:
        return self.jwks_uri is None and self.jwks_file is None and self.pem_file is None

    @property
    def audiences(self) -> list[str] | None:
        if self.audience is None:
            return None
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


def check_jwks_uri(issuer: str, jwks_uri: str) -> str:
    """Keys must travel over https; plain http only for an issuer that is itself http (tests, dev)."""
    _check_url(jwks_uri, "jwks_uri")
    if urlsplit(jwks_uri).scheme != "https" and urlsplit(issuer).scheme == "https":
        raise ValueError(f"jwks_uri {jwks_uri!r} must be https for the https issuer {issuer!r}")
    return jwks_uri


class BasicUser(_Frozen):
    """A service account that authenticates with HTTP Basic (for clients that cannot send tokens:
    Galaxy's Pulsar TES runner, the proTES gateway). Its tasks are owned by `basic#<name>`, with the
    tenancy, limits and rate limits of any owner."""

    password_hash: str
    admin: bool = False

    @field_validator("password_hash")
    @classmethod
    def _hashed(cls, value: str) -> str:
        return check_hash(value)


BASIC_NAME_CHARS = r"[A-Za-z0-9._-]{1,64}"


class AuthSettings(_Frozen):
    """How API callers are authenticated.

    `mode: none` is for development only: every caller is the same local user (owner "local").
    `jwks_refresh_min_interval` bounds network traffic per issuer: after any key fetch (or failed
    attempt), an unknown `kid` triggers no new fetch until this many seconds have passed.
    `jwks_cache_lifespan` is how long a fetched key set is trusted before it is fetched again.
    A token is admin when its `admin_claim` (a string, or a list of strings) equals / contains one
    of `admin_values`; the claim name is taken literally (no dotted paths, no splitting of strings).
    """

    mode: Literal["jwt", "none"] = "jwt"
    issuers: list[IssuerSettings] = Field(default_factory=list)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    http_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    jwks_refresh_min_interval: Annotated[float, Field(gt=0, le=3600)] = 60.0
    jwks_cache_lifespan: Annotated[float, Field(gt=0, le=86400)] = 300.0
    admin_claim: str | None = None
    admin_values: list[str] = Field(default_factory=list)
    auth_instructions_url: str | None = None
    # HTTP Basic service accounts, name -> hash; none (the default): Basic is refused.
    basic_users: dict[str, BasicUser] = Field(default_factory=dict)
    # GA4GH Passports: the visa issuers whose ControlledAccessGrants this site trusts (their keys as
    # for `issuers`); a token's `ga4gh_passport_v1` visas from anyone else count for nothing.
    visa_issuers: list[IssuerSettings] = Field(default_factory=list)

    @field_validator("basic_users")
    @classmethod
    def _basic_names(cls, value: dict[str, BasicUser]) -> dict[str, BasicUser]:
        bad = [name for name in value if not re.fullmatch(BASIC_NAME_CHARS, name)]
        if bad:
            raise ValueError(f"basic user names must match {BASIC_NAME_CHARS}: {bad}")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one algorithm is needed")
        refused = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(
                f"refused algorithm(s) {refused}: only asymmetric ones are allowed "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> AuthSettings:
        if self.mode == "none" and self.basic_users:
            raise ValueError("basic_users need mode 'jwt': with mode 'none' every caller is let in, "
                             "whatever credentials it sends")
        if self.mode == "jwt" and not self.issuers and not self.basic_users:
            raise ValueError("mode 'jwt' needs at least one entry in issuers (or in basic_users)")
        names = [i.issuer for i in self.issuers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"issuer listed more than once: {duplicates}")
        if (self.admin_claim is None) != (not self.admin_values):
            raise ValueError("admin_claim and admin_values must be set together")
        return self
