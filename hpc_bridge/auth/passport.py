"""GA4GH Passports: which controlled-access datasets a caller's token lets them read.

A Passport-bearing token (one the service accepts, from an issuer in `auth.issuers`) carries its
visas in the claim `ga4gh_passport_v1`: each a JWT signed by a visa issuer. A visa counts when its
issuer is one the site trusts (`auth.visa_issuers`), its signature, expiry and issue time hold, its
`ga4gh_visa_v1.type` is ControlledAccessGrants, it has been asserted, and it sets no `conditions`
(which this service does not evaluate, so it refuses to guess). Its `value` is the dataset granted.
What needs a visa is the site's to say: a DRS server's objects (`storage.drs.hosts[].dataset`) or
a directory of a data root (`storage.passport_areas`). Visas are checked when the task or run is
submitted; a run's tasks then read what its submission was granted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from hpc_bridge.auth.settings import AuthSettings
from hpc_bridge.auth.verifier import VISA_CLAIM, AuthError, Identity, TokenVerifier
from hpc_bridge.config import PassportArea
from hpc_bridge.errors import Forbidden
from hpc_bridge.staging.paths import within

log = logging.getLogger(__name__)

PASSPORT_CLAIM = "ga4gh_passport_v1"
GRANT = "ControlledAccessGrants"
MAX_VISAS = 200


class Passports:
    def __init__(self, settings: AuthSettings) -> None:
        self._verifier = TokenVerifier(settings.model_copy(update={
            "mode": "jwt", "issuers": settings.visa_issuers, "admin_claim": None, "basic_users": {}}), visas=True)
        self._trusted = bool(settings.visa_issuers)

    def datasets(self, identity: Identity) -> set[str]:
        """The datasets the identity's valid visas grant."""
        visas = identity.claims.get(PASSPORT_CLAIM)
        if not self._trusted or not isinstance(visas, list):
            return set()
        granted: set[str] = set()
        now = time.time()
        for visa in visas[:MAX_VISAS]:
            if not isinstance(visa, str):
                continue
            try:
                claims = self._verifier.verify(f"Bearer {visa}").claims
            except AuthError as exc:
                log.info("visa of %s refused: %s", identity.owner, exc.message)
                continue
            body = claims.get(VISA_CLAIM)
            if isinstance(body, dict) and _grant(body, now):
                granted.add(body["value"])
        return granted

    def check(self, needed: Mapping[str, str], granted: set[str]) -> None:
        """`needed`: dataset -> what needs it (a field). 403 naming the first dataset not granted."""
        for dataset, where in needed.items():
            if dataset not in granted:
                raise Forbidden(f"{where}: reading it needs a GA4GH Passport visa (ControlledAccessGrants) "
                                f"for dataset {dataset}, which your token does not carry")


def _grant(body: dict[str, Any], now: float) -> bool:
    return (body.get("type") == GRANT and isinstance(body.get("value"), str)
            and isinstance(body.get("asserted"), int) and body["asserted"] <= now + 60
            and not body.get("conditions"))


def area_datasets(path: str, areas: list[PassportArea]) -> list[str]:
    """The datasets a host path reaches: the passport area it lies in, and every one inside it (a
    directory input holding a controlled directory reads it too). Compared after resolving links."""
    real = os.path.realpath(path)
    return [area.dataset for area in areas
            if within(real, base := os.path.realpath(area.path)) or within(base, real)]
