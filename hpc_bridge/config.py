"""Site configuration: one validated object, loaded once and passed explicitly (never a global).

Relative paths in a config file are resolved against the directory of that file, so a site can
keep its config next to its own templates and the service can be started from any directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hpc_bridge.auth.settings import AuthSettings
from hpc_bridge.runas.settings import RunAsSettings, existing_user
from hpc_bridge.slurm.timelimit import minutes
from hpc_bridge.staging.paths import plain_path, resolve_inside
from hpc_bridge.wes.settings import MiB, WesSettings

PACKAGE_DIR = Path(__file__).resolve().parent
# Request bodies of users without a `max_request_bytes` limit: a tesTask, or anything but a WES run.
DEFAULT_MAX_REQUEST_BYTES = 16 * MiB
# Executor log tails a task's row may hold (`limits.caps.max_executors` × 2 × `storage.log_tail_bytes`).
MAX_LOG_ROW_BYTES = 16 * MiB


class ConfigError(Exception):
    """A site configuration that cannot be used; the message says which field and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Organization(_Strict):
    name: str
    url: str


class ServiceSettings(_Strict):
    """What service-info advertises about this deployment."""

    id: str = "org.example.hpc-bridge"
    name: str = "hpc-bridge"
    description: str = "GA4GH TES/WES on Slurm with Apptainer"
    organization: Organization = Organization(name="Example site", url="https://example.org")
    contact_url: str | None = None
    documentation_url: str | None = None
    environment: str = "dev"


