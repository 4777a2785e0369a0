"""Install the per-user submit helper for a site (run as root on the login node):

    python -m hpc_bridge.runas.install --config /etc/hpc-bridge/site.yaml [--dry-run]

writes, from the site config's `run_as` section,
  - the helper (a copy of helper.py, root-owned, 0755) at `run_as.helper`, with the path of its
    configuration compiled in (the helper never takes it from its caller or the environment),
  - that configuration (root-owned JSON, 0644) at --helper-config,
  - the sudoers rule (0440, checked with `visudo -c`) at --sudoers: only `run_as.service_user`,
    only the helper, only one argument that is a task id.
With --dry-run it prints the three files instead. `dev/cluster` does the same for the dev cluster.
It refuses while Slurm's own daemon accounts (SlurmUser, SlurmdUser from `scontrol show config`)
are possible targets: name them in `run_as.deny_users`, so the service and the helper both refuse them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from hpc_bridge.config import ConfigError, SiteConfig, load_config
from hpc_bridge.runas.helper import parse_config
from hpc_bridge.runas.settings import DEFAULT_HELPER_CONFIG
from hpc_bridge.staging.paths import PLAIN_PATH

SUDOERS_TASK_ID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
DEFAULT_SUDOERS = Path("/etc/sudoers.d/hpc-bridge-submit-as")
_CONFIG_LINE = re.compile(r'^CONFIG_PATH = "[^"\n]*"$', re.MULTILINE)


def _slurm_program(config: SiteConfig, name: str) -> str:
    if config.slurm.bin_dir:
        return str(config.slurm.bin_dir / name)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found on PATH: set slurm.bin_dir")
    return os.path.realpath(found)


def slurm_daemon_users(show_config: str) -> set[str]:
    """SlurmUser and SlurmdUser from `scontrol show config` ("SlurmUser = slurm(64030)")."""
    users: set[str] = set()
    for line in show_config.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("SlurmUser", "SlurmdUser"):
            users.add(value.strip().split("(", 1)[0])
    return users


def check_slurm_users(config: SiteConfig, show_config: str) -> None:
    """Slurm's daemons act for every user: their accounts must be denied like root is."""
    settings = config.run_as
    exposed = sorted(slurm_daemon_users(show_config) - {"root", *settings.deny_users})
    if exposed:
        raise ConfigError(f"Slurm runs as {', '.join(exposed)} (SlurmUser/SlurmdUser): add "
                          f"{'it' if len(exposed) == 1 else 'them'} to run_as.deny_users")


def _show_config(config: SiteConfig) -> str:
    proc = subprocess.run([_slurm_program(config, "scontrol"), "show", "config"], capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"scontrol show config failed (Slurm's daemon users are needed): {proc.stderr.strip()}")
    return proc.stdout


def helper_config(config: SiteConfig) -> dict[str, Any]:
    """The helper's configuration, derived from the site config so that both agree."""
    settings = config.run_as
    if not settings.enabled:
        raise ConfigError("run_as.mode is 'service': per-user execution is off, there is nothing to install")
    data: dict[str, Any] = {
        "database": str(Path(config.database).resolve()),
        "work_root": str(config.storage.work_root),
        "service_user": settings.service_user,
        "mode": settings.mode,
        "min_uid": settings.min_uid,
        "max_uid": settings.max_uid,
        "deny_users": list(settings.deny_users),
        "deny_groups": list(settings.deny_groups),
        "work_retention_hours": config.storage.work_retention_hours,
        "run_retention_hours": config.wes.retention_hours,
        "run_retention_keep_outputs": config.wes.retention_keep_outputs,
        "sbatch": _slurm_program(config, "sbatch"),
        "squeue": _slurm_program(config, "squeue"),
        "scancel": _slurm_program(config, "scancel"),
    }
    if settings.table:
        data["table"] = dict(settings.table)
    if settings.users_group:
        data["users_group"] = settings.users_group
    if settings.claim_issuers:
        data["claim_issuers"] = list(settings.claim_issuers)
    runs_root = config.wes.root(config.storage.data_roots)
    if runs_root is not None:  # WES engines start through the helper too, as the run's user
        data["runs_root"] = str(runs_root)
        data["engine_python"] = sys.executable
    parse_config(data)  # what the helper will accept
    return data


def helper_source(config_path: Path) -> str:
    if not PLAIN_PATH.fullmatch(str(config_path)):
        raise ConfigError(f"helper config path {config_path} must be a plain absolute path")
    source = resources.files("hpc_bridge.runas").joinpath("helper.py").read_text()
    source, count = _CONFIG_LINE.subn(f'CONFIG_PATH = "{config_path}"', source, count=1)
    if count != 1:
        raise ConfigError("cannot find CONFIG_PATH in helper.py")
    return source


def sudoers_rule(config: SiteConfig) -> str:
    settings = config.run_as
    return (f"# hpc-bridge per-user execution: {settings.service_user} may run the submit helper as root\n"
            f"# with exactly one argument, a task id, and nothing else.\n"
            f"Defaults!{settings.helper} !requiretty, !use_pty, env_reset\n"
            f"{settings.service_user} ALL=(root) NOPASSWD: {settings.helper} {SUDOERS_TASK_ID}\n")


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # A name with a dot: sudo skips such files in /etc/sudoers.d while this one is being written.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.chown(tmp.name, 0, 0)
    os.chmod(tmp.name, mode)
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_bridge.runas.install", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="the site config (YAML)")
    parser.add_argument("--helper-config", type=Path, default=DEFAULT_HELPER_CONFIG)
    parser.add_argument("--sudoers", type=Path, default=DEFAULT_SUDOERS)
    parser.add_argument("--dry-run", action="store_true", help="print the files, write nothing")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        data = json.dumps(helper_config(config), indent=2) + "\n"
        check_slurm_users(config, _show_config(config))
        source = helper_source(args.helper_config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rule = sudoers_rule(config)
    if args.dry_run:
        print(f"# {args.helper_config}\n{data}\n# {args.sudoers}\n{rule}\n"
              f"# {config.run_as.helper}: helper.py with CONFIG_PATH = {str(args.helper_config)!r}")
        return 0
    if os.geteuid() != 0:
        print("error: run as root (the helper and its configuration must be root-owned)", file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile("w", suffix=".sudoers") as tmp:
        tmp.write(rule)
        tmp.flush()
        check = subprocess.run(["visudo", "-c", "-q", "-f", tmp.name], capture_output=True, text=True,
                               check=False)
        if check.returncode != 0:
            print(f"error: visudo refuses the rule: {check.stderr.strip() or check.stdout.strip()}",
                  file=sys.stderr)
            return 1
    _write(args.helper_config, data, 0o644)
    _write(config.run_as.helper, source, 0o755)
    _write(args.sudoers, rule, 0o440)
    print(f"installed {config.run_as.helper}, {args.helper_config} and {args.sudoers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
