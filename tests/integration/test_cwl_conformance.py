"""The `required` tests of the CWL v1.2 conformance suite (../shared/cwl-v1.2), run by cwltest through
hpc-bridge-cwl-runner: WES -> engine -> TES -> Slurm -> Apptainer, on a server of its own
(dev/cwl-conformance, the script behind `make conformance`, which runs the whole suite)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT.parent / "shared" / "cwl-v1.2" / "conformance_tests.yaml"


@pytest.mark.skipif(not SUITE.exists(), reason=f"the CWL conformance suite is not at {SUITE} (it lives in ../shared)")
def test_every_required_cwl_conformance_test_passes_through_wes(tmp_path: Path) -> None:
    junit = tmp_path / "required.xml"
    proc = subprocess.run([sys.executable, str(ROOT / "dev" / "cwl-conformance"), "--tags", "required",
                           "-j", "3", "--junit", str(junit)],
                          capture_output=True, text=True, timeout=1800, check=False)
    cases = list(ET.parse(junit).iter("testcase"))
    failed = [c.get("file") for c in cases if c.find("failure") is not None or c.find("error") is not None
              or c.find("skipped") is not None]
    assert len(cases) == 84 and not failed and proc.returncode == 0, (failed, proc.stdout[-5000:])
