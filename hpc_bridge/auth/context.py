"""The caller of the current request, for every blueprint: set once by the app's before_request
hook, read by the APIs. Ownership questions are answered here, so TES and WES cannot diverge."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import current_app, g, request

from hpc_bridge.errors import Forbidden
from hpc_bridge.runas.mapping import NoUnixUser, unix_user_for

from .verifier import Identity, TokenVerifier

View = TypeVar("View", bound=Callable[..., object])


def public(view: View) -> View:
    """Mark a view as open to callers without a token (service-info only)."""
    view.hpc_bridge_public = True  # type: ignore[attr-defined]
    return view


def is_public() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "hpc_bridge_public", False))


def authenticate() -> None:
    """Verify the bearer token (or take the no-auth identity) and keep it on `g` for this request.
    Raises AuthError, which the app turns into a 401/403 ErrorResponse."""
    verifier: TokenVerifier = current_app.extensions["hpc_bridge.verifier"]
    g.identity = verifier.verify(request.headers.get("Authorization"))


def current_identity() -> Identity:
    return g.identity


def current_run_as() -> str | None:
    """The Unix user the caller's jobs run as (None: the service account). A caller the site's
    mapping cannot place is refused (403) before anything is created."""
    settings = current_app.config["SITE"].run_as
    if settings.mode == "service":
        return None
    try:
        return unix_user_for(current_identity(), settings)
    except NoUnixUser as exc:
        raise Forbidden(str(exc)) from None


def owner_filter() -> str | None:
    """The owner a query is restricted to; None (everything) for an admin."""
    identity = current_identity()
    return None if identity.admin else identity.owner
