"""Output collection, run by the batch script after the executors succeed:
`python -m hpc_bridge.jobside.collect MANIFEST`.

Copies each TES output from the host side of the container's binds to its destination in the site's
data roots and appends one JSON line per copied file (and per problem) to `record.jsonl` next to the
manifest, which is how the daemon learns the task's output logs.

The files being copied were written by the task, which is hostile: it may plant symlinks, FIFOs or
odd names anywhere under its binds. So sources are reached only through directory file descriptors
opened with O_NOFOLLOW (nothing can be swapped between a check and its use), symlinks are never
followed blindly (one is resolved once, checked to stay inside the bind, and its target then reached
without following anything: so a symlink in a copied tree, or an output that is one, is copied as
the file or directory it leads to in the bind, while one leading outside the bind, or nowhere, is
skipped, or refused as the output itself; a wildcard skips any symlink it meets), only regular files and
directories are copied, and every destination file is written to a temporary name and renamed over
the final name, so a symlink found there is replaced, never written through. A directory that is only
passed through (every destination directory, and a source one that is not listed) is opened with
O_PATH, which needs search permission alone: the job user may enter but not list a directory on the
way (mode 0711, like the WES runs root or a site's directory). Exit status: 0 all
outputs copied, 1 some output failed (all are still tried), 2 the manifest (or the record file) is
unusable.
"""

from __future__ import annotations

import base64
import errno
import fnmatch
import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

Emit = Callable[[dict[str, Any]], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a directory that is listed
# A directory only passed through or written into (a dir_fd for openat, mkdirat, renameat, fstatat,
# unlinkat and the next open): O_PATH needs no read permission on it, only search permission, as a
# path lookup does. Such a descriptor cannot be listed (nor fsync'ed: nothing here does). With
# O_DIRECTORY, a symlink (O_NOFOLLOW) or non-directory at the name fails with ENOTDIR, and an
# automount point is still mounted.
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: should a FIFO be swapped in after the lstat, opening it must not hang the job.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Each level of a copied tree holds two descriptors (source and destination); this bounds both the
# descriptors and the recursion a hostile, absurdly deep tree could demand.
MAX_DEPTH = 256
_MAGIC = re.compile(r"[*?[]")
_TYPES = ("FILE", "DIRECTORY", None)


class ManifestError(ValueError):
    """The manifest is not what the daemon writes: nothing is copied (exit status 2)."""


class _OutputFailed(Exception):
    """Stops the current item (a whole output at the top level); the message goes to the record."""


class _Unfollowed(Exception):
    """A symlink leading outside the bind or nowhere: skipped inside a tree, refused as the output itself."""


@dataclass(frozen=True)
class OutputSpec:
    index: int
    type: str | None
    path: str
    path_prefix: str | None
    wildcard: bool
    bind_container: str
    bind_host: str
    url: str
    dest: str
    quote: bool = True  # names percent-encoded in URLs; not for object keys, which are taken literally


@dataclass(frozen=True)
class Manifest:
    """`areas`: where this task's owner may write (within the roots); in the `keep` ones (shared
    areas) an existing file is never replaced, since another owner may have written it. With
    `recipients` (base64 Crypt4GH public keys) every file is written encrypted to them, as NAME.c4gh:
    the plaintext never leaves the work area (this needs a Python with crypt4gh)."""

    workdir: str
    roots: tuple[str, ...]
    outputs: tuple[OutputSpec, ...]
    areas: tuple[str, ...]
    keep: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()


C4GH_SUFFIX = ".c4gh"
C4GH_SEGMENT = 65536  # plaintext bytes per Crypt4GH body segment
C4GH_BATCH = 16  # segments sealed per read and write


def now() -> str:
    """ISO-8601 UTC with milliseconds and Z, the same format the batch script's `now` writes."""
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# --- manifest -------------------------------------------------------------------------------------

def _text(obj: dict[str, Any], key: str, where: str, *, absolute: bool = False, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: {key!r} must be a non-empty string")
    if "\0" in value:
        raise ManifestError(f"{where}: {key!r} contains a NUL byte")
    if absolute and not value.startswith("/"):
        raise ManifestError(f"{where}: {key!r} must be an absolute path")
    return value


def parse_manifest(data: object) -> Manifest:
    """Check types up front, so that a daemon bug stops everything before anything is copied."""
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a JSON object")
    workdir = _text(data, "workdir", "manifest", absolute=True)
    roots = _paths(data, "roots")
    if not roots:
        raise ManifestError("manifest: 'roots' must be a non-empty list")
    areas = _paths(data, "areas") if "areas" in data else roots
    keep = _paths(data, "keep") if "keep" in data else []
    recipients = data.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) and r for r in recipients):
        raise ManifestError("manifest: 'recipients' must be a list of base64 public keys")
    outputs = data.get("outputs")
    if not isinstance(outputs, list):
        raise ManifestError("manifest: 'outputs' must be a list")
    specs = []
    for i, out in enumerate(outputs):
        where = f"outputs[{i}]"
        if not isinstance(out, dict):
            raise ManifestError(f"{where} must be an object")
        index = out.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ManifestError(f"{where}: 'index' must be a non-negative integer")
        if out.get("type") not in _TYPES:
            raise ManifestError(f"{where}: 'type' must be FILE, DIRECTORY or null")
        for flag, default in (("wildcard", False), ("quote", True)):
            if not isinstance(out.get(flag, default), bool):
                raise ManifestError(f"{where}: {flag!r} must be a boolean")
        specs.append(OutputSpec(
            index=index, type=out.get("type"), wildcard=out.get("wildcard", False),
            path=_text(out, "path", where, absolute=True),
            path_prefix=_text(out, "path_prefix", where, optional=True),
            bind_container=_text(out, "bind_container", where, absolute=True),
            bind_host=_text(out, "bind_host", where, absolute=True),
            url=_text(out, "url", where),
            dest=_text(out, "dest", where, absolute=True), quote=out.get("quote", True)))
    return Manifest(workdir=workdir, roots=tuple(roots), outputs=tuple(specs), areas=tuple(areas),
                    keep=tuple(keep), recipients=tuple(recipients))


