"""Crypt4GH inputs, decrypted in the job: `PYTHON -I decrypt.py SPEC`, run by the batch script
before the executors with a Python that has the `crypt4gh` package (`crypt4gh.job_python`).

SPEC (written by the daemon, private to the job user) names each input's file, where its body
starts, the session keys the daemon read from its header with the site's key (the job never sees
that key), and the file to write in the job's private directory on the node's own disk: never the
shared work area. The batch script removes that directory when the job ends, whatever its state.
The source is the user's file: opened without following a symlink and only if regular; every
segment's MAC is checked, so a body changed since the header was read fails instead of decrypting
to garbage. Copied alone into the work area like the collector, so it spells its record lines
itself. Exit status: 0 all decrypted, 1 an input failed (recorded as `input_error`), 2 bad SPEC.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from datetime import datetime, timezone
from typing import Any

SEGMENT = 65536
CIPHER_SEGMENT = SEGMENT + 28  # + nonce (12) and MAC (16)


class InputFailed(Exception):
    pass


def now() -> str:
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def decrypt(source: str, offset: int, keys: list[bytes], dest: str, decrypt_block: Any) -> int:
    """Decrypt the body of `source` from `offset` into a new file `dest` (0600); its plaintext size."""
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputFailed(f"cannot be opened: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise InputFailed("is not a regular file")
        os.lseek(src, offset, os.SEEK_SET)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(src, "rb", closefd=False) as reader:
                return _body(reader, out, keys, decrypt_block)
        finally:
            os.close(out)
    finally:
        os.close(src)


def _body(reader: Any, out: int, keys: list[bytes], decrypt_block: Any) -> int:
    segment, cipher = bytearray(SEGMENT), bytearray(CIPHER_SEGMENT)
    total = 0
    while n := reader.readinto(cipher):
        if n <= 28:
            raise InputFailed("ends with a truncated segment")
        try:
            plain = decrypt_block(segment, cipher[:n], keys)
        except ValueError:
            raise InputFailed(f"segment {total // SEGMENT} does not decrypt: the file changed since it was "
                              "checked, or is damaged") from None
        view = memoryview(segment)[:plain]
        while view:
            view = view[os.write(out, view):]
        total += plain
    return total


def main(argv: list[str]) -> int:
    try:
        from crypt4gh.lib import decrypt_block
    except ImportError:
        print(f"decrypt: {sys.executable} has no crypt4gh package (the site's crypt4gh.job_python)",
              file=sys.stderr)
        return 2
    if len(argv) != 1:
        print("usage: decrypt.py SPEC", file=sys.stderr)
        return 2
    try:
        with open(argv[0], encoding="utf-8") as f:
            spec = json.load(f)
        record = spec["record"]
        inputs = [(int(i["index"]), str(i["source"]), int(i["offset"]),
                   [base64.b64decode(k) for k in i["keys"]], str(i["dest"])) for i in spec["inputs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"decrypt: bad spec {argv[0]}: {exc}", file=sys.stderr)
        return 2
    for index, source, offset, keys, dest in inputs:
        try:
            decrypt(source, offset, keys, dest, decrypt_block)
        except (InputFailed, OSError) as exc:
            message = f"Crypt4GH input {exc}" if isinstance(exc, InputFailed) else \
                f"Crypt4GH input could not be decrypted: {exc.strerror}"
            line = json.dumps({"event": "input_error", "input": index, "message": message, "time": now()})
            fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
            print(f"input {index}: {message}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
