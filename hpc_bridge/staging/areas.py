"""File tenancy: the parts of the data roots one owner's tasks may read and write.

In `run_as.mode: service` every job runs as the same Unix user, so file permissions cannot keep
owners apart; this policy does, when the task is planned (a 400 naming the URL) and again in the
job, where the collector writes only into the areas the plan allowed. An owner reaches their own
area (`storage.owner_areas` with `{owner}` filled in), the shared areas (read-only unless the site
says otherwise) and the directories of their own WES runs; without `owner_areas` every data root
is one space shared by all.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from hpc_bridge.auth.verifier import NO_AUTH_SUBJECT
from hpc_bridge.config import SiteConfig
from hpc_bridge.staging.paths import within

RunOwner = Callable[[str], str | None]


def owner_key(owner: str) -> str:
    """An owner's directory name: readable (its subject, in plain characters) and unique (a hash
    of issuer and subject, so the same subject at two issuers gets two areas)."""
    if owner == NO_AUTH_SUBJECT:
        return owner
    subject = owner.rpartition("#")[2]
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", subject)[:48].strip("._-") or "user"
    return f"{readable}-{hashlib.sha256(owner.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Area:
    """Where a path lies that an owner may use: `path` (real) is the area's top; `keep` says that
    existing files there are never replaced (a writable shared area: others' files live there)."""

    path: str
    keep: bool = False


class AreaPolicy:
    """`run_owner(run_id)` names the owner of a WES run (None: no such run), so that a run's
    directory is its owner's alone."""

    def __init__(self, config: SiteConfig, run_owner: RunOwner | None = None) -> None:
        storage = config.storage
        self._template = storage.owner_areas
        self._data_roots = [os.path.realpath(r) for r in storage.data_roots]
        self._shared = [(os.path.realpath(a.path), a.writable) for a in storage.shared_areas]
        runs_root = config.wes.root(storage.data_roots)
        self._runs = os.path.realpath(runs_root) if runs_root is not None else None
        self._run_owner = run_owner or (lambda _run_id: None)

    @property
    def enabled(self) -> bool:
        return self._template is not None

    def owner_area(self, owner: str) -> str | None:
        """The owner's own area, as configured (not resolved); None without tenancy."""
        return self._template.replace("{owner}", owner_key(owner)) if self._template else None

    def readable(self, owner: str | None) -> list[str]:
        """The tops of what the owner may read, their WES runs aside (for the fetch policy and
        service-info; no owner: the shared areas only)."""
        if not self.enabled:
            return list(self._data_roots)
        own = [os.path.realpath(area)] if owner is not None and (area := self.owner_area(owner)) else []
        return [*own, *(path for path, _ in self._shared)]

    def area_of(self, real: str, owner: str, *, write: bool) -> Area | None:
        """The area a resolved path lies in, if the owner's tasks may read (or write) it there."""
        if not self.enabled:
            top = next((r for r in self._data_roots if within(real, r)), None)
            return Area(top) if top is not None else None
        own = os.path.realpath(self.owner_area(owner) or "")
        if within(real, own):
            return Area(own)
        if self._runs is not None and within(real, self._runs) and real != self._runs:
            run_id = os.path.relpath(real, self._runs).split(os.sep, 1)[0]
            if self._run_owner(run_id) == owner:
                return Area(os.path.join(self._runs, run_id))
            return None
        for path, writable in self._shared:
            if within(real, path):
                if write and not writable:
                    return None
                return Area(path, keep=write)
        return None

    def describe(self, owner: str, *, write: bool) -> str:
        """For a refusal: where this owner may read (or write) instead."""
        if not self.enabled:
            return f"the allowed data roots ({', '.join(self._data_roots) or 'none configured'})"
        shared = [path for path, writable in self._shared if writable or not write]
        text = f"your area ({self.owner_area(owner)})"
        if shared:
            text += f", the shared {'writable ' if write else ''}areas ({', '.join(shared)})"
        return text + " or your own workflow runs' directories"
