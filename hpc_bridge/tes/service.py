"""TES operations on the store: create, get, list, cancel. No Slurm, no task filesystem here:
the daemon does the side effects; this layer validates, records and reads."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from itertools import zip_longest
from typing import Any

from pydantic import ValidationError

from hpc_bridge.auth.passport import Passports, area_datasets
from hpc_bridge.auth.verifier import Identity
from hpc_bridge.config import SiteConfig
from hpc_bridge.errors import BadRequest, NotFound, TooManyRequests
from hpc_bridge.staging import drs
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.store import Store, TaskFilter, TaskRow
from hpc_bridge.store.runs import RunStore
from hpc_bridge.store.tasks import ActiveLimitReached, decode_token, encode_token
from hpc_bridge.tes.jobspec import InvalidTask, JobPlan, plan_job
from hpc_bridge.tes.models import (
    ExecutorLog,
    FileType,
    OutputFileLog,
    State,
    Task,
    TaskLog,
    View,
    apply_view,
)

DEFAULT_PAGE_SIZE = 256
MAX_PAGE_SIZE = 2047
SERVER_FIELDS = ("id", "state", "logs", "creation_time")
RUN_TAG = "wes_run_id"  # the workflow run a task belongs to (set from the engine's credential)
# The CWL engine reuses a run's finished tasks by this tag (cwl/tasks.py): only its credential sets it.
JOB_KEY_TAG = "cwl_job_key"


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts)


def parse_view(value: str | None, default: View = View.MINIMAL) -> View:
    if value is None:
        return default
    try:
        return View(value)
    except ValueError:
        raise BadRequest(f"view: must be one of {', '.join(v.value for v in View)}") from None



def _drs_inputs(task: Task) -> list[tuple[int, str]]:
    """(index, URL) of the task's `drs://` inputs."""
    return [(i, item.url) for i, item in enumerate(task.inputs or [])
            if item.content is None and item.url and drs.is_drs(item.url)]

