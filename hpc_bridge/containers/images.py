"""Executor image reference -> the SIF file a job runs (pure: no network, no subprocess).

A local `.sif` path is allowed only inside the site's image directories (checked after resolving
symlinks); a bare `NAME` means `NAME.sif` in one of them. Everything else is a registry reference
(`docker://`, `oras://`, `library://` or a Docker-style `[host/]path[:tag][@digest]`), normalized as
Docker does so that equal images share one cache file, and pulled into `cache_dir` by the image
cache. `image_map` is applied first: the site can point any reference at a SIF or a local mirror.
References are checked strictly: they end up in apptainer argv, paths and job scripts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpc_bridge.config import ApptainerSettings
from hpc_bridge.staging.paths import resolve_inside

# The distribution reference grammar (github.com/distribution/reference), ASCII only.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}"
_REMOTE = re.compile(rf"(?P<path>{_PATH})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?\Z", re.ASCII)
_REGISTRY = re.compile(rf"{_DOMAIN}\Z", re.ASCII)
_MIRROR = re.compile(rf"{_DOMAIN}(?:/{_PATH})?\Z", re.ASCII)
_LIBRARY = re.compile(rf"(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT}){{0,3}})(?::(?P<tag>{_TAG}))?\Z",
                      re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")
_MAX_NAME = 255
DOCKER_HUB = "docker.io"


class ImageError(ValueError):
    """The image cannot be used; the message names it and what was tried."""


@dataclass(frozen=True)
class LocalImage:
    """A SIF the site already has: jobs run it in place."""

    reference: str
    sif: Path


@dataclass(frozen=True)
class RegistryImage:
    """A registry image: `pull_uri` is pulled once into `sif`, which jobs then run.

    `normalized` names the image itself (the cache key), so a mirror changes where it is pulled
    from, never which cache file it is."""

    reference: str
    normalized: str
    pull_uri: str
    insecure: bool
    sif: Path
    registry: str | None = None  # host[:port] pulled from (mirror applied); None for library://


Image = LocalImage | RegistryImage


def resolve_image(reference: str, settings: ApptainerSettings) -> Image:
    """Where a job finds `reference`: a local SIF, or a registry image to pull into the cache first."""
    _check_safe(reference, f"image {reference!r}")
    target = settings.image_map.get(reference)
    if target is None and not reference.startswith("/"):
        try:
            target = settings.image_map.get(_docker_normalized(reference))
        except ImageError:
            pass  # not a Docker reference: resolved (and refused) below
    if target is None:
        return _resolve(reference, reference, settings)
    label = f"image {reference!r} (mapped to {target!r})"
    _check_safe(target, label)
    if target.startswith("/") and target.endswith(".sif"):
        if not os.path.isfile(target):
            raise ImageError(f"{label}: the mapped file does not exist")
        return LocalImage(reference, Path(os.path.realpath(target)))
    return _resolve(reference, target, settings)  # one level: a mapped value is never mapped again


def _resolve(reference: str, target: str, settings: ApptainerSettings) -> Image:
    label = f"image {reference!r}" + ("" if target == reference else f" (mapped to {target!r})")
    if target.startswith("/"):
        return LocalImage(reference, _local_sif(target, settings.image_dirs, label))
    if target.endswith(".sif"):
        raise ImageError(f"{label}: a local image must be an absolute path to a .sif file")
    scheme, sep, rest = target.partition("://")
    if not sep:
        scheme, rest = "docker", target
        if _NAME.match(target):
            tried = [Path(d) / f"{target}.sif" for d in settings.image_dirs]
            for candidate in tried:
                real = resolve_inside(str(candidate), settings.image_dirs)
                if real is not None and os.path.isfile(real):
                    return LocalImage(reference, Path(real))
            where = f"not found (tried {', '.join(map(str, tried)) or 'no image directories'})"
            if settings.cache_dir is None:
                raise ImageError(f"{label} {where}; to pull it from a registry instead, "
                                 "set apptainer.cache_dir")
            label = f"{label} {where}, and as a registry reference"
    if scheme in ("docker", "oras"):
        domain, path, suffix = _parse_remote(scheme, rest, label)
        normalized = f"{scheme}://{domain}/{path}{suffix}"
        mirror = settings.registry_mirrors.get(domain, domain)
        if not _MIRROR.match(mirror):
            raise ImageError(f"{label}: registry_mirrors[{domain!r}] = {mirror!r} is not a registry "
                             "host[:port][/path]")
        pull_uri = f"{scheme}://{mirror}/{path}{suffix}"
        registry = mirror.split("/", 1)[0]
        insecure = registry in settings.insecure_registries
    elif scheme == "library":
        match = _LIBRARY.match(rest)
        if not match:
            raise ImageError(f"{label}: not a valid library:// reference "
                             "([entity/collection/]name[:tag], lowercase)")
        normalized = pull_uri = f"library://{match['path']}:{match['tag'] or 'latest'}"
        insecure, registry = False, None
    else:
        raise ImageError(f"{label}: unsupported scheme {scheme!r}:// (use docker://, oras://, library:// "
                         "or a .sif from the site's image directories)")
    if settings.cache_dir is None:
        raise ImageError(f"{label}: registry images need an image cache: set apptainer.cache_dir "
                         "(or point apptainer.image_map at a local SIF)")
    sif = cache_path(normalized, settings.cache_dir)
    return RegistryImage(reference, normalized, pull_uri, insecure, sif, registry)


def cache_path(normalized: str, cache_dir: Path) -> Path:
    """Deterministic: a readable short name for people, the hash of the full reference for uniqueness."""
    remote = normalized.partition("://")[2]
    name, sep, digest = remote.partition("@")
    if sep:
        short = f"{name.rsplit('/', 1)[-1]}_{digest.replace(':', '-')[:19]}"
    else:
        short = name.rsplit("/", 1)[-1].replace(":", "_")
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", short)[:80]
    return cache_dir / f"{slug}-{hashlib.sha256(normalized.encode()).hexdigest()[:16]}.sif"


def _docker_normalized(reference: str) -> str:
    rest = reference.removeprefix("docker://")
    if "://" in rest:
        raise ImageError(f"image {reference!r} is not a Docker reference")
    domain, path, suffix = _parse_remote("docker", rest, f"image {reference!r}")
    return f"docker://{domain}/{path}{suffix}"


def _parse_remote(scheme: str, rest: str, label: str) -> tuple[str, str, str]:
    """(registry, repository path, ':tag' or '@digest'), with Docker's defaults applied.

    As in Docker, the first component is a registry only if it looks like a host (a dot, a port or
    `localhost`); a digest pins the content, so a tag given with it is dropped."""
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, rest = first, remainder
        if not _REGISTRY.match(domain):
            raise ImageError(f"{label}: {domain!r} is not a valid registry host[:port]")
    elif scheme == "docker":
        domain = DOCKER_HUB
    else:
        raise ImageError(f"{label}: {scheme}:// references must name their registry (host/path:tag)")
    match = _REMOTE.match(rest)
    if not match:
        hint = " (repository names must be lowercase)" if _REMOTE.match(rest.lower()) else ""
        raise ImageError(f"{label}: not a valid image reference{hint}; expected "
                         "[registry/]path[:tag][@sha256:<64 hex>]")
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    path = match["path"]
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if len(domain) + 1 + len(path) > _MAX_NAME:
        raise ImageError(f"{label}: the repository name is longer than {_MAX_NAME} characters")
    suffix = f"@{match['digest']}" if match["digest"] else f":{match['tag'] or 'latest'}"
    return domain, path, suffix


def _check_safe(value: str, label: str) -> None:
    """Refuse anything that could escape an argv, a path or a job script before looking further."""
    if not value:
        raise ImageError("empty image reference")
    bad = sorted({c for c in value if c not in _SAFE})
    if bad:
        raise ImageError(f"{label}: refused: characters {''.join(bad)!r} are not allowed in an image "
                         "reference (only letters, digits and . _ - / : @)")
    if ".." in value:
        raise ImageError(f"{label}: refused: '..' is not allowed in an image reference")


def _local_sif(path: str, image_dirs: Sequence[Path], label: str) -> Path:
    if not path.endswith(".sif"):
        raise ImageError(f"{label}: a local image must be a .sif file")
    real = resolve_inside(path, image_dirs)
    if real is None:
        raise ImageError(f"{label} is outside the allowed image directories "
                         f"({', '.join(map(str, image_dirs)) or 'none configured'}), symlinks resolved")
    if not os.path.isfile(real):
        raise ImageError(f"{label} does not exist")
    return Path(real)

