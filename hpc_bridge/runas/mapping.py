"""Identity -> the POSIX user a task's job runs as (pure apart from the passwd/group lookups).

Checked when a task is created (the API answers 403 on NoUnixUser) and checked again by the root
helper just before it acts, with the same `check_user`.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpc_bridge.runas.helper import Refused, check_issuer, check_user
from hpc_bridge.runas.settings import RunAsSettings

if TYPE_CHECKING:
    from hpc_bridge.auth.verifier import Identity


class NoUnixUser(Exception):
    """Per-user execution is on and this identity has no Unix user jobs may run as."""


def unix_user_for(identity: Identity, settings: RunAsSettings, *,
                  getpwnam: Callable[[str], Any] = pwd.getpwnam,
                  getgrnam: Callable[[str], Any] = grp.getgrnam,
                  getgrouplist: Callable[[str, int], list[int]] = os.getgrouplist) -> str | None:
    """The user name, or None for the service account (mode `service`). Fails closed: a mapping
    mode with no mapping, a claim from an issuer outside `claim_issuers`, or a user the policy
    refuses (unknown, uid outside `min_uid`..`max_uid`, root, a denied user or privileged group,
    outside `users_group`, the service account) raise NoUnixUser."""
    if settings.mode == "service":
        return None
    owner = identity.owner
    if settings.mode == "table":
        name = settings.table.get(owner)
        if name is None:
            raise NoUnixUser(f"no Unix user is mapped to {owner!r} on this service")
    else:
        assert settings.claim is not None  # the settings validate it
        try:
            check_issuer(owner, settings.claim_issuers)
        except Refused as exc:
            raise NoUnixUser(str(exc)) from None
        name = identity.claims.get(settings.claim)
        if name is None:
            raise NoUnixUser(f"the token has no {settings.claim!r} claim naming a Unix user")
        if not isinstance(name, str):
            raise NoUnixUser(f"the token's {settings.claim!r} claim is not a user name")
    try:
        entry = check_user(name, settings.policy, getpwnam=getpwnam, getgrnam=getgrnam,
                           getgrouplist=getgrouplist)
    except Refused as exc:
        raise NoUnixUser(str(exc)) from None
    return str(entry.pw_name)
