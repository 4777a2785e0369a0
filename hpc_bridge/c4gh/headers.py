"""The session keys of a `.c4gh` input, read from its header on the login node with the site's key.

A job that decrypts an input gets these and nothing more: they open that one file's body, so the
site's secret key never leaves the daemon (no batch script, environment or log sees it, and no
compute node holds it). The file is the user's: it is opened without following a symlink, must be
regular, and its header is bounded before crypt4gh parses it (a packet count or length read from a
hostile file would otherwise make the parser read gigabytes).
"""

from __future__ import annotations

import base64
import io
import os
import stat
import struct
from dataclasses import dataclass

from crypt4gh import header

import hpc_bridge.c4gh  # noqa: F401  (quietens crypt4gh's logger)
from hpc_bridge.c4gh.keys import SiteKey

MAGIC = b"crypt4gh"
MAX_PACKETS = 64
MAX_PACKET_BYTES = 64 * 1024


class HeaderError(ValueError):
    """The input cannot be decrypted with the site's key; the message says why."""


@dataclass(frozen=True)
class SessionKeys:
    """Where the body starts in the file, and the keys that decrypt its segments (base64)."""

    offset: int
    keys: tuple[str, ...]


def session_keys(path: str, site: SiteKey) -> SessionKeys:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HeaderError("is not a regular file")
        raw = _bounded_header(f)
    stream = io.BytesIO(raw)
    try:
        packets, _ = header.decrypt(header.parse(stream), [(0, site.secret, None)])
    except ValueError as exc:
        raise HeaderError(f"its Crypt4GH header is invalid: {exc}") from None
    if not packets:
        raise HeaderError("is not encrypted for this site's Crypt4GH key")
    data, edit = header.partition_packets(packets)
    if edit is not None:
        raise HeaderError("has a Crypt4GH edit list, which this site does not support")
    keys = tuple(base64.b64encode(header.parse_enc_packet(p)).decode() for p in data)
    return SessionKeys(offset=len(raw), keys=keys)


def _bounded_header(f: io.BufferedReader) -> bytes:
    start = f.read(16)
    if len(start) < 16 or start[:8] != MAGIC:
        raise HeaderError("is not a Crypt4GH file (no crypt4gh magic number)")
    version, count = struct.unpack("<II", start[8:])
    if version != 1:
        raise HeaderError(f"is Crypt4GH version {version}; only version 1 is supported")
    if not 1 <= count <= MAX_PACKETS:
        raise HeaderError(f"has {count} header packets (at most {MAX_PACKETS})")
    chunks = [start]
    for _ in range(count):
        size_bytes = f.read(4)
        if len(size_bytes) < 4:
            raise HeaderError("ends inside its Crypt4GH header")
        (size,) = struct.unpack("<I", size_bytes)
        if not 4 < size <= MAX_PACKET_BYTES:
            raise HeaderError(f"has a header packet of {size} bytes")
        body = f.read(size - 4)
        if len(body) < size - 4:
            raise HeaderError("ends inside its Crypt4GH header")
        chunks += [size_bytes, body]
    return b"".join(chunks)
