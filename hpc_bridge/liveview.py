"""The view `--wait` shows while a task or a workflow run goes on: its state and one line per step
task (state, Slurm job). On a terminal it is redrawn in place (rich); piped, it is one plain line per
change, so a log file or grep reads each change once. Building the view is pure; `follow` polls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from time import monotonic, sleep

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from hpc_bridge.clicommon import styled
from hpc_bridge.lifecycle import TERMINAL

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Step:
    """One TES task of a run."""

    task_id: str
    name: str
    state: str
    job: str = ""


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw: a task (`kind` "task", its Slurm `job`) or a run with its `steps`."""

    kind: str
    id: str
    state: str
    job: str = ""
    steps: tuple[Step, ...] = ()

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL


def _job_note(job: str) -> str:
    return f" slurm job {job}" if job else ""


def changes(before: Snapshot | None, now: Snapshot, clock: str) -> list[str]:
    """Plain lines for what changed since `before`: the task's or run's state (or its task's Slurm
    job), and each step that is new or has a new state or job."""
    lines = []
    if before is None or (before.state, before.job) != (now.state, now.job):
        subject = now.id if now.kind == "task" else f"run {now.id}"
        lines.append(f"{clock} {subject} {now.state}{_job_note(now.job)}")
    seen = {step.task_id: step for step in before.steps} if before else {}
    for step in now.steps:
        if seen.get(step.task_id) != step:
            lines.append(f"{clock}   step {step.name} {step.task_id} {step.state}{_job_note(step.job)}")
    return lines


def render(now: Snapshot, elapsed: float, rows: int = 1_000_000) -> RenderableType:
    """The in-place view: a head line with the state, the time waited and (for a run) how many step
    tasks are in each state; then a table of the steps, in the order they were created. More steps
    than `rows`: the ones still going and the newest ended ones, so the view fits the terminal."""
    subject = f"task {now.id}" if now.kind == "task" else f"run {now.id}"
    head = f"[bold]{escape(subject)}[/bold] {styled(now.state)}{escape(_job_note(now.job))}  [dim]{elapsed:.0f}s[/dim]"
    if now.kind == "task":
        return head
    counts = Counter(step.state for step in now.steps)
    if counts:
        head += "  [dim]tasks:[/dim] " + ", ".join(f"{n} {styled(state)}" for state, n in sorted(counts.items()))
    shown = _fitted(now.steps, rows)
    table = Table("step", "task", "state", "slurm job", box=None, pad_edge=False, header_style="dim")
    for step in shown:
        table.add_row(escape(step.name), step.task_id, styled(step.state), step.job)
    parts: list[RenderableType] = [head]
    hidden = Counter(step.state for step in now.steps) - Counter(step.state for step in shown)
    if hidden:
        parts.append(f"[dim]{hidden.total()} more ({', '.join(f'{n} {s}' for s, n in sorted(hidden.items()))}): "
                     f"hpc-bridge run tasks {escape(now.id)}[/dim]")
    return Group(*parts, table) if now.steps else head


# Which steps a short terminal shows first: running, then waiting, then the newest ended ones.
_SHOW_FIRST = {"RUNNING": 0, "INITIALIZING": 0, "CANCELING": 0, "QUEUED": 1, "PAUSED": 1}


def _fitted(steps: tuple[Step, ...], rows: int) -> list[Step]:
    if len(steps) <= rows:
        return list(steps)
    ranked = sorted(range(len(steps)), key=lambda i: (_SHOW_FIRST.get(steps[i].state, 2), -i))
    keep = set(ranked[:rows])
    return [step for i, step in enumerate(steps) if i in keep]


def follow(poll: Callable[[], Snapshot], console: Console, interval: float = POLL_SECONDS) -> Snapshot:
    """Poll until the task or run ends and return the last snapshot. Ctrl-C leaves it running: the
    KeyboardInterrupt reaches the caller, with the view left as last drawn. A poll that takes long
    (a run of thousands of steps) spaces the next ones out: at most a third of the time is polling."""
    started = monotonic()
    took = 0.0

    def timed() -> Snapshot:
        nonlocal took
        begun = monotonic()
        now = poll()
        took = monotonic() - begun
        return now

    if not console.is_terminal:
        before: Snapshot | None = None
        while True:
            now = timed()
            for line in changes(before, now, f"{datetime.now():%H:%M:%S}"):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            if now.ended:
                return now
            before = now
            sleep(max(interval, 2 * took))

    def view(now: Snapshot) -> RenderableType:
        return render(now, monotonic() - started, rows=max(console.height - 4, 3))

    now = timed()
    with Live(view(now), console=console, auto_refresh=False) as live:
        while not now.ended:
            sleep(max(interval, 2 * took))
            now = timed()
            live.update(view(now), refresh=True)
    return now
