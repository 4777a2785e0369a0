"""A TES task -> the plan of its Slurm job (pure apart from looking up input and image files).

The same function validates a task at POST time (so bad values get a 400 naming the field) and
builds the job at submission time; nothing here writes to disk.
"""

from __future__ import annotations

import functools
import math
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from hpc_bridge.c4gh.keys import Crypt4ghKeyError, job_python, parse_recipients, required_root
from hpc_bridge.config import SiteConfig, UserLimits
from hpc_bridge.containers.apptainer import Bind, UnsafeValue, exec_argv
from hpc_bridge.containers.images import ImageError, RegistryImage, resolve_image
from hpc_bridge.jobside.collect import C4GH_SUFFIX, Manifest, OutputSpec, manifest_json
from hpc_bridge.slurm.script import DecryptStep, ExecutorScript, InputCheck, JobScript, sbatch_value
from hpc_bridge.slurm.timelimit import gpu_count, minutes, node_count
from hpc_bridge.staging.areas import Area
from hpc_bridge.staging.drs import Resolved, is_drs
from hpc_bridge.staging.schemes import SchemeError, Schemes
from hpc_bridge.tes.models import NAME_MAX, FileType, Output, Resources, Task

FLAG_PARAMETERS = {"exclusive"}
# Where the job leaves outputs the daemon uploads after it (object storage), one entry per output index.
UPLOADS = "uploads"
SCRATCH = "scratch"  # the executors' /tmp and /var/tmp (apptainer --workdir)
TRUE_VALUES = {"", "true", "yes", "1"}
# Crypt4GH tags (README: Crypt4GH): the public keys a task's outputs are encrypted to; "false" keeps
# `.c4gh` inputs encrypted (passed as they are); "true" removes all the executors wrote into the work
# area when the job ends, as a task with Crypt4GH outputs or inputs always does.
RECIPIENTS_TAG = "crypt4gh_recipients"
DECRYPT_TAG = "crypt4gh_decrypt"
SCRUB_TAG = "crypt4gh_scrub"
DECRYPT_SPEC = "c4gh-inputs.json"
# What a job's executors can write in its work area (removed at the end by a Crypt4GH task).
WRITABLE_DIRS = ("inputs", "outputs", "volumes", "paths", SCRATCH)
# Backend parameters choosing whose allocation (and which nodes) a job uses -> the limit listing
# the names a task may choose.
ALLOW_LISTS = {"account": "allowed_accounts", "qos": "allowed_qos", "partition": "allowed_partitions"}


class InvalidTask(ValueError):
    """A task that cannot run here; `field` is the offending field's path (e.g. executors[0].env)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Download:
    """An input the daemon fetches on the login node before submitting the job; `drs`: the DRS
    object it is (its access URL's headers, and the size and checksum the download must have)."""

    url: str
    dest: str
    type: str  # FILE or DIRECTORY
    drs: Resolved | None = None


@dataclass(frozen=True)
class DecryptInput:
    """A `.c4gh` input: the job decrypts host file `source` into `dest` (in its private directory),
    with the session keys the daemon reads from the header at submission (`DECRYPT_SPEC`)."""

    index: int
    source: str
    dest: str


@dataclass
class JobPlan:
    """What the daemon must do for a task: prepare these directories, files, downloads and image
    pulls, then submit the script. `input_types` are the resolved FILE/DIRECTORY of each input;
    `decrypts` need their session keys written to `DECRYPT_SPEC` in the work area."""

    script: JobScript
    directories: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)
    pulls: list[RegistryImage] = field(default_factory=list)
    input_types: list[str] = field(default_factory=list)
    decrypts: list[DecryptInput] = field(default_factory=list)


@functools.cache
def jobside_source(name: str) -> str:
    """A job-side program (the output collector, the Crypt4GH decryption): one file with no import
    of hpc-bridge, copied into the work area, so compute nodes need nothing of its install."""
    return resources.files("hpc_bridge.jobside").joinpath(name).read_text()


