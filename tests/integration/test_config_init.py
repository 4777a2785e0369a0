"""`hpc-bridge config init` on the dev cluster: the partitions come from the real scontrol."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from hpc_bridge.slurm.client import CliSlurmClient


def test_config_init_reads_this_clusters_partitions(slurm: CliSlurmClient, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "hpc-bridge"
    done = subprocess.run([str(exe), "config", "init"], capture_output=True, text=True, timeout=60, check=True)
    data = yaml.safe_load(done.stdout)
    assert data["slurm"]["partitions"] == ["debug", "long"] and data["slurm"]["default_partition"] == "debug"
    (tmp_path / "site.yaml").write_text(done.stdout)
    assert subprocess.run([str(exe), "config", "check", "--config", str(tmp_path / "site.yaml")],
                          capture_output=True, timeout=60).returncode == 0
