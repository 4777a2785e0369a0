"""`hpc-bridge-cwl-runner`: a `cwl-runner` that runs the workflow on an hpc-bridge server through
its WES API, so `cwltest --tool hpc-bridge-cwl-runner` runs conformance tests on Slurm.

    hpc-bridge-cwl-runner [--outdir DIR] [--quiet] [--url URL] tool.cwl [job.yml]

The tool and every local file it references (`run:`, `$import`, `$include`, `$schemas`, default
and InitialWorkDir files) and every local File/Directory of the job (with the files beside it that
secondaryFiles patterns may name: `ref.fa` brings `ref.fa.fai`, `ref.bai`) are attached, keeping their
relative layout, so the server needs no access to this machine; a job file that lies in a data root
the server advertises (TES service-info `storage`) and that this machine sees too is passed by
location instead (zero copy on a shared filesystem). The runner waits for the run, copies (same
machine) or downloads (`/runs/{id}/outputs`) the outputs into --outdir and prints the output object
as cwltool does. Exit code 0 COMPLETE, 33 for an unsupported requirement, 1 otherwise (130 after
Ctrl-C or SIGTERM, which cancel the run). Server: --url, else HPC_BRIDGE_URL, else
http://127.0.0.1:8000; bearer token: HPC_BRIDGE_TOKEN.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests
import yaml

from hpc_bridge import __version__
from hpc_bridge.lifecycle import TERMINAL
from hpc_bridge.wes import CRATE_OUTPUT

DEFAULT_URL = "http://127.0.0.1:8000"
WES = "/ga4gh/wes/v1"
EXIT_FAILED = 1
EXIT_UNSUPPORTED = 33
EXIT_INTERRUPTED = 130
UNSUPPORTED_MARKERS = ("UnsupportedRequirement", "Unsupported requirement", "unsupported requirement")


class RunnerError(Exception):
    """`code`: the runner's exit status; `status`: the server's HTTP status (None: no answer)."""

    def __init__(self, message: str, code: int = EXIT_FAILED, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpc-bridge-cwl-runner",
        description="Run a CWL workflow on an hpc-bridge server (WES) and print its outputs.")
    parser.add_argument("--outdir", default=os.path.abspath("."), help="Where the outputs go (default: .).")
    parser.add_argument("--quiet", action="store_true", help="Only print the output object and errors.")
    parser.add_argument("--debug", action="store_true", help="Print the run's log as it goes.")
    parser.add_argument("--url", default=os.environ.get("HPC_BRIDGE_URL", DEFAULT_URL),
                        help="The hpc-bridge server (env HPC_BRIDGE_URL; default %(default)s).")
    parser.add_argument("--basedir", help="Accepted for compatibility; job paths are relative to the job file.")
    parser.add_argument("--tag", action="append", default=[], metavar="K=V", help="Run tag (repeatable).")
    parser.add_argument("--engine-param", action="append", default=[], metavar="K=V",
                        help="workflow_engine_parameters entry (repeatable).")
    parser.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="store_true", help="Print the version and exit.")
    parser.add_argument("tool", nargs="?", help="The CWL document (file, or file#id).")
    parser.add_argument("job", nargs="?", help="The job object (YAML or JSON).")
    return parser


def _local(uri: str) -> str | None:
    """A local path for a file: URI or a plain path; None for other schemes."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return unquote(parts.path)
    if parts.scheme and len(parts.scheme) > 1:
        return None
    return uri


def _local_arg(arg: str) -> str:
    local = _local(arg)
    if local is None:
        raise RunnerError(f"{arg}: only local files (paths or file: URIs) can be submitted")
    return local


