"""`hpc-bridge config init`: partitions read from scontrol, and a config that `config check` accepts."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hpc_bridge import starter
from hpc_bridge.cli import main
from hpc_bridge.config import load_config

SCONTROL = """PartitionName=short AllowGroups=ALL Default=NO State=UP TotalCPUs=64
PartitionName=standard AllowGroups=ALL Default=YES State=UP TotalCPUs=4096
PartitionName=gpu Default=NO State=UP
"""


def test_partitions_and_the_default_come_from_scontrol() -> None:
    assert starter.parse_partitions(SCONTROL) == (["short", "standard", "gpu"], "standard")
    assert starter.parse_partitions("") == ([], None)


def test_the_starting_config_loads(tmp_path: Path) -> None:
    machine = starter.Machine(["short", "standard"], "standard", "/opt/apptainer/bin/apptainer", ["a note"])
    path = tmp_path / "site.yaml"
    path.write_text(starter.render(machine))
    config = load_config(path)
    assert config.slurm.partitions == ["short", "standard"] and config.slurm.default_partition == "standard"
    assert str(config.apptainer.binary) == "/opt/apptainer/bin/apptainer"
    assert "# TO DO: a note" in path.read_text()


def test_config_init_writes_a_new_file_only(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(starter, "probe", lambda: starter.Machine(["p"], "p", None, ["apptainer is not on PATH"]))
    out = tmp_path / "site.yaml"
    first = CliRunner().invoke(main, ["config", "init", "-o", str(out)])
    assert first.exit_code == 0 and "apptainer is not on PATH" in first.output
    assert CliRunner().invoke(main, ["config", "check", "--config", str(out)]).exit_code == 0
    again = CliRunner().invoke(main, ["config", "init", "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
