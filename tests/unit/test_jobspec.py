"""TES task -> Slurm job plan: resources, backend parameters, binds and redirections."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hpc_bridge.config import LimitSettings, SiteConfig, UserLimits
from hpc_bridge.slurm.timelimit import gpu_count, minutes, node_count
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


def limited(config: SiteConfig, mode: str = "service", **limits: object) -> SiteConfig:
    """The config with these site limits, its jobs run as the service account or (table) as each user."""
    return config.model_copy(update={"limits": config.limits.model_copy(update=limits),
                                     "run_as": config.run_as.model_copy(update={"mode": mode})})


def refused(t: Task, config: SiteConfig) -> InvalidTask:
    with pytest.raises(InvalidTask) as info:
        make_plan(t, config)
    return info.value


def backend(**parameters: str) -> Task:
    return task(resources={"backend_parameters": parameters})


def test_resources_become_sbatch_options(dev_config: SiteConfig) -> None:
    opts = options(task(resources={"cpu_cores": 2, "ram_gb": 1.5, "disk_gb": 0.0001,
                                   "zones": ["long"]}), dev_config)
    assert opts == {"partition": "long", "cpus-per-task": "2", "mem": "1536M", "tmp": "1M"}


def test_backend_parameters_allow_list_and_flags(dev_config: SiteConfig) -> None:
    plan = make_plan(task(resources={"backend_parameters": {
        "time": "00:10:00", "exclusive": "true", "gres": "gpu:1", "color": "blue"}}),
        limited(dev_config, allow_exclusive=True))
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
    assert plan.directories == [f"{WORK}/volumes/0", f"{WORK}/paths/0", f"{WORK}/scratch"]
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


@pytest.mark.parametrize(("value", "expected"), [
    ("10", 10), ("0:30", 1), ("0:0:1", 1), ("1:00:01", 61), ("2-3", 3060), ("1-0:0:30", 1441),
    ("0", None), ("00:00", None), ("0:0:0", None), ("0-0", None), ("-1", None), ("UNLIMITED", None),
    ("infinite", None),
])
def test_minutes_are_what_slurm_grants(value: str, expected: int | None) -> None:
    """Seconds round up to a minute; whatever comes to 0 minutes is no limit to sbatch."""
    assert minutes(value) == expected


@pytest.mark.parametrize("value", ["-2", "1h", "1:2:3:4", "1-", "35791395", "24856-0", ""])
def test_minutes_refuse_what_slurm_would_read_otherwise(value: str) -> None:
    """35791395 minutes overflow Slurm's int of seconds (and could wrap around to a short limit)."""
    with pytest.raises(ValueError):
        minutes(value)


@pytest.mark.parametrize("time", ["0", "00:00:00", "0-0", "UNLIMITED", "infinite", "-1", "61", "1:00:01",
                                  "35791395"])
def test_a_time_cap_refuses_no_limit_and_longer_ones(dev_config: SiteConfig, time: str) -> None:
    error = refused(backend(time=time), limited(dev_config, max_time_minutes=60))
    assert error.field == "resources.backend_parameters.time"


def test_the_sites_default_time_is_a_slurm_time() -> None:
    assert LimitSettings(default_time="0:30").default_time == "0:30"
    with pytest.raises(ValidationError, match="default_time"):
        LimitSettings(default_time="1h")


def test_time_within_the_cap_or_without_one(dev_config: SiteConfig) -> None:
    assert options(backend(time="0:30"), limited(dev_config, max_time_minutes=1))["time"] == "0:30"
    assert options(backend(time="UNLIMITED"), dev_config)["time"] == "UNLIMITED"  # no cap: Slurm decides
    assert refused(backend(time="1h"), dev_config).field == "resources.backend_parameters.time"


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("3", 3), ("1-3", 3), ("2-2", 2)])
def test_node_counts_are_the_most_slurm_may_allocate(value: str, expected: int) -> None:
    assert node_count(value) == expected


@pytest.mark.parametrize("value", ["0", "1k", "1K", "1m", "2-0", "2-", "-3", "+2", "3-2", "1,2", "1-15:4",
                                   "2147483648", "x"])
