"""Pull registry images into the image cache, once per image however many threads and processes ask.

The daemon runs as root on the login node and pulls before a job is submitted (compute nodes are
often offline); jobs then run the cached SIF as the unprivileged job user, so SIFs are 0644 in a
0755 directory. A SIF appears under its final name only once complete (pulled into a temporary
directory beside it, then renamed), so its existence is the only "cached" test needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from hpc_bridge.config import ApptainerSettings
from hpc_bridge.containers.images import RegistryImage
from hpc_bridge.staging.http import is_allowed_address

_STDERR_TAIL = 2000
log = logging.getLogger(__name__)


class PullError(Exception):
    """A registry image could not be pulled; the message names the image, the URI and apptainer's error."""


class ImageCache:
    """Blocking, idempotent pulls; `pulls` counts the pulls actually made, per normalized reference."""

    def __init__(self, settings: ApptainerSettings, *, env: Mapping[str, str] | None = None) -> None:
        self._binary = str(settings.binary)
        self._timeout = settings.pull_timeout
        self._env = dict(os.environ if env is None else env)
        self._slots = threading.BoundedSemaphore(settings.pull_parallelism)
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}
        self.pulls: Counter[str] = Counter()
        self._trusted = {*settings.trusted_registries, *settings.insecure_registries,
                         *(m.split("/", 1)[0] for m in settings.registry_mirrors.values())}

    def is_cached(self, image: RegistryImage) -> bool:
        return image.sif.is_file()

    def ensure(self, image: RegistryImage) -> bool:
        """Make `image.sif` exist: True if this call pulled it, False if it was already there."""
        if self.is_cached(image):
            return False
        with self._guard:
            lock = self._locks.setdefault(image.sif, threading.Lock())
        with lock:  # threads of this process: one pull, the others wait and find the file
            if self.is_cached(image):
                return False
            _make_dir(image.sif.parent)
            with open(f"{image.sif}.lock", "a") as lockfile:  # other processes sharing the cache
                fcntl.flock(lockfile, fcntl.LOCK_EX)
                if self.is_cached(image):
                    return False
                with self._slots:
                    started = time.monotonic()
                    log.info("pulling image %s from %s", image.reference, image.pull_uri)
                    self._pull(image)
                    log.info("pulled image %s into %s in %.1fs", image.reference, image.sif,
                             time.monotonic() - started)
        with self._guard:
            self.pulls[image.normalized] += 1
        return True

    def _check_registry(self, image: RegistryImage) -> None:
        """The daemon pulls as root from the login node, which reaches internal services: a registry
        the site did not name must resolve to public addresses only (as http inputs must)."""
        hostport = image.registry
        if hostport is None or hostport in self._trusted:  # None: library:// (the configured library)
            return
        host = hostport.rsplit(":", 1)[0] if not hostport.endswith("]") else hostport
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), None)}
        except OSError as exc:
            raise PullError(_message(image, f"cannot resolve registry {host}: {exc}", "")) from None
        if not all(is_allowed_address(a, []) for a in addresses):
            raise PullError(_message(image, f"registry {hostport} is not a public address and not one of "
                                            "the site's registries (apptainer.trusted_registries)", ""))

    def _pull(self, image: RegistryImage) -> None:
        self._check_registry(image)
        cache_dir = image.sif.parent
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pull-") as tmp:
            target = Path(tmp) / image.sif.name
            argv = [self._binary, "pull", *(["--no-https"] if image.insecure else []), str(target),
                    image.pull_uri]
            # Layers are shared between pulls in a private cache (not root's home); the build's
            # scratch space sits on the cache filesystem, which is sized for images, unlike /tmp.
            env = {**self._env, "APPTAINER_CACHEDIR": str(cache_dir / ".apptainer"), "APPTAINER_TMPDIR": tmp}
            stderr = self._run(argv, env, image)
            if not target.is_file():
                raise PullError(_message(image, "apptainer reported success but wrote no SIF", stderr))
            target.chmod(0o644)
            os.replace(target, image.sif)

    def _run(self, argv: list[str], env: dict[str, str], image: RegistryImage) -> str:
        """Run apptainer in its own session, so a timeout also kills the mksquashfs it started."""
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as exc:
            raise PullError(_message(image, f"cannot run {self._binary}: {exc.strerror}", "")) from exc
        try:
            _, stderr = proc.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            raise PullError(_message(image, f"timed out after {self._timeout:g}s", stderr)) from None
        if proc.returncode != 0:
            raise PullError(_message(image, f"apptainer pull exited with {proc.returncode}", stderr))
        return stderr


def _make_dir(path: Path) -> None:
    """Create the cache directory readable by the job user; an existing one is left as the site set it."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)


def _message(image: RegistryImage, why: str, stderr: str) -> str:
    tail = stderr.strip()[-_STDERR_TAIL:]
    return (f"cannot pull image {image.reference!r} from {image.pull_uri}"
            f"{' (plain http)' if image.insecure else ''}: {why}" + (f"\n{tail}" if tail else ""))