class ServerSettings(_Strict):
    """`metrics`: who may scrape /metrics: loopback callers (a reverse proxy in front must then not
    pass /metrics on), holders of the bearer token in `metrics_token_file`, or nobody."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    threads: Annotated[int, Field(ge=1, le=256)] = 8
    metrics: Literal["loopback", "token", "off"] = "loopback"
    metrics_token_file: Path | None = None

    @model_validator(mode="after")
    def _token_for_metrics(self) -> ServerSettings:
        if self.metrics == "token" and self.metrics_token_file is None:
            raise ValueError("server.metrics: token needs server.metrics_token_file")
        return self


class PreemptibleSettings(_Strict):
    """Where `resources.preemptible: true` tasks go; unset means the request is ignored with a log line."""

    qos: str | None = None
    partition: str | None = None


class PackingSettings(_Strict):
    """Tasks of one owner that ask for exactly the same resources share a Slurm job, one job step
    each, in turn: Slurm then schedules one job instead of several (a job costs about a scheduling
    cycle, a step a tenth of a second). Nobody has to declare a task short: once a step has run
    `hand_back_seconds`, the launcher hands the tasks still waiting back to the daemon, which
    submits them again (together in new packs; a task handed back twice alone), so a long task
    holds the others back by that long at most.
    A pack holds at most `max_tasks`; its time limit is the members' own plus the hand-back
    allowance, so every task keeps its whole limit, and `max_minutes` (e.g. the partitions'
    MaxTime) bounds it: tasks whose pack would need more run alone."""

    enabled: bool = True
    max_tasks: Annotated[int, Field(ge=2, le=1000)] = 16
    hand_back_seconds: Annotated[int, Field(ge=1, le=3600)] = 5
    max_minutes: Annotated[int, Field(ge=2)] | None = None


class UserLimits(_Strict):
    """What one user may ask for; a `max_*` None means no limit of this service's own (Slurm's
    limits still apply). The site maxima per task, and per-user overrides, use the same fields.

    Per-node amounts (cores, memory, disk, `gres`) count once per node a task may get (`nodes`).
    The `allowed_*` lists bound the accounts, QoS and partitions a task may name; None means no
    choice at all in `run_as.mode: service` (every job is the service account's, so any name would
    charge its allocations), and any name in the run_as modes (Slurm's associations of the user's
    own Unix user decide). A partition without `allowed_partitions` is bounded by `slurm.partitions`."""

    max_cpu_cores: Annotated[int, Field(ge=1)] | None = None
    max_ram_gb: Annotated[float, Field(gt=0)] | None = None
    max_disk_gb: Annotated[float, Field(gt=0)] | None = None
    max_gpus: Annotated[int, Field(ge=0)] | None = None
    max_nodes: Annotated[int, Field(ge=1)] | None = None
    # Longest time limit a task may ask for (backend parameter `time`), in minutes.
    max_time_minutes: Annotated[int, Field(ge=1)] | None = None
    # `exclusive` takes whole nodes, whatever the limits above say.
    allow_exclusive: bool = False
    allowed_accounts: list[str] | None = None
    allowed_qos: list[str] | None = None
    allowed_partitions: list[str] | None = None
    # Tasks (and workflow runs) not yet in a final state.
    max_active_tasks: Annotated[int, Field(ge=1)] | None = None
    max_content_bytes: Annotated[int, Field(ge=0)] | None = None
    max_request_bytes: Annotated[int, Field(ge=1024)] | None = None
    # Sustained requests per second (a token bucket of `burst` requests).
    requests_per_second: Annotated[float, Field(gt=0)] | None = None
    burst: Annotated[int, Field(ge=1)] | None = None


class TaskCaps(_Strict):
    """How many parts one task may have, for everyone: the request size bounds their bytes, not
    their number, and each part costs the service work (planning, a bind mount, a job step, an
    environment entry). Every executor also keeps 2 × `storage.log_tail_bytes` of log tails in the
    task's database row. `max_env` counts per executor. `max_tags` is also how many `tag_key`
    filters a task list may have: each is one term of an SQL expression, whose depth SQLite
    limits to 1000."""

    max_executors: Annotated[int, Field(ge=1)] = 16
    max_inputs: Annotated[int, Field(ge=0)] = 10000
    max_outputs: Annotated[int, Field(ge=0)] = 10000
    max_volumes: Annotated[int, Field(ge=0)] = 1000
    max_env: Annotated[int, Field(ge=0)] = 1000
    max_tags: Annotated[int, Field(ge=1, le=500)] = 100


class LimitSettings(UserLimits):
    """Site limits: the fields of UserLimits for everyone, `users` overriding them per identity
    (keyed by owner, `<issuer>#<subject>`; "local" without authentication), the default time
    limit of a task that names none, and the caps on the parts of a task."""

    default_time: str | None = None
    users: dict[str, UserLimits] = Field(default_factory=dict)
    caps: TaskCaps = TaskCaps()

    @field_validator("default_time")
    @classmethod
    def _slurm_time(cls, value: str | None) -> str | None:
        if value is not None:
            minutes(value)
        return value

    def for_owner(self, owner: str) -> UserLimits:
        """The effective limits of one user: the override's set fields win over the site's."""
        base = {name: getattr(self, name) for name in UserLimits.model_fields}
        override = self.users.get(owner)
        if override is not None:
            base.update({name: getattr(override, name) for name in override.model_fields_set})
        return UserLimits(**base)


class MonitorSettings(_Strict):
    """The daemon's cycle: every `min_interval` while jobs are in flight (one squeue each) and while
    nothing is active (then one indexed query, no squeue, so a task another process created starts
    at once); backing off to `idle_interval` while tasks only wait for their images or inputs."""

    min_interval: Annotated[float, Field(gt=0)] = 0.5
    idle_interval: Annotated[float, Field(gt=0)] = 5.0
    submit_batch: Annotated[int, Field(ge=1)] = 200
    # sbatch calls in flight at once: each mostly waits on slurmctld, so a few overlap well.
    submit_parallelism: Annotated[int, Field(ge=1, le=32)] = 4
    retry_max_delay: Annotated[float, Field(gt=0)] = 60.0
    # How long an ended job's record may lag behind Slurm (shared filesystems cache) before a
    # missing or incomplete record is taken as a failure.
    record_grace: Annotated[float, Field(ge=0)] = 10.0
    # How often ended tasks' work areas are checked against storage.work_retention_hours.
    cleanup_interval: Annotated[float, Field(gt=0)] = 60.0


class SlurmSettings(_Strict):
    """How to reach Slurm and which site defaults apply to every job."""

    bin_dir: Path | None = None
    submit_as: str | None = None
    partitions: list[str] = Field(default_factory=list)
    default_partition: str | None = None
    account: str | None = None
    command_timeout: Annotated[float, Field(gt=0)] = 30.0
    template_dirs: list[Path] = Field(default_factory=list)
    preemptible: PreemptibleSettings = PreemptibleSettings()
    packing: PackingSettings = PackingSettings()

    @field_validator("submit_as")
    @classmethod
    def _user_exists(cls, value: str | None) -> str | None:
        return existing_user(value)


class ApptainerSettings(_Strict):
    """Apptainer and the images it runs.

    Registry references (`ubuntu:22.04`, `docker://...`, `oras://...`, `library://...`) are pulled
    once, on the login node, into `cache_dir`; without a cache dir they are refused. `image_map`
    points references at pre-built SIFs or other references (a local mirror); `registry_mirrors`
    rewrites a registry host (`docker.io: 127.0.0.1:5000`); plain-http registries must be listed in
    `insecure_registries` (off by default)."""

    binary: Path = Path("apptainer")
    image_dirs: list[Path] = Field(default_factory=list)
    cache_dir: Path | None = None
    image_map: dict[str, str] = Field(default_factory=dict)
    registry_mirrors: dict[str, str] = Field(default_factory=dict)
    insecure_registries: list[str] = Field(default_factory=list)
    # Registries (host[:port]) on internal addresses that tasks may pull from; any other registry
    # must resolve to public addresses. Mirrors and insecure registries are trusted too.
    trusted_registries: list[str] = Field(default_factory=list)
    pull_timeout: Annotated[float, Field(gt=0)] = 1800.0
    pull_parallelism: Annotated[int, Field(ge=1, le=16)] = 2
    # The account a root daemon runs `apptainer pull` as (a registry's answers are parsed there, so
    # never root; an account of its own, not a task's user). A daemon that is not root pulls as itself.
    pull_as: str | None = None

    @field_validator("pull_as")
    @classmethod
    def _pull_user_exists(cls, value: str | None) -> str | None:
        return existing_user(value)


class HttpInputSettings(_Strict):
    """`http(s)://` inputs, downloaded on the login node before the job is submitted (compute nodes
    are often offline). Loopback, private and link-local addresses are refused unless listed in
    `allowed_networks` (CIDRs): the login node can reach internal services a user must not."""

    enabled: bool = True
    max_bytes: Annotated[int, Field(ge=1)] = 10 * 1024**3
    timeout: Annotated[float, Field(gt=0)] = 600.0
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    allowed_networks: list[str] = Field(default_factory=list)


class S3Bucket(_Strict):
    """One bucket of an S3-compatible store (AWS, Ceph RGW, MinIO), or every bucket of an endpoint
    (`name: "*"`). A task reads only keys under `read` and writes only under `write`: key prefixes
    where `{owner}` is the owner's directory name (as in `storage.owner_areas`), so one site
    credential still keeps owners apart; "" is the whole bucket. Credentials: `profile` (or, for
    one owner, `owner_profiles[owner]`) of `storage.s3.credentials_file`; neither: boto3's own
    chain (environment, instance role) of the daemon; `anonymous`: unsigned (public data)."""

    name: Annotated[str, Field(pattern=r"^(\*|[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])$")]
    endpoint_url: Annotated[str, Field(pattern=r"^https?://[^/?#@]+/?$")] | None = None
    region: str | None = None
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    profile: str | None = None
    owner_profiles: dict[str, str] = Field(default_factory=dict)
    anonymous: bool = False
    read: list[str] = Field(default_factory=lambda: ["{owner}/"])
    write: list[str] = Field(default_factory=lambda: ["{owner}/"])

    @field_validator("read", "write")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if prefix.replace("{owner}", "").count("{") or prefix.count("{owner}") > 1 or prefix.startswith("/"):
                raise ValueError(f"{prefix!r}: a key prefix, with at most one {{owner}} and no leading /")
        return value


class S3Settings(_Strict):
    """`s3://bucket/key` inputs and outputs, moved by the daemon on the login node (compute nodes
    are often offline): inputs are downloaded before the job is submitted, outputs uploaded after
    it ends, the task staying RUNNING meanwhile. Caps as for http: `max_bytes` per object,
    `timeout` per input or output."""

    enabled: bool = False
    credentials_file: Path | None = None  # AWS shared-credentials format; readable by the daemon only
    buckets: list[S3Bucket] = Field(default_factory=list)
    max_bytes: Annotated[int, Field(ge=1)] = 100 * 1024**3
    timeout: Annotated[float, Field(gt=0)] = 6 * 3600.0
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    part_size: Annotated[int, Field(ge=5 * 1024**2)] = 64 * 1024**2
    concurrency: Annotated[int, Field(ge=1, le=64)] = 8


class SharedArea(_Strict):
    """A part of the data roots every owner's tasks may read (reference data), and write if
    `writable`: there an output never replaces an existing file, whoever wrote it."""

    path: Path
    writable: bool = False

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value


class DrsHost(_Strict):
    """A DRS server task inputs may name (`drs://HOST/ID`); `forward_token`: the user's bearer token
    goes with the lookups (only to servers that accept this service's users' tokens); `dataset`:
    every object of this server needs a Passport visa (ControlledAccessGrants) for this dataset."""

    host: str  # host[:port], as in the drs:// URI; looked up over https at /ga4gh/drs/v1/
    forward_token: bool = False
    dataset: str | None = None


_DRS_PREFER: list[Literal["file", "https"]] = ["file", "https"]


class DrsSettings(_Strict):
    """`drs://` task inputs (and CWL File locations), resolved when the task is created: only the
    `hosts` listed (any other is a 400), compact ids `drs://PREFIX:ACCESSION` through `prefixes`
    (prefix -> host), and of an object's access methods the first kind in `prefer`: a `file` URL
    inside the data roots becomes the same zero-copy bind as a path, `https` is downloaded under
    `storage.http`'s rules and checked against the object's size and checksum."""

    enabled: bool = False
    hosts: list[DrsHost] = Field(default_factory=list)
    prefixes: dict[str, str] = Field(default_factory=dict)
    max_ids: Annotated[int, Field(ge=1, le=10000)] = 100  # DRS ids one task or run may name
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0  # per DRS lookup
    prefer: list[Literal["file", "https"]] = Field(default_factory=lambda: list(_DRS_PREFER))

    def host(self, name: str) -> DrsHost | None:
        return next((h for h in self.hosts if h.host.lower() == name.lower()), None)


class PassportArea(_Strict):
    """A directory of a data root whose files are the controlled-access `dataset`: a task or run
    reads them only with a GA4GH Passport visa (ControlledAccessGrants) for it."""

    path: Path
    dataset: str


class StorageSettings(_Strict):
    """Where tasks read and write. `data_roots` bound inputs and outputs (checked after resolving
    symlinks); `work_root` holds one private work area per task, removed `work_retention_hours`
    after the task ended (None keeps them); `file_inputs` says how `file://` inputs reach the job:
    bind-mounted read-only (zero copy), hard-linked or copied into the work area.

    File tenancy: with `owner_areas` (a path template inside a data root with `{owner}`, e.g.
    `/data/users/{owner}`) a task reads and writes only its owner's area, the `shared_areas` and its
    owner's WES run directories; nothing else of the data roots. Without it every task may reach
    all of them, which a site with several users in `run_as.mode: service` (one Unix user for every
    job) must accept in writing: `one_shared_space: true`."""

    work_root: Path = Path("/tmp/hpc-bridge/work")
    data_roots: list[Path] = Field(default_factory=list)
    owner_areas: str | None = None
    shared_areas: list[SharedArea] = Field(default_factory=list)
    one_shared_space: bool = False
    log_tail_bytes: Annotated[int, Field(ge=0)] = 64 * 1024
    file_inputs: Literal["bind", "hardlink", "copy"] = "bind"
    work_retention_hours: Annotated[float, Field(ge=0)] | None = 168.0
    max_content_bytes: Annotated[int, Field(ge=0)] = 16 * 1024**2
    http: HttpInputSettings = HttpInputSettings()
    s3: S3Settings = S3Settings()
    drs: DrsSettings = DrsSettings()
    passport_areas: list[PassportArea] = Field(default_factory=list)
    # The Python 3.8+ that runs the output collector on the compute node (a bare name is looked up
    # on the job's PATH). The collector is one stdlib-only file, copied into each work area, so the
    # compute nodes need nothing of hpc-bridge's own install.
    job_python: Path = Path("python3")

    @field_validator("work_root")
    @classmethod
    def _plain_work_root(cls, value: Path) -> Path:
        """Job paths end up on #SBATCH lines, which cannot quote: only plain characters."""
        return plain_path(value)

    @field_validator("owner_areas")
    @classmethod
    def _owner_template(cls, value: str | None) -> str | None:
        """Areas become bind paths: plain characters, and `{owner}` as one whole path component."""
        if value is None:
            return None
        if not re.fullmatch(r"/([A-Za-z0-9_.-]+/)*\{owner\}(/[A-Za-z0-9_.-]+)*", value) or value.count("{") != 1:
            raise ValueError("must be an absolute path with {owner} as one whole component, e.g. "
                             "/data/users/{owner}, of letters, digits and _ . - otherwise")
        return value


