"""Keys: the site's secret key (loaded once by the daemon and `config check`) and the recipients a
task or run names, as base64 X25519 public keys (the middle line of a `crypt4gh-keygen` `.pub` file)."""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crypt4gh import sodium
from crypt4gh.keys import get_private_key

import hpc_bridge.c4gh  # noqa: F401  (quietens crypt4gh's logger before any key is touched)
from hpc_bridge.config import Crypt4ghSettings, StorageSettings
from hpc_bridge.staging.paths import within

MAX_RECIPIENTS = 32
_SEPARATORS = re.compile(r"[\s,]+")


class Crypt4ghKeyError(ValueError):
    """A key that cannot be used; the message says which and why (never the key's bytes)."""


@dataclass(frozen=True)
class SiteKey:
    secret: bytes

    @property
    def public(self) -> str:
        """What the site publishes for users to encrypt their inputs to (base64, as in a .pub file)."""
        return base64.b64encode(sodium.derive_pk(self.secret)).decode()


def parse_recipients(text: str) -> list[str]:
    """Public keys separated by commas or whitespace -> their canonical base64, each once, in order."""
    keys: list[str] = []
    for i, word in enumerate(w for w in _SEPARATORS.split(text.strip()) if w):
        try:
            raw = base64.b64decode(word, validate=True)
        except (binascii.Error, ValueError):
            raise Crypt4ghKeyError(f"recipient {i + 1} is not base64") from None
        if len(raw) != 32:
            raise Crypt4ghKeyError(f"recipient {i + 1} is not a Crypt4GH (X25519) public key: {len(raw)} bytes, "
                            "not 32 (give the base64 line of a crypt4gh-keygen .pub file)")
        canonical = base64.b64encode(raw).decode()
        if canonical not in keys:
            keys.append(canonical)
    if not keys:
        raise Crypt4ghKeyError("no recipient public key given")
    if len(keys) > MAX_RECIPIENTS:
        raise Crypt4ghKeyError(f"{len(keys)} recipients, at most {MAX_RECIPIENTS}")
    return keys


def load_site_key(settings: Crypt4ghSettings) -> SiteKey | None:
    """The site's secret key, or None when the site has none. The file must be the service's alone
    (no group or other permission bits): any reader of it can decrypt every input sent to the site."""
    if settings.secret_key is None:
        return None
    path = settings.secret_key
    _private_file(path, "crypt4gh.secret_key")
    passphrase = None
    if settings.passphrase_file is not None:
        _private_file(settings.passphrase_file, "crypt4gh.passphrase_file")
        text = settings.passphrase_file.read_text()
        passphrase = text.splitlines()[0] if text else ""

    def ask() -> str:
        if passphrase is None:
            raise Crypt4ghKeyError(f"crypt4gh.secret_key {path} is locked with a passphrase: set "
                                   "crypt4gh.passphrase_file")
        return passphrase

    try:
        secret = get_private_key(str(path), ask)
    except SystemExit:  # crypt4gh exits on a wrong passphrase instead of raising
        raise Crypt4ghKeyError(f"crypt4gh.secret_key {path}: wrong passphrase (crypt4gh.passphrase_file)") from None
    except Crypt4ghKeyError:
        raise
    except Exception as exc:  # noqa: BLE001  (the library raises anything from ValueError to assert)
        raise Crypt4ghKeyError(f"crypt4gh.secret_key {path} is not a Crypt4GH secret key: "
                        f"{type(exc).__name__}") from None
    if not isinstance(secret, bytes) or len(secret) != 32:
        raise Crypt4ghKeyError(f"crypt4gh.secret_key {path} is not an X25519 secret key")
    return SiteKey(secret)


def _private_file(path: Path, name: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise Crypt4ghKeyError(f"{name} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Crypt4ghKeyError(f"{name} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise Crypt4ghKeyError(f"{name} {path} has mode {stat.S_IMODE(st.st_mode):o}: it must be readable by its "
                        "owner alone (chmod 600)")


def required_root(path: str | Path, settings: Crypt4ghSettings) -> str | None:
    """The `crypt4gh.required_roots` entry a destination lies under (its outputs must be encrypted)."""
    real = os.path.realpath(path)
    return next((str(root) for root in settings.required_roots if within(real, os.path.realpath(root))), None)


def job_python(settings: Crypt4ghSettings, storage: StorageSettings) -> Path:
    return settings.job_python or storage.job_python


def check(settings: Crypt4ghSettings, storage: StorageSettings) -> list[str]:
    """What `config check` reports about Crypt4GH on this machine: one line per fact, problems as
    Crypt4ghKeyError. The job Python is tried here, which tells about compute nodes that share its path."""
    lines = []
    key = load_site_key(settings)
    if key is not None:
        lines.append(f"crypt4gh.secret_key: loaded; the site's public key is {key.public}")
    python = job_python(settings, storage)
    try:
        subprocess.run([str(python), "-I", "-c", "import crypt4gh.lib"], check=True, capture_output=True,
                       timeout=60)
    except (OSError, subprocess.SubprocessError):
        raise Crypt4ghKeyError(f"the job Python {python} cannot import crypt4gh: set crypt4gh.job_python to a "
                        "Python (on the compute nodes' path) with the crypt4gh package") from None
    lines.append(f"crypt4gh job Python {python}: imports crypt4gh")
    return lines