def test_node_counts_in_other_forms_are_refused(dev_config: SiteConfig, value: str) -> None:
    """Slurm reads these too (`1k` is 1024 nodes, `2-0` has no maximum): they are not counted here."""
    with pytest.raises(ValueError):
        node_count(value)
    assert refused(backend(nodes=value), dev_config).field == "resources.backend_parameters.nodes"


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("gpus", "2", 2), ("gpus", "a100:2", 2), ("gpus", "a100:1,v100:2", 3), ("gpus", "a100", 1),
    ("gres", "gpu", 1), ("gres", "gpu:2", 2), ("gres", "gpu:a100:2,shard:8", 2), ("gres", "gres:gpu:3", 3),
    ("gres", "gres:gres:gpu:3", 3), ("gres", "shard:8,gpu:1,gpu:a100:1", 2), ("gres", "xgpu:9", 0),
])
def test_gpu_counts(option: str, value: str, expected: int) -> None:
    assert gpu_count(option, value) == expected


@pytest.mark.parametrize(("option", "value"), [
    ("gpus", "1k"), ("gpus", "a100:2k"), ("gpus", "a100:2:3"), ("gpus", "gres:gpu:4"),
    ("gres", "gpu:2k"), ("gres", "gpu:a100:1G"), ("gres", "gpu:1kib"), ("gres", "gpu:+4"), ("gres", "gpu::1"),
])
def test_gpu_counts_slurm_would_read_with_a_unit_are_refused(dev_config: SiteConfig, option: str,
                                                             value: str) -> None:
    """`gpu:2k` is 2048 GPUs to Slurm (gpu_count once took it for a type, one GPU)."""
    with pytest.raises(ValueError):
        gpu_count(option, value)
    error = refused(backend(**{option: value}), limited(dev_config, max_gpus=4))
    assert error.field == f"resources.backend_parameters.{option}"


@pytest.mark.parametrize(("limits", "resources", "field"), [
    ({"max_cpu_cores": 4}, {"cpu_cores": 2, "backend_parameters": {"nodes": "3"}}, "resources.cpu_cores"),
    ({"max_cpu_cores": 4}, {"cpu_cores": 2, "backend_parameters": {"nodes": "1-3"}}, "resources.cpu_cores"),
    ({"max_cpu_cores": 2}, {"backend_parameters": {"nodes": "3"}}, "resources.backend_parameters.nodes"),
    ({"max_ram_gb": 4}, {"ram_gb": 2, "backend_parameters": {"nodes": "3"}}, "resources.ram_gb"),
    ({"max_disk_gb": 1}, {"disk_gb": 1, "backend_parameters": {"nodes": "2"}}, "resources.disk_gb"),
    ({"max_gpus": 2}, {"backend_parameters": {"gres": "gpu:1", "nodes": "3"}}, "resources.backend_parameters.gpus"),
    ({"max_gpus": 2}, {"backend_parameters": {"gres": "gpu:a100:1", "nodes": "1-3"}},
     "resources.backend_parameters.gpus"),
    ({"max_gpus": 2}, {"backend_parameters": {"gpus": "1", "gres": "gpu:1", "nodes": "2"}},
     "resources.backend_parameters.gpus"),
    ({"max_nodes": 2}, {"backend_parameters": {"nodes": "3"}}, "resources.backend_parameters.nodes"),
    ({"max_nodes": 2}, {"backend_parameters": {"nodes": "2-3"}}, "resources.backend_parameters.nodes"),
])
def test_per_node_amounts_count_once_per_node(dev_config: SiteConfig, limits: dict, resources: dict,
                                              field: str) -> None:
    error = refused(task(resources=resources), limited(dev_config, **limits))
    assert error.field == field and "maximum" in str(error)


def test_per_node_amounts_within_the_limits(dev_config: SiteConfig) -> None:
    config = limited(dev_config, max_cpu_cores=4, max_ram_gb=4, max_gpus=2, max_nodes=2)
    opts = options(task(resources={"cpu_cores": 2, "ram_gb": 2, "backend_parameters": {"nodes": "1-2"}}), config)
    assert opts["nodes"] == "1-2" and opts["cpus-per-task"] == "2" and opts["mem"] == "2048M"
    # --gpus is per job: two nodes do not double it
    assert options(backend(gpus="2", nodes="2"), config)["gpus"] == "2"


def test_exclusive_takes_whole_nodes_only_where_allowed(dev_config: SiteConfig) -> None:
    error = refused(backend(exclusive="true"), dev_config)
    assert error.field == "resources.backend_parameters.exclusive"
    assert "exclusive" not in options(backend(exclusive="false"), dev_config)  # not asked: not refused
    assert options(backend(exclusive=""), limited(dev_config, allow_exclusive=True))["exclusive"] is None
    owner = limited(dev_config, users={"local": UserLimits(allow_exclusive=True)})
    plan = plan_job(backend(exclusive="yes"), task_id="t1", workdir=WORK, config=owner, schemes=Schemes(owner),
                    owner="local", limits=owner.limits.for_owner("local"))
    assert ("exclusive", None) in plan.script.options


