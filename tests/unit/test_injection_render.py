"""Injection matrix, unit level: every hostile payload in every field of a TES task, planned with
`plan_job`, rendered from `task.sh.j2` and run with bash against a fake `apptainer` (no Slurm).

The payloads and field "sites" defined here are shared with `tests/integration/test_injection.py`,
which runs the same tasks through the real server, Slurm and Apptainer. Each (site, payload) is
either refused with a 400 naming the field, or passed through literally: argv stays argv, env values
arrive unchanged, paths stay one path, and no `#SBATCH` line or `--bind` appears that the task did not
ask for. Every payload that could run a command tries to create a canary file (on the host and in
the task's volume); every payload that could add a bind names a secret directory and a `/leak-...`
mount point.

To add a field: add a `Site` to `TES_SITES` (what goes where, which payloads must be refused, what
the integration run must find). WES fields (workflow attachment names, ...) are in
`tests/integration/test_injection.py::WES_SITES`.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from hpc_bridge.config import SiteConfig
from hpc_bridge.containers.apptainer import apptainer_env_value
from hpc_bridge.slurm.script import render
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.staging.workarea import WorkArea
from hpc_bridge.tes.jobspec import InvalidTask, JobPlan, plan_job
from hpc_bridge.tes.models import Task

# ---------------------------------------------------------------------------------------------
# Payloads: `{canary}` is "<host canary file> /cvol/PWNED" (touching both: a command injected on the
# host or inside the container leaves a trace), `{secret}` a directory outside every data root that
# the job user could read, `{leak}` the mount point an injected bind would use.

PAYLOADS: dict[str, str] = {
    "newline": "x\ntouch {canary}\n#",
    "semicolon": "x; touch {canary}; #",
    "subst": "$(touch {canary})",
    "backtick": "`touch {canary}`",
    "squote": "x'; touch {canary}; '",
    "dquote": 'x"; touch {canary}; "',
    "dollar": "$HOME ${{PATH}} $$ $0 $1 $((6*7))",
    "backslash": "\\$(touch {canary}) \\\\ \\n \\",
    "glob": "* ? [a-z] ~ {{a..b}}",
    "comma": "x,{secret}:{leak}",
    "colon": "x:{leak}:rw",
    "dash": "--bind={secret}:{leak}",
    "cr": "x\rtouch {canary}",
    "nul": "x\0touch {canary}",
    "long": "L" * 100_000,
    "long_name": "N" * 300,  # one path component longer than NAME_MAX (255)
    "unicode": "ünïcødé ☃ 𝄞 日本語 \u202e\u2028 🙂",
}

VOLUME = "/cvol"
VOLUME_CANARY = f"{VOLUME}/PWNED"
REPORT = f"{VOLUME}/report.bin"

# The probe: a fixed sh script whose argv is a list of operations; each operation appends one
# NUL-terminated record to REPORT. The TES-level argv under test is the list of operations itself.
PROBE_SCRIPT = r"""set -e
r=/cvol/report.bin
while [ "$#" -gt 0 ]; do
  op=$1; shift
  case "$op" in
    echo) printf '%s\0' "$1" >>"$r"; shift ;;
    env) eval "v=\${$1?unset}"; printf '%s\0' "$v" >>"$r"; shift ;;  # $1: a valid name
    pwd) printf '%s\0' "$(pwd -P)" >>"$r" ;;
    stdin) cat >>"$r"; printf '\0' >>"$r" ;;
    cat) cat -- "$1" >>"$r"; printf '\0' >>"$r"; shift ;;
    exists) if [ -e "$1" ]; then printf '1\0'; else printf '0\0'; fi >>"$r"; shift ;;
    mkdir) mkdir -p -- "$1"; shift ;;
    write) mkdir -p -- "$(dirname -- "$1")"; printf '%s' "$2" >"$1"; shift 2 ;;
    mountinfo) cat /proc/self/mountinfo >>"$r"; printf '\0' >>"$r" ;;
    *) echo "unknown op: $op" >&2; exit 99 ;;
  esac
