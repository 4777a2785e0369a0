"""Passwords of HTTP Basic service accounts, stored only as scrypt hashes (a memory-hard KDF from the
standard library): `scrypt$N$r$p$<salt>$<key>`, base64. `hpc-bridge auth hash-password` makes one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata

# OWASP's scrypt floor (N=2^17, r=8, p=1): about 0.3 s and 128 MiB per check here, which makes a stolen
# config expensive to crack. The settings accept N from 2^17 to 2^20 with r=8 and p=1 only, so a check
# never costs more than 1 GiB and an unknown user name costs what a known one does (`dummy_hash`).
N, R, P = 2**17, 8, 1
MAX_N = 2**20
_KEY_BYTES = 32
_FORMAT = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)\Z")


def _normal(password: str) -> bytes:
    """RFC 7617 asks for Unicode normalization (NFC) of what is sent as UTF-8."""
    return unicodedata.normalize("NFC", password).encode()


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(_normal(password), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r + 2**20,
                          dklen=_KEY_BYTES)


def hash_password(password: str, *, n: int = N) -> str:
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, n, R, P)
    return f"scrypt${n}${R}${P}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(N, r, p, salt, key) of a stored hash, or None when it is not one."""
    match = _FORMAT.fullmatch(stored)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3]), base64.b64decode(match[4]), base64.b64decode(match[5])


def cost(stored: str) -> int:
    """N of a stored hash (checked by `check_hash`)."""
    parsed = _parse(stored)
    return parsed[0] if parsed else N


def check_hash(stored: str) -> str:
    """The stored form, or ValueError: a plain password (or anything else) is never accepted."""
    parsed = _parse(stored)
    if parsed is None:
        raise ValueError("must be an scrypt hash made by `hpc-bridge auth hash-password`, never a password")
    n, r, p, salt, key = parsed
    if not N <= n <= MAX_N or n & (n - 1) or (r, p) != (R, P):
        raise ValueError(f"scrypt parameters must be N a power of two from {N} to {MAX_N}, r={R}, p={P}")
    if len(salt) < 16 or len(key) != _KEY_BYTES:
        raise ValueError("scrypt hash has a short salt or a key of the wrong length")
    return stored


def verify_password(password: str, stored: str) -> bool:
    parsed = _parse(stored)
    if parsed is None:
        return False
    n, r, p, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, n, r, p), key)


def dummy_hash(n: int) -> str:
    """A hash no password matches, checked when the user name is unknown, at the cost `n` of the
    configured ones: a wrong name then takes as long as a wrong password."""
    return f"scrypt${n}${R}${P}${'A' * 24}${base64.b64encode(bytes(_KEY_BYTES)).decode()}"
