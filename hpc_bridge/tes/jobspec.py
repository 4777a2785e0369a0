"""A TES task -> the plan of its Slurm job (pure apart from looking up image files).

The same function validates a task at POST time (so bad values get a 400 naming the field) and
builds the job at submission time; nothing here writes to disk.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field

from hpc_bridge.config import SiteConfig
from hpc_bridge.containers.apptainer import Bind, UnsafeValue, exec_argv
from hpc_bridge.containers.images import ImageError, resolve_image
from hpc_bridge.slurm.script import ExecutorScript, JobScript, sbatch_value
from hpc_bridge.tes.models import Task

FLAG_PARAMETERS = {"exclusive"}
TRUE_VALUES = {"", "true", "yes", "1"}


class InvalidTask(ValueError):
    """A task that cannot run here; `field` is the offending field's path (e.g. executors[0].env)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class JobPlan:
    script: JobScript
    directories: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def job_name(task_id: str) -> str:
    return f"tes-{task_id}"


def job_comment(task_id: str) -> str:
    """The task id travels with the Slurm job, so a restarted daemon can adopt jobs it submitted."""
    return f"hpc-bridge:{task_id}"


def task_id_from_comment(comment: str) -> str | None:
    return comment.removeprefix("hpc-bridge:") if comment.startswith("hpc-bridge:") else None


def _mb(gb: float) -> str:
    return f"{max(1, math.ceil(gb * 1024))}M"


def sbatch_options(task: Task, config: SiteConfig) -> tuple[list[tuple[str, str | None]], list[str], bool]:
    """Resources and backend parameters -> (#SBATCH options, warnings, needs GPU)."""
    res = task.resources
    limits = config.limits
    opts: dict[str, str | None] = {}
    warnings: list[str] = []
    if config.slurm.default_partition:
        opts["partition"] = config.slurm.default_partition
    if config.slurm.account:
        opts["account"] = config.slurm.account
    if limits.default_time:
        opts["time"] = limits.default_time
    if res is not None:
        if res.cpu_cores is not None:
            if limits.max_cpu_cores and res.cpu_cores > limits.max_cpu_cores:
                raise InvalidTask("resources.cpu_cores",
                                  f"{res.cpu_cores} exceeds the site maximum of {limits.max_cpu_cores}")
            opts["cpus-per-task"] = str(res.cpu_cores)
        if res.ram_gb is not None:
            if limits.max_ram_gb and res.ram_gb > limits.max_ram_gb:
                raise InvalidTask("resources.ram_gb", f"{res.ram_gb:g} exceeds the site maximum of "
                                  f"{limits.max_ram_gb:g}")
            opts["mem"] = _mb(res.ram_gb)
        if res.disk_gb is not None:
            if limits.max_disk_gb and res.disk_gb > limits.max_disk_gb:
                raise InvalidTask("resources.disk_gb", f"{res.disk_gb:g} exceeds the site maximum of "
                                  f"{limits.max_disk_gb:g}")
            opts["tmp"] = _mb(res.disk_gb)
        if res.zones:
            opts["partition"] = _partition(res.zones[0], config, "resources.zones[0]")
        if res.preemptible:
            pre = config.slurm.preemptible
            if pre.qos:
                opts["qos"] = pre.qos
            if pre.partition:
                opts["partition"] = pre.partition
            if not (pre.qos or pre.partition):
                warnings.append("resources.preemptible ignored: the site has no preemptible QoS or partition")
        for key, value in (res.backend_parameters or {}).items():
            if key not in config.backend_parameters:
                if res.backend_parameters_strict:
                    raise InvalidTask(f"resources.backend_parameters.{key}",
                                      f"unsupported backend parameter (supported: "
                                      f"{', '.join(config.backend_parameters)})")
                warnings.append(f"backend parameter {key!r} is not supported here and was ignored")
                continue
            if key == "partition":
                opts["partition"] = _partition(value, config, "resources.backend_parameters.partition")
            elif key in FLAG_PARAMETERS:
                if value.strip().lower() in TRUE_VALUES:
                    opts[key] = None
            else:
                opts[key] = value
    for key, value in opts.items():
        if value is not None:
            try:
                sbatch_value(value)
            except UnsafeValue as exc:
                raise InvalidTask(f"resources ({key})", str(exc)) from None
    gpu = "gpus" in opts or "gpu" in (opts.get("gres") or "")
    return list(opts.items()), warnings, gpu