done
echo probe-stdout
echo probe-stderr >&2
"""
PROBE_STDOUT, PROBE_STDERR = "probe-stdout\n", "probe-stderr\n"
IMAGE = "busybox"


@dataclass(frozen=True)
class Ctx:
    """Where one run's files are: `data` lies inside a data root, `secret` outside every root."""

    data: Path
    secret: Path
    token: str

    @property
    def host_canary(self) -> Path:
        return self.data / "CANARY"

    @property
    def leak(self) -> str:
        return f"/leak-{self.token}"

    def payload(self, pid: str) -> str:
        return PAYLOADS[pid].format(canary=f"{self.host_canary} {VOLUME_CANARY}", secret=self.secret,
                                    leak=self.leak)


def make_ctx(data: Path, secret: Path) -> Ctx:
    return Ctx(data=data, secret=secret, token=uuid.uuid4().hex[:10])


Check = Callable[[dict[str, Any], Any], None]  # (finished task document, API helper) -> asserts


@dataclass
class Builder:
    """One task carrying payload `pid` in every site applied to it.

    Executor 0 (setup) prepares directories and stdin files inside the volume; executor 1 (probe)
    carries the payload in its argv, env, workdir and redirections and reports what it sees;
    `expected` lists the probe's report records (None: compared by a check of its own)."""

    ctx: Ctx
    pid: str
    site: str = ""  # the site being put: expectations and checks are filed under it
    task: dict[str, Any] = field(default_factory=dict)
    setup_ops: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)  # the payload as probe argv (the argv site)
    argv_expected: list[tuple[str, bytes | None]] = field(default_factory=list)
    probe_ops: list[str] = field(default_factory=list)  # verification only
    expected: list[tuple[str, bytes | None]] = field(default_factory=list)
    checks: list[tuple[str, Check]] = field(default_factory=list)
    report_url: str = ""

    def __post_init__(self) -> None:
        self.task = {"name": f"inj-{self.pid}", "volumes": [VOLUME], "inputs": [], "outputs": [],
                     "tags": {}, "resources": {},
                     "executors": [{"image": IMAGE, "command": []},
                                   {"image": IMAGE, "command": [], "env": {}}]}
        self.report_url = str(self.ctx.data / f"report-{self.pid}.bin")

    @property
    def probe(self) -> dict[str, Any]:
        return self.task["executors"][1]

    def op(self, *args: str, expect: str | bytes | None = None, record: bool = True) -> None:
        self.probe_ops.extend(args)
        if record:
            self.expected.append((self.site, expect.encode() if isinstance(expect, str) else expect))

    def check(self, check: Check) -> None:
        self.checks.append((self.site, check))

    def body(self, *, run: bool = True) -> dict[str, Any]:
        """The task as JSON. `run`: with the final probe operations and the report as an output
        (the integration run); without, a minimal task that only carries the payload."""
        task = json.loads(json.dumps(self.task))  # a copy
        probe_ops = list(self.argv)
        setup_ops: list[str] = []
        if run:  # else the payload only where the site put it, so a refusal is the site's own
            setup_ops = self.setup_ops
            probe_ops += [*self.probe_ops, "exists", self.ctx.leak, "exists", VOLUME_CANARY, "mountinfo"]
            task["outputs"].append({"path": REPORT, "url": self.report_url})
        task["executors"][0]["command"] = ["sh", "-c", PROBE_SCRIPT, "setup", *setup_ops]
        task["executors"][1]["command"] = ["sh", "-c", PROBE_SCRIPT, "probe", *probe_ops]
        for key in ("inputs", "outputs", "tags", "resources"):
            if not task[key]:
                del task[key]
        if not task["executors"][1]["env"]:
            del task["executors"][1]["env"]
        return task

    def expected_records(self) -> list[tuple[str, bytes | None]]:
        """(site, record) for each record of the probe's report, in order; None: see the site's checks."""
        return [*self.argv_expected, *self.expected, ("leak", b"0"), ("volume_canary", b"0"),
                ("mountinfo", None)]


