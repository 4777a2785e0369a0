"""validate_workflow: what the WES layer calls at submission (a broken workflow must be a 400)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_bridge.cwl.validate import InvalidWorkflow, validate_workflow

TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
inputs:
  msg: {type: string, inputBinding: {position: 1}}
  n: {type: int, default: 1}
outputs: []
"""


@pytest.fixture()
def tool(tmp_path: Path) -> str:
    path = tmp_path / "echo.cwl"
    path.write_text(TOOL)
    return str(path)


def test_valid_workflow_and_inputs(tool: str) -> None:
    validate_workflow(tool)
    validate_workflow(tool, params={"msg": "hi"})
    validate_workflow(Path(tool).as_uri(), params={"msg": "hi", "n": 3})


@pytest.mark.parametrize(("params", "expected"), [
    ({}, "Missing required input parameter 'msg'"),
    ({"msg": 3}, "the value is not string"),
    ({"msg": "x", "n": "three"}, "'n' field is not valid"),
])
def test_bad_inputs_get_cwltools_message(tool: str, params: dict, expected: str) -> None:
    with pytest.raises(InvalidWorkflow, match=expected):
        validate_workflow(tool, params=params)


def test_bad_documents(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cwl"
    bad.write_text(TOOL.replace("type: string", "type: strin"))
    with pytest.raises(InvalidWorkflow, match="unknown identifier 'strin'"):
        validate_workflow(str(bad))
    bad.write_text("cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\nsteps: {s: {run: missing.cwl, in: [], out: []}}\n")
    with pytest.raises(InvalidWorkflow, match="missing.cwl"):
        validate_workflow(str(bad))
    bad.write_text("not: [valid")
    with pytest.raises(InvalidWorkflow):
        validate_workflow(str(bad))
    with pytest.raises(InvalidWorkflow, match="absolute"):
        validate_workflow("relative.cwl")
    with pytest.raises(InvalidWorkflow):
        validate_workflow(str(tmp_path / "nonexistent.cwl"))
