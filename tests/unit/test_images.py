"""Image references -> local SIF or registry image: normalization, mapping and refusals (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_bridge.config import ApptainerSettings
from hpc_bridge.containers.images import (
    ImageError,
    LocalImage,
    RegistryImage,
    cache_path,
    resolve_image,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir()
    (directory / "tool.sif").write_bytes(b"sif")
    return directory


def settings(images: Path, tmp_path: Path, **overrides: object) -> ApptainerSettings:
    values: dict[str, object] = {"image_dirs": [images], "cache_dir": tmp_path / "cache", **overrides}
    return ApptainerSettings(**values)


@pytest.mark.parametrize(("reference", "normalized"), [
    ("ubuntu", "docker://docker.io/library/ubuntu:latest"),
    ("ubuntu:22.04", "docker://docker.io/library/ubuntu:22.04"),
    ("docker://ubuntu:22.04", "docker://docker.io/library/ubuntu:22.04"),
    ("docker.io/library/ubuntu:22.04", "docker://docker.io/library/ubuntu:22.04"),
    ("index.docker.io/ubuntu", "docker://docker.io/library/ubuntu:latest"),
    ("biocontainers/samtools:v1.9-4-deb_cv1", "docker://docker.io/biocontainers/samtools:v1.9-4-deb_cv1"),
    ("quay.io/biocontainers/samtools:1.17--h00cdaf9_0",
     "docker://quay.io/biocontainers/samtools:1.17--h00cdaf9_0"),
    ("ghcr.io/org/team/tool", "docker://ghcr.io/org/team/tool:latest"),
    ("127.0.0.1:5000/ns/img:tag", "docker://127.0.0.1:5000/ns/img:tag"),
    ("localhost/img", "docker://localhost/img:latest"),
    ("localhost:5000/img:1", "docker://localhost:5000/img:1"),
    ("my-registry.example.org:8443/a__b/c-d:e.f", "docker://my-registry.example.org:8443/a__b/c-d:e.f"),
    (f"img@{DIGEST}", f"docker://docker.io/library/img@{DIGEST}"),
    (f"img:1.0@{DIGEST}", f"docker://docker.io/library/img@{DIGEST}"),
    (f"quay.io/x/y@{DIGEST}", f"docker://quay.io/x/y@{DIGEST}"),
    ("oras://ghcr.io/org/img:1", "oras://ghcr.io/org/img:1"),
    ("oras://ghcr.io/org/img", "oras://ghcr.io/org/img:latest"),
    ("library://alpine", "library://alpine:latest"),
    ("library://sylabsed/examples/lolcow:1.0", "library://sylabsed/examples/lolcow:1.0"),
])
def test_normalization(reference: str, normalized: str, images: Path, tmp_path: Path) -> None:
    image = resolve_image(reference, settings(images, tmp_path))
    assert isinstance(image, RegistryImage)
    assert image.reference == reference
    assert image.normalized == normalized
    assert image.pull_uri == normalized
    assert image.insecure is False
    assert image.sif == cache_path(normalized, tmp_path / "cache")


@pytest.mark.parametrize(("reference", "pull_uri", "insecure"), [
    ("ubuntu:22.04", "docker://mirror.local:5000/library/ubuntu:22.04", True),
    ("quay.io/x/y:1", "docker://quay-mirror.example.org/quay/x/y:1", False),
    ("ghcr.io/x/y:1", "docker://ghcr.io/x/y:1", False),
    ("oras://quay.io/x/y:1", "oras://quay-mirror.example.org/quay/x/y:1", False),
    ("127.0.0.1:5000/x:1", "docker://127.0.0.1:5000/x:1", True),
    ("127.0.0.1:5001/x:1", "docker://127.0.0.1:5001/x:1", False),
])
def test_mirrors_and_insecure_registries(reference: str, pull_uri: str, insecure: bool, images: Path,
                                         tmp_path: Path) -> None:
    mirrors = {"docker.io": "mirror.local:5000", "quay.io": "quay-mirror.example.org/quay"}
    config = settings(images, tmp_path, registry_mirrors=mirrors,
                      insecure_registries=["mirror.local:5000", "127.0.0.1:5000"])
    image = resolve_image(reference, config)
    assert isinstance(image, RegistryImage)
    assert (image.pull_uri, image.insecure) == (pull_uri, insecure)
    # The mirror changes where an image comes from, never which cache file it is.
    assert image.sif == resolve_image(reference, settings(images, tmp_path)).sif


def test_bad_mirror_is_refused(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="registry_mirrors"):
        resolve_image("ubuntu", settings(images, tmp_path, registry_mirrors={"docker.io": "http://x"}))


def test_local_images(images: Path, tmp_path: Path) -> None:
    config = settings(images, tmp_path)
    assert resolve_image("tool", config) == LocalImage("tool", images / "tool.sif")
    assert resolve_image(str(images / "tool.sif"), config).sif == images / "tool.sif"
    # A bare name without a SIF is a Docker Hub image when there is a cache.
    assert isinstance(resolve_image("other", config), RegistryImage)


def test_bare_name_without_cache_lists_what_was_tried(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=rf"'other' not found \(tried {images}/other.sif\).*cache_dir"):
        resolve_image("other", settings(images, tmp_path, cache_dir=None))


def test_registry_images_need_a_cache(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="registry images need an image cache: set apptainer.cache_dir"):
        resolve_image("ubuntu:22.04", settings(images, tmp_path, cache_dir=None))


def test_image_map(images: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "site" / "pinned.sif"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"sif")
    config = settings(images, tmp_path, image_map={
        "ubuntu:22.04": str(elsewhere),                              # admin-written: any existing SIF
        "docker://docker.io/library/debian:12": "tool",              # matched on the normalized form
        "samtools": "quay.io/biocontainers/samtools:1.17--h00cdaf9_0",
        "loop": "loop2",                                             # one level only: never mapped again
        "loop2": "loop",
        "gone": str(tmp_path / "missing.sif"),
    })
    assert resolve_image("ubuntu:22.04", config) == LocalImage("ubuntu:22.04", elsewhere)
    assert resolve_image("debian:12", config) == LocalImage("debian:12", images / "tool.sif")
    assert resolve_image("docker://debian:12", config).sif == images / "tool.sif"
    samtools = resolve_image("samtools", config)
    assert isinstance(samtools, RegistryImage)
    assert samtools.reference == "samtools"
    assert samtools.normalized == "docker://quay.io/biocontainers/samtools:1.17--h00cdaf9_0"
    loop = resolve_image("loop", config)
    assert isinstance(loop, RegistryImage) and loop.normalized == "docker://docker.io/library/loop2:latest"
    with pytest.raises(ImageError, match="'gone' .*mapped.*does not exist"):
        resolve_image("gone", config)


@pytest.mark.parametrize(("reference", "why"), [
    ("", "empty"),
    ("ubuntu; rm -rf /", "characters"),
    ("ubuntu:22.04 ", "characters"),
    ("ubu'ntu", "characters"),
    ('ubu"ntu', "characters"),
    ("$(id)", "characters"),
    ("`id`", "characters"),
    ("ubuntu\n", "characters"),
    ("ubuntu\x00", "characters"),
    ("ubuntu|x", "characters"),
    ("quay.io/../etc/x:1", r"'\.\.'"),
    ("img:1..2", r"'\.\.'"),
    ("Ubuntu:22.04", "lowercase"),
    ("quay.io/Org/img", "lowercase"),
    ("img:-tag", "not a valid image reference"),
    ("img:" + "t" * 129, "not a valid image reference"),
    ("img@sha256:abc", "not a valid image reference"),
    (f"img@{DIGEST.upper().replace('SHA', 'sha')}", "not a valid image reference"),
    ("a//b", "not a valid image reference"),
    ("img/", "not a valid image reference"),
    ("-x.io/img", "registry host"),
    ("oras://org/img:1", "must name their registry"),
    ("http://example.org/img", "unsupported scheme"),
    ("shub://org/img", "unsupported scheme"),
    ("library://Org/x", "library"),
    ("relative/tool.sif", "absolute path"),
    ("tool.sif", "absolute path"),
    ("/etc/passwd", r"\.sif file"),
    ("quay.io/" + "a" * 250 + ":1", "longer than 255"),
])
def test_refusals(reference: str, why: str, images: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=why):
        resolve_image(reference, settings(images, tmp_path))


def test_local_paths_must_stay_inside_image_dirs(images: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.sif"
    outside.write_bytes(b"sif")
    (images / "link.sif").symlink_to(outside)
    (tmp_path / "images-evil").mkdir()  # a string prefix of the image dir, not inside it
    (tmp_path / "images-evil" / "x.sif").write_bytes(b"sif")
    config = settings(images, tmp_path)
    for path in (outside, images / "link.sif", tmp_path / "images-evil" / "x.sif"):
        with pytest.raises(ImageError, match="outside the allowed image directories"):
            resolve_image(str(path), config)
    with pytest.raises(ImageError, match="does not exist"):
        resolve_image(str(images / "absent.sif"), config)
    with pytest.raises(ImageError, match="none configured"):
        resolve_image(str(images / "tool.sif"), settings(images, tmp_path, image_dirs=[]))


def test_symlinked_bare_name_outside_is_not_used(images: Path, tmp_path: Path) -> None:
    """A `NAME.sif` symlink leaving the image dir is skipped, so the name is not a local image."""
    outside = tmp_path / "outside.sif"
    outside.write_bytes(b"sif")
    (images / "escape.sif").symlink_to(outside)
    with pytest.raises(ImageError, match="not found"):
        resolve_image("escape", settings(images, tmp_path, cache_dir=None))


def test_cache_path_is_deterministic_and_distinct(tmp_path: Path) -> None:
    first = cache_path("docker://docker.io/library/ubuntu:22.04", tmp_path)
    assert first == cache_path("docker://docker.io/library/ubuntu:22.04", tmp_path)
    assert first.parent == tmp_path
    assert first.name.startswith("ubuntu_22.04-") and first.suffix == ".sif"
    others = {cache_path(ref, tmp_path) for ref in (
        "docker://docker.io/library/ubuntu:22.04", "docker://quay.io/library/ubuntu:22.04",
        "oras://docker.io/library/ubuntu:22.04", "docker://docker.io/library/ubuntu:22.10",
        f"docker://docker.io/library/ubuntu@{DIGEST}")}
    assert len(others) == 5
    assert cache_path(f"docker://docker.io/library/ubuntu@{DIGEST}", tmp_path).name.startswith(
        "ubuntu_sha256-0123456789ab-")