@dataclass(frozen=True)
class Site:
    """A place in a TES task where a payload can go.

    `field`: what the 400 message must name; `refuses`: the payloads that must be refused there
    (all others must be accepted and arrive literally); `put`: puts a payload into a Builder
    (and registers what the run must show)."""

    id: str
    field: str
    refuses: frozenset[str]
    put: Callable[[Builder, str], None]
    api: str = "tes"


def _in_volume(sub: str, value: str) -> str:
    return f"{VOLUME}/{sub}/{value}"


# -- site implementations --------------------------------------------------------------------

def _name(b: Builder, v: str) -> None:
    b.task["name"] = v

    def check(doc: dict, api: Any) -> None:
        assert doc["name"] == v
        assert doc["id"] in api.ids(name_prefix=v)

    b.check(check)


def _description(b: Builder, v: str) -> None:
    b.task["description"] = v
    b.check(lambda doc, api: _eq(doc["description"], v))


def _tag_key(b: Builder, v: str) -> None:
    b.task["tags"][v] = "k"

    def check(doc: dict, api: Any) -> None:
        assert doc["tags"][v] == "k"
        assert doc["id"] in api.ids(tag_key=v)

    b.check(check)


def _tag_value(b: Builder, v: str) -> None:
    b.task["tags"]["inj"] = v

    def check(doc: dict, api: Any) -> None:
        assert doc["tags"]["inj"] == v
        assert doc["id"] in api.ids(tag_key="inj", tag_value=v)

    b.check(check)


def _argv(b: Builder, v: str) -> None:
    b.argv += ["echo", v]
    b.argv_expected.append((b.site, v.encode()))


def _image(b: Builder, v: str) -> None:
    b.probe["image"] = v


def _env_name(b: Builder, v: str) -> None:
    b.probe["env"][v] = "set"
    b.op("env", v, expect="set")


def _env_value(b: Builder, v: str) -> None:
    b.probe["env"]["INJ"] = v
    b.op("env", "INJ", expect=v)


def _workdir(b: Builder, v: str) -> None:
    path = _in_volume("wd", v)
    b.setup_ops += ["mkdir", path]
    b.probe["workdir"] = path
    b.op("pwd", expect=path)


def _stdin(b: Builder, v: str) -> None:
    path = _in_volume("si", v)
    b.setup_ops += ["write", path, "stdin-ok"]
    b.probe["stdin"] = path
    b.op("stdin", expect="stdin-ok")


def _stdout(b: Builder, v: str) -> None:
    """Inside the volume: no bind of its own, so `,` and `:` are harmless here."""
    path = _in_volume("so", v)
    b.setup_ops += ["mkdir", posixpath.dirname(path)]
    b.probe["stdout"] = path
    b.check(lambda doc, api: _eq(doc["logs"][0]["logs"][1]["stdout"], PROBE_STDOUT))


def _stderr(b: Builder, v: str) -> None:
    """Outside any volume: its directory becomes a bind of its own."""
    b.probe["stderr"] = f"/se/{v}/err"
    b.check(lambda doc, api: _eq(doc["logs"][0]["logs"][1]["stderr"], PROBE_STDERR))


def _input_path(b: Builder, v: str) -> None:
    path = f"/in/{v}"
    b.task["inputs"].append({"path": path, "content": "content-ok"})
    b.op("cat", path, expect="content-ok")


def _input_content(b: Builder, v: str) -> None:
    b.task["inputs"].append({"path": "/in-content", "content": v})
    b.op("cat", "/in-content", expect=v)


