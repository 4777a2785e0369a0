from pathlib import Path

from click.testing import CliRunner

from hpc_bridge.cli import main

from ..conftest import ROOT


def test_serve_refuses_a_broken_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: nope}\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert "server.port" in result.output


def test_config_check_prints_the_resolved_config() -> None:
    result = CliRunner().invoke(main, ["config", "check", "--config", str(ROOT / "site_config/dev.yaml")])
    assert result.exit_code == 0, result.output
    assert str(ROOT / "var" / "hpc-bridge.sqlite") in result.output