def manifest_json(manifest: Manifest) -> str:
    """The manifest as the daemon writes it for the job: what `parse_manifest` reads back."""
    return json.dumps(asdict(manifest))


def _paths(data: dict[str, Any], key: str) -> list[str]:
    paths = data.get(key)
    if not isinstance(paths, list):
        raise ManifestError(f"manifest: {key!r} must be a list")
    for i, path in enumerate(paths):
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ManifestError(f"manifest: {key}[{i}] must be an absolute path")
    return paths


# --- small pure helpers ---------------------------------------------------------------------------

def _parts(path: str) -> list[str]:
    """Components of a slash path; '..' is refused because it would let a path step out lexically."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _OutputFailed(f"{path}: '..' is not allowed in this path")
    return parts


def _inside(path: str, base: str) -> bool:
    """Component-wise containment of two real paths (a string prefix would accept /data2 for /data)."""
    return os.path.commonpath([path, base]) == base


def _join_url(base: str, name: str, encode: bool = True) -> str:
    """File names are percent-encoded in URLs: a name with `%`, `#`, `?` or a space stays itself.
    Object-store keys (`encode` False) are names as they are."""
    if not name:
        return base
    return base.rstrip("/") + "/" + (quote(name, errors="surrogateescape") if encode else name)


def _join_path(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if name else base


def _printable(name: str) -> str:
    """A name as text for a message, even when it is not valid UTF-8."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    """Names that are not UTF-8 cannot be carried as TES URLs/paths (JSON strings), so they are skipped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


# --- one output -----------------------------------------------------------------------------------