def _host_file(b: Builder, sub: str, v: str, content: str) -> Path:
    """A file named by the payload inside the data root (if the file system can hold the name)."""
    path = b.ctx.data / f"{sub}-{b.pid}" / v
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    except (OSError, ValueError):  # NUL, names too long: the URL then names a missing file
        pass
    return path


def _input_url_path(b: Builder, v: str) -> None:
    path = _host_file(b, "in", v, "file-ok")
    b.task["inputs"].append({"path": "/inpath", "url": str(path)})
    b.op("cat", "/inpath", expect="file-ok")


def _input_url_uri(b: Builder, v: str) -> None:
    path = _host_file(b, "uri", v, "uri-ok")
    b.task["inputs"].append({"path": "/inuri", "url": "file://" + quote(str(path))})
    b.op("cat", "/inuri", expect="uri-ok")


def _host_output(b: Builder, dest: Path, content: str) -> Check:
    def check(doc: dict, api: Any) -> None:
        assert dest.read_text() == content

    return check


def _output_path(b: Builder, v: str) -> None:
    path = _in_volume("op", v)
    dest = b.ctx.data / f"op-{b.pid}.txt"
    b.op("write", path, "output-ok", record=False)
    b.task["outputs"].append({"path": path, "url": str(dest)})
    b.check(_host_output(b, dest, "output-ok"))


def _output_path_bind(b: Builder, v: str) -> None:
    path = f"/ob/{v}/out.txt"
    dest = b.ctx.data / f"ob-{b.pid}.txt"
    b.op("write", path, "bound-output-ok", record=False)
    b.task["outputs"].append({"path": path, "url": str(dest)})
    b.check(_host_output(b, dest, "bound-output-ok"))


def _output_url(b: Builder, v: str) -> None:
    dest = b.ctx.data / f"ou-{b.pid}" / v
    b.op("write", f"{VOLUME}/ou.txt", "url-ok", record=False)
    b.task["outputs"].append({"path": f"{VOLUME}/ou.txt", "url": str(dest)})
    b.check(_host_output(b, dest, "url-ok"))


def _volume(b: Builder, v: str) -> None:
    path = f"/v/{v}"
    b.task["volumes"].append(path)
    b.op("exists", path, expect="1")


def _zone(b: Builder, v: str) -> None:
    b.task["resources"]["zones"] = [v]


def _bp_value(b: Builder, v: str) -> None:
    b.task["resources"]["backend_parameters"] = {"account": v}
    # Slurm keeps account names in lower case
    b.check(lambda doc, api: _eq(api.slurm_field(doc, "Account"), v.lower()))


def _bp_key(b: Builder, v: str) -> None:
    b.task["resources"].setdefault("backend_parameters", {})[v] = "1"
    warning = f"backend parameter {v!r} is not supported here and was ignored"
    b.check(lambda doc, api: _eq(warning in doc["logs"][0]["system_logs"], True))


def _bp_key_strict(b: Builder, v: str) -> None:
    b.task["resources"]["backend_parameters"] = {v: "1"}
    b.task["resources"]["backend_parameters_strict"] = True


def _eq(actual: object, expected: object) -> None:
    assert actual == expected


ALL = frozenset(PAYLOADS)
# What cannot be represented at all, or not in a given place:
NUL = frozenset({"nul"})
ENV_VALUE = frozenset({"nul", "cr"})  # Apptainer drops CR; NUL cannot be in an environment
# Bind specs are `src:dst:opts` joined by `,`, and Apptainer reads `\` as an escape in them (a path
# ending in `\` swallowed the `:ro` that followed); newline/CR/NUL cannot be in one either.
BIND = frozenset({"nul", "comma", "colon", "dash", "newline", "cr", "backslash"})
PATH_TOO_LONG = frozenset({"long", "long_name"})  # > 4096 characters / a component > 255 bytes
PATH = NUL | PATH_TOO_LONG  # a path that needs no bind of its own
WILDCARD = frozenset({"glob", "dollar"})  # `*`, `?`, `[`: an output path is then a pattern
SBATCH_TOKEN = ALL - {"comma", "colon", "dash", "long_name"}  # plain tokens of <= 1024 characters