class Crypt4ghSettings(_Strict):
    """Crypt4GH (GA4GH) for sensitive data. `secret_key` is the site's own key, to which users
    encrypt their `.c4gh` inputs: only the daemon reads it, on the login node, to open each such
    input's header, and the job is handed that one file's session key (never the site's key).
    `passphrase_file` unlocks a passphrase-protected key (its first line). `job_python`: a Python
    on the compute nodes that has the `crypt4gh` package, for the job-side steps of tasks that
    encrypt or decrypt (unset: `storage.job_python`). `private_tmp`: a node-local directory where a
    job's decrypted inputs live (one 0700 directory per task, removed when the job ends, never the
    shared work area). Outputs written under a `required_roots` directory must be encrypted. Off
    (`enabled: false`), tasks and runs asking for Crypt4GH are refused and `.c4gh` inputs are
    passed to jobs as they are."""

    enabled: bool = False
    secret_key: Path | None = None
    passphrase_file: Path | None = None
    job_python: Path | None = None
    private_tmp: Path = Path("/tmp")
    required_roots: list[Path] = Field(default_factory=list)

    @field_validator("private_tmp")
    @classmethod
    def _plain_private_tmp(cls, value: Path) -> Path:
        """It ends up in the batch script and in Apptainer's bind list: plain characters only."""
        return plain_path(value)

    @model_validator(mode="after")
    def _unlock_needs_key(self) -> Crypt4ghSettings:
        if self.passphrase_file is not None and self.secret_key is None:
            raise ValueError("passphrase_file without secret_key")
        return self


