"""Bearer-token authentication: settings (embedded in the site config) and the token verifier."""

from .settings import ASYMMETRIC_ALGORITHMS, AuthSettings, IssuerSettings
from .verifier import (
    NO_AUTH_IDENTITY,
    AuthConfigError,
    AuthError,
    Identity,
    TokenVerifier,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "NO_AUTH_IDENTITY",
    "AuthConfigError",
    "AuthError",
    "AuthSettings",
    "Identity",
    "IssuerSettings",
    "TokenVerifier",
]