def _same_size(path: str, drs: Resolved, where: str) -> None:
    """A DRS object reached as a file in a data root (zero copy: never read here) must at least
    have the size its DRS record gives."""
    if drs.size is None:
        return
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise InvalidTask(where, f"{drs.drs}: {path}: {exc.strerror}") from None
    if size != drs.size:
        raise InvalidTask(where, f"{drs.drs}: {path} has {size} bytes, the DRS object {drs.size}")


def is_c4gh(url: str) -> bool:
    return urlsplit(url).path.endswith(C4GH_SUFFIX)


def crypt4gh_recipients(task: Task, config: SiteConfig) -> tuple[str, ...]:
    """The public keys the task's outputs are encrypted to (its tag), checked; () for none."""
    text = (task.tags or {}).get(RECIPIENTS_TAG)
    if text is None:
        return ()
    where = f"tags.{RECIPIENTS_TAG}"
    if not config.crypt4gh.enabled:
        raise InvalidTask(where, "this site does not offer Crypt4GH (crypt4gh.enabled is off)")
    try:
        return tuple(parse_recipients(text))
    except Crypt4ghKeyError as exc:
        raise InvalidTask(where, str(exc)) from None


def job_name(task_id: str) -> str:
    return f"tes-{task_id}"


def job_comment(task_id: str) -> str:
    """The task id travels with the Slurm job, so a restarted daemon can adopt jobs it submitted."""
    return f"hpc-bridge:{task_id}"


def task_id_from_comment(comment: str) -> str | None:
    return comment.removeprefix("hpc-bridge:") if comment.startswith("hpc-bridge:") else None


def _mb(gb: float) -> str:
    return f"{max(1, math.ceil(gb * 1024))}M"


def sbatch_options(task: Task, config: SiteConfig, limits: UserLimits | None = None,
                   ) -> tuple[list[tuple[str, str | None]], list[str], bool]:
    """Resources and backend parameters -> (#SBATCH options, warnings, needs GPU).
    `limits` are the submitting user's (default: the site's)."""
    res = task.resources
    limits = limits or config.limits
    opts: dict[str, str | None] = {}
    warnings: list[str] = []
    named: list[str] = []  # the account and QoS the task chose itself, checked once they are safe
    if config.slurm.default_partition:
        opts["partition"] = config.slurm.default_partition
    if config.slurm.account:
        opts["account"] = config.slurm.account
    if config.limits.default_time:
        opts["time"] = config.limits.default_time
    if res is not None:
        if res.cpu_cores is not None:
            opts["cpus-per-task"] = str(res.cpu_cores)
        if res.ram_gb is not None:
            opts["mem"] = _mb(res.ram_gb)
        if res.disk_gb is not None:
            opts["tmp"] = _mb(res.disk_gb)
        if res.zones:
            opts["partition"] = _partition(res.zones[0], config, limits, "resources.zones[0]")
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
                opts["partition"] = _partition(value, config, limits, "resources.backend_parameters.partition")
            elif key in FLAG_PARAMETERS:
                if value.strip().lower() in TRUE_VALUES:
                    opts[key] = None
            else:
                opts[key] = value
                if key in ALLOW_LISTS:
                    named.append(key)
    for key, option in opts.items():
        if option is not None:
            try:
                sbatch_value(option)
            except UnsafeValue as exc:
                raise InvalidTask(f"resources ({key})", str(exc)) from None
    for key in named:
        _allowed(key, str(opts[key]), getattr(limits, ALLOW_LISTS[key]), config,
                 f"resources.backend_parameters.{key}")
    _check_limits(res, opts, limits)
    gpu = "gpus" in opts or "gpu" in (opts.get("gres") or "")
    return list(opts.items()), warnings, gpu


