"""Batch scripts rendered from `slurm_templates/` (pure: values in, script text out).

The two filters here are the only way a value reaches the script: `sh` quotes a value for the shell,
`sbatch` checks a value for an `#SBATCH` line, where quoting does not exist. Autoescaping is off
because the output is shell, not HTML; the templates use these filters instead.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from hpc_bridge.containers.apptainer import UnsafeValue

# #SBATCH lines are split on whitespace by sbatch and never go through a shell: only plain tokens pass.
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.,:=+/@%-]+\Z")
_SBATCH_OPTION = re.compile(r"[a-z][a-z-]*\Z")


def shell_quote(value: object) -> str:
    """Quote one value as a single shell word; NUL cannot be represented and is refused."""
    text = str(value)
    if "\0" in text:
        raise UnsafeValue("NUL byte cannot be passed to a shell")
    return shlex.quote(text)


def sbatch_value(value: object) -> str:
    text = str(value)
    if not _SBATCH_VALUE.match(text):
        raise UnsafeValue(f"value not allowed on an #SBATCH line: {text!r}")
    return text


def shell_argv(argv: Iterable[object]) -> str:
    return " ".join(shell_quote(a) for a in argv)


@dataclass(frozen=True)
class ExecutorScript:
    """One executor as the script runs it: a ready argv plus host-side redirections."""

    argv: Sequence[str]
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    ignore_error: bool = False
    # stream -> host path of the bind the redirection was planned in; it must stay inside it
    roots: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InputCheck:
    """Input `index` comes from host path `source`, checked (realpath inside the data roots) when the
    job was planned. The job re-checks that it still resolves to itself before anything reads it,
    so a directory swapped for a symlink in between is caught. With `how` = hardlink or copy the
    job (as the job user, so file permissions hold) then puts it at `dest` in the work area."""

    index: int
    source: str
    how: str = "bind"
    dest: str | None = None


@dataclass(frozen=True)
class JobScript:
    name: str
    workdir: str
    executors: Sequence[ExecutorScript]
    options: Sequence[tuple[str, str | None]] = field(default_factory=tuple)
    comment: str | None = None
    inputs: Sequence[InputCheck] = field(default_factory=tuple)
    # argv of the output collector, run on the compute node after the executors succeeded
    collect: Sequence[str] | None = None

    def output_paths(self, index: int) -> tuple[str, str]:
        """Where executor `index` writes stdout and stderr on the host: its TES paths, or files of
        its own in the work dir. The template and the daemon's log reader both ask here."""
        ex = self.executors[index]
        return (ex.stdout or f"{self.workdir}/executor-{index}.stdout",
                ex.stderr or f"{self.workdir}/executor-{index}.stderr")

    def redirect_root(self, index: int, stream: str) -> str:
        """What a redirection must resolve inside: its bind's host path, or for the default log
        files (which no container sees) the work area."""
        return self.executors[index].roots.get(stream, self.workdir)


@functools.lru_cache(maxsize=8)
def _environment(search_path: tuple[str, ...]) -> jinja2.Environment:
    """One environment per search path: Jinja then compiles each template once, not per job."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(search_path)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = shell_quote
    env.filters["sbatch"] = sbatch_value
    env.filters["argv"] = shell_argv
    return env


def render(job: JobScript, search_path: Sequence[Path], template: str = "task.sh.j2") -> str:
    for option, _ in job.options:
        if not _SBATCH_OPTION.match(option):
            raise UnsafeValue(f"invalid sbatch option name: {option!r}")
    return _environment(tuple(str(p) for p in search_path)).get_template(template).render(job=job)
