"""An output below a data-root directory the job user may enter but not list (mode 0711, like the
WES runs root): the collector, running in the job as that user, must only pass through it."""

from __future__ import annotations

import os
import pwd
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpc_bridge.config import SiteConfig

from .conftest import ServerProcess
from .test_staging import run, sh


@pytest.fixture()
def traverse_only(dev_config: SiteConfig) -> Iterator[Path]:
    """data root/it-xxx (root's, 0711)/user (the job user's): the job user can search it-xxx, not list it."""
    user = pwd.getpwnam(dev_config.slurm.submit_as or "root")
    top = dev_config.storage.data_roots[0] / f"it-{uuid.uuid4().hex[:12]}"
    top.mkdir(parents=True)
    try:
        os.chown(top, 0, 0)
        top.chmod(0o711)
        mine = top / "user"
        mine.mkdir()
        os.chown(mine, user.pw_uid, user.pw_gid)
        yield mine
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_outputs_below_a_directory_the_job_user_cannot_list_are_collected(
        server: ServerProcess, traverse_only: Path) -> None:
    (traverse_only / "in.txt").write_text("input below 0711\n")
    (traverse_only / "in.txt").chmod(0o644)
    task = run(server, {
        "inputs": [{"url": (traverse_only / "in.txt").as_uri(), "path": "/in/in.txt"}],
        "outputs": [{"path": "/out/result.txt", "url": (traverse_only / "deep" / "result.txt").as_uri()},
                    {"path": "/res", "url": (traverse_only / "res").as_uri(), "type": "DIRECTORY"}],
        "executors": [sh("mkdir -p /out /res/sub && cp /in/in.txt /out/result.txt"
                         " && echo tree > /res/sub/t.txt")],
    })
    assert task["state"] == "COMPLETE", task["logs"]
    assert (traverse_only / "deep" / "result.txt").read_text() == "input below 0711\n"
    assert (traverse_only / "res" / "sub" / "t.txt").read_text() == "tree\n"
    assert sorted(o["path"] for o in task["logs"][0]["outputs"]) == ["/out/result.txt", "/res/sub/t.txt"]