TES_SITES: list[Site] = [
    Site("name", "name", NUL, _name),
    Site("description", "description", frozenset(), _description),
    Site("tags.key", "tags", NUL, _tag_key),
    Site("tags.value", "tags", NUL, _tag_value),
    Site("executors.command", "executors[1]", NUL, _argv),
    Site("executors.image", "executors[1].image", ALL, _image),
    Site("executors.env.name", "executors[1]", ALL - {"long", "long_name"}, _env_name),
    Site("executors.env.value", "executors[1]", ENV_VALUE, _env_value),
    Site("executors.workdir", "executors[1]", BIND | PATH_TOO_LONG, _workdir),
    Site("executors.stdin", "executors[1].stdin", PATH, _stdin),
    Site("executors.stdout", "executors[1].stdout", PATH, _stdout),
    Site("executors.stderr", "executors[1].stderr", BIND | PATH_TOO_LONG, _stderr),
    Site("inputs.path", "inputs[0].path", BIND | PATH_TOO_LONG, _input_path),
    Site("inputs.content", "inputs[0].content", NUL, _input_content),
    # a bad host path is reported as inputs[N].path ("host path ..."), a missing one as .url
    Site("inputs.url.path", "inputs[0]", BIND | PATH_TOO_LONG, _input_url_path),
    Site("inputs.url.file_uri", "inputs[0]", BIND | PATH_TOO_LONG, _input_url_uri),
    Site("outputs.path", "outputs[0]", PATH | WILDCARD, _output_path),
    Site("outputs.path.bind", "outputs[0]", BIND | PATH_TOO_LONG | WILDCARD, _output_path_bind),
    Site("outputs.url", "outputs[0].url", PATH, _output_url),
    Site("volumes", "volumes[1]", BIND | PATH_TOO_LONG, _volume),
    Site("resources.zones", "resources.zones[0]", ALL, _zone),
    Site("resources.backend_parameters.value", "resources (account)", SBATCH_TOKEN, _bp_value),
    Site("resources.backend_parameters.key", "", frozenset(), _bp_key),
    Site("resources.backend_parameters.key_strict", "resources.backend_parameters", ALL, _bp_key_strict),
]


def refused_cases(sites: list[Site]) -> list[Any]:
    return [pytest.param(s, p, id=f"{s.id}-{p}") for s in sites for p in PAYLOADS if p in s.refuses]


def accepted_cases(sites: list[Site]) -> list[Any]:
    return [pytest.param(s, p, id=f"{s.id}-{p}") for s in sites for p in PAYLOADS if p not in s.refuses]


def accepted_builder(ctx: Ctx, pid: str, sites: list[Site]) -> Builder:
    """One task with payload `pid` in every site that accepts it."""
    b = Builder(ctx, pid)
    value = ctx.payload(pid)
    for site in sites:
        if pid not in site.refuses:
            b.site = site.id
            site.put(b, value)
    return b


def single_builder(ctx: Ctx, site: Site, pid: str) -> Builder:
    b = Builder(ctx, pid, site=site.id)
    site.put(b, ctx.payload(pid))
    return b


# ---------------------------------------------------------------------------------------------
# Unit level: plan + render + bash with a fake apptainer.

FAKE_APPTAINER = """#!{python}
import json, os, sys
record = {{"argv": sys.argv[1:], "stdin": sys.stdin.read(),
          "env": {{k: v for k, v in os.environ.items() if k.startswith("APPTAINERENV_")}}}}
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
print("fake-stdout")
print("fake-stderr", file=sys.stderr)
"""


@pytest.fixture()
def ctx(tmp_path: Path) -> Ctx:
    (tmp_path / "data").mkdir()
    (tmp_path / "secret").mkdir()
    return make_ctx(tmp_path / "data", tmp_path / "secret")


