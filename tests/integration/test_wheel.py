"""hpc-bridge installed as a package: the wheel built from this tree (the lock's hatchling), installed
with the lock's packages into a new venv outside the checkout, serves a TES task and a WES run on the
dev cluster from a site config of its own. Templates, the job-side collector and the engine come from
the installed package, never from the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hpc_bridge.config import SiteConfig

from ..conftest import ROOT
from .conftest import ServerProcess, free_port, write_config
from .test_staging import post, run_existing
from .test_wes import ECHO, WES, WORKFLOW, wait_state
from .test_wes import post as post_run

PIP_TIMEOUT = 1200  # the lock's packages, downloaded again where no pip cache is kept (CI)


class InstalledServer(ServerProcess):
    def __init__(self, config_path: Path, port: int, venv: Path) -> None:
        super().__init__(config_path, port)
        self.venv = venv

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen([str(self.venv / "bin" / "hpc-bridge"), "serve", "--config", str(self.config_path),
                                     "--port", str(self.port)], stdout=out, stderr=out, cwd=self.config_path.parent)


def run(argv: list[str], **kwargs: object) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
    return str(done.stdout)


@pytest.fixture()
def install_dir() -> Iterator[Path]:
    """Where the venv goes: readable by the job user, who runs the WES engine from it (as a site's
    /opt/hpc-bridge would be), unlike pytest's private tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="hpc-bridge-wheel-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_wheel_serves_tes_and_wes_without_the_checkout(dev_config: SiteConfig, tmp_path: Path,
                                                           install_dir: Path) -> None:
    dist, venv, site = tmp_path / "dist", install_dir / "venv", tmp_path / "site"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        timeout=600)
    [wheel] = dist.glob("hpc_bridge-*.whl")
    run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", str(venv)], timeout=120)  # the lock's Python
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    run([*pip, "--require-hashes", "-r", str(ROOT / "requirements.lock")], timeout=PIP_TIMEOUT)
    run([*pip, str(wheel)], timeout=300)
    site.mkdir()
    where = run([str(venv / "bin" / "python"), "-c", "import hpc_bridge, hpc_bridge.config as c; "
                 "print(hpc_bridge.__file__); print(c.PACKAGE_DIR / 'slurm_templates' / 'task.sh.j2')"], cwd=site)
    module, template = where.split()
    assert module.startswith(str(venv)) and Path(template).is_file()  # the package's own templates

    server = InstalledServer(write_config(dev_config, site), free_port(), venv).start()
    try:
        task = post(server, {"executors": [{"image": "busybox", "command": ["echo", "from the wheel"]}]})
        assert task.status_code == 200, task.text
        done = run_existing(server, task.json()["id"])
        assert done["state"] == "COMPLETE" and done["logs"][0]["logs"][0]["stdout"] == "from the wheel\n"
        resp = post_run(server.url, {"wf.cwl": WORKFLOW, "tools/echo.cwl": ECHO, "text.txt": "wheel\n",
                                     "extra.txt": "x\n"}, workflow_url="wf.cwl",
                        workflow_params={"text": {"class": "File", "location": "text.txt"},
                                         "extra": {"class": "File", "location": "extra.txt"}})
        assert resp.status_code == 200, resp.text
        run_id = resp.json()["run_id"]
        state = wait_state(server.url, run_id, {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"})
        assert state == "COMPLETE", requests.get(f"{server.url}{WES}/runs/{run_id}/stderr", timeout=10).text[-3000:]
        log = requests.get(f"{server.url}{WES}/runs/{run_id}", timeout=10).json()
        served = requests.get(f"{server.url}{WES}/runs/{run_id}/outputs",
                              params={"location": log["outputs"]["result"]["location"]}, timeout=10)
        assert served.content == b"WHEEL\nx\n", json.dumps(log)[:2000]
    finally:
        server.stop()
