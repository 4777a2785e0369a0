"""Passwords of HTTP Basic service accounts, stored only as scrypt hashes (a memory-hard KDF from the
standard library): `scrypt$N$r$p$<salt>$<key>`, base64. `hpc-bridge auth hash-password` makes one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

# OWASP's scrypt floor (N=2^17, r=8, p=1): about 0.1-0.3 s and 128 MiB per check, which is what
# makes a stolen config expensive to crack and bounds online guessing.
N, R, P = 2**17, 8, 1
_KEY_BYTES = 32
_FORMAT = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)\Z")


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r + 2**20,
                          dklen=_KEY_BYTES)


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def check_hash(stored: str) -> str:
    """The stored form, or ValueError: a plain password (or anything else) is never accepted."""
    match = _FORMAT.fullmatch(stored)
    if match is None:
        raise ValueError("must be an scrypt hash made by `hpc-bridge auth hash-password`, never a password")
    n, r, p = (int(match[i]) for i in (1, 2, 3))
    if n < 2**14 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters too weak or invalid (N a power of two >= 16384, r 1..32, p 1..16)")
    if len(base64.b64decode(match[4])) < 16 or len(base64.b64decode(match[5])) != _KEY_BYTES:
        raise ValueError("scrypt hash has a short salt or a key of the wrong length")
    return stored


def verify_password(password: str, stored: str) -> bool:
    match = _FORMAT.fullmatch(stored)
    if match is None:
        return False
    n, r, p = (int(match[i]) for i in (1, 2, 3))
    key = _derive(password, base64.b64decode(match[4]), n, r, p)
    return hmac.compare_digest(key, base64.b64decode(match[5]))


# Checked against when the user name is unknown, so that a wrong name costs as much as a wrong password.
DUMMY_HASH = "scrypt$131072$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + base64.b64encode(bytes(_KEY_BYTES)).decode()