def workflow_files(tool: str) -> list[str]:
    """The tool file and every local file it depends on, as absolute paths: documents named by
    `run:` and `$import` (followed), `$include`d files, `$schemas`, and File/Directory literals
    (defaults, InitialWorkDir listings) with the files beside them that secondaryFiles may name, each
    relative to the document that names it."""
    found: dict[str, None] = {}

    def add(path: str) -> None:
        if os.path.isdir(path):
            found.update(dict.fromkeys(_walk(path)))
        elif os.path.isfile(path):
            found[os.path.abspath(path)] = None

    def document(path: str) -> None:
        path = os.path.abspath(path)
        if path in found or not os.path.isfile(path):
            return
        found[path] = None
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return  # not YAML (or broken): the server says why
        visit(data, Path(path).as_uri())

    def local(ref: Any, base: str) -> str | None:
        if not isinstance(ref, str) or not ref:
            return None
        return _local(urljoin(base, ref.partition("#")[0]))

    def visit(value: Any, base: str) -> None:
        if isinstance(value, list):
            for item in value:
                visit(item, base)
            return
        if not isinstance(value, dict):
            return
        for key in ("run", "$import"):
            path = local(value.get(key), base)
            if path:
                document(path)
        for ref in [value.get("$include"), *(value.get("$schemas") or [])]:
            path = local(ref, base)
            if path:
                add(path)
        if value.get("class") in ("File", "Directory"):
            path = local(value.get("location") or value.get("path"), base)
            if path:
                add(path)
                if value["class"] == "File":  # a default's secondaryFiles, as for job files
                    for companion in _companions(path):
                        add(companion)
        for key, item in value.items():
            if key != "$schemas" and isinstance(item, dict | list):
                visit(item, base)

    document(tool)
    return list(found)


