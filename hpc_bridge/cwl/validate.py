"""Checking a workflow at submission time, so that a broken one is a 400 with cwltool's own message
instead of a run that fails later. Loads and validates the document (schema, references, types)
under the run's FetchPolicy (everything it names is read through hpc_bridge.cwl.fetch), checks the
File/Directory literals it carries against the same policy and, given the run's parameters, checks
them against its inputs (missing or mistyped inputs). The engine calls the same function first
(`check_run`), so both processes refuse the same documents.

Validations run concurrently: there is no global lock, so a URL that never answers holds only its
own request (and at most the policy's timeout)."""

from __future__ import annotations

import copy
import os
import threading
from typing import Any, cast

from cwltool.builder import INPUT_OBJ_VOCAB
from cwltool.context import LoadingContext
from cwltool.errors import WorkflowException
from cwltool.load_tool import jobloaderctx, load_tool
from cwltool.process import fill_in_defaults
from cwltool.stdfsaccess import StdFsAccess
from cwltool.utils import normalizeFilesDirs
from ruamel.yaml.comments import CommentedMap
from schema_salad.exceptions import SchemaSaladException
from schema_salad.ref_resolver import Loader, file_uri
from schema_salad.sourceline import cmap
from schema_salad.validate import validate_ex

from hpc_bridge.cwl.fetch import (
    FetchPolicy,
    FetchRefused,
    check_documents,
    check_literals,
    fetcher_constructor,
)
from hpc_bridge.cwl.tool import make_tool

__all__ = ["InvalidWorkflow", "check_run", "validate_workflow"]

# cwltool fills module-level caches (the CWL schemas, SCHEMA_FILE...) on first use, unguarded: that
# is done once under this lock, from in-memory documents, so nothing fetched is ever waited on here.
_WARM_LOCK = threading.Lock()
_warm = False
_VERSIONS = ("v1.0", "v1.1", "v1.2")


class InvalidWorkflow(ValueError):
    """The workflow (or its inputs) is not valid CWL, or names what the policy refuses; the message
    is cwltool's (or the refusal), with whitespace runs collapsed: cwltool wraps its messages to
    the terminal's width, which must not change what a client sees."""

    def __init__(self, message: str) -> None:
        message = " ".join(message.split())
        super().__init__(message)
        self.message = message


def _uri(workflow: str) -> str:
    if "://" in workflow:
        return workflow
    if not os.path.isabs(workflow):
        raise InvalidWorkflow(f"workflow {workflow!r}: must be an absolute path or a URL")
    return file_uri(workflow)


def _loading(policy: FetchPolicy, refusals: list[str]) -> LoadingContext:
    loading = LoadingContext({"relax_path_checks": True, "disable_js_validation": True})
    loading.construct_tool_object = make_tool
    loading.fetcher_constructor = fetcher_constructor(policy, refusals)
    loading.doc_cache = False  # no on-disk HTTP cache shared between runs
    # `$schemas` are checked against the policy (check_documents), not loaded: schema-salad would
    # merge them into cwltool's process-wide schema graph, shared by concurrent validations.
    loading.skip_schemas = True
    return loading


def _warm_up() -> None:
    global _warm
    with _WARM_LOCK:
        if _warm:
            return
        for version in _VERSIONS:
            doc = {"id": f"_:warm-up-{version}", "cwlVersion": version, "class": "CommandLineTool",
                   "baseCommand": "true", "inputs": [], "outputs": []}
            load_tool(cast(CommentedMap, cmap(doc)), _loading(FetchPolicy(roots=()), []))
        _warm = True


def _imports(value: Any) -> bool:
    """Whether a job object pulls in other documents (`$import`, `$include`)."""
    if isinstance(value, dict):
        return "$import" in value or "$include" in value or any(_imports(v) for v in value.values())
    return isinstance(value, list) and any(_imports(v) for v in value)


def _reason(message: str, refusals: list[str]) -> str:
    """cwltool's message (it says where in the document), unless it hides a refusal behind
    another error: then the refusal, which is the reason."""
    flat = " ".join(message.split())
    if refusals and not any(" ".join(r.split()) in flat for r in refusals):
        return refusals[0]
    return flat


def validate_workflow(workflow: str, *, params: dict[str, Any] | None = None, policy: FetchPolicy) -> None:
    """Raise InvalidWorkflow unless `workflow` (absolute path, file:// or https URL) loads as valid
    CWL under `policy`, the File/Directory literals of its documents are allowed by it and, when
    given, `params` (the job object) fits its inputs."""
    uri = _uri(workflow)
    refusals: list[str] = []
    try:
        _warm_up()
        tool = load_tool(uri, _loading(policy, refusals))
        check_documents(tool, policy)  # first: its messages name the field
        if refusals:  # those schema-salad only logged as warnings
            raise FetchRefused(refusals[0])
        if params is None:
            return
        base = uri.rsplit("/", 1)[0] + "/"
        loader = Loader(jobloaderctx.copy(), fetcher_constructor=fetcher_constructor(policy, refusals),
                        doc_cache=False)
        job, _ = loader.resolve_all(cmap(copy.deepcopy(params)), base, checklinks=False)
        if not isinstance(job, dict):  # a top-level `$import` of another kind of document
            raise InvalidWorkflow("workflow_params: must be an object (the job), not what its $import yields")
        if _imports(params):  # the literals it imported were not among those the WES layer checked
            check_literals(job, "workflow_params", base, policy)
        fill_in_defaults(tool.tool["inputs"], job, StdFsAccess(""))
        normalizeFilesDirs(job)
        schema = tool.names.get_name("input_record_schema", None)
        if schema is None:
            raise WorkflowException("the workflow has no input record schema")
        validate_ex(schema, job, strict=False, raise_ex=True, vocab=INPUT_OBJ_VOCAB)
    except InvalidWorkflow:
        raise
    except FetchRefused as exc:  # ours, naming the field
        raise InvalidWorkflow(str(exc)) from None
    except (SchemaSaladException, WorkflowException) as exc:
        raise InvalidWorkflow(_reason(str(exc), refusals)) from None
    except RecursionError:
        raise InvalidWorkflow("the workflow or its inputs are nested too deeply to be loaded") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # Unreadable or malformed documents: cwltool takes some shapes for granted, such as
        # mappings in `inputs`, where a document (or what an `$import` yields) may hold a string.
        raise InvalidWorkflow(f"{type(exc).__name__}: {exc}") from None


def check_run(workflow: str, params: dict[str, Any], policy: FetchPolicy) -> None:
    """What the engine calls before loading the workflow itself, with the policy from its
    request.json: the documents are read again there, so they are held to the same checks."""
    validate_workflow(workflow, params=params, policy=policy)