def _partition(name: str, config: SiteConfig, where: str) -> str:
    if config.slurm.partitions and name not in config.slurm.partitions:
        raise InvalidTask(where, f"unknown partition {name!r} (this site has: "
                                 f"{', '.join(config.slurm.partitions)})")
    return name


def normalize(path: str) -> str:
    """Collapse `..`, `.` and repeated slashes (POSIX keeps a leading `//`; Linux does not care)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _covering(container_path: str, binds: list[Bind]) -> Bind | None:
    """The bind a container path lies in (the longest match wins, as in the mount table)."""
    best: Bind | None = None
    for bind in binds:
        if container_path == bind.container or container_path.startswith(bind.container.rstrip("/") + "/"):
            if best is None or len(bind.container) > len(best.container):
                best = bind
    return best


def plan_job(task: Task, *, task_id: str, workdir: str, config: SiteConfig) -> JobPlan:
    options, warnings, gpu = sbatch_options(task, config)
    directories: list[str] = []
    files: dict[str, str] = {}
    binds: list[Bind] = []

    def add_bind(host: str, container: str, where: str, read_only: bool = False) -> None:
        container = normalize(container)
        if container == "/" or container.split("/")[1] in ("proc", "sys", "dev"):
            raise InvalidTask(where, f"cannot mount over {container!r}")
        bind = Bind(host, container, read_only)
        try:
            bind.spec()
        except UnsafeValue as exc:
            raise InvalidTask(where, str(exc)) from None
        binds.append(bind)

    for i, volume in enumerate(task.volumes or []):
        host = f"{workdir}/volumes/{i}"
        directories.append(host)
        add_bind(host, volume, f"volumes[{i}]")
    for i, item in enumerate(task.inputs or []):
        where = f"inputs[{i}]"
        if item.content is None:
            raise InvalidTask(where, "only inputs with `content` are supported so far (URL staging is "
                                     "not built yet)")
        if "\0" in item.content:
            raise InvalidTask(f"{where}.content", "NUL bytes are not allowed")
        host = f"{workdir}/inputs/{i}"
        files[host] = item.content
        add_bind(host, item.path, f"{where}.path", read_only=True)
    if task.outputs:
        raise InvalidTask("outputs", "output collection is not built yet: write results to a volume "
                                     "or a path inside the site's data roots")

    # First every image and redirection (which may add binds), then the argv: every executor
    # sees every bind, so volumes and redirected files are shared between executors.
    prepared = []
    implicit = 0
    for i, ex in enumerate(task.executors):
        where = f"executors[{i}]"
        try:
            image = resolve_image(ex.image, config.apptainer.image_dirs)
        except ImageError as exc:
            raise InvalidTask(f"{where}.image", str(exc)) from None
        redirects: dict[str, str | None] = {}
        for stream in ("stdin", "stdout", "stderr"):
            path: str | None = getattr(ex, stream)
            if path is None:
                redirects[stream] = None
                continue
            path = normalize(path)
            bind = _covering(path, binds)
            if bind is None:
                if stream == "stdin":
                    raise InvalidTask(f"{where}.stdin", "must be a path inside an input or a volume")
                # A stdout/stderr file outside any volume: its directory gets a private host dir.
                hostdir = f"{workdir}/paths/{implicit}"
                implicit += 1
                directories.append(hostdir)
                add_bind(hostdir, posixpath.dirname(path), f"{where}.{stream}")
                bind = binds[-1]
            elif stream != "stdin" and bind.read_only:
                raise InvalidTask(f"{where}.{stream}", f"{path!r} is inside a read-only input")
            redirects[stream] = bind.host + path[len(bind.container):]
        prepared.append((where, image, redirects))

    final = []
    for ex, (where, image, redirects) in zip(task.executors, prepared, strict=True):
        try:
            argv = exec_argv(str(config.apptainer.binary), image, ex.command, binds=binds,
                             env=ex.env, workdir=ex.workdir, gpu=gpu)
        except UnsafeValue as exc:
            raise InvalidTask(where, str(exc)) from None
        final.append(ExecutorScript(argv=argv, ignore_error=bool(ex.ignore_error), **redirects))
    script = JobScript(name=job_name(task_id), workdir=workdir, executors=final,
                       options=options, comment=job_comment(task_id))
    return JobPlan(script=script, directories=directories, files=files, warnings=warnings)
