"""The argv that runs one executor with `apptainer exec`: pure, so it is tested without Apptainer.

Environment variables travel as `APPTAINERENV_<NAME>` through `env`, not `--env`, because `--env`
splits its value on commas; `--cleanenv` keeps the host's own environment out of the container.
Apptainer (1.4) evaluates those values inside a double-quoted shell string in the container, so
`$(...)`, backticks and `$VAR` would run or expand there: `apptainer_env_value` escapes them.
Measured on Apptainer 1.4.5: with `$`, backtick and backslash escaped, every value arrives
byte-for-byte except a carriage return, which it drops; values with CR are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class UnsafeValue(ValueError):
    """A value that cannot be passed to Apptainer safely; the message names it."""


@dataclass(frozen=True)
class Bind:
    """A host path made visible at `container` inside the container."""

    host: str
    container: str
    read_only: bool = False

    def spec(self) -> str:
        for label, path in (("host", self.host), ("container", self.container)):
            check_bind_path(path, label)
        return f"{self.host}:{self.container}:{'ro' if self.read_only else 'rw'}"


def check_bind_path(path: str, label: str = "bind") -> str:
    """Bind specs are `src:dst:opts` lists joined by commas, so those characters cannot be escaped.
    Apptainer reads a backslash as an escape in them: `dst\\` + `:ro` became destination `dst\\:ro`,
    mounted read-write (measured on 1.4.5), so a backslash is refused too."""
    if not path.startswith("/"):
        raise UnsafeValue(f"{label} path must be absolute: {path!r}")
    bad = {c for c in path if c in ",:\\\n\r\0"}
    if bad:
        raise UnsafeValue(f"{label} path {path!r} contains characters Apptainer cannot bind: "
                          f"{''.join(sorted(bad))!r}")
    return path


def apptainer_env_value(value: str) -> str:
    if "\r" in value or "\0" in value:
        raise UnsafeValue("environment values cannot contain carriage returns or NUL bytes")
    return "".join("\\" + c if c in "$`\\" else c for c in value)


def check_env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise UnsafeValue(f"invalid environment variable name: {name!r}")
    return name


def exec_argv(binary: str, image: str, command: Sequence[str], *, binds: Sequence[Bind] = (),
              env: Mapping[str, str] | None = None, workdir: str | None = None,
              gpu: bool = False, scratch: str | None = None) -> list[str]:
    """argv for `apptainer exec`; every element stays one argument whatever it contains. `scratch`:
    a host directory holding the container's /tmp and /var/tmp (else --containall gives a small
    in-memory /tmp, 64 MiB by default, that tools such as Snakemake's job runner outgrow)."""
    if not command:
        raise UnsafeValue("executor command is empty")
    if any("\0" in arg for arg in command):
        raise UnsafeValue("NUL byte in executor command")
    argv = ["env", *(f"APPTAINERENV_{check_env_name(k)}={apptainer_env_value(v)}"
                     for k, v in (env or {}).items())]
    argv += [binary, "--quiet", "exec", "--containall", "--cleanenv"]
    if gpu:
        argv.append("--nv")
    if scratch:
        argv += ["--workdir", check_bind_path(scratch, "scratch")]
    for bind in binds:
        argv += ["--bind", bind.spec()]
    if workdir:
        argv += ["--pwd", check_bind_path(workdir, "workdir")]
    argv += [image, *command]
    return argv
