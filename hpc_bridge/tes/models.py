"""TES 1.1 API models (pydantic) and the task views.

Requests are parsed strictly: an unknown field is a 400 naming it, so a typo never silently drops a
setting. Responses carry only spec fields (py-tes rejects unknown keys) and leave out None values.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from hpc_bridge.config import SiteConfig, TaskCaps
from hpc_bridge.lifecycle import TERMINAL


class ApiModel(BaseModel):
    """Base of the GA4GH API models (TES and WES): spec field names, no unknown fields, None left out."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class State(StrEnum):
    """TES 1.1 task states; WES 1.1 run states are the same set."""

    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELED = "CANCELED"
    CANCELING = "CANCELING"
    PREEMPTED = "PREEMPTED"

    @property
    def terminal(self) -> bool:
        return self.value in TERMINAL


class View(StrEnum):
    MINIMAL = "MINIMAL"
    BASIC = "BASIC"
    FULL = "FULL"


class FileType(StrEnum):
    FILE = "FILE"
    DIRECTORY = "DIRECTORY"


NAME_MAX = 255  # bytes in one path component (Linux)


def _storable_path(path: str) -> str:
    """A path no file system can hold is refused now (400), not when the job fails to create it."""
    if "\0" in path:
        raise ValueError("NUL bytes are not allowed in paths")
    if any(len(part.encode()) > NAME_MAX for part in path.split("/")):
        raise ValueError(f"a path component is longer than {NAME_MAX} bytes")
    return path


AbsPath = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^/"),
                    AfterValidator(_storable_path)]


def _no_nul(text: str) -> str:
    if "\0" in text:  # SQLite's text functions stop at NUL: name_prefix and tag filters would miss it
        raise ValueError("NUL bytes are not allowed here")
    return text


Searchable = Annotated[str, AfterValidator(_no_nul)]  # what GET /tasks filters on


class Input(ApiModel):
    name: str | None = None
    description: str | None = None
    url: str | None = None
    path: AbsPath
    type: FileType | None = None
    content: str | None = None
    streamable: bool | None = None


class Output(ApiModel):
    name: str | None = None
    description: str | None = None
    url: str
    path: AbsPath
    path_prefix: str | None = None
    type: FileType | None = None


# A billion GB is more than any node has, and its megabytes still fit Slurm's counters; Python's JSON
# reads Infinity and NaN, and 1e308 GB overflows on its way to megabytes: both refused here.
Gigabytes = Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]


def _whole_cores(value: Any) -> Any:
    """TES 1.2 (draft) lets `cpu_cores` be fractional and servers round up; Slurm counts whole CPUs."""
    if isinstance(value, float) and math.isfinite(value):
        return math.ceil(value)
    return value


CpuCores = Annotated[int, BeforeValidator(_whole_cores), Field(ge=1)]


class Resources(ApiModel):
    cpu_cores: CpuCores | None = None
    preemptible: bool | None = None
    ram_gb: Gigabytes | None = None
    disk_gb: Gigabytes | None = None
    zones: list[str] | None = None
    backend_parameters: dict[str, str] | None = None
    backend_parameters_strict: bool | None = None


class Executor(ApiModel):
    image: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    command: Annotated[list[str], Field(min_length=1)]
    workdir: AbsPath | None = None
    stdin: AbsPath | None = None
    stdout: AbsPath | None = None
    stderr: AbsPath | None = None
    env: dict[str, str] | None = None
    ignore_error: bool | None = None


class ExecutorLog(ApiModel):
    start_time: str | None = None
    end_time: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int


class OutputFileLog(ApiModel):
    url: str
    path: str
    size_bytes: str


class TaskLog(ApiModel):
    logs: list[ExecutorLog] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    start_time: str | None = None
    end_time: str | None = None
    outputs: list[OutputFileLog] = Field(default_factory=list)
    system_logs: list[str] | None = None


class Task(ApiModel):
    """A task as the API shows it (and as a client may echo it back)."""

    id: str | None = None
    state: State | None = None
    name: Searchable | None = None
    description: str | None = None
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    resources: Resources | None = None
    executors: Annotated[list[Executor], Field(min_length=1)]
    volumes: list[AbsPath] | None = None
    tags: dict[Searchable, Searchable] | None = None
    logs: list[TaskLog] | None = None
    creation_time: str | None = None

    def over_caps(self, caps: TaskCaps) -> str | None:
        """Why the task has more parts than the site's caps allow (naming the field), or None."""
        counts = [("executors", len(self.executors), caps.max_executors),
                  ("inputs", len(self.inputs or ()), caps.max_inputs),
                  ("outputs", len(self.outputs or ()), caps.max_outputs),
                  ("volumes", len(self.volumes or ()), caps.max_volumes),
                  ("tags", len(self.tags or {}), caps.max_tags),
                  *((f"executors[{i}].env", len(e.env or {}), caps.max_env) for i, e in enumerate(self.executors))]
        for field, count, cap in counts:
            if count > cap:
                return f"{field}: {count} given, more than the {cap} allowed here"
        return None


class CreateTaskResponse(ApiModel):
    id: str


def apply_view(task: dict[str, Any], view: View) -> dict[str, Any]:
    """Cut a FULL task document down to a view, as the spec defines MINIMAL and BASIC."""
    if view is View.MINIMAL:
        return {k: task[k] for k in ("id", "state") if k in task}
    if view is View.FULL:
        return task
    basic = dict(task)
    if "inputs" in basic:
        basic["inputs"] = [{k: v for k, v in i.items() if k != "content"} for i in basic["inputs"]]
    if "logs" in basic:
        basic["logs"] = [
            {**{k: v for k, v in log.items() if k != "system_logs"},
             "logs": [{k: v for k, v in e.items() if k not in ("stdout", "stderr")}
                      for e in log.get("logs", [])]}
            for log in basic["logs"]
        ]
    return basic


class ServiceType(ApiModel):
    group: str = "org.ga4gh"
    artifact: str = "tes"
    version: str = "1.1.0"


class ServiceOrganization(ApiModel):
    name: str
    url: str


class GA4GHServiceInfo(ApiModel):
    """The GA4GH service-info 1.0 fields that TES and WES service-info both extend."""

    id: str
    name: str
    type: ServiceType
    description: str | None = None
    organization: ServiceOrganization
    contact_url: str | None = Field(default=None, alias="contactUrl")
    documentation_url: str | None = Field(default=None, alias="documentationUrl")
    created_at: str | None = Field(default=None, alias="createdAt")
    updated_at: str | None = Field(default=None, alias="updatedAt")
    environment: str | None = None
    version: str

    @staticmethod
    def site_fields(config: SiteConfig, version: str, started_at: str, id_suffix: str = "") -> dict[str, Any]:
        """The common fields as the site config describes the service."""
        svc = config.service
        return {"id": svc.id + id_suffix, "name": svc.name, "description": svc.description,
                "organization": ServiceOrganization(name=svc.organization.name, url=svc.organization.url),
                "contact_url": svc.contact_url, "documentation_url": svc.documentation_url,
                "environment": svc.environment, "version": version, "updated_at": started_at}


class ServiceInfo(GA4GHServiceInfo):
    type: ServiceType = ServiceType()
    storage: list[str] = Field(default_factory=list)
    backend_parameters: list[str] = Field(default_factory=list, alias="tesResources_backend_parameters")

    @classmethod
    def for_site(cls, config: SiteConfig, version: str, started_at: str, storage: list[str]) -> ServiceInfo:
        return cls.model_validate({**cls.site_fields(config, version, started_at), "storage": storage,
                                   "backend_parameters": list(config.backend_parameters)})
