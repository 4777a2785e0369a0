"""`--wait`'s live view as a person sees it: `hpc-bridge run submit --wait` and `submit --wait` in a
real terminal (tmux: the command is typed, the pane captured while it runs), and the same commands
piped; a real server, its daemon, the CWL engine, Slurm and Apptainer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ServerProcess

EXE = str(Path(sys.executable).parent / "hpc-bridge")
FIRST = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c]
arguments: ["sleep 6; echo $(inputs.msg) > said.txt"]
inputs: {msg: string}
outputs: {said: {type: File, outputBinding: {glob: said.txt}}}
"""
SECOND = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: busybox}
baseCommand: [sh, -c]
arguments: ["sleep 6; tr a-z A-Z < $(inputs.text.path) > loud.txt"]
inputs: {text: File}
outputs: {loud: {type: File, outputBinding: {glob: loud.txt}}}
"""
WORKFLOW = """cwlVersion: v1.2
class: Workflow
inputs: {msg: string}
outputs: {loud: {type: File, outputSource: shout/loud}}
steps:
  say: {run: first.cwl, in: {msg: msg}, out: [said]}
  shout: {run: second.cwl, in: {text: say/said}, out: [loud]}
"""
ESCAPES = re.compile(r"\x1b\[")
STEP_ROW = re.compile(r"^(say|shout)\s+([0-9a-f-]{36})\s+([A-Z_]+)\s*(\d*)\s*$")


@pytest.fixture()
def workflow(tmp_path: Path) -> tuple[str, str]:
    for name, text in (("first.cwl", FIRST), ("second.cwl", SECOND), ("wf.cwl", WORKFLOW),
                       ("job.yml", "msg: hello\n")):
        (tmp_path / name).write_text(text)
    return str(tmp_path / "wf.cwl"), str(tmp_path / "job.yml")


class Terminal:
    """One tmux pane (a private tmux server) with the server's URL in its environment."""

    def __init__(self, url: str) -> None:
        self.socket = f"hpcb-test-{os.getpid()}"
        self._tmux("new-session", "-d", "-s", "live", "-x", "150", "-y", "45", "-e", f"HPC_BRIDGE_URL={url}",
                   "-e", "HPC_BRIDGE_TOKEN=", f"PATH={os.path.dirname(EXE)}:{os.environ['PATH']} bash --norc")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "live", line, "Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "live")

    def frames_until_exit(self, timeout: float) -> list[str]:
        """The pane, captured twice a second, until the command's `echo EXIT=$?` has printed."""
        frames, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            frames.append(self.screen())
            if re.search(r"^EXIT=\d+", frames[-1], re.M):
                return frames
            time.sleep(0.5)
        pytest.fail(f"the command did not end in {timeout}s:\n{frames[-1]}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture()
def terminal(server: ServerProcess) -> Iterator[Terminal]:
    term = Terminal(server.url)
    yield term
    term.close()


def steps_on(frame: str) -> dict[str, tuple[str, str, str]]:
    """step -> (task id, state, Slurm job) as the view shows them; each step on one row only."""
    rows = [m.groups() for m in map(STEP_ROW.match, frame.splitlines()) if m]
    names = [name for name, *_ in rows]
    assert len(names) == len(set(names)), f"a step drawn twice (not in place):\n{frame}"
    return {name: (task, state, job) for name, task, state, job in rows}


def test_run_submit_wait_redraws_its_steps_in_place_on_a_terminal(server: ServerProcess, terminal: Terminal,
                                                                  workflow: tuple[str, str]) -> None:
    terminal.type(f"hpc-bridge run submit --wait {workflow[0]} {workflow[1]}; echo EXIT=$?")
    frames = terminal.frames_until_exit(timeout=240)
    assert re.search(r"^EXIT=0$", frames[-1], re.M), frames[-1]
    seen = [steps_on(frame) for frame in frames]
    for frame in frames:
        assert len(re.findall(r"^run [0-9a-f-]{36} ", frame, re.M)) <= 1, f"the head drawn twice:\n{frame}"
    # the rows changed in place: the first step seen running with its Slurm job, then done while the
    # second ran, and both complete at the end, each with its own job
    say_running = next(i for i, s in enumerate(seen) if s.get("say", ("", ""))[1] == "RUNNING")
    assert seen[say_running]["say"][2].isdigit()
    shout_running = next(i for i, s in enumerate(seen) if s.get("shout", ("", ""))[1] == "RUNNING")
    assert shout_running > say_running and seen[shout_running]["say"][1] == "COMPLETE"
    final = seen[-1]
    assert {name: state for name, (_, state, _) in final.items()} == {"say": "COMPLETE", "shout": "COMPLETE"}
    assert final["say"][2] != final["shout"][2]
    run_id = re.search(r"^run ([0-9a-f-]{36}) COMPLETE", frames[-1], re.M)
    assert run_id and "tasks: 2 COMPLETE" in frames[-1]
    assert re.search(rf"^{run_id[1]} COMPLETE$", frames[-1], re.M)  # the final line, on stdout
    # what the view said agrees with the server's record of the run's tasks
    tasks = subprocess.run([EXE, "run", "tasks", run_id[1]], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "HPC_BRIDGE_URL": server.url})
    listed = {line.split()[0]: line.split()[1:4] for line in tasks.stdout.splitlines()[1:]}
    assert listed == {name: [task, "COMPLETE", job] for name, (task, _, job) in final.items()}


