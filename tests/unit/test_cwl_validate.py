"""validate_workflow: what the WES layer calls at submission (a broken workflow must be a 400)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hpc_bridge.cwl.fetch import FetchPolicy
from hpc_bridge.cwl.validate import InvalidWorkflow, check_run, validate_workflow

TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
inputs:
  msg: {type: string, inputBinding: {position: 1}}
  n: {type: int, default: 1}
outputs: []
"""


@pytest.fixture()
def policy(tmp_path: Path) -> FetchPolicy:
    return FetchPolicy(roots=(str(tmp_path),))


@pytest.fixture()
def tool(tmp_path: Path) -> str:
    path = tmp_path / "echo.cwl"
    path.write_text(TOOL)
    return str(path)


def test_valid_workflow_and_inputs(tool: str, policy: FetchPolicy) -> None:
    validate_workflow(tool, policy=policy)
    validate_workflow(tool, params={"msg": "hi"}, policy=policy)
    validate_workflow(Path(tool).as_uri(), params={"msg": "hi", "n": 3}, policy=policy)
    check_run(tool, {"msg": "hi"}, policy)  # what the engine calls


@pytest.mark.parametrize(("params", "expected"), [
    ({}, "Missing required input parameter 'msg'"),
    ({"msg": 3}, "the value is not string"),
    ({"msg": "x", "n": "three"}, "'n' field is not valid"),
])
def test_bad_inputs_get_cwltools_message(tool: str, policy: FetchPolicy, params: dict, expected: str) -> None:
    with pytest.raises(InvalidWorkflow, match=expected):
        validate_workflow(tool, params=params, policy=policy)


def test_bad_documents(tmp_path: Path, policy: FetchPolicy) -> None:
    bad = tmp_path / "bad.cwl"
    bad.write_text(TOOL.replace("type: string", "type: strin"))
    with pytest.raises(InvalidWorkflow, match="unknown identifier 'strin'"):
        validate_workflow(str(bad), policy=policy)
    bad.write_text("cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\n"
                   "steps: {s: {run: missing.cwl, in: [], out: []}}\n")
    with pytest.raises(InvalidWorkflow, match="missing.cwl"):
        validate_workflow(str(bad), policy=policy)
    bad.write_text("not: [valid")
    with pytest.raises(InvalidWorkflow):
        validate_workflow(str(bad), policy=policy)
    with pytest.raises(InvalidWorkflow, match="absolute"):
        validate_workflow("relative.cwl", policy=policy)
    with pytest.raises(InvalidWorkflow):
        validate_workflow(str(tmp_path / "nonexistent.cwl"), policy=policy)


@pytest.mark.parametrize("columns", ["20", "400"])
def test_messages_do_not_depend_on_path_length_or_terminal_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 columns: str) -> None:
    """cwltool wraps messages by width (the checkout's path is in them): whitespace is collapsed."""
    monkeypatch.setenv("COLUMNS", columns)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    bad = deep / "bad.cwl"
    bad.write_text(TOOL.replace("type: string", "type: strin"))
    with pytest.raises(InvalidWorkflow) as info:
        validate_workflow(str(bad), policy=FetchPolicy(roots=(str(tmp_path),)))
    assert "references unknown identifier 'strin'" in info.value.message
    assert "\n" not in info.value.message and "  " not in info.value.message


def test_concurrent_validations(tmp_path: Path, tool: str, policy: FetchPolicy) -> None:
    """No global lock any more: validations in threads must not disturb each other."""
    bad = tmp_path / "bad.cwl"
    bad.write_text(TOOL.replace("type: string", "type: strin"))
    errors: list[str] = []

    def good() -> None:
        for _ in range(3):
            try:
                validate_workflow(tool, params={"msg": "hi"}, policy=policy)
            except InvalidWorkflow as exc:
                errors.append(f"good: {exc}")

    def broken() -> None:
        for _ in range(3):
            try:
                validate_workflow(str(bad), policy=policy)
                errors.append("broken: accepted")
            except InvalidWorkflow as exc:
                if "unknown identifier 'strin'" not in exc.message:
                    errors.append(f"broken: {exc}")

    threads = [threading.Thread(target=f) for f in (good, broken, good, broken)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