@pytest.mark.parametrize("option", ["account", "qos"])
def test_account_and_qos_are_chosen_from_the_allow_lists(dev_config: SiteConfig, option: str) -> None:
    """In service mode every job is the service account's: an unlisted name would charge its allocations."""
    field = f"resources.backend_parameters.{option}"
    limit = f"allowed_{option}s" if option == "account" else "allowed_qos"
    assert refused(backend(**{option: "proj"}), dev_config).field == field  # no list: no choice
    config = limited(dev_config, **{limit: ["proj", "other"]})
    assert options(backend(**{option: "proj"}), config)[option] == "proj"
    for name in ("proj2", "PROJ", "proj,other"):
        error = refused(backend(**{option: name}), config)
        assert error.field == field and "not allowed" in str(error)
    alice = limited(config, users={"alice": UserLimits(**{limit: ["alice-proj"]})})
    alice_limits = alice.limits.for_owner("alice")
    plan = plan_job(backend(**{option: "alice-proj"}), task_id="t1", workdir=WORK, config=alice,
                    schemes=Schemes(alice), owner="alice", limits=alice_limits)
    assert (option, "alice-proj") in plan.script.options
    with pytest.raises(InvalidTask):
        plan_job(backend(**{option: "proj"}), task_id="t1", workdir=WORK, config=alice, schemes=Schemes(alice),
                 owner="alice", limits=alice_limits)


@pytest.mark.parametrize("option", ["account", "qos"])
def test_jobs_run_as_their_user_may_name_any_account_without_a_list(dev_config: SiteConfig, option: str) -> None:
    """Run as the user's own Unix user, Slurm's associations of that user decide."""
    assert options(backend(**{option: "anything"}), limited(dev_config, "table"))[option] == "anything"
    limit = f"allowed_{option}s" if option == "account" else "allowed_qos"
    error = refused(backend(**{option: "anything"}), limited(dev_config, "table", **{limit: ["proj"]}))
    assert error.field == f"resources.backend_parameters.{option}"


def test_the_sites_own_account_and_qos_need_no_list(dev_config: SiteConfig) -> None:
    slurm = dev_config.slurm.model_copy(update={"account": "site", "preemptible": dev_config.slurm.preemptible
                                                .model_copy(update={"qos": "scavenger"})})
    config = dev_config.model_copy(update={"slurm": slurm})
    opts = options(task(resources={"preemptible": True}), config)
    assert opts["account"] == "site" and opts["qos"] == "scavenger"


def test_partitions_are_chosen_from_the_allow_lists(dev_config: SiteConfig) -> None:
    config = limited(dev_config, allowed_partitions=["debug"])
    assert options(backend(partition="debug"), config)["partition"] == "debug"
    for t, field in ((backend(partition="long"), "resources.backend_parameters.partition"),
                     (backend(partition="debug,long"), "resources.backend_parameters.partition"),
                     (task(resources={"zones": ["long"]}), "resources.zones[0]")):
        error = refused(t, config)
        assert error.field == field and "'long' is not allowed" in str(error)
    # without a user list the site's partitions bound the choice, a list of them too
    assert options(backend(partition="debug,long"), dev_config)["partition"] == "debug,long"
    assert "unknown partition 'nope'" in str(refused(backend(partition="debug,nope"), dev_config))
    # a service-mode site that lists no partitions lets no task choose one; run as the user, Slurm decides
    unlisted = dev_config.model_copy(update={"slurm": dev_config.slurm.model_copy(update={"partitions": []})})
    assert refused(backend(partition="gpu"), unlisted).field == "resources.backend_parameters.partition"
    assert options(backend(partition="gpu"), limited(unlisted, "table"))["partition"] == "gpu"


def test_an_unsafe_account_is_reported_as_unsafe_before_the_allow_list(dev_config: SiteConfig) -> None:
    assert refused(backend(account="a b"), limited(dev_config, allowed_accounts=["a b"])).field == "resources (account)"


def test_binds_are_unique_by_normalized_container_path(dev_config: SiteConfig) -> None:
    error = refused(task(volumes=["/data", "/x/../data/"]), dev_config)
    assert error.field == "volumes[1]" and "already used" in str(error)