@pytest.fixture()
def unit_config(dev_config: SiteConfig, tmp_path: Path, ctx: Ctx) -> SiteConfig:
    """The dev site, with its data root, work root and apptainer binary in tmp_path; every payload is
    an allowed account (an account's allow-list is checked after the value is found safe)."""
    fake = tmp_path / "apptainer"
    fake.write_text(FAKE_APPTAINER.format(python=sys.executable, log=str(tmp_path / "apptainer.log")))
    fake.chmod(0o755)
    storage = dev_config.storage.model_copy(update={"data_roots": [tmp_path / "data"],
                                                    "work_root": tmp_path / "work"})
    apptainer = dev_config.apptainer.model_copy(update={"binary": fake})
    limits = dev_config.limits.model_copy(update={"allowed_accounts": [ctx.payload(p) for p in PAYLOADS]})
    return dev_config.model_copy(update={"storage": storage, "apptainer": apptainer, "limits": limits})


def plan(body: dict[str, Any], config: SiteConfig) -> JobPlan:
    """What POST /tasks does before storing a task (the API turns either error into a 400)."""
    task = Task.model_validate(body)
    return plan_job(task, task_id="t1", workdir=str(config.storage.work_root / "t1"), config=config,
                    schemes=Schemes(config), owner="local")


@pytest.mark.parametrize(("site", "pid"), refused_cases(TES_SITES))
def test_refused_at_planning(site: Site, pid: str, ctx: Ctx, unit_config: SiteConfig) -> None:
    body = single_builder(ctx, site, pid).body(run=False)
    with pytest.raises((ValidationError, InvalidTask)) as err:
        plan(body, unit_config)
    if isinstance(err.value, InvalidTask):
        assert err.value.field.startswith(site.field), err.value
    else:
        locs = [".".join(str(p) for p in e["loc"]) for e in err.value.errors()]
        want = site.field.replace("[", ".").replace("]", "").split(" ")[0]
        assert any(loc.startswith(want) for loc in locs), (locs, want)


@pytest.mark.parametrize(("site", "pid"), accepted_cases(TES_SITES))
def test_accepted_at_planning(site: Site, pid: str, ctx: Ctx, unit_config: SiteConfig) -> None:
    plan(single_builder(ctx, site, pid).body(run=False), unit_config)


def _sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


