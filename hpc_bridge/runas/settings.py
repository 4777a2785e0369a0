"""Settings of optional per-user execution (`run_as` in the site config).

`mode: service` (the default) runs every job as the service account, as before. `table` maps owners
(`<issuer>#<subject>`, "local" without authentication) to POSIX user names; `claim` takes the user
name from a token claim. Either way a task whose owner has no usable Unix user is refused (fail
closed), and jobs are submitted through a root helper run with sudo (see `helper.py`).
"""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpc_bridge.runas.helper import DENY_GROUPS, DENY_USERS, MAX_UID, USER_NAME, Policy

DEFAULT_HELPER = Path("/usr/local/libexec/hpc-bridge/submit-as")
DEFAULT_HELPER_CONFIG = Path("/etc/hpc-bridge/submit-as.json")


def existing_user(name: str | None) -> str | None:
    """A config field naming a Unix user: it must exist on this machine (None passes)."""
    if name is not None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"Unix user {name!r} does not exist") from None
    return name


class RunAsSettings(BaseModel):
    """Which Unix user a task's job runs as.

    `service_user` is the account the daemon runs as (required by the mapping modes): the helper
    only hands over work areas that account created, and gives it group read access to each task's
    status directory (record and logs), so neither it nor a member of its primary group is a target.
    `users_group` is a Unix group every mapped user must belong to (required with `claim`, where the
    helper cannot see the token), `claim_issuers` the issuers whose tokens may name a user by `claim`.
    `min_uid`..`max_uid` keep system accounts out, `deny_users` and `deny_groups` (primary or
    supplementary; each list replaces its default) privileged ones; root can never be a target.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["service", "table", "claim"] = "service"
    service_user: str | None = None
    table: dict[str, str] = Field(default_factory=dict)
    claim: str | None = None
    claim_issuers: list[str] = Field(default_factory=list)
    users_group: str | None = None
    min_uid: Annotated[int, Field(ge=1)] = 1000
    max_uid: Annotated[int, Field(ge=1)] = MAX_UID
    deny_users: list[str] = Field(default_factory=lambda: list(DENY_USERS))
    deny_groups: list[str] = Field(default_factory=lambda: list(DENY_GROUPS))
    helper: Path = DEFAULT_HELPER
    sudo: Path = Path("/usr/bin/sudo")

    @field_validator("table")
    @classmethod
    def _user_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name in value.values() if not USER_NAME.match(name))
        if bad:
            raise ValueError(f"not valid POSIX user names: {bad}")
        return value

    @field_validator("deny_users", "deny_groups")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = sorted(name for name in value if not USER_NAME.match(name))
        if bad:
            raise ValueError(f"not valid POSIX user or group names: {bad}")
        return value

    @field_validator("service_user", "users_group")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not USER_NAME.match(value):
            raise ValueError(f"not a valid POSIX user or group name: {value!r}")
        return value

    @field_validator("service_user")
    @classmethod
    def _service_user_exists(cls, value: str | None) -> str | None:
        return existing_user(value)

    @field_validator("helper", "sudo")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """sudo matches the command by its full path; nothing may depend on the caller's PATH."""
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunAsSettings:
        if self.mode == "table" and not self.table:
            raise ValueError("mode 'table' needs a non-empty table (owner: unix user)")
        if self.mode == "claim" and not self.claim:
            raise ValueError("mode 'claim' needs claim (the token claim holding the unix user name)")
        if self.mode == "claim" and not self.users_group:
            raise ValueError("mode 'claim' needs users_group: the helper cannot see the token, only the "
                             "group keeps the users a claim may name to the intended ones")
        if self.mode == "claim" and not self.claim_issuers:
            raise ValueError("mode 'claim' needs claim_issuers (the issuers whose tokens may name a Unix user)")
        if self.mode != "claim" and self.claim_issuers:
            raise ValueError("claim_issuers is only used with mode 'claim'")
        if self.max_uid < self.min_uid:
            raise ValueError(f"max_uid ({self.max_uid}) is below min_uid ({self.min_uid})")
        if self.mode != "table" and self.table:
            raise ValueError("table is only used with mode 'table'")
        if self.mode != "claim" and self.claim:
            raise ValueError("claim is only used with mode 'claim'")
        if self.mode != "service" and not self.service_user:
            raise ValueError(f"mode {self.mode!r} needs service_user (the account the daemon runs as)")
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "service"

    def helper_argv(self, ident: str) -> list[str]:
        """The root helper through sudo, for one task or run id: all the sudo rule allows."""
        return [str(self.sudo), "-n", str(self.helper), ident]

    @property
    def policy(self) -> Policy:
        """The target checks, as the helper's configuration holds them (mapping modes only)."""
        assert self.service_user is not None  # the mapping modes require it
        return Policy(service_user=self.service_user, min_uid=self.min_uid, max_uid=self.max_uid,
                      users_group=self.users_group, deny_users=tuple(self.deny_users),
                      deny_groups=tuple(self.deny_groups))