class TaskService:
    def __init__(self, store: Store, config: SiteConfig, on_change: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._config = config
        self._on_change = on_change
        self._runs = RunStore(store)
        self.schemes = Schemes(config, self._runs.owner_of)
        self._drs = drs.Resolver(config.storage.drs, config.storage.http)
        self._passports = Passports(config.auth)

    def create(self, body: Any, owner: str, *, run_as: str | None = None, run_id: str | None = None,
               token: str | None = None, identity: Identity | None = None) -> str:
        """Validate, plan (with the owner's limits) and record a task; `run_as` is the Unix user
        its job runs as (None: the service account); `run_id` the workflow run it belongs to
        (its engine's credential: the run tag is the service's to set, not the engine's);
        `token` the caller's bearer token, for the DRS servers the site forwards it to; `identity`
        the caller, whose Passport visas may be needed (a run's tasks: what the run was granted)."""
        if not isinstance(body, dict):
            raise BadRequest("body: must be a JSON object (a tesTask)")
        try:  # JSON may carry lone surrogates (\ud800), which no file or argv can hold
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadRequest("body: contains invalid Unicode (a lone surrogate escape)") from None
        try:
            # id, state, logs, creation_time are the server's: clients that echo them back (py-tes
            # sends them as null) are accepted, and the values are dropped (SERVER_FIELDS).
            task = Task.model_validate(body)
        except ValidationError as exc:
            raise BadRequest(validation_message(exc)) from None
        if problem := task.over_caps(self._config.limits.caps):
            raise BadRequest(problem)
        task_id = str(uuid.uuid4())
        limits = self._config.limits.for_owner(owner)
        granted = functools.cache(lambda: self._granted(identity, run_id))
        # A controlled DRS server's objects are not even looked up without the visa: an access URL
        # is often a credential of its own (a presigned URL).
        if drs_needed := self._drs_datasets(task):
            self._passports.check(drs_needed, set(granted()))
        resolved = self.resolve_drs(task, token)
        try:  # the same planning the daemon does later, so bad values fail now, with a 400
            plan = plan_job(task, task_id=task_id, workdir=str(self._config.storage.work_root / task_id),
                            config=self._config, schemes=self.schemes, owner=owner, limits=limits,
                            resolved=resolved)
        except InvalidTask as exc:
            raise BadRequest(str(exc)) from None
        if needed := self._area_datasets(plan):
            self._passports.check(needed, set(granted()))
        for item, kind in zip(task.inputs or [], plan.input_types, strict=True):
            item.type = FileType(kind)
        if run_id is None:
            for tag in (RUN_TAG, JOB_KEY_TAG):
                if tag in (task.tags or {}):
                    raise BadRequest(f"tags.{tag}: reserved: only the service sets it, on a workflow "
                                     "run's tasks")
        else:
            task.tags = {**(task.tags or {}), RUN_TAG: run_id}
        document = task.model_dump(mode="json", exclude_none=True, exclude=set(SERVER_FIELDS))
        try:
            self._store.tasks.create(id=task_id, owner=owner, name=task.name, task=document,
                                     tags=task.tags or {}, run_as=run_as,
                                     max_active=limits.max_active_tasks,
                                     resolved={str(i): r.to_json() for i, r in resolved.items()})
        except ActiveLimitReached as exc:
            raise TooManyRequests(f"you already have {exc.limit} active tasks, the maximum here: "
                                  "wait for some to finish or cancel them") from None
        if run_id is None:
            # A workflow engine creates a scatter's tasks in a burst: the daemon's next cycle (its
            # min_interval poll) takes them together, so short ones share packs instead of each
            # wake-up submitting the one or two that arrived so far.
            self._on_change()
        return task_id

    def reload_keys(self) -> None:
        """SIGHUP: the visa issuers' keys read (or fetched) again."""
        self._passports = Passports(self._config.auth)

    def _drs_datasets(self, task: Task) -> dict[str, str]:
        """Controlled-access datasets of the DRS servers the task's inputs name -> the input."""
        needed: dict[str, str] = {}
        for i, url in _drs_inputs(task):
            try:
                dataset = drs.parse(url, self._config.storage.drs).host.dataset
            except drs.DrsError:
                continue  # refused, naming it, when it is resolved
            if dataset is not None:
                needed.setdefault(dataset, f"inputs[{i}].url")
        return needed

    def _area_datasets(self, plan: JobPlan) -> dict[str, str]:
        """Controlled-access datasets the task's files (and directories) reach -> the input."""
        needed: dict[str, str] = {}
        for check in plan.script.inputs:
            for dataset in area_datasets(check.source, self._config.storage.passport_areas):
                needed.setdefault(dataset, f"inputs[{check.index}]")
        return needed

    def _granted(self, identity: Identity | None, run_id: str | None) -> frozenset[str]:
        """What the caller's visas grant; a run's tasks: what the run's submission was granted."""
        if run_id is not None:
            run = self._runs.get(run_id)
            return frozenset(run.grants if run is not None else ())
        return frozenset(self._passports.datasets(identity) if identity is not None else ())

    def resolve_drs(self, task: Task, token: str | None) -> dict[int, drs.Resolved]:
        """Each `drs://` input, looked up now: an id that cannot be read here is a 400 naming it."""
        resolved: dict[int, drs.Resolved] = {}
        ids = _drs_inputs(task)
        settings = self._config.storage.drs
        if len({url for _, url in ids}) > settings.max_ids:
            raise BadRequest(f"inputs: more than {settings.max_ids} DRS ids in one task (storage.drs.max_ids)")
        seen: dict[str, drs.Resolved] = {}  # an id named twice is looked up once
        for i, url in ids:
            if url not in seen:
                try:
                    seen[url] = self._drs.resolve(url, token)
                except drs.DrsError as exc:
                    raise BadRequest(f"inputs[{i}].url: {exc}") from None
            resolved[i] = seen[url]
        return resolved

    def get(self, task_id: str, owner: str | None, view: View, *, run_id: str | None = None) -> dict[str, Any]:
        return apply_view(self.document(self._row(task_id, owner, run_id)), view)

    def list(self, owner: str | None, *, view: View, page_size: int | None, page_token: str | None,
             name_prefix: str | None, state: str | None, tag_keys: list[str],
             tag_values: list[str], run_id: str | None = None) -> dict[str, Any]:
        size = DEFAULT_PAGE_SIZE if page_size is None else page_size
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise BadRequest(f"page_size: must be between 1 and {MAX_PAGE_SIZE}")
        if state is not None and state not in State.__members__:
            raise BadRequest(f"state: unknown state {state!r}")
        if len(tag_values) > len(tag_keys):
            raise BadRequest("tag_value: more values than tag_key parameters")
        if len(tag_keys) > (most := self._config.limits.caps.max_tags):
            raise BadRequest(f"tag_key: {len(tag_keys)} given, more than the {most} allowed here "
                             "(as many as a task may have tags)")
        try:
            before = decode_token(page_token) if page_token else None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        tags = tuple(zip_longest(tag_keys, tag_values, fillvalue=""))
        if run_id is not None:
            tags = (*tags, (RUN_TAG, run_id))
        rows = self._store.tasks.list(TaskFilter(owner=owner, name_prefix=name_prefix, state=state,
                                                 tags=tags), before_seq=before, limit=size + 1)
        result: dict[str, Any] = {"tasks": [apply_view(self.document(r), view) for r in rows[:size]]}
        if len(rows) > size:
            result["next_page_token"] = encode_token(rows[size - 1].seq)
        return result

    def cancel(self, task_id: str, owner: str | None, *, run_id: str | None = None) -> None:
        row = self._row(task_id, owner, run_id)
        self._store.tasks.request_cancel(row.id)
        self._on_change()

    def _row(self, task_id: str, owner: str | None, run_id: str | None = None) -> TaskRow:
        row = self._store.tasks.get(task_id, owner)
        if row is None or (run_id is not None and row.tags.get(RUN_TAG) != run_id):
            raise NotFound(f"task {task_id!r} not found")
        return row

    @staticmethod
    def document(row: TaskRow) -> dict[str, Any]:
        """The FULL view of a task: what was submitted plus what the server knows."""
        doc: dict[str, Any] = {"id": row.id, "state": row.state, **row.task,
                               "creation_time": row.created_at}
        doc["logs"] = [task_log(row).to_json()]
        return doc


def task_log(row: TaskRow) -> TaskLog:
    """The task's one TES log (a task runs once here). It exists from the task's creation, empty
    until the daemon knows more: clients (the GA4GH compliance suite among them) read
    `logs[0].logs` right after POST."""
    metadata = None
    if row.job_id:
        metadata = {"slurm_job_id": row.job_id}
        if row.pack_id:  # one job step of a job shared by several short tasks
            metadata["slurm_pack_id"] = row.pack_id
    return TaskLog(logs=[ExecutorLog.model_validate(e) for e in row.executor_logs],
                   outputs=[OutputFileLog.model_validate(o) for o in row.outputs], metadata=metadata,
                   start_time=row.start_time, end_time=row.end_time, system_logs=row.system_logs or None)
