"""The caller of the current request, for every blueprint: set once by the app's before_request
hook, read by the APIs. Ownership questions are answered here, so TES and WES cannot diverge."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import current_app, g, request

from hpc_bridge.errors import Forbidden, TooManyRequests
from hpc_bridge.lifecycle import RUN_FINAL
from hpc_bridge.runas.mapping import NoUnixUser, unix_user_for
from hpc_bridge.store.runs import RunStore

from . import runtoken
from .basic import BasicAuthenticator
from .verifier import BASIC_CHALLENGE, AuthError, Identity, TokenVerifier

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
    A workflow engine's run credential is checked against its run's row, whatever the auth mode.
    Raises AuthError, which the app turns into a 401/403 ErrorResponse."""
    header = request.headers.get("Authorization") or ""
    scheme, _, value = header.partition(" ")
    token = runtoken.parse(value.strip()) if scheme.lower() == "bearer" else None
    if token is not None:
        g.identity = _run_identity(token)
        return
    verifier: TokenVerifier = current_app.extensions["hpc_bridge.verifier"]
    basic: BasicAuthenticator = current_app.extensions["hpc_bridge.basic"]
    if scheme.lower() == "basic" and verifier.settings.mode != "none":
        try:
            g.identity = basic.verify(value, request.remote_addr or "")
        except AuthError as exc:
            exc.instructions_url = verifier.settings.auth_instructions_url
            raise
        return
    try:
        g.identity = verifier.verify(request.headers.get("Authorization"))
    except AuthError as exc:
        if basic.enabled and exc.status == 401:
            exc.other_challenge = BASIC_CHALLENGE
        raise


def _run_identity(token: runtoken.RunToken) -> Identity:
    run = RunStore(current_app.extensions["hpc_bridge.store"]).get(token.run_id)
    if run is None or run.state in RUN_FINAL or not runtoken.matches(token, run.engine_token):
        raise AuthError("run credential is not valid (the run ended, or a newer engine holds it)")
    if request.blueprint != "tes":
        raise AuthError("a run credential may only call the TES API", status=403,
                        error="insufficient_scope")
    return Identity.of_run(run.owner, run.id, run.run_as)


def current_run() -> str | None:
    """The run a request is scoped to (a workflow engine's credential), else None."""
    return current_identity().run_id


def check_run_may_create() -> None:
    """A run being cancelled starts no new task, whatever its engine still tries."""
    run_id = current_run()
    if run_id is None:
        return
    run = RunStore(current_app.extensions["hpc_bridge.store"]).get(run_id)
    if run is None or run.state == "CANCELING" or run.state in RUN_FINAL:
        raise Forbidden(f"workflow run {run_id} is being cancelled: no new task may start")


def current_bearer() -> str | None:
    """The caller's own bearer token (not a run credential), for a DRS server the site lets see it."""
    if current_identity().run_id is not None:
        return None
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def current_identity() -> Identity:
    identity: Identity = g.identity
    return identity


def optional_owner() -> str | None:
    """On a public view: the caller's owner if the request authenticates, else None (anonymous)."""
    try:
        authenticate()
    except (AuthError, TooManyRequests):
        return None
    return current_identity().owner


def current_run_as() -> str | None:
    """The Unix user the caller's jobs run as (None: the service account). A caller the site's
    mapping cannot place is refused (403) before anything is created."""
    settings = current_app.config["SITE"].run_as
    identity = current_identity()
    if identity.run_id is not None:
        return identity.run_as  # fixed when the run was created, and checked then
    if settings.mode == "service":
        return None
    try:
        return unix_user_for(identity, settings)
    except NoUnixUser as exc:
        raise Forbidden(str(exc)) from None


def owner_filter() -> str | None:
    """The owner a query is restricted to; None (everything) for an admin."""
    identity = current_identity()
    return None if identity.admin else identity.owner
