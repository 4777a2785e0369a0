"""TES task -> Slurm job plan: resources, backend parameters, binds and redirections."""

from __future__ import annotations

import pytest

from hpc_bridge.config import SiteConfig
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.tes.jobspec import InvalidTask, JobPlan, plan_job
from hpc_bridge.tes.models import Task

WORK = "/work/t1"


def task(**fields: object) -> Task:
    body = {"executors": [{"image": "busybox", "command": ["true"]}], **fields}
    return Task.model_validate(body)


def make_plan(t: Task, config: SiteConfig) -> JobPlan:
    return plan_job(t, task_id="t1", workdir=WORK, config=config, schemes=Schemes(config), owner="local")


def options(t: Task, config: SiteConfig) -> dict[str, str | None]:
    return dict(make_plan(t, config).script.options)


def test_resources_become_sbatch_options(dev_config: SiteConfig) -> None:
    opts = options(task(resources={"cpu_cores": 2, "ram_gb": 1.5, "disk_gb": 0.0001,
                                   "zones": ["long"]}), dev_config)
    assert opts == {"partition": "long", "cpus-per-task": "2", "mem": "1536M", "tmp": "1M"}


def test_backend_parameters_allow_list_and_flags(dev_config: SiteConfig) -> None:
    plan = make_plan(task(resources={"backend_parameters": {
        "time": "00:10:00", "exclusive": "true", "gres": "gpu:1", "color": "blue"}}), dev_config)
    opts = dict(plan.script.options)
    assert opts["time"] == "00:10:00" and opts["exclusive"] is None and opts["gres"] == "gpu:1"
    assert "color" not in opts
    assert plan.warnings == ["backend parameter 'color' is not supported here and was ignored"]
    assert "--nv" in plan.script.executors[0].argv


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"resources": {"backend_parameters": {"color": "blue"}, "backend_parameters_strict": True}},
         "resources.backend_parameters.color"),
        ({"resources": {"zones": ["nope"]}}, "resources.zones[0]"),
        ({"resources": {"backend_parameters": {"partition": "nope"}}}, "resources.backend_parameters.partition"),
        ({"resources": {"backend_parameters": {"time": "1:00\n#SBATCH --uid=0"}}}, "resources (time)"),
        ({"resources": {"backend_parameters": {"account": "a b"}}}, "resources (account)"),
        ({"volumes": ["/data,/etc"]}, "volumes[0]"),
        ({"volumes": ["/a:/b"]}, "volumes[0]"),
        ({"volumes": ["/"]}, "volumes[0]"),
        ({"volumes": ["/proc/x"]}, "volumes[0]"),
        ({"volumes": ["//dev"]}, "volumes[0]"),
        ({"volumes": ["/x/../sys"]}, "volumes[0]"),
        ({"inputs": [{"path": "/in/a", "content": "x"}],
          "executors": [{"image": "busybox", "command": ["x"], "stdout": "/in/a"}]}, "executors[0].stdout"),
        ({"executors": [{"image": "busybox", "command": ["x"], "env": {"BAD-NAME": "1"}}]}, "executors[0]"),
        ({"executors": [{"image": "/opt/hpc-bridge-dev/images/nope.sif", "command": ["x"]}]}, "executors[0].image"),
        ({"executors": [{"image": "/etc/passwd.sif", "command": ["x"]}]}, "executors[0].image"),
        ({"executors": [{"image": "Ubuntu;rm:22.04", "command": ["x"]}]}, "executors[0].image"),
        ({"executors": [{"image": "busybox", "command": ["x"], "stdin": "/nowhere/in"}]}, "executors[0].stdin"),
        ({"inputs": [{"path": "/in/a", "url": "file:///etc/passwd"}]}, "inputs[0].url"),
        ({"inputs": [{"path": "/in/a", "url": "s3://bucket/key"}]}, "inputs[0].url"),
        ({"inputs": [{"path": "/in/a"}]}, "inputs[0]"),
        ({"outputs": [{"path": "/out/a", "url": "file:///tmp/a"}]}, "outputs[0].url"),
    ],
)
def test_invalid_tasks_name_the_field(dev_config: SiteConfig, fields: dict, where: str) -> None:
    with pytest.raises(InvalidTask) as info:
        make_plan(task(**fields), dev_config)
    assert info.value.field == where


def test_site_limits_are_enforced(dev_config: SiteConfig) -> None:
    config = dev_config.model_copy(update={"limits": dev_config.limits.model_copy(
        update={"max_cpu_cores": 2, "default_time": "01:00:00"})})
    assert options(task(), config)["time"] == "01:00:00"
    with pytest.raises(InvalidTask, match="exceeds the maximum of"):
        make_plan(task(resources={"cpu_cores": 3}), config)


def test_volumes_inputs_and_redirections_share_binds(dev_config: SiteConfig) -> None:
    t = task(volumes=["/shared"], inputs=[{"path": "/in/data.txt", "content": "x"}], executors=[
        {"image": "busybox", "command": ["a"], "stdout": "/shared/out.txt", "stdin": "/in/data.txt"},
        {"image": "busybox", "command": ["b"], "stderr": "/logs/b.err", "workdir": "/shared"},
    ])
    plan = make_plan(t, dev_config)
    first, second = plan.script.executors
    assert first.stdout == f"{WORK}/volumes/0/out.txt" and first.stdin == f"{WORK}/inputs/0"
    assert second.stderr == f"{WORK}/paths/0/b.err"
    assert plan.files == {f"{WORK}/inputs/0": "x"}
    assert plan.directories == [f"{WORK}/volumes/0", f"{WORK}/paths/0"]
    for argv in (first.argv, second.argv):  # every executor sees every bind
        assert f"{WORK}/volumes/0:/shared:rw" in argv and f"{WORK}/inputs/0:/in/data.txt:ro" in argv
        assert f"{WORK}/paths/0:/logs:rw" in argv
    assert second.argv[second.argv.index("--pwd") + 1] == "/shared"


def test_preemptible_goes_to_the_sites_qos_or_partition(dev_config: SiteConfig) -> None:
    plan = make_plan(task(resources={"preemptible": True}), dev_config)
    assert plan.warnings == ["resources.preemptible ignored: the site has no preemptible QoS or partition"]
    slurm = dev_config.slurm.model_copy(update={"preemptible": dev_config.slurm.preemptible.model_copy(
        update={"qos": "scavenger", "partition": "long"})})
    config = dev_config.model_copy(update={"slurm": slurm})
    assert options(task(resources={"preemptible": True}), config) == {"partition": "long", "qos": "scavenger"}