class _Collector:
    """Collects one output and writes its events; `failed` tells whether anything went wrong."""

    def __init__(self, spec: OutputSpec, manifest: Manifest, emit: Emit) -> None:
        self.spec, self.roots, self.workdir, self.emit = spec, manifest.roots, manifest.workdir, emit
        self.areas = [os.path.realpath(a) for a in manifest.areas]
        dest = os.path.realpath(spec.dest)
        self.keep = any(_inside(dest, os.path.realpath(k)) for k in manifest.keep)
        self.bind = os.path.realpath(spec.bind_host)  # the boundary every source, and symlink target, stays in
        self.recipients = manifest.recipients
        self.suffix = C4GH_SUFFIX if self.recipients else ""
        self.failed = False
        self.dest_dirs: set[tuple[int, int]] = set()  # (dev, ino) of directories this output created or wrote into
        self.copying: set[tuple[int, int]] = set()  # (dev, ino) of the source directories being copied, nested

    def _event(self, kind: str, **fields: Any) -> None:
        self.emit({"event": kind, "output": self.spec.index, **fields, "time": now()})

    def _message(self, text: str) -> str:
        return f"output {self.spec.index} ({self.spec.path}): {text}"

    def warn(self, text: str) -> None:
        self._event("output_warning", message=self._message(text))

    def error(self, text: str) -> None:
        self.failed = True
        self._event("output_error", message=self._message(text))

    def logged(self, url: str, path: str, size: int) -> None:
        self._event("output", url=url, path=path, size_bytes=str(size))

    # -- entry point

    def run(self) -> bool:
        try:
            self._run()
        except _OutputFailed as exc:
            self.error(str(exc))
        except (OSError, ValueError) as exc:
            self.error(f"could not be copied: {getattr(exc, 'strerror', None) or exc}")
        return not self.failed

    def _run(self) -> None:
        spec = self.spec
        workdir = os.path.realpath(self.workdir)
        if not _inside(self.bind, workdir) or self.bind == workdir:
            raise _OutputFailed("the bind directory is not inside the task's work area; refused")
        bind_parts, path_parts = _parts(spec.bind_container), _parts(spec.path)
        if path_parts[:len(bind_parts)] != bind_parts:
            raise _OutputFailed(f"the path is not under its bind {spec.bind_container}")
        rel = path_parts[len(bind_parts):]
        if spec.wildcard:
            self._wildcard(bind_parts, rel)
        else:
            self._single(rel)

    # -- sources

    def _open_inside(self, parts: list[str], listed: bool = False) -> int:
        """Directory fd for bind/parts, whose real path must stay inside the bind; an O_PATH one
        unless it is to be `listed`.

        A symlink among `parts` is resolved once (it may legitimately point elsewhere in the bind),
        then the resolved path is opened component by component without following anything, so a
        symlink swapped in after the check makes the open fail instead of leading outside.
        """
        real = os.path.realpath(os.path.join(self.bind, *parts))
        if not _inside(real, self.bind):
            raise _OutputFailed("a parent directory is a symlink leading outside the task's work area; refused")
        rel = os.path.relpath(real, self.bind)
        comps = [] if rel == "." else rel.split(os.sep)
        last = _DIR_FLAGS if listed else _PATH_FLAGS
        fd = os.open(self.bind, last if not comps else _PATH_FLAGS)
        try:
            for i, comp in enumerate(comps, 1):
                try:
                    nfd = os.open(comp, last if i == len(comps) else _PATH_FLAGS, dir_fd=fd)
                except NotADirectoryError:  # O_PATH says ENOTDIR for a symlink (swapped in since realpath)
                    if stat.S_ISLNK(os.stat(comp, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), comp) from None
                    raise
                os.close(fd)
                fd = nfd
        except OSError:
            os.close(fd)
            raise
        return fd

    def _follow(self, cpath: str) -> tuple[int | None, str, os.stat_result]:
        """(directory fd, name, lstat) of where the symlink at container path `cpath` leads.

        Like a parent-directory symlink, it is resolved once, and the target must stay inside the
        bind: otherwise the task could have a host file (say /etc/shadow) copied out to its outputs.
        """
        rel = _parts(cpath)[len(_parts(self.spec.bind_container)):]
        real = os.path.realpath(os.path.join(self.bind, *rel))
        if not _inside(real, self.bind):
            raise _Unfollowed("is a symlink leading outside the output's bind")
        parts = _parts(os.path.relpath(real, self.bind))
        if not parts:  # the bind itself
            return None, self.bind, os.stat(self.bind, follow_symlinks=False)
        try:
            parent = self._open_inside(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            raise _Unfollowed("is a dangling symlink") from None
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):  # realpath stops where symlinks form a loop
                raise _Unfollowed("is a symlink loop")
        except FileNotFoundError:
            os.close(parent)
            raise _Unfollowed("is a dangling symlink") from None
        except BaseException:
            os.close(parent)
            raise
        return parent, parts[-1], st

    def _single(self, rel: list[str]) -> None:
        spec = self.spec
        parent: int | None = None
        try:
            if rel:
                try:
                    parent = self._open_inside(rel[:-1])
                    st = os.stat(rel[-1], dir_fd=parent, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    raise _OutputFailed("not found \u2014 the executors did not create it") from None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise _OutputFailed("a parent directory changed into a symlink; refused") from None
                    raise
                name = rel[-1]
            else:  # the output is the whole bind directory
                st, name = os.stat(self.bind, follow_symlinks=False), self.bind
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = self._follow(spec.path)
                except _Unfollowed as exc:
                    raise _OutputFailed(f"{exc}; refused") from None
                _close(parent)
                parent, name, st = target
            if stat.S_ISREG(st.st_mode):
                if spec.type == "DIRECTORY":
                    raise _OutputFailed("is a file, but the output's type is DIRECTORY")
                self._copy_file(parent, name, spec.dest, spec.url, spec.path, required=True)
            elif stat.S_ISDIR(st.st_mode):
                if spec.type == "FILE":
                    raise _OutputFailed("is a directory, but the output's type is FILE")
                self._copy_dir(parent, name, spec.dest, spec.url, spec.path)
            else:
                raise _OutputFailed("is not a regular file or directory; refused")
        finally:
            _close(parent)

    # -- wildcards

    def _wildcard(self, bind_parts: list[str], rel: list[str]) -> None:
        spec = self.spec
        if spec.path_prefix is None:
            raise _OutputFailed("a wildcard output needs a path_prefix")
        if not rel:
            raise _OutputFailed("the wildcard path has no pattern below its bind")
        first = next((i for i, p in enumerate(rel) if _MAGIC.search(p)), len(rel) - 1)
        try:
            base = self._open_inside(rel[:first], listed=_MAGIC.search(rel[first]) is not None)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing can match: not an error
        try:
            self._glob(base, rel[first:], bind_parts + rel[:first])
        finally:
            os.close(base)

    def _glob(self, dir_fd: int, patterns: list[str], matched: list[str]) -> None:
        """Like glob: fnmatch per component, hidden names only for patterns starting with '.'."""
        pattern, rest = patterns[0], patterns[1:]
        if _MAGIC.search(pattern):
            with os.scandir(dir_fd) as it:
                names = sorted(e.name for e in it
                               if fnmatch.fnmatchcase(e.name, pattern)
                               and (pattern.startswith(".") or not e.name.startswith(".")))
        else:
            names = [pattern]
        for name in names:
            parts = matched + [name]
            cpath = "/" + "/".join(parts)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not _utf8(name):
                self.warn(f"{_printable(cpath)}: the name is not valid UTF-8; skipped")
            elif stat.S_ISLNK(st.st_mode):
                self.warn(f"{cpath} is a symlink; skipped")
            elif rest:
                if stat.S_ISDIR(st.st_mode):
                    try:
                        listed = _MAGIC.search(rest[0]) is not None  # else only passed through
                        sub = os.open(name, _DIR_FLAGS if listed else _PATH_FLAGS, dir_fd=dir_fd)
                    except OSError as exc:
                        self.error(f"{cpath}: could not be read: {exc.strerror}")
                        continue
                    try:
                        self._glob(sub, rest, parts)
                    finally:
                        os.close(sub)
            else:
                try:
                    self._match(dir_fd, name, st, cpath)
                except _OutputFailed as exc:
                    self.error(str(exc))
                except OSError as exc:
                    self.error(f"{cpath}: could not be copied: {exc.strerror or exc}")

    def _match(self, dir_fd: int, name: str, st: os.stat_result, cpath: str) -> None:
        prefix = self.spec.path_prefix or ""
        if not cpath.startswith(prefix):
            raise _OutputFailed(f"{cpath}: path_prefix {prefix} is not a prefix of the matched path")
        pruned = cpath[len(prefix):].lstrip("/")
        if any(p in (".", "..") for p in pruned.split("/")):
            raise _OutputFailed(f"{cpath}: removing path_prefix leaves {pruned!r}, an unsafe name")
        dest, url = _join_path(self.spec.dest, pruned), _join_url(self.spec.url, pruned, self.spec.quote)
        if stat.S_ISREG(st.st_mode):
            self._copy_file(dir_fd, name, dest, url, cpath)
        elif stat.S_ISDIR(st.st_mode):
            self._copy_dir(dir_fd, name, dest, url, cpath)
        else:
            self.warn(f"{cpath} is not a regular file or directory; skipped")

    # -- destinations

    def _open_dest_dir(self, path: str) -> int:
        """O_PATH directory fd for `path`, created as needed, whose real path lies inside a data root.

        The real path of the existing part is checked, then the directory is reached from the root
        one component at a time without following symlinks, so one swapped in meanwhile makes the
        open fail rather than redirect the write (this is the "re-check" after creating directories).
        """
        _parts(path)  # refuses '..'
        real = os.path.realpath(path)
        for root in self.roots:
            root_real = os.path.realpath(root)
            if _inside(real, root_real):
                break
        else:
            raise _OutputFailed(f"destination {path} is outside the allowed data roots; refused")
        if not any(_inside(real, area) for area in self.areas):
            raise _OutputFailed(f"destination {path} is outside the areas this task's owner may write; refused")
        rel = os.path.relpath(real, root_real)
        try:
            fd = os.open(root_real, _PATH_FLAGS)
        except OSError as exc:
            raise _OutputFailed(f"data root {root_real} cannot be opened: {exc.strerror}") from None
        try:
            for comp in ([] if rel == "." else rel.split(os.sep)):
                nfd = _subdir(fd, comp, path)
                os.close(fd)
                fd = nfd
            self._mark(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _mark(self, fd: int) -> None:
        """Remember a destination directory, so a source tree that contains it is not copied into itself."""
        st = os.fstat(fd)
        self.dest_dirs.add((st.st_dev, st.st_ino))

    # -- copying

    def _copy_file(self, src_dir: int | None, name: str, dest: str, url: str, cpath: str,
                   required: bool = False) -> None:
        """Copy one file; `required` (a FILE output itself) turns "not a regular file" into a failure."""
        head, tail = os.path.split(dest)
        if not tail:
            raise _OutputFailed(f"destination {dest} has no file name")
        dst_dir = self._open_dest_dir(head)
        try:
            size = _write(src_dir, name, dst_dir, tail + self.suffix, dest + self.suffix, self.keep,
                          self.recipients)
        finally:
            os.close(dst_dir)
        if size is not None:
            self.logged(url + self.suffix, cpath, size)
        elif required:
            raise _OutputFailed("is not a regular file; refused")
        else:
            self.warn(f"{cpath} is not a regular file; skipped")

    def _copy_dir(self, src_dir: int | None, name: str, dest: str, url: str, cpath: str) -> None:
        src = os.open(name, _DIR_FLAGS, dir_fd=src_dir)
        try:
            dst = self._open_dest_dir(dest)
            try:
                self._tree(src, dst, url, cpath, 0)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _tree(self, src: int, dst: int, url: str, cpath: str, depth: int) -> None:
        """Copy a directory's contents, one `output` event per regular file, flattened by relative path."""
        with os.scandir(src) as it:
            entries = sorted(it, key=lambda e: e.name)  # read fully: one descriptor per level, not two
        st = os.fstat(src)
        self.copying.add((st.st_dev, st.st_ino))
        try:
            for entry in entries:
                self._entry(src, entry, dst, url, cpath, depth)
        finally:
            self.copying.discard((st.st_dev, st.st_ino))

    def _entry(self, src: int, entry: os.DirEntry[str], dst: int, url: str, cpath: str, depth: int) -> None:
        """Copy one entry of a tree; a symlink as what it leads to, if that stays inside the bind."""
        name = entry.name
        path, sub_url = cpath.rstrip("/") + "/" + name, _join_url(url, name, self.spec.quote)
        parent: int | None = None  # the symlink target's directory, when one is followed
        try:
            if not _utf8(name):
                self.warn(f"{_printable(path)}: the name is not valid UTF-8; skipped")
                return
            src_dir: int | None = src
            src_name = name
            is_dir, is_file = entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False)
            if entry.is_symlink():
                parent, src_name, st = self._follow(path)
                src_dir, is_dir, is_file = parent, stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
            if is_dir:
                self._subtree(src_dir, src_name, dst, name, sub_url, path, depth + 1)
            elif is_file:
                size = _write(src_dir, src_name, dst, name + self.suffix, f"of {path}", self.keep,
                              self.recipients)
                if size is None:
                    self.warn(f"{path} is not a regular file; skipped")
                else:
                    self.logged(sub_url + self.suffix, path, size)
            else:
                self.warn(f"{path} is not a regular file or directory (FIFO, socket or device); skipped")
        except _Unfollowed as exc:
            self.warn(f"{path} {exc}; skipped")
        except _OutputFailed as exc:
            self.error(str(exc))
        except OSError as exc:
            self.error(f"{path}: could not be copied: {exc.strerror or exc}")
        finally:
            _close(parent)

    def _subtree(self, src: int | None, src_name: str, dst: int, name: str, url: str, path: str,
                 depth: int) -> None:
        """Copy directory src_name (a followed symlink's target, or just `name`) to `name` under dst."""
        if depth > MAX_DEPTH:
            raise _OutputFailed(f"{path}: nested deeper than {MAX_DEPTH} directories; not copied")
        try:
            sub_src = os.open(src_name, _DIR_FLAGS, dir_fd=src)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.warn(f"{path} changed into a symlink while being copied; skipped")
                return
            raise
        try:
            st = os.fstat(sub_src)
            if (st.st_dev, st.st_ino) in self.dest_dirs:
                self.warn(f"{path} is where this output is being copied to; skipped")
                return
            if (st.st_dev, st.st_ino) in self.copying:
                self.warn(f"{path} leads back into a directory being copied (a symlink loop); skipped")
                return
            sub_dst = _subdir(dst, name, f"of {path}")
            try:
                self._mark(sub_dst)
                self._tree(sub_src, sub_dst, url, path, depth)
            finally:
                os.close(sub_dst)
        finally:
            os.close(sub_src)


def _subdir(fd: int, name: str, what: str) -> int:
    """O_PATH fd of directory `name` under fd (created if missing); a symlink or non-directory there
    is refused. Only written into, never listed, so search permission is all it needs."""
    try:
        try:
            os.mkdir(name, 0o777, dir_fd=fd)  # the job's umask decides the mode
        except FileExistsError:
            pass
        return os.open(name, _PATH_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _OutputFailed(f"destination {what} exists but is not a directory (or is a symlink)") from None
        raise _OutputFailed(f"destination {what} cannot be created: {exc.strerror}") from None


def _write(src_dir: int | None, name: str, dst_dir: int, dst_name: str, dest: str, keep: bool,
           recipients: Sequence[str] = ()) -> int | None:
    """Copy (or with `recipients` encrypt) one file by descriptors into a temp file renamed onto
    dst_name (`keep`: linked there, which fails on an existing name); the size written, None if not
    a regular file."""
    src = os.open(name, _FILE_FLAGS, dir_fd=src_dir)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            if stat.S_ISDIR(os.stat(dst_name, dir_fd=dst_dir, follow_symlinks=False).st_mode):
                raise _OutputFailed(f"destination {dest} exists as a directory")
        except FileNotFoundError:
            pass
        tmp = f".hpc-bridge-{secrets.token_hex(8)}.tmp"
        mode = 0o777 if st.st_mode & 0o111 else 0o666  # keep executability; the umask does the rest
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                      dir_fd=dst_dir)
        try:
            try:
                size = _encrypt_data(src, out, recipients) if recipients else _copy_data(src, out)
            finally:
                os.close(out)
            if not keep:
                os.replace(tmp, dst_name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
            else:
                try:
                    os.link(tmp, dst_name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
                except FileExistsError:
                    raise _OutputFailed(f"destination {dest} exists; in a shared area an output never "
                                        "replaces a file") from None
                os.unlink(tmp, dir_fd=dst_dir)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dst_dir)
            except OSError:
                pass
            raise
        return size
    finally:
        os.close(src)


def _copy_data(src: int, dst: int) -> int:
    """In-kernel copy where possible (outputs can be large), plain read/write otherwise."""
    total = 0
    try:
        while n := os.sendfile(dst, src, None, 1 << 30):
            total += n
        return total
    except OSError as exc:
        if total or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while chunk := os.read(src, 1 << 20):
        total += _write_all(dst, chunk)
    return total


def _encrypt_data(src: int, dst: int, recipients: Sequence[str]) -> int:
    """Crypt4GH to every recipient, with a sender key of this file alone; the size written. The
    header is crypt4gh's own; the body's 64 KiB ChaCha20-Poly1305 segments (a random nonce, the
    ciphertext, the MAC) are sealed by `cryptography` (OpenSSL), which crypt4gh depends on, 16 at a
    time: 3.9 GiB/s against 1.4 GiB/s for crypt4gh's own loop on this machine, the difference between
    encrypting at about the speed of a copy and at half of it (bench/crypt4gh_outputs.py). Imported
    here: only jobs that encrypt need them (the site's crypt4gh.job_python)."""
    try:
        from crypt4gh import header
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    except ImportError:
        raise _OutputFailed(f"cannot be encrypted: {sys.executable} has no crypt4gh package (the "
                            "site's crypt4gh.job_python)") from None
    session = os.urandom(32)
    keys = [(0, os.urandom(32), base64.b64decode(r)) for r in recipients]
    total = _write_all(dst, header.serialize(header.encrypt(header.make_packet_data_enc(0, session), keys)))
    seal = ChaCha20Poly1305(session).encrypt
    batch = memoryview(bytearray(C4GH_SEGMENT * C4GH_BATCH))  # one read, one nonce draw, one write per batch
    while size := _fill(src, batch):
        nonces = os.urandom(12 * C4GH_BATCH)
        parts: list[bytes] = []
        for i, start in enumerate(range(0, size, C4GH_SEGMENT)):
            nonce = nonces[12 * i:12 * i + 12]
            parts += [nonce, seal(nonce, batch[start:min(start + C4GH_SEGMENT, size)], None)]
        total += _writev_all(dst, parts)
        if size < len(batch):
            break
    return total


def _fill(fd: int, buffer: memoryview) -> int:
    """Read until `buffer` is full or the file ends: every segment but the last must be whole."""
    got = 0
    while got < len(buffer) and (n := os.readv(fd, [buffer[got:]])):
        got += n
    return got


def _writev_all(fd: int, parts: list[bytes]) -> int:
    total = sum(map(len, parts))
    if (done := os.writev(fd, parts)) < total:
        _write_all(fd, b"".join(parts)[done:])
    return total


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


# --- entry points ---------------------------------------------------------------------------------

def collect(manifest: dict[str, Any] | Manifest, emit: Emit) -> bool:
    """Copy every output, reporting through `emit`; True only if all succeeded. Raises ManifestError."""
    m = manifest if isinstance(manifest, Manifest) else parse_manifest(manifest)
    ok = True
    for spec in m.outputs:
        ok = _Collector(spec, m, emit).run() and ok
    return ok


class RecordWriter:
    """Appends one JSON object per line with a single write each, so lines from the script never interleave."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)

    def __call__(self, event: dict[str, Any]) -> None:
        # ensure_ascii: names that are data (newlines, quotes, any unicode) become escapes, never raw bytes
        os.write(self.fd, (json.dumps(event, ensure_ascii=True) + "\n").encode("ascii"))
        if event.get("event") == "output_error":
            print(event.get("message"), file=sys.stderr)

    def close(self) -> None:
        os.close(self.fd)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hpc_bridge.jobside.collect WORKDIR/outputs.json", file=sys.stderr)
        return 2
    manifest_path = argv[0]
    record_path = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), "record.jsonl")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = parse_manifest(json.load(f))
    except (OSError, ValueError) as exc:  # JSONDecodeError and ManifestError are ValueErrors
        print(f"collect: bad manifest {manifest_path}: {exc}", file=sys.stderr)
        return 2
    try:
        record = RecordWriter(record_path)
    except OSError as exc:
        print(f"collect: cannot open {record_path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        return 0 if collect(manifest, record) else 1
    finally:
        record.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