def _check_limits(res: Resources | None, opts: dict[str, str | None], limits: UserLimits) -> None:
    """What Slurm will grant against the user's limits. `--cpus-per-task`, `--mem`, `--tmp` and
    `--gres` are per node, so they count once for every node `--nodes` allows; a time limit Slurm
    reads as none (`0`, `UNLIMITED`) exceeds any maximum, and a time cap also bounds a task that asks
    for none (else the partition's default, possibly longer, would apply); `exclusive` takes whole
    nodes, which no limit here bounds."""
    where = "resources.backend_parameters"
    if limits.max_time_minutes is not None and opts.get("time") is None:
        opts["time"] = str(limits.max_time_minutes)
    if opts.get("time") is not None:
        try:
            asked = minutes(str(opts["time"]))
        except ValueError as exc:
            raise InvalidTask(f"{where}.time", str(exc)) from None
        if limits.max_time_minutes is not None and (asked is None or asked > limits.max_time_minutes):
            what = "no time limit to Slurm" if asked is None else f"{asked} minutes"
            raise InvalidTask(f"{where}.time", f"{opts['time']} ({what}) exceeds your maximum of "
                              f"{limits.max_time_minutes} minutes")
    try:
        nodes = node_count(str(opts["nodes"])) if opts.get("nodes") is not None else 1
    except ValueError as exc:
        raise InvalidTask(f"{where}.nodes", str(exc)) from None
    if limits.max_nodes is not None and nodes > limits.max_nodes:
        raise InvalidTask(f"{where}.nodes", f"{nodes} nodes exceed your maximum of {limits.max_nodes}")
    if "exclusive" in opts and not limits.allow_exclusive:
        raise InvalidTask(f"{where}.exclusive", "whole nodes are not allowed here (the site's "
                                                "limits.allow_exclusive is off for you)")
    res = res or Resources()
    per_node = [  # (field, amount per node, maximum); a task naming no cores gets one per node
        ("resources.cpu_cores" if res.cpu_cores is not None else f"{where}.nodes",
         res.cpu_cores or 1, limits.max_cpu_cores),
        ("resources.ram_gb", res.ram_gb, limits.max_ram_gb),
        ("resources.disk_gb", res.disk_gb, limits.max_disk_gb),
    ]
    for name, amount, maximum in per_node:
        if amount is not None and maximum is not None and amount * nodes > maximum:
            total = f"{amount:g}" if nodes == 1 else f"{amount:g} on each of {nodes} nodes ({amount * nodes:g})"
            raise InvalidTask(name, f"{total} exceeds the maximum of {maximum:g}")
    if limits.max_gpus is not None:
        counts: dict[str, int] = {}
        for option in ("gpus", "gres"):
            try:
                counts[option] = gpu_count(option, opts.get(option))
            except ValueError as exc:
                raise InvalidTask(f"{where}.{option}", str(exc)) from None
        gpus = counts["gpus"] + counts["gres"] * nodes  # --gpus is per job, --gres per node
        if gpus > limits.max_gpus:
            each = f" ({counts['gres']} per node by gres on {nodes} nodes)" if counts["gres"] and nodes > 1 else ""
            raise InvalidTask(f"{where}.gpus", f"{gpus} GPU(s){each} exceed your maximum of {limits.max_gpus}")


def _allowed(option: str, value: str, allowed: list[str] | None, config: SiteConfig, where: str) -> None:
    """Account, QoS and partition choose whose allocation and which nodes a job uses. In run_as.mode
    service every job is the service account's, so only listed names pass (no list: none may be
    chosen); a job run as its user's own Unix user is bound by that user's Slurm associations, so
    without a list any name goes to Slurm."""
    if allowed is None:
        if config.run_as.enabled:
            return
        raise InvalidTask(where, f"this site does not let tasks choose their {option}: every job runs as its "
                                 f"service account (a site lists the allowed ones in limits.{ALLOW_LISTS[option]})")
    for name in value.split(",") if option == "partition" else [value]:  # --partition takes a list
        if name not in allowed:
            raise InvalidTask(where, f"{option} {name!r} is not allowed for you (allowed: "
                                     f"{', '.join(allowed) or 'none'})")


def _partition(name: str, config: SiteConfig, limits: UserLimits, where: str) -> str:
    """A partition the task names, or each of a list: one of the site's (`slurm.partitions`), and of
    the user's `allowed_partitions` when set (without, the site's list is the bound)."""
    if config.slurm.partitions:
        for part in name.split(","):
            if part not in config.slurm.partitions:
                raise InvalidTask(where, f"unknown partition {part!r} (this site has: "
                                         f"{', '.join(config.slurm.partitions)})")
        if limits.allowed_partitions is None:
            return name
    _allowed("partition", name, limits.allowed_partitions, config, where)
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


