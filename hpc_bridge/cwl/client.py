"""The engine's way to its TES tasks: this service's TES API over local HTTP, with the run's
credential (hpc_bridge/auth/runtoken.py). The engine has no database and no service keys; what it
may do is what the credential lets a TES client of the run's owner do to that run's tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import requests

from hpc_bridge.errors import BadRequest, Forbidden, NotFound, ServiceError, TooManyRequests

API_PATH = "/ga4gh/tes/v1"
# Connection trouble (the service restarting, a busy worker pool) is retried this long before it
# counts as a failure of the engine.
RETRY_SECONDS = 60.0


class CredentialRevoked(ServiceError):
    """The run ended or a newer engine took over: this engine must stop."""

    status = 401


@dataclass
class RemoteTask:
    """A TES task as the API shows it (FULL or BASIC view), with the fields the engine reads."""

    id: str
    state: str
    created_at: str = ""
    task: dict[str, Any] = field(default_factory=dict)
    executor_logs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    system_logs: list[str] = field(default_factory=list)
    start_time: str | None = None
    job_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RemoteTask:
        log = (doc.get("logs") or [{}])[-1]
        return cls(id=doc["id"], state=doc.get("state", "UNKNOWN"), created_at=doc.get("creation_time", ""),
                   task=doc, executor_logs=log.get("logs") or [], outputs=log.get("outputs") or [],
                   system_logs=log.get("system_logs") or [], start_time=log.get("start_time"),
                   job_id=(log.get("metadata") or {}).get("slurm_job_id"), tags=doc.get("tags") or {})

    @property
    def cancel_requested(self) -> bool:
        return self.state == "CANCELING"


class RunClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.url = base_url.rstrip("/").removesuffix(API_PATH) + API_PATH
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.trust_env = False  # never through a proxy: the service is on this host

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                response = self._session.request(method, self.url + path, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"the TES API at {self.url} did not answer: {exc}") from None
                time.sleep(1.0)
                continue
            if response.status_code < 400:
                return response.json()
            message = _message(response)
            if response.status_code == 401:
                raise CredentialRevoked(message)
            if response.status_code == 429:
                retry = response.headers.get("Retry-After")
                raise TooManyRequests(message, float(retry) if retry and retry.isdigit() else None)
            if response.status_code >= 500 and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            kind = {400: BadRequest, 403: Forbidden, 404: NotFound}.get(response.status_code, ServiceError)
            raise kind(message)

    def create(self, body: dict[str, Any]) -> str:
        return str(self._call("POST", "/tasks", json=body)["id"])

    def get(self, task_id: str, view: str = "FULL") -> RemoteTask:
        return RemoteTask.from_json(self._call("GET", f"/tasks/{task_id}", params={"view": view}))

    def cancel(self, task_id: str) -> None:
        self._call("POST", f"/tasks/{task_id}:cancel")

    def list(self, *, tags: dict[str, str], view: str = "MINIMAL") -> list[RemoteTask]:
        """Every task of the run with these tags (the credential limits it to the run), all pages."""
        params: dict[str, Any] = {"view": view, "page_size": 2047, "tag_key": list(tags),
                                  "tag_value": list(tags.values())}
        tasks: list[RemoteTask] = []
        while True:
            page = self._call("GET", "/tasks", params=params)
            tasks += [RemoteTask.from_json(doc) for doc in page.get("tasks") or []]
            if not page.get("next_page_token"):
                return tasks
            params["page_token"] = page["next_page_token"]


def _message(response: requests.Response) -> str:
    try:
        return str(response.json()["msg"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.reason}"
