"""WES 1.1 API models (pydantic): the run request as this service accepts it, and the responses.

Responses carry only spec fields and leave out None values, like the TES models.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hpc_bridge.tes.models import ApiModel, GA4GHServiceInfo, ServiceType, State

WES_VERSION = "1.1.0"
CWL_VERSIONS = ("v1.0", "v1.1", "v1.2")
ENGINE = "cwltool"


class RunRequest(ApiModel):
    """What a run was asked to do, normalized (`CWL`, `v1.2`, the engine and its version filled in).
    `workflow_url` is as the client gave it; the service keeps the resolved document separately."""

    workflow_params: dict[str, Any] = Field(default_factory=dict)
    workflow_type: str
    workflow_type_version: str
    tags: dict[str, str] = Field(default_factory=dict)
    workflow_engine_parameters: dict[str, str] = Field(default_factory=dict)
    workflow_engine: str | None = None
    workflow_engine_version: str | None = None
    workflow_url: str


class RunId(ApiModel):
    run_id: str


class RunStatus(ApiModel):
    run_id: str
    state: State


class RunSummary(RunStatus):
    start_time: str | None = None
    end_time: str | None = None
    tags: dict[str, str]


class RunListResponse(ApiModel):
    runs: list[RunSummary]
    next_page_token: str | None = None


class Log(ApiModel):
    name: str | None = None
    cmd: list[str] | None = None
    start_time: str | None = None
    end_time: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int | None = None
    system_logs: list[str] | None = None


class TaskLog(Log):
    id: str
    name: str
    tes_uri: str | None = None


class TaskListResponse(ApiModel):
    task_logs: list[TaskLog]
    next_page_token: str | None = None


class RunLog(ApiModel):
    run_id: str
    request: RunRequest
    state: State
    run_log: Log
    task_logs_url: str
    outputs: dict[str, Any] = Field(default_factory=dict)


class WorkflowTypeVersion(ApiModel):
    workflow_type_version: list[str]


class WorkflowEngineVersion(ApiModel):
    workflow_engine_version: list[str]


class DefaultWorkflowEngineParameter(ApiModel):
    name: str
    type: str
    default_value: str


class ServiceInfo(GA4GHServiceInfo):
    type: ServiceType = ServiceType(artifact="wes", version=WES_VERSION)
    workflow_type_versions: dict[str, WorkflowTypeVersion]
    supported_wes_versions: list[str] = [WES_VERSION]
    supported_filesystem_protocols: list[str]
    workflow_engine_versions: dict[str, WorkflowEngineVersion]
    default_workflow_engine_parameters: list[DefaultWorkflowEngineParameter]
    system_state_counts: dict[str, int]
    auth_instructions_url: str
    tags: dict[str, str] = Field(default_factory=dict)