class SiteConfig(_Strict):
    """`auth` has no default: a site must choose JWT issuers or, for development only, `mode: none`."""

    auth: AuthSettings
    service: ServiceSettings = ServiceSettings()
    server: ServerSettings = ServerSettings()
    database: Path = Path("hpc-bridge.sqlite")
    slurm: SlurmSettings = SlurmSettings()
    apptainer: ApptainerSettings = ApptainerSettings()
    storage: StorageSettings = StorageSettings()
    limits: LimitSettings = LimitSettings()
    monitor: MonitorSettings = MonitorSettings()
    run_as: RunAsSettings = RunAsSettings()
    wes: WesSettings = WesSettings()
    crypt4gh: Crypt4ghSettings = Crypt4ghSettings()
    backend_parameters: list[str] = Field(
        default_factory=lambda: [
            "account", "qos", "partition", "time", "gres", "gpus", "constraint", "nodes", "exclusive",
        ]
    )

    @model_validator(mode="after")
    def _areas_apart(self) -> SiteConfig:
        """A data root overlapping the work root (or the image cache) would let a task bind other
        tasks' work areas as inputs, or aim outputs at their scripts."""
        private = {"storage.work_root": self.storage.work_root}
        if self.apptainer.cache_dir:
            private["apptainer.cache_dir"] = self.apptainer.cache_dir
        for root in self.storage.data_roots:
            real_root = os.path.realpath(root)
            for name, area in private.items():
                real_area = os.path.realpath(area)
                if os.path.commonpath([real_root, real_area]) in (real_root, real_area):
                    raise ValueError(f"{name} ({area}) and data root {root} overlap: tasks could reach "
                                     "other tasks' files through the data root")
        return self

    @model_validator(mode="after")
    def _runs_inside_data(self) -> SiteConfig:
        self.wes.check(self.storage.data_roots)
        return self

    @model_validator(mode="after")
    def _tenancy(self) -> SiteConfig:
        """One Unix user runs every job in service mode: only owner areas keep users' files apart,
        so several users (authentication on) without them is a choice a site must write down."""
        storage = self.storage
        if (storage.owner_areas is None and not storage.one_shared_space and self.auth.mode != "none"
                and self.run_as.mode == "service"):
            raise ValueError("storage.owner_areas is required with authentication in run_as.mode service: "
                             "every job runs as the same Unix user, so without owner areas any user's task "
                             "can read and overwrite any other user's files (set storage.one_shared_space: "
                             "true to accept that)")
        check_areas(storage, self.wes.root(storage.data_roots))
        return self

    @model_validator(mode="after")
    def _policy_dirs_inside_data(self) -> SiteConfig:
        places = [*(("storage.passport_areas", a.path) for a in self.storage.passport_areas),
                  *(("crypt4gh.required_roots", root) for root in self.crypt4gh.required_roots)]
        for name, path in places:
            if resolve_inside(str(path), self.storage.data_roots) is None:
                raise ValueError(f"{name}: {path} is not inside any of storage.data_roots")
        return self

    @model_validator(mode="after")
    def _claim_issuers_trusted(self) -> SiteConfig:
        """A claim names a Unix user only if its token can be verified at all."""
        unknown = sorted(set(self.run_as.claim_issuers) - {i.issuer for i in self.auth.issuers})
        if unknown:
            raise ValueError(f"run_as.claim_issuers {unknown} are not in auth.issuers")
        return self

    @model_validator(mode="after")
    def _bounded_requests(self) -> SiteConfig:
        """The server reads no body over `server_request_bytes`: a larger per-user limit would be
        a promise it cannot keep."""
        for owner, override in self.limits.users.items():
            if override.max_request_bytes is not None and override.max_request_bytes > self.server_request_bytes:
                raise ValueError(f"limits.users[{owner}].max_request_bytes ({override.max_request_bytes}) is "
                                 f"more than the server reads at all ({self.server_request_bytes}: "
                                 "limits.max_request_bytes, or without it the WES run request size)")
        return self

    @model_validator(mode="after")
    def _bounded_log_rows(self) -> SiteConfig:
        """A task's executor logs live in its database row, read whole with the task."""
        row = self.limits.caps.max_executors * 2 * self.storage.log_tail_bytes
        if row > MAX_LOG_ROW_BYTES:
            raise ValueError(f"limits.caps.max_executors × 2 × storage.log_tail_bytes is {row} bytes, more than "
                             f"{MAX_LOG_ROW_BYTES}: every executor's stdout and stderr tails are kept in the "
                             "task's database row")
        return self

    @property
    def wes_request_bytes(self) -> int:
        """The body of a WES run request of a user without `max_request_bytes`: its attachments,
        its parameters and 1 MiB for the rest of the form."""
        return self.wes.max_attachments_bytes + self.wes.max_params_bytes + MiB

    @property
    def server_request_bytes(self) -> int:
        """The largest request body the server reads at all; a larger one is refused (413) before
        it is read, so before authentication: the site's `limits.max_request_bytes`, else the
        largest of the defaults (a tesTask, a WES run request)."""
        return self.limits.max_request_bytes or max(DEFAULT_MAX_REQUEST_BYTES, self.wes_request_bytes)

    @property
    def template_search_path(self) -> list[Path]:
        """Site overrides first, then the templates shipped with the package (wheel or source tree)."""
        shipped = [PACKAGE_DIR / "slurm_templates", PACKAGE_DIR.parent / "slurm_templates"]
        return [*self.slurm.template_dirs, *(p for p in shipped if p.is_dir())]


