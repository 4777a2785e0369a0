"""Run credentials: what a workflow engine authenticates with when it calls this service's TES API.

The engine is its user's code (CWL expressions run in it), so it gets no key, no database and no
token of the user: the supervisor mints a random secret for each engine it starts, keeps only its
SHA-256 in the run's row and hands the secret to the engine on its standard input. The credential
acts as the run's owner, for that run's tasks only, and dies with the run (it is checked against
the row on every request: a final run, or a newer engine of the same run, makes it worthless).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "hpcb-run."
_TOKEN = re.compile(r"hpcb-run\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                    r"\.([A-Za-z0-9_-]{43})\Z")


@dataclass(frozen=True)
class RunToken:
    run_id: str
    secret: str

    @property
    def bearer(self) -> str:
        return f"{PREFIX}{self.run_id}.{self.secret}"

    @property
    def digest(self) -> str:
        return digest(self.secret)


def mint(run_id: str) -> RunToken:
    return RunToken(run_id, secrets.token_urlsafe(32))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(bearer: str) -> RunToken | None:
    """The run credential in a bearer value, or None when it is not one (then it is a JWT)."""
    match = _TOKEN.match(bearer)
    return RunToken(match.group(1), match.group(2)) if match else None


def matches(token: RunToken, stored_digest: str | None) -> bool:
    return stored_digest is not None and hmac.compare_digest(token.digest, stored_digest)
