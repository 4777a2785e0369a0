"""The images the CWL v1.2 conformance suite names, run for real: `dev/images` builds stand-ins from
Debian packages and pushes them to the dev registry (127.0.0.1:5000), and site_config/dev.yaml mirrors
docker.io there. Each suite reference must resolve to the local registry, be pulled through the image
cache and run, as the job user, what the suite's tools run in it (with the executor argv of
hpc_bridge.containers.apptainer and the work directory bound, as a task does)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpc_bridge.config import ApptainerSettings, SiteConfig
from hpc_bridge.containers.apptainer import Bind, exec_argv
from hpc_bridge.containers.cache import ImageCache
from hpc_bridge.containers.images import RegistryImage, resolve_image

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
OUTDIR = "/outdir"  # where the task's work directory is bound, and the working directory


@dataclass(frozen=True)
class Check:
    """A command run in the image (in OUTDIR) and its stdout (a regular expression if `regex`);
    `run` runs the image's entrypoint (`apptainer run`) instead of the command itself."""

    command: tuple[str, ...]
    stdout: str
    regex: bool = False
    run: bool = False


# The suite's references (all `docker.io/NAME:TAG` in tests/*.cwl) and, per image, what its tests run.
SUITE_IMAGES: dict[str, list[Check]] = {
    # cat, rev, sort, touch, find, head, echo, true, test, sh -c (ShellCommandRequirement), 34 tests
    "docker.io/debian:stable-slim": [
        Check(("sh", "-c", ("printf 'cba\\nfed\\n' > in.txt && rev in.txt | sort -r | head -n1 && "
                            "touch t && find . -name t && test -f t && cat < in.txt | wc -l && true")),
              "def\n./t\n2\n"),
        Check(("cat", "/etc/debian_version"), r"12\.\d+\n", regex=True),
    ],
    # python (not only python3) with the standard library (json, os, sys, urllib.request), 18 tests
    "docker.io/python:3-slim": [
        Check(("python", "-c", ("import json, os, sys, urllib.request\n"
                                "json.dump({'args': sys.argv[1:]}, open('cwl.output.json', 'w'))\n"
                                "print(sys.version_info[0])"), "x", "y"), "3\n"),
        Check(("cat", "cwl.output.json"), '{"args": ["x", "y"]}'),
        Check(("python3", "-c", "print(1)"), "1\n"),
    ],
    # bash -c with mkdir/cp (colon_in_paths, colon_in_output_path) and Docker's entrypoint: the image
    # runs `bash "$@"` when the first argument is an option (docker_entrypoint: `-c "echo 'moo' > cow"`)
    "docker.io/bash:4.4": [
        Check(("bash", "-c", "echo in > in.txt; mkdir re:sult; cp in.txt re:sult/; echo Status: done!"),
              "Status: done!\n"),
        Check(("-c", "echo 'moo' > cow; echo \"$0\""), "bash\n", run=True),
        Check(("cat", "cow", "re:sult/in.txt"), "moo\nin\n"),
        # Debian's bash 5.2, not 4.4: no suite test looks at the version
        Check(("bash", "-c", "echo ${BASH_VERSINFO[0]}"), r"\d+\n", regex=True),
    ],
    # sh, echo, ln -s, mkdir, touch (legal_symlink, illegal_symlink, writable-dir-docker), 3 tests
    "docker.io/alpine:latest": [
        Check(("sh", "-c", ("echo \"Who's gonna drive you home\" > /tmp/original.txt && mkdir adir && "
                            "touch adir/blurg && ln -s /tmp/original.txt symlink.txt && cat symlink.txt")),
              "Who's gonna drive you home\n"),
    ],
}


def repository(reference: str) -> tuple[str, str]:
    """docker.io/NAME:TAG -> (library/NAME, TAG), the name dev/images pushes it under."""
    name, tag = reference.removeprefix("docker.io/").rsplit(":", 1)
    return f"library/{name}", tag