def owner_area_base(template: str) -> str:
    """The directory that holds every owner's area (the template's part above `{owner}`)."""
    return template.split("{owner}", 1)[0].rstrip("/") or "/"


def _overlap(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return os.path.commonpath([a, b]) in (a, b)


def check_areas(storage: StorageSettings, runs_root: Path | None) -> None:
    """Areas lie inside the data roots and apart from each other: a shared area over the owners'
    areas (or the WES runs) would hand everyone's files to everyone."""
    places: dict[str, str] = {}
    if storage.owner_areas is not None:
        places["storage.owner_areas"] = owner_area_base(storage.owner_areas)
    for i, area in enumerate(storage.shared_areas):
        places[f"storage.shared_areas[{i}]"] = str(area.path)
    for name, path in places.items():
        if resolve_inside(path, storage.data_roots) is None:
            raise ValueError(f"{name} ({path}) must lie inside one of storage.data_roots")
    if runs_root is not None and storage.owner_areas is not None:
        places["wes.runs_root"] = str(runs_root)
    names = list(places)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if _overlap(places[first], places[second]):
                raise ValueError(f"{first} ({places[first]}) and {second} ({places[second]}) overlap: "
                                 "each owner's files must stay apart from the shared ones")


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative filesystem settings absolute against the config file's directory.

    A bare program name (``binary: apptainer``) is left alone so that it is looked up on PATH.
    """

    def fix(value: object) -> str:
        text = str(value)
        return text if os.path.isabs(text) else str((base / text).resolve())

    raw = dict(raw)
    if "database" in raw:
        raw["database"] = fix(raw["database"])
    auth = raw.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("issuers"), list):
        raw["auth"] = {**auth, "issuers": [
            {**i, **{k: fix(i[k]) for k in ("jwks_file", "pem_file") if i.get(k) is not None}}
            if isinstance(i, dict) else i for i in auth["issuers"]]}
    for section, keys in _PATH_KEYS.items():
        sub = raw.get(section)
        if not isinstance(sub, dict):
            continue
        sub = dict(sub)
        for key in keys:
            value = sub.get(key)
            if isinstance(value, list):
                sub[key] = [fix(v) for v in value]
            elif value is not None and (key not in ("binary", "job_python") or "/" in str(value)):
                sub[key] = fix(value)
        raw[section] = sub
    return raw


_PATH_KEYS = {
    "server": ("metrics_token_file",),
    "slurm": ("bin_dir", "template_dirs"),
    "apptainer": ("binary", "image_dirs", "cache_dir"),
    "storage": ("work_root", "data_roots", "job_python"),
    "wes": ("runs_root",),
    "crypt4gh": ("secret_key", "passphrase_file", "job_python", "required_roots"),
}


def load_config(path: str | Path) -> SiteConfig:
    """Read and validate a site config file; every problem becomes one readable ConfigError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read site config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"site config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"site config {path} must be a mapping at the top level")
    try:
        return SiteConfig.model_validate(_resolve_paths(raw, path.resolve().parent))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"site config {path}: {problems}") from exc