def test_run_submit_wait_piped_prints_plain_lines(server: ServerProcess, workflow: tuple[str, str],
                                                  tmp_path: Path) -> None:
    result = subprocess.run([EXE, "run", "submit", "--wait", *workflow], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=240,
                            env={**os.environ, "HPC_BRIDGE_URL": server.url, "TERM": "xterm-256color"})
    assert result.returncode == 0, result.stdout
    assert not ESCAPES.search(result.stdout)
    lines = result.stdout.splitlines()
    run_id = lines[0]
    assert lines[-1] == f"{run_id} COMPLETE"
    changes = [line.split(" ", 1)[1] for line in lines[1:-1]]
    assert changes[0].startswith(f"run {run_id} ") and f"run {run_id} COMPLETE" in changes
    for step in ("say", "shout"):
        mine = [c.split() for c in changes if c.startswith(f"  step {step} ")]
        seen = [tuple(words[3:]) for words in mine]  # (state,) or (state, "slurm", "job", N)
        assert seen[0][0] in ("QUEUED", "INITIALIZING", "RUNNING") and seen[-1][0] == "COMPLETE", mine
        assert len(seen) == len(set(seen)), f"a change printed twice: {mine}"  # one line per change
        assert mine[-1][4:6] == ["slurm", "job"] and mine[-1][6].isdigit()
    outputs = subprocess.run([EXE, "run", "outputs", run_id, "-o", str(tmp_path / "out")], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "HPC_BRIDGE_URL": server.url})
    assert outputs.returncode == 0, outputs.stderr
    assert (tmp_path / "out" / "loud.txt").read_text() == "HELLO\n"


def test_a_failing_step_ends_the_wait_with_its_exit_code(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "fail.cwl").write_text(FIRST.replace("sleep 6; echo $(inputs.msg) > said.txt",
                                                     "echo broken >&2; exit 5"))
    (tmp_path / "job.yml").write_text("msg: hi\n")
    result = subprocess.run([EXE, "run", "submit", "--wait", str(tmp_path / "fail.cwl"), str(tmp_path / "job.yml")],
                            capture_output=True, text=True, timeout=240,
                            env={**os.environ, "HPC_BRIDGE_URL": server.url})
    assert result.returncode == 5, result.stderr
    run_id, final = result.stdout.splitlines()
    assert re.fullmatch(rf"{run_id} EXECUTOR_ERROR: step \S+ \([0-9a-f-]{{36}}\): executor \d+ exited with 5",
                        final), final
    assert "end of the engine's stderr" in result.stderr and "broken" in result.stderr


def test_submit_wait_shows_the_task_and_its_slurm_job_on_a_terminal(terminal: Terminal) -> None:
    terminal.type("hpc-bridge submit --wait --image busybox -- sleep 5; echo EXIT=$?")
    frames = terminal.frames_until_exit(timeout=120)
    assert re.search(r"^EXIT=0$", frames[-1], re.M), frames[-1]
    running = [f for f in frames if re.search(r"^task \S+ RUNNING slurm job \d+", f, re.M)]
    assert running, frames[-1]
    for frame in frames:
        assert len(re.findall(r"^task \S+ ", frame, re.M)) <= 1, frame
    assert re.search(r"^task (\S+) COMPLETE slurm job \d+", frames[-1], re.M)
