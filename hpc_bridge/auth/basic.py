"""HTTP Basic for service accounts (`auth.basic_users`): a user name and password checked against
the stored scrypt hash.

The KDF is the expensive part, so it is bounded three ways before it runs: at most `MAX_CHECKS` run
at once (others get 429 with Retry-After), a client address or a user name with `MAX_FAILURES`
failures in the last `FAILURE_WINDOW` seconds gets 429 until they age out, and a name that cannot
exist is refused without it. A success is remembered for a few minutes by a keyed digest of the
credentials (never the password), so a client that sends them with every request (or is throttled
by someone else's failures) goes on without paying the KDF; a failure is never remembered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from hpc_bridge.errors import TooManyRequests

from .passwords import cost, dummy_hash, verify_password
from .settings import BASIC_NAME_CHARS, BasicUser
from .verifier import AuthError, Identity

BASIC_ISSUER = "basic"  # owners of Basic accounts are `basic#<name>`
MAX_CHECKS = 2
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
_MAX_CREDENTIALS = 1024
_MALFORMED = "Authorization header must be 'Basic <base64 of user:password>'"
_WRONG = "wrong user name or password"


class BasicAuthenticator:
    def __init__(self, users: Mapping[str, BasicUser], *, remember: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._users = dict(users)
        self._dummy = dummy_hash(max((cost(u.password_hash) for u in self._users.values()), default=2**17))
        self._remember = remember
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._checks = threading.BoundedSemaphore(MAX_CHECKS)

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def verify(self, credentials: str, client: str) -> Identity:
        """`credentials`: what follows `Basic ` in the Authorization header; `client`: the caller's
        address (failures are counted per address and per user name)."""
        if not self._users:  # not a scheme this service offers: the Bearer challenge stands
            raise AuthError("HTTP Basic is not enabled on this service; send a bearer token", error=None)
        try:
            raw = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise AuthError(_MALFORMED, scheme="Basic") from None
        name, sep, password = raw.partition(":")
        if not sep or len(raw) > _MAX_CREDENTIALS:
            raise AuthError(_MALFORMED, scheme="Basic")
        if not re.fullmatch(BASIC_NAME_CHARS, name):
            raise AuthError(_WRONG, scheme="Basic")  # no account can have this name: no KDF for it
        user = self._users.get(name)
        digest = hmac.new(self._secret, raw.encode(), hashlib.sha256).digest()
        now = self._clock()
        with self._lock:
            seen = self._verified.get(digest)
        if user is not None and seen is not None and now - seen <= self._remember:
            return Identity(issuer=BASIC_ISSUER, subject=name, admin=user.admin)
        keys = (f"address {client}", f"user {name}")
        self._throttle(keys, now)
        if not self._checks.acquire(blocking=False):
            raise TooManyRequests("too many password checks at once; retry shortly", retry_after=1)
        try:
            ok = verify_password(password, user.password_hash if user else self._dummy) and user is not None
        finally:
            self._checks.release()
        with self._lock:
            if ok:
                if len(self._verified) > 10 * len(self._users) + 100:  # a few pairs per user at most
                    self._verified.clear()
                self._verified[digest] = now
            else:
                for key in keys:
                    self._failures.setdefault(key, deque()).append(now)
        if user is None or not ok:
            raise AuthError(_WRONG, scheme="Basic")
        return Identity(issuer=BASIC_ISSUER, subject=name, admin=user.admin)

    def _throttle(self, keys: tuple[str, ...], now: float) -> None:
        with self._lock:
            for key in keys:
                recent = self._failures.get(key)
                while recent and now - recent[0] > FAILURE_WINDOW:
                    recent.popleft()
                if recent is not None and not recent:
                    del self._failures[key]
                elif recent is not None and len(recent) >= MAX_FAILURES:
                    raise TooManyRequests(f"too many failed Basic logins ({key}); retry later",
                                          retry_after=FAILURE_WINDOW - (now - recent[0]))