def is_tree_output(out: Output) -> bool:
    """A DIRECTORY or a wildcard: its URL is the base of many files."""
    return out.type == FileType.DIRECTORY or is_wildcard(out.path)


def is_wildcard(path: str) -> bool:
    return any(c in path for c in "*?[")


def _glob_base(path: str) -> str:
    """The directory above the first path component that has a wildcard."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if is_wildcard(part):
            return "/".join(parts[:i]) or "/"
    return posixpath.dirname(path)


def plan_job(task: Task, *, task_id: str, workdir: str, config: SiteConfig, schemes: Schemes,
             owner: str, limits: UserLimits | None = None, resolved: Mapping[int, Resolved] | None = None) -> JobPlan:
    """`owner`'s areas bound the task's files; `limits` are the owner's (`config.limits.for_owner`;
    default: the site's). The daemon plans again with the same limits at submission, so both see
    the same time limit. `resolved`: what each `drs://` input was resolved to at creation (its
    access URL then stands for it, under that URL's own rules)."""
    limits = limits or config.limits
    options, warnings, gpu = sbatch_options(task, config, limits)
    directories: list[str] = []
    files: dict[str, str] = {}
    binds: list[Bind] = []
    checks: list[InputCheck] = []
    downloads: list[Download] = []
    input_types: list[str] = []
    decrypts: list[DecryptInput] = []
    c4gh = config.crypt4gh
    tags = task.tags or {}
    recipients = crypt4gh_recipients(task, config)
    decrypting = (c4gh.enabled and c4gh.secret_key is not None
                  and tags.get(DECRYPT_TAG, "true").strip().lower() in TRUE_VALUES)
    private = f"{c4gh.private_tmp}/hpc-bridge-{task_id}"
    used: set[str] = set()  # the binds' container paths, one lookup per bind (thousands of inputs)

    def add_bind(host: str, container: str, where: str, read_only: bool = False) -> Bind:
        container = normalize(container)
        if container == "/" or container.split("/")[1] in ("proc", "sys", "dev"):
            raise InvalidTask(where, f"cannot mount over {container!r}")
        if container in used:
            raise InvalidTask(where, f"{container!r} is already used by another input, output or volume")
        bind = Bind(host, container, read_only)
        try:
            bind.spec()
        except UnsafeValue as exc:
            raise InvalidTask(where, str(exc)) from None
        used.add(container)
        binds.append(bind)
        return bind

    for i, volume in enumerate(task.volumes or []):
        host = f"{workdir}/volumes/{i}"
        directories.append(host)
        add_bind(host, volume, f"volumes[{i}]")

    for i, item in enumerate(task.inputs or []):
        where = f"inputs[{i}]"
        host = f"{workdir}/inputs/{i}"
        if item.content is not None:  # TES: when content is set, url is ignored
            if "\0" in item.content:
                raise InvalidTask(f"{where}.content", "NUL bytes are not allowed")
            max_content = min(config.storage.max_content_bytes,
                              limits.max_content_bytes if limits.max_content_bytes is not None
                              else config.storage.max_content_bytes)
            if len(item.content.encode()) > max_content:
                raise InvalidTask(f"{where}.content", f"larger than the maximum of {max_content} "
                                  "bytes; use a url")
            if item.type == FileType.DIRECTORY:
                raise InvalidTask(f"{where}.type", "an input with content is a FILE")
            files[host] = item.content
            input_types.append(FileType.FILE)
            add_bind(host, item.path, f"{where}.path", read_only=True)
            continue
        if not item.url:
            raise InvalidTask(where, "an input needs a url or content")
        drs = (resolved or {}).get(i)
        if drs is None and is_drs(item.url):
            raise InvalidTask(f"{where}.url", "a drs:// input that was not resolved when the task was created")
        url = drs.url if drs is not None else item.url
        try:
            source = schemes.for_url(url).input(url, item.type, owner)
        except SchemeError as exc:
            if drs is not None:  # its access URL may be a credential: never shown
                raise InvalidTask(f"{where}.url", f"{item.url}: its {urlsplit(url).scheme} access is not one "
                                  "this task may read (outside your areas, or not a FILE)") from None
            raise InvalidTask(f"{where}.url", str(exc)) from None
        if drs is not None and source.how != "download":
            _same_size(source.source, drs, f"{where}.url")
        input_types.append(source.type)
        if decrypting and source.type == FileType.FILE and is_c4gh(url):
            if config.run_as.enabled:
                raise InvalidTask(f"{where}.url", "this site decrypts Crypt4GH inputs only when jobs run as "
                                  f"its service account (run_as.mode service); tag {DECRYPT_TAG}: false "
                                  "passes the file encrypted")
            if source.how == "download":
                downloads.append(Download(url, host, source.type, drs))
            else:
                checks.append(InputCheck(i, source.source))
            plain = f"{private}/{i}"
            decrypts.append(DecryptInput(i, host if source.how == "download" else source.source, plain))
            add_bind(plain, item.path, f"{where}.path", read_only=True)
            continue
        if source.how == "download":
            downloads.append(Download(url, host, source.type, drs))
        else:
            checks.append(InputCheck(i, source.source, source.how,
                                     None if source.how == "bind" else host))
        add_bind(source.source if source.how == "bind" else host, item.path, f"{where}.path",
                 read_only=True)
    if downloads or any(c.dest for c in checks):
        directories.append(f"{workdir}/inputs")

    outputs: list[OutputSpec] = []
    uploads = f"{workdir}/{UPLOADS}"
    any_upload = False
    for i, out in enumerate(task.outputs or []):
        where = f"outputs[{i}]"
        try:
            dest = schemes.for_url(out.url).output(out.url, owner, directory=is_tree_output(out))
        except SchemeError as exc:
            raise InvalidTask(f"{where}.url", str(exc)) from None
        upload = dest is None  # the job leaves it in the work area, the daemon uploads it afterwards
        if upload and recipients:
            raise InvalidTask(f"{where}.url", "Crypt4GH outputs go to a data root (file://), not object storage")
        if dest is not None and not recipients and (root := required_root(dest, config.crypt4gh)) is not None:
            raise InvalidTask(f"{where}.url", f"outputs under {root} must be encrypted: name their readers "
                              f"in the tag {RECIPIENTS_TAG} (base64 Crypt4GH public keys)")
        if dest is None:
            dest = f"{uploads}/{i}"
            any_upload = True
        if len(dest.encode()) >= 4096 or any(len(p.encode()) > NAME_MAX for p in dest.split("/")):
            raise InvalidTask(f"{where}.url", f"path too long for a file system ({len(dest)} characters, "
                                              f"or a component longer than {NAME_MAX} bytes)")
        path = normalize(out.path)
        wildcard = is_wildcard(path)
        prefix = None
        if wildcard:
            if not out.path_prefix:
                raise InvalidTask(f"{where}.path_prefix", "required when the path has wildcards")
            prefix = out.path_prefix
            if not path.startswith(prefix):
                raise InvalidTask(f"{where}.path_prefix", f"{prefix!r} is not a prefix of {path!r}")
            needed = _glob_base(path)
        elif out.type == FileType.DIRECTORY:
            needed = path
        else:
            needed = posixpath.dirname(path)
        bind = _covering(needed, binds)
        if bind is None:
            if needed == "/":
                raise InvalidTask(f"{where}.path", "an output must be inside a directory, not at /")
            host = f"{workdir}/outputs/{i}"
            directories.append(host)
            bind = add_bind(host, needed, f"{where}.path")
        elif bind.read_only:
            raise InvalidTask(f"{where}.path", f"{path!r} is inside a read-only input")
        outputs.append(OutputSpec(index=i, type=out.type.value if out.type else None, path=path,
                                  path_prefix=prefix, wildcard=wildcard, bind_container=bind.container,
                                  bind_host=bind.host, url=out.url, dest=dest, quote=not upload))

    # First every image and redirection (which may add binds), then the argv: every executor
    # sees every bind, so volumes and redirected files are shared between executors.
    prepared = []
    pulls: dict[str, RegistryImage] = {}
    implicit = 0
    for i, ex in enumerate(task.executors):
        where = f"executors[{i}]"
        try:
            image = resolve_image(ex.image, config.apptainer)
        except ImageError as exc:
            raise InvalidTask(f"{where}.image", str(exc)) from None
        if isinstance(image, RegistryImage):
            pulls.setdefault(image.normalized, image)
        redirects: dict[str, str | None] = {}
        roots: dict[str, str] = {}
        for stream in ("stdin", "stdout", "stderr"):
            requested: str | None = getattr(ex, stream)
            if requested is None:
                redirects[stream] = None
                continue
            path = normalize(requested)
            bind = _covering(path, binds)
            if bind is None:
                if stream == "stdin":
                    raise InvalidTask(f"{where}.stdin", "must be a path inside an input or a volume")
                # A stdout/stderr file outside any volume: its directory gets a private host dir.
                hostdir = f"{workdir}/paths/{implicit}"
                implicit += 1
                directories.append(hostdir)
                bind = add_bind(hostdir, posixpath.dirname(path), f"{where}.{stream}")
            elif stream != "stdin" and bind.read_only:
                raise InvalidTask(f"{where}.{stream}", f"{path!r} is inside a read-only input")
            redirects[stream] = bind.host + path[len(bind.container):]
            roots[stream] = bind.host
        prepared.append((where, str(image.sif), redirects, roots))

    # The executors' /tmp and /var/tmp: on disk in the work area, shared by the task's executors.
    scratch = f"{workdir}/{SCRATCH}"
    directories.append(scratch)
    # Parents before children: Apptainer mounts in order, and a later parent would hide a child.
    binds.sort(key=lambda b: b.container.count("/"))
    final = []
    for ex, (where, sif, redirects, roots) in zip(task.executors, prepared, strict=True):
        try:
            argv = exec_argv(str(config.apptainer.binary), sif, ex.command, binds=binds,
                             env=ex.env, workdir=ex.workdir, gpu=gpu, scratch=scratch)
        except UnsafeValue as exc:
            raise InvalidTask(where, str(exc)) from None
        final.append(ExecutorScript(argv=argv, ignore_error=bool(ex.ignore_error), roots=roots, **redirects))
    collect = None
    if outputs:
        manifest = f"{workdir}/outputs.json"
        # The job checks each destination again: inside a data root, and inside the area the
        # owner may write (where `keep` areas never have an existing file replaced).
        areas = {a.path: a for out in outputs
                 if (a := schemes.areas.area_of(out.dest, owner, write=True)) is not None}
        dest_roots = [str(r) for r in config.storage.data_roots]
        if any_upload:
            directories.append(uploads)
            dest_roots.append(uploads)
            areas[uploads] = Area(uploads)
        files[manifest] = manifest_json(Manifest(
            workdir=workdir, outputs=tuple(outputs), roots=tuple(dest_roots),
            areas=tuple(sorted(areas)), keep=tuple(sorted(path for path, a in areas.items() if a.keep)),
            recipients=recipients))
        collector = f"{workdir}/collect_outputs.py"
        files[collector] = jobside_source("collect.py")
        python = job_python(c4gh, config.storage) if recipients else config.storage.job_python
        collect = [str(python), "-I", collector, manifest]
    decrypt = None
    if decrypts:
        program = f"{workdir}/decrypt_inputs.py"
        files[program] = jobside_source("decrypt.py")
        decrypt = DecryptStep(private_dir=private, first=decrypts[0].index,
                              argv=[str(job_python(c4gh, config.storage)), "-I", program, f"{workdir}/{DECRYPT_SPEC}"])
    scrub = bool(recipients or decrypts) or tags.get(SCRUB_TAG, "false").strip().lower() in TRUE_VALUES
    script = JobScript(name=job_name(task_id), workdir=workdir, executors=final, options=options,
                       comment=job_comment(task_id), inputs=checks, collect=collect, scratch=scratch,
                       decrypt=decrypt, scrub=[f"{workdir}/{d}" for d in WRITABLE_DIRS] if scrub else (),
                       log_tail=config.storage.log_tail_bytes if scrub else 0)
    return JobPlan(script=script, directories=directories, files=files, warnings=warnings,
                   downloads=downloads, pulls=list(pulls.values()), input_types=input_types,
                   decrypts=decrypts)

