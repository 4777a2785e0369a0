"""`hpc-bridge config init`: a commented starting site config for the machine it runs on. The
partitions come from `scontrol show partition -o`, Apptainer from PATH; everything else is a
documented default to adapt (site_config/example.yaml explains every setting). The text is built
here (pure) and checked by loading it as a site config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    partitions: list[str]
    default_partition: str | None
    apptainer: str | None
    problems: list[str]


def parse_partitions(text: str) -> tuple[list[str], str | None]:
    """`scontrol show partition -o` -> (names, the default one)."""
    names, default = [], None
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if name := fields.get("PartitionName"):
            names.append(name)
            if fields.get("Default") == "YES":
                default = name
    return names, default


def probe(scontrol: str = "scontrol") -> Machine:
    problems = []
    partitions: list[str] = []
    default = None
    try:
        out = subprocess.run([scontrol, "show", "partition", "-o"], capture_output=True, text=True,
                             timeout=30, check=True, stdin=subprocess.DEVNULL).stdout
        partitions, default = parse_partitions(out)
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"Slurm's partitions could not be read ({type(exc).__name__}): fill in slurm.partitions")
    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    if apptainer is None:
        problems.append("apptainer is not on PATH: set apptainer.binary to its absolute path")
    return Machine(partitions, default or (partitions[0] if partitions else None), apptainer, problems)


def render(machine: Machine) -> str:
    def q(value: object) -> str:
        return json.dumps(value)  # YAML reads JSON scalars and lists

    notes = "".join(f"# TO DO: {p}\n" for p in machine.problems)
    return f"""# hpc-bridge site config, written by `hpc-bridge config init` for this machine. Adapt it, then
#   hpc-bridge config check --config THIS_FILE
# site_config/example.yaml (in the documentation) explains every setting; unset ones keep their defaults.
{notes}service:
  id: org.example.hpc.tes              # reverse domain name, unique to this deployment
  name: hpc-bridge on this cluster
auth:
  mode: jwt                            # tokens from these issuers only (mode none is for development)
  issuers:                             # LS Login (ELIXIR AAI); replace or add your site's issuers
    - issuer: https://login.elixir-czech.org/oidc/
server:
  host: 127.0.0.1                      # behind a TLS-terminating reverse proxy
  port: 8000
  metrics: loopback
database: /var/lib/hpc-bridge/hpc-bridge.sqlite
slurm:
  partitions: {q(machine.partitions)}   # from scontrol show partition
  default_partition: {q(machine.default_partition)}
apptainer:
  binary: {q(machine.apptainer or "apptainer")}
  cache_dir: /var/lib/hpc-bridge/images  # registry images pulled once, as SIF files
storage:
  work_root: /scratch/hpc-bridge/work   # on a file system the compute nodes share
  data_roots: [/shared/projects]       # what tasks may read and write
  owner_areas: /shared/projects/users/{{owner}}   # each user's own area (file tenancy)
wes:
  retention_hours: null                # remove run directories this long after their run ended
"""
