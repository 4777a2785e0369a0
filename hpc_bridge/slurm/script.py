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
from hpc_bridge.slurm.pack import PackScript

# #SBATCH lines are split on whitespace by sbatch and never go through a shell: only plain tokens pass.
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.,:=+/@%-]+\Z")
_SBATCH_OPTION = re.compile(r"[a-z][a-z-]*\Z")
SBATCH_VALUE_MAX = 1024


def shell_quote(value: object) -> str:
    """Quote one value as a single shell word; NUL cannot be represented and is refused."""
    text = str(value)
    if "\0" in text:
        raise UnsafeValue("NUL byte cannot be passed to a shell")
    return shlex.quote(text)


def sbatch_value(value: object) -> str:
    text = str(value)
    if len(text) > SBATCH_VALUE_MAX:  # slurmctld refuses longer strings ("Pathname ... too long")
        raise UnsafeValue(f"value longer than {SBATCH_VALUE_MAX} characters on an #SBATCH line")
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
class DecryptStep:
    """Crypt4GH inputs, decrypted by `argv` before the executors into `private_dir`: this task's own
    directory on the node's disk, made 0700 at the start and removed when the job ends."""

    private_dir: str
    argv: Sequence[str]
    first: int  # the first such input's index, named when the step cannot run at all


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
    # Per-user execution: the work area is private to the job user (0700), so the job's record,
    # slurm.out and executor logs go to this status directory instead (the user's, readable by the
    # service account's group); an executor's own stdout/stderr file is copied there, its last
    # `log_tail` bytes, when the executor ends. None: everything in the work area, as before.
    status_dir: str | None = None
    log_tail: int = 0
    # The executors' /tmp and /var/tmp (apptainer --workdir): made at the start, removed at the end
    # whatever the outcome, as --containall's in-memory /tmp was (a requeued job starts afresh).
    scratch: str | None = None
    decrypt: DecryptStep | None = None
    # Work-area directories removed when the job ends, whatever its state (a task with Crypt4GH
    # outputs or inputs: no plaintext outlives the job); its executors' logs are then copied out
    # of them as with a status directory.
    scrub: Sequence[str] = ()

    @property
    def record_dir(self) -> str:
        """Where the record, slurm.out and the default executor logs are written."""
        return self.status_dir or self.workdir

    @property
    def record_path(self) -> str:
        return f"{self.record_dir}/record.jsonl"

    def output_paths(self, index: int) -> tuple[str, str]:
        """Where executor `index` writes stdout and stderr on the host: its TES paths, or files of
        its own next to the record. The template and the daemon's log reader both ask here."""
        ex = self.executors[index]
        return (ex.stdout or f"{self.record_dir}/executor-{index}.stdout",
                ex.stderr or f"{self.record_dir}/executor-{index}.stderr")

    def log_paths(self, index: int) -> tuple[str, str]:
        """The files the daemon reads executor `index`'s logs from: its output files, or with a
        status directory the files there (its own TES paths are copied there when it ends)."""
        if self.status_dir is None and not self.scrub:
            return self.output_paths(index)
        return (f"{self.record_dir}/executor-{index}.stdout", f"{self.record_dir}/executor-{index}.stderr")

    def log_copies(self, index: int) -> list[tuple[str, str, str]]:
        """(source, its redirect root, copy in the status dir) of each stream executor `index` sends
        to a TES path: the daemon cannot read the private work area, so the job copies a tail."""
        if (self.status_dir is None and not self.scrub) or self.log_tail <= 0:
            return []
        ex = self.executors[index]
        return [(src, self.redirect_root(index, stream), dst)
                for stream, src, dst in zip(("stdout", "stderr"), (ex.stdout, ex.stderr),
                                            self.log_paths(index), strict=True) if src]

    def redirect_root(self, index: int, stream: str) -> str:
        """What a redirection must resolve inside: its bind's host path, or for the default log
        files (which no container sees) the directory of the record."""
        return self.executors[index].roots.get(stream, self.record_dir)

    @property
    def collect_argv(self) -> Sequence[str] | None:
        """The collector appends to `record.jsonl` next to its manifest (its last argument): with a
        status directory the template copies the manifest there, and the collector reads the copy."""
        if self.collect is None or self.status_dir is None:
            return self.collect
        return [*self.collect[:-1], self.manifest_copy[1]]

    @property
    def manifest_copy(self) -> tuple[str, str]:
        """(manifest in the work area, its copy next to the record) -- with a status directory."""
        assert self.collect is not None and self.status_dir is not None
        return self.collect[-1], f"{self.status_dir}/{self.collect[-1].rsplit('/', 1)[-1]}"


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


def render(job: JobScript | PackScript, search_path: Sequence[Path], template: str = "task.sh.j2") -> str:
    for option, _ in job.options:
        if not _SBATCH_OPTION.match(option):
            raise UnsafeValue(f"invalid sbatch option name: {option!r}")
    return _environment(tuple(str(p) for p in search_path)).get_template(template).render(job=job)
