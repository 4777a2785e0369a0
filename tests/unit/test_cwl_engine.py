"""The engine's start: what it takes from the supervisor (stdin, never argv or the environment)
and the limits it gives cwltool."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hpc_bridge.cwl import engine


def test_launch_data_comes_on_stdin_and_must_be_complete() -> None:
    launch = engine.read_launch(io.StringIO('{"tes_url": "http://127.0.0.1:8000", "token": "hpcb-run.x"}'))
    assert launch["tes_url"] == "http://127.0.0.1:8000"
    for text, message in [("", "'tes_url'"), ("not json", "not the supervisor's JSON"),
                          ('{"tes_url": "http://x"}', "'token'"), ('{"tes_url": "", "token": "t"}', "'tes_url'")]:
        with pytest.raises(engine.EngineError, match=message):
            engine.read_launch(io.StringIO(text))


def test_javascript_expressions_have_a_time_limit(tmp_path: Path) -> None:
    args = engine._cwltool_args("file:///wf.cwl", tmp_path / "job.json", tmp_path, tmp_path / ".cwl", {})
    assert args.eval_timeout == engine.JS_TIMEOUT == 60


def test_a_request_without_its_fetch_policy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "request.json").write_text('{"run_id": "r", "owner": "local", "workflow": "file:///wf.cwl"}')
    with pytest.raises(engine.EngineError, match="fetch_policy"):
        engine.read_request(tmp_path)
