"""Pull registry images into the image cache, once per image however many threads and processes ask.

The daemon pulls on the login node before a job is submitted (compute nodes are often offline);
jobs then run the cached SIF as the unprivileged job user, so SIFs are 0644 in a 0755 directory.
A pull parses what a registry sends, so it never runs as root: a root daemon runs `apptainer pull`
as `apptainer.pull_as`, which owns nothing but the pull's own temporary directory; the daemon then
takes the checked file itself (by descriptor, never by a name that account could swap) into the
cache, which stays the daemon's and writable by no task user. A SIF appears under its final name
only once complete, so its existence is the only "cached" test needed. Registries the site did not
name are reached only through the address-checking proxy of `egress`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from hpc_bridge.config import ApptainerSettings
from hpc_bridge.containers import egress
from hpc_bridge.containers.images import RegistryImage
from hpc_bridge.slurm.record import file_refusal

_STDERR_TAIL = 2000
log = logging.getLogger(__name__)


class PullError(Exception):
    """A registry image could not be pulled; the message names the image, the URI and apptainer's error."""


class ImageCache:
    """Blocking, idempotent pulls; `pulls` counts the pulls actually made, per normalized reference."""

    def __init__(self, settings: ApptainerSettings, *, env: Mapping[str, str] | None = None,
                 resolver: egress.Resolver = egress.resolve) -> None:
        self._binary = str(settings.binary)
        self._resolver = resolver
        self._pull_as = settings.pull_as
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

    def _pull_user(self, image: RegistryImage) -> pwd.struct_passwd | None:
        """Whom `apptainer pull` runs as: None for the daemon itself, which is then not root."""
        if os.geteuid() != 0:
            return None
        if self._pull_as is None:
            raise PullError(_message(image, "the daemon runs as root and never pulls as root: set "
                                            "apptainer.pull_as to an unprivileged account of its own", ""))
        return pwd.getpwnam(self._pull_as)

    def _check_registry(self, image: RegistryImage) -> bool:
        """A registry the site did not name must resolve to public addresses only (the login node
        reaches internal services); True when it is such a registry, which the pull then reaches
        only through the checking proxy (the answer may change after this check)."""
        hostport = image.registry
        if hostport is None or hostport in self._trusted:  # None: library:// (the configured library)
            return False
        host = hostport.rsplit(":", 1)[0] if not hostport.endswith("]") else hostport
        try:
            egress.public_address(host, self._resolver)
        except egress.Refused as exc:
            raise PullError(_message(image, f"registry {hostport}: {exc}, and not one of the site's "
                                            "registries (apptainer.trusted_registries)", "")) from None
        return True

    def _pull(self, image: RegistryImage) -> None:
        proxied = self._check_registry(image)
        user = self._pull_user(image)
        with tempfile.TemporaryDirectory(dir=image.sif.parent, prefix=".pull-") as tmp:
            if user is not None:
                os.chown(tmp, user.pw_uid, user.pw_gid)
            argv = [self._binary, "pull", *(["--no-https"] if image.insecure else []),
                    f"{tmp}/{image.sif.name}", image.pull_uri]
            # All of one pull stays in its own directory: its layers and the build's scratch space (on
            # the cache filesystem, sized for images, unlike /tmp); nothing is shared between pulls.
            env = {**self._env, "APPTAINER_CACHEDIR": f"{tmp}/.layers", "APPTAINER_TMPDIR": tmp}
            if user is not None:
                env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            with egress.CheckingProxy(self._resolver) if proxied else contextlib.nullcontext() as proxy:
                if proxy is not None:
                    env = {k: v for k, v in env.items() if k.lower() != "no_proxy"} | proxy.environment()
                try:
                    stderr = self._run(argv, env, image, user, cwd=tmp)
                except PullError:
                    if proxy is not None and proxy.refusals:
                        raise PullError(_message(image, "refused by the address check: "
                                                 + "; ".join(dict.fromkeys(proxy.refusals)), "")) from None
                    raise
            self._take(tmp, image, user.pw_uid if user else os.geteuid(), stderr)

    def _take(self, tmp: str, image: RegistryImage, owner_uid: int, stderr: str) -> None:
        """Put the pulled SIF in the cache. The pull user controlled `tmp`: it is made the daemon's
        first (so no name in it changes any more), then the SIF is opened without following a
        symlink, must be the pull user's own single-link plain file (not a link to a file of
        root's), and is made the daemon's and 0644 through its descriptor before it is renamed."""
        dfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(dfd, os.geteuid(), os.getegid())
            os.fchmod(dfd, 0o700)
            try:
                fd = os.open(image.sif.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)
            except FileNotFoundError:
                raise PullError(_message(image, "apptainer reported success but wrote no SIF", stderr)) from None
            except OSError as exc:
                raise PullError(_message(image, f"the pulled SIF is not a plain file ({exc.strerror})",
                                         "")) from None
            try:
                if (reason := file_refusal(os.fstat(fd), owner_uid)) is not None:
                    raise PullError(_message(image, f"the pulled SIF {reason}; not taken", ""))
                os.fchown(fd, os.geteuid(), os.getegid())
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
            os.replace(image.sif.name, image.sif, src_dir_fd=dfd)
        finally:
            os.close(dfd)

    def _run(self, argv: list[str], env: dict[str, str], image: RegistryImage,
             user: pwd.struct_passwd | None, *, cwd: str) -> str:
        """Run apptainer (as `user`, with no other group) in its own session, so a timeout also
        kills the mksquashfs it started."""
        try:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    errors="replace", start_new_session=True,
                                    user=None if user is None else user.pw_uid,
                                    group=None if user is None else user.pw_gid,
                                    extra_groups=None if user is None else [])
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