@pytest.mark.parametrize("pid", list(PAYLOADS))
def test_rendered_job_passes_every_accepted_payload_literally(pid: str, ctx: Ctx, unit_config: SiteConfig,
                                                              tmp_path: Path) -> None:
    """Run the real script with bash: what reaches `apptainer` is exactly what the plan says, the
    TES command is its argv tail, env values arrive escaped for Apptainer's evaluation, every bind
    is one planned `src:dst:mode`, and no command of the payload ran on the host."""
    builder = accepted_builder(ctx, pid, TES_SITES)
    job = plan(builder.body(run=False), unit_config)
    # The collector would copy outputs the fake apptainer never wrote: leave it out here.
    script = dataclasses.replace(job.script, collect=None)
    text = render(script, unit_config.template_search_path)

    # #SBATCH: one line per planned option (+ job-name, comment, output, open-mode), each one token.
    lines = _sbatch_lines(text)
    assert len(lines) == 4 + len(script.options), lines
    assert all(len(line.split()) == 2 for line in lines), lines
    for option, value in script.options:
        assert (f"#SBATCH --{option}={value}" if value is not None else f"#SBATCH --{option}") in lines
    if "account" in builder.task["resources"].get("backend_parameters", {}):
        assert f"#SBATCH --account={ctx.payload(pid)}" in lines

    # Lay the work area out as the daemon does, plus what the setup executor would create.
    workdir = Path(script.workdir)
    area = WorkArea(workdir)
    area.create()
    for directory in job.directories:
        area.make_dirs(area.relative(directory))
    for name, content in job.files.items():
        area.write(area.relative(name), content)
    for ex in script.executors:
        for stream in ("stdin", "stdout", "stderr"):
            path = getattr(ex, stream)
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                if stream == "stdin":
                    Path(path).write_text("stdin-ok")
    (workdir / "job.sh").write_text(text)
    proc = subprocess.run(["bash", str(workdir / "job.sh")], cwd=workdir, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, (proc.stderr.decode(errors="replace"),
                                  (workdir / "record.jsonl").read_text())

    assert not ctx.host_canary.exists(), "a payload's command ran on the host"
    calls = [json.loads(line) for line in (tmp_path / "apptainer.log").read_text().splitlines()]
    assert len(calls) == len(script.executors)
    binary = str(unit_config.apptainer.binary)
    for call, planned, tes_ex in zip(calls, script.executors, builder.body(run=False)["executors"],
                                     strict=True):
        at = list(planned.argv).index(binary)
        assert call["argv"] == list(planned.argv)[at + 1:]
        assert call["argv"][-len(tes_ex["command"]):] == tes_ex["command"]
        assert call["env"] == {f"APPTAINERENV_{k}": apptainer_env_value(v)
                               for k, v in tes_ex.get("env", {}).items()}
        binds = [call["argv"][i + 1] for i, a in enumerate(call["argv"][:-len(tes_ex["command"])])
                 if a == "--bind"]
        assert len(binds) == len(job_binds(job)), binds
        assert all(len(spec.split(":")) == 3 and "," not in spec for spec in binds), binds
        assert not any(ctx.leak in spec or str(ctx.secret) in spec for spec in binds)
        if "workdir" in tes_ex:
            assert call["argv"][call["argv"].index("--pwd") + 1] == tes_ex["workdir"]
        if "stdin" in tes_ex:
            assert call["stdin"] == "stdin-ok"
        stdout, stderr = script.output_paths(script.executors.index(planned))
        assert Path(stdout).read_text() == "fake-stdout\n"
        assert Path(stderr).read_text() == "fake-stderr\n"


def job_binds(job: JobPlan) -> list[str]:
    argv = list(job.script.executors[0].argv)
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]


# How a careless script would have used each value; the payload must fire there (positive control).
NAIVE = {
    "newline": "echo {}",
    "semicolon": "echo {}",
    "subst": 'echo "{}"',
    "backtick": 'echo "{}"',
    "squote": "echo '{}'",
    "dquote": 'echo "{}"',
    "backslash": 'echo "{}/x"',  # `$` escaped but not `\\`: the escape itself is escaped
}


@pytest.mark.parametrize("pid", sorted(NAIVE))
def test_control_payloads_fire_in_a_naive_script(pid: str, ctx: Ctx) -> None:
    value = ctx.payload(pid)
    if pid == "backslash":
        value = value.replace("$", "\\$")
    subprocess.run(["bash", "-c", NAIVE[pid].format(value)], capture_output=True, timeout=30, cwd=ctx.data,
                   check=False)
    assert ctx.host_canary.exists(), f"payload {pid!r} would not have shown an injection"


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize("pid", sorted(set(PAYLOADS) - ENV_VALUE))
def test_env_values_survive_a_double_quoted_evaluation(pid: str, shell: str, ctx: Ctx) -> None:
    """Apptainer (1.4.5) escapes `"` in an APPTAINERENV_* value and evaluates the result inside
    double quotes in the container (measured: a raw `a\\"b` fails with "reached EOF without closing
    quote"). Model that with a shell: the escaped value must come back unchanged and run nothing."""
    value = ctx.payload(pid)
    evaluated = apptainer_env_value(value).replace('"', '\\"')
    proc = subprocess.run([shell, "-c", 'eval "v=\\"$1\\""; printf %s "$v"', "sh", evaluated],
                          capture_output=True, timeout=30, cwd=ctx.data, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == value
    assert not ctx.host_canary.exists()
