"""Checking a workflow at submission time, so that a broken one is a 400 with cwltool's own message
instead of a run that fails later. Loads and validates the document (schema, references, types)
and, given the run's parameters, checks them against its inputs (missing or mistyped inputs)."""

from __future__ import annotations

import copy
import os
import threading
from typing import Any

from cwltool.builder import INPUT_OBJ_VOCAB
from cwltool.context import LoadingContext
from cwltool.errors import WorkflowException
from cwltool.load_tool import load_tool
from cwltool.main import jobloaderctx
from cwltool.process import fill_in_defaults
from cwltool.stdfsaccess import StdFsAccess
from cwltool.utils import normalizeFilesDirs
from schema_salad.exceptions import SchemaSaladException
from schema_salad.ref_resolver import Loader, file_uri
from schema_salad.sourceline import cmap
from schema_salad.validate import validate_ex

from hpc_bridge.cwl.tool import make_tool

# cwltool keeps some module-level state (caches, loggers); one validation at a time is plenty fast.
_LOCK = threading.Lock()


class InvalidWorkflow(ValueError):
    """The workflow (or its inputs) is not valid CWL; the message is cwltool's."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _uri(workflow: str) -> str:
    if "://" in workflow:
        return workflow
    if not os.path.isabs(workflow):
        raise InvalidWorkflow(f"workflow {workflow!r}: must be an absolute path or a URL")
    return file_uri(workflow)


def validate_workflow(workflow: str, *, params: dict[str, Any] | None = None) -> None:
    """Raise InvalidWorkflow unless `workflow` (absolute path, file:// or https URL) loads as valid
    CWL and, when given, `params` (the job object) fits its inputs."""
    uri = _uri(workflow)
    with _LOCK:
        try:
            loading = LoadingContext({"relax_path_checks": True, "disable_js_validation": True})
            loading.construct_tool_object = make_tool
            tool = load_tool(uri, loading)
            if params is None:
                return
            base = uri.rsplit("/", 1)[0] + "/"
            job, _ = Loader(jobloaderctx.copy()).resolve_all(cmap(copy.deepcopy(params)), base, checklinks=False)
            fill_in_defaults(tool.tool["inputs"], job, StdFsAccess(""))
            normalizeFilesDirs(job)
            schema = tool.names.get_name("input_record_schema", None)
            if schema is None:
                raise WorkflowException("the workflow has no input record schema")
            validate_ex(schema, job, strict=False, raise_ex=True, vocab=INPUT_OBJ_VOCAB)
        except InvalidWorkflow:
            raise
        except (SchemaSaladException, WorkflowException) as exc:
            raise InvalidWorkflow(str(exc).strip()) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable or malformed documents
            raise InvalidWorkflow(f"{type(exc).__name__}: {exc}") from None
