"""HTTP Basic for service accounts (`auth.basic_users`): a user name and password checked against
the stored scrypt hash. A success is remembered for a few minutes by a keyed digest of the
credentials (never the password), so a client that sends them with every request does not pay the
KDF each time; a failure is never remembered, so every guess pays it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping

from .passwords import DUMMY_HASH, verify_password
from .settings import BasicUser
from .verifier import AuthError, Identity

BASIC_ISSUER = "basic"  # owners of Basic accounts are `basic#<name>`
_MAX_CREDENTIALS = 1024


class BasicAuthenticator:
    def __init__(self, users: Mapping[str, BasicUser], *, remember: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._users = dict(users)
        self._remember = remember
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def verify(self, credentials: str) -> Identity:
        """`credentials`: what follows `Basic ` in the Authorization header."""
        if not self._users:
            raise AuthError("HTTP Basic is not enabled on this service", scheme="Basic", error=None)
        try:
            raw = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise AuthError("Authorization header must be 'Basic <base64 of user:password>'",
                            scheme="Basic") from None
        name, sep, password = raw.partition(":")
        if not sep or len(raw) > _MAX_CREDENTIALS:
            raise AuthError("Authorization header must be 'Basic <base64 of user:password>'", scheme="Basic")
        user = self._users.get(name)
        digest = hmac.new(self._secret, raw.encode(), hashlib.sha256).digest()
        now = self._clock()
        with self._lock:
            seen = self._verified.get(digest)
        if user is None or seen is None or now - seen > self._remember:
            if not verify_password(password, user.password_hash if user else DUMMY_HASH) or user is None:
                raise AuthError("wrong user name or password", scheme="Basic")
            with self._lock:
                if len(self._verified) > 10_000:
                    self._verified.clear()
                self._verified[digest] = now
        return Identity(issuer=BASIC_ISSUER, subject=name, admin=user.admin)