def _companions(path: str) -> list[str]:
    """Files next to an input that secondaryFiles patterns may name (`ref.fa` -> `ref.fa.fai`,
    `ref.bai` with `^.bai`): the siblings whose name starts with the input's first name component
    and a dot. cwltool finds implicit secondary files beside the input on the server."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = name.split(".", 1)[0] + "."
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    return [os.path.join(directory, e) for e in entries
            if e != name and e.startswith(prefix) and os.path.isfile(os.path.join(directory, e))]


def _walk(directory: str) -> Iterator[str]:
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(root, name)


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        self.base = url.rstrip("/").removesuffix(WES).removesuffix("/ga4gh/tes/v1")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else self.base + path
        try:
            resp = self.session.request(method, url, timeout=kwargs.pop("timeout", 600), **kwargs)
        except requests.RequestException as exc:
            raise RunnerError(f"no answer from {self.base} ({exc})") from None
        if resp.status_code != 200:
            try:
                msg = resp.json()["msg"]
            except (ValueError, KeyError, TypeError):
                msg = resp.text[:2000] or resp.reason
            code = EXIT_UNSUPPORTED if any(m in msg for m in UNSUPPORTED_MARKERS) else EXIT_FAILED
            raise RunnerError(f"{msg} (HTTP {resp.status_code} from {url})", code, resp.status_code)
        return resp

    def data_roots(self) -> list[str]:
        try:
            storage = self.call("GET", "/ga4gh/tes/v1/service-info", timeout=30).json().get("storage", [])
        except (RunnerError, ValueError, AttributeError):  # not an hpc-bridge: the submission says why
            return []
        return [os.path.realpath(p) for p in (_local(s) for s in storage if s.startswith("file:")) if p]


class Submission:
    """The multipart request: attachments named relative to a common base directory."""

    def __init__(self, tool: str, job_path: str | None, data_roots: list[str]) -> None:
        """`tool` and `job_path` may be paths or file: URIs (cwltest passes URIs, as cwltool accepts)."""
        tool, _, self.fragment = tool.partition("#")
        self.tool = _local_arg(tool)
        self.job_path = _local_arg(job_path) if job_path else None
        self.data_roots = data_roots
        self.files: list[str] = []
        self.params: dict[str, Any] = {}

    def _shared(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(os.path.commonpath([real, root]) == root for root in self.data_roots)

    def prepare(self) -> None:
        """Raises RunnerError (status None) for what is wrong on this side: a missing file, a job
        that is not YAML or not an object."""
        if not os.path.isfile(self.tool):
            raise RunnerError(f"{self.tool}: {'not a file' if os.path.exists(self.tool) else 'no such file'}")
        self.files = workflow_files(self.tool)
        job: Any = {}
        if self.job_path:
            try:
                with open(self.job_path) as f:
                    job = yaml.safe_load(f) or {}
            except OSError as exc:
                raise RunnerError(f"{self.job_path}: {exc.strerror or exc}") from None
            except yaml.YAMLError as exc:
                raise RunnerError(f"{self.job_path}: not YAML or JSON: {exc}") from None
            if not isinstance(job, dict):
                raise RunnerError(f"{self.job_path}: the job must be an object")
        job.pop("cwl:tool", None)
        job_base = Path(os.path.abspath(self.job_path or "job.yml")).parent.as_uri() + "/"
        self._locals: list[tuple[dict[str, Any], str]] = []
        self.params = self._visit(job, job_base)
        paths = [*self.files, *(p for _, p in self._locals)]
        self.base = os.path.commonpath([os.path.dirname(p) for p in paths])
        for obj, path in self._locals:
            obj["location"] = "./" + quote(os.path.relpath(path, self.base))

    def _visit(self, value: Any, base: str) -> Any:
        if isinstance(value, list):
            return [self._visit(v, base) for v in value]
        if not isinstance(value, dict):
            return value
        result = {k: self._visit(v, base) for k, v in value.items()}
        cls = value.get("class")
        if cls in ("File", "Directory"):
            key = "location" if "location" in result else "path" if "path" in result else None
            if key is not None:
                location = result.pop(key)
                local = _local(urljoin(base, location)) if not location.startswith("/") else location
                if local is None:  # http(s) and the like: the server fetches it
                    result["location"] = location
                elif self._shared(local):
                    result["location"] = Path(os.path.abspath(local)).as_uri()
                elif cls == "File":
                    if not os.path.isfile(local):
                        raise RunnerError(f"input file not found: {local}")
                    self.files.append(os.path.abspath(local))
                    self.files.extend(_companions(local))
                    self._locals.append((result, os.path.abspath(local)))
                else:
                    if not os.path.isdir(local):
                        raise RunnerError(f"input directory not found: {local}")
                    self.files.extend(_walk(local))
                    self._locals.append((result, os.path.abspath(local)))
        return result

    def post(self, client: Client, tags: dict[str, str], engine_params: dict[str, str]) -> str:
        version = "v1.2"
        try:
            with open(self.tool) as f:
                doc = yaml.safe_load(f)
            if isinstance(doc, dict) and isinstance(doc.get("cwlVersion"), str):
                version = doc["cwlVersion"]
        except (OSError, yaml.YAMLError):
            pass
        fields = {
            "workflow_type": "CWL", "workflow_type_version": version,
            "workflow_url": quote(os.path.relpath(os.path.abspath(self.tool), self.base))
            + (f"#{self.fragment}" if self.fragment else ""),
            "workflow_params": json.dumps(self.params), "tags": json.dumps(tags),
            "workflow_engine_parameters": json.dumps(engine_params),
        }
        with ExitStack() as stack:
            parts = [("workflow_attachment", (os.path.relpath(p, self.base),
                                              stack.enter_context(open(p, "rb"))))
                     for p in dict.fromkeys(self.files)]
            resp = client.call("POST", f"{WES}/runs", data=fields, files=parts)
        return str(resp.json()["run_id"])


def _safe_name(name: str) -> str:
    """A server-given name as one plain path component (never `..` or a path)."""
    name = os.path.basename(str(name))
    return name if name not in ("", ".", "..") else "output"


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha1$" + digest.hexdigest()


class Outputs:
    """Brings every File/Directory of the output object into --outdir and rewrites it."""

    def __init__(self, client: Client, run_id: str, outdir: str) -> None:
        self.client = client
        self.run_id = run_id
        self.outdir = os.path.abspath(outdir)
        # (source, directory, basename) -> where it was put: an output object that names one file twice
        # (two outputs of one directory updated in place) gets it once, as cwltool does
        self._placed: dict[tuple[str, str, str], str] = {}

    def relocate(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.relocate(v) for v in value]
        if not isinstance(value, dict):
            return value
        if value.get("class") in ("File", "Directory") and isinstance(value.get("location"), str):
            return self._entry(value, self.outdir)
        return {k: self.relocate(v) for k, v in value.items()}

    def _target(self, directory: str, basename: str) -> str:
        target, n = os.path.join(directory, basename), 1
        while os.path.lexists(target):
            n += 1
            target = os.path.join(directory, f"{basename}_{n}")
        return target

    def _entry(self, obj: dict[str, Any], directory: str) -> dict[str, Any]:
        source = obj["location"]
        basename = _safe_name(obj.get("basename") or unquote(urlsplit(source).path).rstrip("/"))
        os.makedirs(directory, exist_ok=True)
        key = (source, directory, basename)
        target = self._placed.get(key)
        if target is None:
            target = self._placed[key] = self._target(directory, basename)
            self._fetch(source, target, obj["class"])
        result = {k: v for k, v in obj.items() if k not in ("location", "path", "listing", "secondaryFiles")}
        result.update(self.describe(target))
        if obj.get("secondaryFiles"):
            result["secondaryFiles"] = [self._entry(s, directory) for s in obj["secondaryFiles"]]
        return result

    def _fetch(self, source: str, target: str, kind: str) -> None:
        local = _local(source)
        if local and os.access(local, os.R_OK):
            if kind == "Directory":
                shutil.copytree(local, target, symlinks=False)
            else:
                shutil.copyfile(local, target)
            return
        resp = self.client.call("GET", f"{WES}/runs/{self.run_id}/outputs", params={"location": source},
                                stream=True)
        if resp.headers.get("content-type", "").startswith("application/json") and kind == "Directory":
            os.makedirs(target)
            for entry in resp.json()["listing"]:
                self._fetch(entry["location"], os.path.join(target, _safe_name(entry["basename"])),
                            entry["class"])
            return
        with open(target, "wb") as out:
            out.writelines(resp.iter_content(1 << 20))

    def describe(self, path: str) -> dict[str, Any]:
        """What cwltool prints for a local file or directory."""
        basename = os.path.basename(path)
        if os.path.isdir(path):
            return {"class": "Directory", "location": Path(path).as_uri(), "path": path,
                    "basename": basename,
                    "listing": [self.describe(os.path.join(path, n)) for n in sorted(os.listdir(path))]}
        root, ext = os.path.splitext(basename)
        return {"class": "File", "location": Path(path).as_uri(), "path": path, "basename": basename,
                "nameroot": root, "nameext": ext, "checksum": _sha1(path), "size": os.path.getsize(path)}


def _pairs(items: list[str], what: str) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise RunnerError(f"{what} {item!r}: expected K=V")
        result[key] = value
    return result


def run(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    client = Client(args.url, os.environ.get("HPC_BRIDGE_TOKEN") or None)
    submission = Submission(args.tool, args.job, client.data_roots())
    submission.prepare()
    run_id = submission.post(client, _pairs(args.tag, "--tag"), _pairs(args.engine_param, "--engine-param"))
    say(f"hpc-bridge-cwl-runner: run {run_id} on {client.base}")
    state, delay = "QUEUED", 0.2

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # cwltest's timeout: cancel the run, as Ctrl-C does
    try:
        while state not in TERMINAL:
            time.sleep(delay)
            delay = min(delay * 1.5, args.poll)
            new = client.call("GET", f"{WES}/runs/{run_id}/status").json()["state"]
            if new != state:
                say(f"hpc-bridge-cwl-runner: {new}")
                state = new
    except KeyboardInterrupt:
        client.call("POST", f"{WES}/runs/{run_id}/cancel")
        sys.stderr.write(f"hpc-bridge-cwl-runner: run {run_id} cancelled\n")
        return EXIT_INTERRUPTED
    log = client.call("GET", f"{WES}/runs/{run_id}").json()
    if state != "COMPLETE":
        stderr = client.call("GET", log["run_log"]["stderr"]).text
        sys.stderr.write(stderr[-20000:])
        for line in log["run_log"].get("system_logs") or []:
            sys.stderr.write(f"hpc-bridge: {line}\n")
        sys.stderr.write(f"hpc-bridge-cwl-runner: run {run_id} ended {state}\n")
        text = stderr + "\n".join(log["run_log"].get("system_logs") or [])
        return EXIT_UNSUPPORTED if any(m in text for m in UNSUPPORTED_MARKERS) else EXIT_FAILED
    workflow_outputs = {k: v for k, v in (log.get("outputs") or {}).items() if k != CRATE_OUTPUT}
    outputs = Outputs(client, run_id, args.outdir).relocate(workflow_outputs)
    sys.stdout.write(json.dumps(outputs, indent=4) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.version:
        print(f"hpc-bridge-cwl-runner {__version__}")
        return 0
    if not args.tool:
        parser.print_usage(sys.stderr)
        return 1
    quiet = args.quiet and not args.debug

    def say(message: str) -> None:
        if not quiet:
            sys.stderr.write(message + "\n")

    for option in unknown:  # cwltool options meant for a local run (--enable-ext, --parallel, ...)
        say(f"hpc-bridge-cwl-runner: ignoring {option}")
    try:
        return run(args, say)
    except RunnerError as exc:
        sys.stderr.write(f"hpc-bridge-cwl-runner: error: {exc}\n")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