def in_registry(reference: str) -> bool:
    repo, tag = repository(reference)
    accept = ("application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.docker.distribution.manifest.v2+json")
    request = urllib.request.Request(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise
    except OSError as exc:
        pytest.fail(f"the dev registry does not answer on {REGISTRY} ({exc}): start it with `dev/cluster up`")


@pytest.fixture(scope="module")
def settings(dev_config: SiteConfig) -> Iterator[ApptainerSettings]:
    """The dev site's Apptainer settings with a fresh cache (so every image really is pulled), on the
    work root: the job user must reach the SIFs, which it cannot under pytest's tmp_path."""
    if not os.access(dev_config.apptainer.binary, os.X_OK):
        pytest.fail(f"apptainer not found at {dev_config.apptainer.binary}: run `dev/cluster install`")
    parent = dev_config.storage.work_root / f"it-cwl-images-{uuid.uuid4().hex[:12]}"
    parent.mkdir(mode=0o755, parents=True)
    parent.chmod(0o755)
    yield dev_config.apptainer.model_copy(update={"cache_dir": parent / "cache"})
    shutil.rmtree(parent)


@pytest.mark.parametrize("reference", SUITE_IMAGES)
def test_suite_references_resolve_to_the_local_registry(reference: str, dev_config: SiteConfig) -> None:
    """Every spelling of the image ends at the dev registry, under its docker.io name as the cache key."""
    repo, tag = repository(reference)
    name = repo.removeprefix("library/")
    spellings = [reference, f"{name}:{tag}", f"docker.io/{repo}:{tag}", f"docker://{reference}",
                 f"index.docker.io/{repo}:{tag}"]
    images = [resolve_image(spelling, dev_config.apptainer) for spelling in spellings]
    for image in images:
        assert isinstance(image, RegistryImage)
        assert image.normalized == f"docker://docker.io/{repo}:{tag}"
        assert image.pull_uri == f"docker://{REGISTRY}/{repo}:{tag}"
        assert image.insecure and image.registry == REGISTRY
        assert image.sif == images[0].sif


@pytest.mark.parametrize("reference", SUITE_IMAGES)
def test_suite_image_is_pulled_and_runs_what_the_suite_needs(reference: str, settings: ApptainerSettings,
                                                              dev_config: SiteConfig, job_dir: Path) -> None:
    assert in_registry(reference), (f"{REGISTRY} has no {':'.join(repository(reference))}: "
                                    "build the CWL suite images with `dev/images`")
    image = resolve_image(reference, settings)
    assert isinstance(image, RegistryImage)
    cache = ImageCache(settings)
    assert cache.ensure(image) is True  # a fresh cache: pulled from the registry now
    assert image.sif.stat().st_mode & 0o777 == 0o644

    user = dev_config.slurm.submit_as or "hpcb"
    binds = [Bind(str(job_dir), OUTDIR)]
    for check in SUITE_IMAGES[reference]:
        if check.run:
            # --no-eval: the arguments reach the entrypoint as Docker passes them (not through `eval`)
            argv = [str(settings.binary), "--quiet", "run", "--no-eval", "--containall", "--cleanenv",
                    "--bind", binds[0].spec(), "--pwd", OUTDIR, str(image.sif), *check.command]
        else:
            argv = exec_argv(str(settings.binary), str(image.sif), check.command, binds=binds, workdir=OUTDIR)
        done = subprocess.run(["runuser", "-u", user, "--", *argv], check=False, capture_output=True,
                              text=True, timeout=120, cwd=job_dir)
        assert done.returncode == 0, f"{check.command} in {reference}: {done.stderr}"
        if check.regex:
            assert re.fullmatch(check.stdout, done.stdout), f"{check.command} in {reference}: {done.stdout!r}"
        else:
            assert done.stdout == check.stdout, f"{check.command} in {reference}"
