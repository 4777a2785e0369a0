"""The image cache against a real plain-http OCI registry (`dev/cluster up` starts it on 127.0.0.1:5000
with the test image hpc-bridge/busybox:1.0) and the real Apptainer."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpc_bridge.config import ApptainerSettings, SiteConfig
from hpc_bridge.containers.cache import ImageCache, PullError
from hpc_bridge.containers.images import RegistryImage, resolve_image

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
IMAGE = f"{REGISTRY}/hpc-bridge/busybox:1.0"

# One process sharing the cache: prints whether its ensure() pulled.
ENSURE_SCRIPT = """
import sys
from hpc_bridge.config import ApptainerSettings
from hpc_bridge.containers.cache import ImageCache
from hpc_bridge.containers.images import resolve_image
settings = ApptainerSettings.model_validate_json(sys.argv[1])
print(ImageCache(settings).ensure(resolve_image(sys.argv[2], settings)))
"""


@pytest.fixture(scope="module")
def registry() -> str:
    manifest = f"http://{REGISTRY}/v2/hpc-bridge/busybox/manifests/1.0"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    request = urllib.request.Request(manifest, headers=accept)
    try:
        with urllib.request.urlopen(request, timeout=5):
            return REGISTRY
    except OSError as exc:
        pytest.fail(f"the dev registry does not serve {IMAGE} ({exc}): start it with `dev/cluster up`")


@pytest.fixture()
def settings(dev_config: SiteConfig, registry: str) -> Iterator[ApptainerSettings]:
    """A fresh cache (not yet created) under a directory the job user can traverse, unlike tmp_path."""
    if not os.access(dev_config.apptainer.binary, os.X_OK):
        pytest.fail(f"apptainer not found at {dev_config.apptainer.binary}: run `dev/cluster install`")
    parent = Path(tempfile.mkdtemp(prefix="hpcb-image-cache-", dir="/var/tmp"))
    parent.chmod(0o755)
    yield ApptainerSettings(binary=dev_config.apptainer.binary, cache_dir=parent / "cache",
                            insecure_registries=[registry], pull_as=dev_config.apptainer.pull_as)
    shutil.rmtree(parent)


def sifs(settings: ApptainerSettings) -> list[Path]:
    assert settings.cache_dir is not None
    return sorted(settings.cache_dir.glob("*.sif"))


def leftovers(settings: ApptainerSettings) -> list[Path]:
    assert settings.cache_dir is not None
    return sorted(settings.cache_dir.glob(".pull-*"))


def registry_image(reference: str, settings: ApptainerSettings) -> RegistryImage:
    image = resolve_image(reference, settings)
    assert isinstance(image, RegistryImage)
    return image


def test_first_ensure_pulls_and_the_job_user_can_run_it(settings: ApptainerSettings,
                                                         dev_config: SiteConfig) -> None:
    cache = ImageCache(settings)
    image = registry_image(IMAGE, settings)
    assert image.insecure and not cache.is_cached(image)

    assert cache.ensure(image) is True
    assert cache.is_cached(image) and cache.ensure(image) is False
    assert cache.pulls == {image.normalized: 1}
    assert sifs(settings) == [image.sif] and not leftovers(settings)
    assert image.sif.stat().st_mode & 0o777 == 0o644
    assert settings.cache_dir is not None and settings.cache_dir.stat().st_mode & 0o777 == 0o755

    user = dev_config.slurm.submit_as or "hpcb"
    argv = ["runuser", "-u", user, "--", str(settings.binary), "exec", str(image.sif), "echo", "ok"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_threads_share_one_pull(settings: ApptainerSettings) -> None:
    cache = ImageCache(settings)
    image = registry_image(IMAGE, settings)
    start = threading.Barrier(10)
    results: list[bool] = []

    def worker() -> None:
        start.wait()
        results.append(cache.ensure(image))

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [False] * 9 + [True]
    assert cache.pulls == {image.normalized: 1}
    assert sifs(settings) == [image.sif] and not leftovers(settings)


def test_processes_share_one_pull(settings: ApptainerSettings) -> None:
    """Both processes are made to queue on the cache lock (held here), so they really overlap."""
    image = registry_image(IMAGE, settings)
    assert settings.cache_dir is not None
    settings.cache_dir.mkdir(mode=0o755)
    with open(f"{image.sif}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        argv = [sys.executable, "-c", ENSURE_SCRIPT, settings.model_dump_json(), IMAGE]
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        time.sleep(2)
        assert all(p.poll() is None for p in procs), "a process did not wait for the cache lock"
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sorted(out.strip() for out, _ in outputs) == ["False", "True"]
    assert sifs(settings) == [image.sif] and not leftovers(settings)


def test_mirror_serves_docker_hub_references(settings: ApptainerSettings) -> None:
    mirrored = settings.model_copy(update={"registry_mirrors": {"docker.io": REGISTRY}})
    image = registry_image("hpc-bridge/busybox:1.0", mirrored)
    assert image.normalized == "docker://docker.io/hpc-bridge/busybox:1.0"
    assert image.pull_uri == f"docker://{IMAGE}"
    assert ImageCache(mirrored).ensure(image) is True


def test_missing_image_names_reference_and_uri(settings: ApptainerSettings) -> None:
    cache = ImageCache(settings)
    reference = f"{REGISTRY}/hpc-bridge/busybox:no-such-tag"
    image = registry_image(reference, settings)
    with pytest.raises(PullError) as caught:
        cache.ensure(image)
    message = str(caught.value)
    assert repr(reference) in message and f"docker://{reference}" in message
    assert "apptainer pull exited with" in message
    assert not cache.is_cached(image) and not cache.pulls
    assert sifs(settings) == [] and not leftovers(settings)


def test_plain_http_registry_must_be_listed_as_insecure(settings: ApptainerSettings) -> None:
    strict = settings.model_copy(update={"insecure_registries": [], "trusted_registries": ["127.0.0.1:5000"]})
    image = registry_image(IMAGE, strict)
    assert image.insecure is False
    with pytest.raises(PullError) as caught:
        ImageCache(strict).ensure(image)
    message = str(caught.value)
    assert f"docker://{IMAGE}" in message
    assert "HTTP response to HTTPS client" in message
    assert sifs(strict) == []


def test_an_internal_registry_the_site_did_not_name_is_refused(settings: ApptainerSettings) -> None:
    """The login node reaches internal services: a task may not make the root daemon pull from one."""
    untrusted = settings.model_copy(update={"insecure_registries": [], "registry_mirrors": {}})
    image = registry_image("10.255.255.1:5000/x/y:1", untrusted)
    with pytest.raises(PullError, match="not a public address"):
        ImageCache(untrusted).ensure(image)
    assert sifs(untrusted) == []
