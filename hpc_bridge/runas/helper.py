#!/usr/bin/python3 -IS
"""submit-as: the root helper of per-user execution, run by the service account through sudo.

    sudo -n /usr/local/libexec/hpc-bridge/submit-as TASK_ID

Its only argument is a task id. Everything else comes from trusted places: its own configuration
(CONFIG_PATH, a root-owned JSON file fixed when the helper is installed, never taken from the
caller or the environment) and the task's row in the service's database, which it reads as the
service account, read-only. What it does follows from that row, never from the caller:

- a QUEUED task without a job: hand the work area the daemon staged over to the task's user
  (walked from directory descriptors, every entry opened with O_NOFOLLOW and checked: made by the
  service account, a directory or a regular file with one link, no set-id bit), mode 0700; make
  the task's status directory `<work_root>/.status/<task id>` (owner the user, group the service
  account's, mode 2750) where the job leaves its record and logs for the daemon; then drop every
  privilege (initgroups, setresgid, setresuid) and exec `sbatch --parsable`, whose output is the
  job id
- a task being cancelled: as the user, check with squeue that its job is the user's and carries
  the task's comment, then exec `scancel` on it
- a task that ended more than the retention time ago: as the user, delete its work area and status
  directory
- a WES run whose engine is due (INITIALIZING/RUNNING): hand the run directory
  `<runs_root>/<run id>` over to the run's user (group the service account's, mode 2750), drop
  every privilege and exec the CWL engine (`engine_python -I -m hpc_bridge.cwl`) in it, so the
  workflow (the user's code) runs with the user's rights only
- a WES run that ended more than run_retention_hours ago: as the owner of its run directory (the
  run's user, or the service account if the engine never started) delete what is in it (but its
  outputs/ with run_retention_keep_outputs), then remove the empty directory

Before any of that the user is checked again (`check_user`, the same code the service runs at task
creation): the task names one, it exists, it is neither root nor a denied account (the service
account, deny_users: the Slurm and munge daemon users, nobody), its uid is from min_uid to max_uid,
neither its primary nor any supplementary group is a privileged one (gid 0, the service account's
group, deny_groups), it is in users_group if one is set (always in claim mode); in table mode the
helper's own table maps the task's owner to it, in claim mode the owner's issuer is one of
claim_issuers. No shell, no PATH lookup: programs run by absolute path from the configuration with
a fixed environment. Anything unexpected ends the helper with one line on stderr and exit status 2
(refused) or 3 (internal error).

Stdlib only (Python 3.11+): it is copied to its fixed path and run by the system's python3 with -I
(no PYTHON* variables, no user site, no current directory on sys.path) and -S.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

# Where the helper's configuration lives: replaced when the helper is installed (install.py),
# never read from the caller, its arguments or the environment.
CONFIG_PATH = "/etc/hpc-bridge/submit-as.json"

TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# Portable user names (no leading '-' or digit, no ',' or ':' that Slurm or chown would split on).
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
JOB_ID = re.compile(r"[0-9]{1,18}\Z")
PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./-]+\Z")
STATUS_DIR = ".status"
TERMINAL_STATES = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})
RUN_FINAL_STATES = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"})
ENDED_JOB_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                              "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"})
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
EXIT_REFUSED = 2
EXIT_INTERNAL = 3
MAX_DEPTH = 64
MAX_CONFIG_BYTES = 1024 * 1024
# Debian reserves 60000-64999 for its own system accounts (Slurm's `slurm` is 64030), 65000-65533
# and 65534/65535 (nobody, nogroup); login.defs gives ordinary users 1000-59999.
MAX_UID = 59999
# Accounts that are never targets, whatever their uid: the daemons Slurm trusts (their munge key and
# state let them speak for any user) and nobody (owns what no one should, e.g. NFS-squashed files).
DENY_USERS = ("slurm", "munge", "nobody")
# Groups whose members are root or close to it (sudo, wheel, admin; docker, lxd, incus-admin,
# libvirt: the daemon's socket is root; disk, kmem: raw devices and memory; staff: writes /usr/local,
# where this helper lives), or read what other users cannot (adm, systemd-journal: every log;
# shadow: password hashes; kvm: /dev/kvm), or run Slurm and munge. Groups a machine lacks are skipped.
DENY_GROUPS = ("root", "sudo", "wheel", "admin", "adm", "docker", "lxd", "incus-admin", "libvirt",
               "disk", "kmem", "staff", "shadow", "systemd-journal", "kvm", "slurm", "munge")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ANY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Refused(Exception):
    """The helper will not do it: the message says why (one line)."""


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """Which Unix users jobs may run as: the site's `run_as` settings and the helper's configuration
    both become one, so the service and the helper check exactly the same things."""

    service_user: str
    min_uid: int
    max_uid: int = MAX_UID
    users_group: str | None = None
    deny_users: tuple[str, ...] = DENY_USERS
    deny_groups: tuple[str, ...] = DENY_GROUPS


@dataclass(frozen=True)
class Config:
    database: str
    work_root: str
    mode: str
    policy: Policy
    sbatch: str
    squeue: str
    scancel: str
    table: dict[str, str] = field(default_factory=dict)
    claim_issuers: tuple[str, ...] = ()
    work_retention_hours: float | None = None
    run_retention_hours: float | None = None  # None: run directories are kept
    run_retention_keep_outputs: bool = False  # True: a run directory's outputs/ stays
    runs_root: str | None = None  # WES run directories; with engine_python: engines may start
    engine_python: str | None = None


_REQUIRED = ("database", "work_root", "service_user", "mode", "min_uid", "sbatch", "squeue", "scancel")
# Missing in a configuration written before they existed: the defaults above (max_uid, deny_*), and
# no claim issuer at all (a claim-mode helper then refuses every task until it is reinstalled).
_OPTIONAL = ("table", "users_group", "work_retention_hours", "run_retention_hours", "run_retention_keep_outputs",
             "runs_root", "engine_python",
             "max_uid", "deny_users", "deny_groups", "claim_issuers")


def _names(data: dict[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = data.get(key, default)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and USER_NAME.match(v) for v in value):
        raise Refused(f"configuration: {key} must be a list of user or group names")
    return tuple(value)


def parse_config(data: Any) -> Config:
    """The JSON install.py writes, checked strictly: an unknown or missing key is an error."""
    if not isinstance(data, dict):
        raise Refused("configuration: not a JSON object")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    missing = sorted(set(_REQUIRED) - set(data))
    if unknown or missing:
        raise Refused(f"configuration: unknown keys {unknown}, missing keys {missing}")
    for key in ("database", "work_root", "sbatch", "squeue", "scancel"):
        if not isinstance(data[key], str) or not os.path.isabs(data[key]):
            raise Refused(f"configuration: {key} must be an absolute path")
    if not PLAIN_PATH.match(data["work_root"]):
        raise Refused("configuration: work_root must be a plain absolute path")
    if data["mode"] not in ("table", "claim"):
        raise Refused("configuration: mode must be 'table' or 'claim'")
    if not isinstance(data["service_user"], str) or not USER_NAME.match(data["service_user"]):
        raise Refused("configuration: service_user must be a user name")
    min_uid, max_uid = data["min_uid"], data.get("max_uid", MAX_UID)
    if isinstance(min_uid, bool) or not isinstance(min_uid, int) or min_uid < 1:
        raise Refused("configuration: min_uid must be an integer of at least 1")
    if isinstance(max_uid, bool) or not isinstance(max_uid, int) or max_uid < min_uid:
        raise Refused("configuration: max_uid must be an integer of at least min_uid")
    table = data.get("table") or {}
    if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and USER_NAME.match(v) for k, v in table.items()):
        raise Refused("configuration: table must map owners to user names")
    if data["mode"] == "table" and not table:
        raise Refused("configuration: mode 'table' needs a table")
    group = data.get("users_group")
    if group is not None and (not isinstance(group, str) or not USER_NAME.match(group)):
        raise Refused("configuration: users_group must be a group name")
    issuers = data.get("claim_issuers") or []
    if not isinstance(issuers, list) or not all(isinstance(i, str) and i and "#" not in i for i in issuers):
        raise Refused("configuration: claim_issuers must be a list of issuers")
    if data["mode"] == "claim" and (group is None or not issuers):
        raise Refused("configuration: mode 'claim' needs users_group and claim_issuers")
    hours, run_hours = _hours(data, "work_retention_hours"), _hours(data, "run_retention_hours")
    keep_outputs = data.get("run_retention_keep_outputs", False)
    if not isinstance(keep_outputs, bool):
        raise Refused("configuration: run_retention_keep_outputs must be true or false")
    for key in ("runs_root", "engine_python"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not PLAIN_PATH.match(value)):
            raise Refused(f"configuration: {key} must be a plain absolute path or null")
    policy = Policy(service_user=data["service_user"], min_uid=min_uid, max_uid=max_uid, users_group=group,
                    deny_users=_names(data, "deny_users", DENY_USERS),
                    deny_groups=_names(data, "deny_groups", DENY_GROUPS))
    return Config(database=data["database"], work_root=data["work_root"].rstrip("/"), mode=data["mode"],
                  policy=policy, sbatch=data["sbatch"], squeue=data["squeue"], scancel=data["scancel"],
                  table=dict(table), claim_issuers=tuple(issuers),
                  work_retention_hours=hours, run_retention_hours=run_hours,
                  run_retention_keep_outputs=keep_outputs,
                  runs_root=(data.get("runs_root") or "").rstrip("/") or None,
                  engine_python=data.get("engine_python"))


def _hours(data: dict[str, Any], key: str) -> float | None:
    hours = data.get(key)
    if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours < 0):
        raise Refused(f"configuration: {key} must be a number >= 0 or null")
    return None if hours is None else float(hours)


def _trusted(st: os.stat_result, what: str, owners: tuple[int, ...] = (0,)) -> None:
    """Owned by root (or one of `owners`) and writable by nobody else."""
    if st.st_uid not in owners or st.st_mode & 0o022:
        raise Refused(f"{what} must be owned by uid {'/'.join(map(str, owners))} and not "
                      f"writable by group or others (owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")


def load_config(path: str = CONFIG_PATH) -> Config:
    _trusted(os.stat(os.path.dirname(path)), os.path.dirname(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open the configuration {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"configuration {path} is not a regular file")
        _trusted(st, path)
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise Refused(f"configuration {path} is too large")
    try:
        return parse_config(json.loads(raw))
    except ValueError as exc:
        raise Refused(f"configuration {path} is not valid JSON: {exc}") from None


# -- who --------------------------------------------------------------------------------------


def check_user(name: Any, policy: Policy, *, getpwnam: Callable[[str], Any] = pwd.getpwnam,
               getgrnam: Callable[[str], Any] = grp.getgrnam,
               getgrouplist: Callable[[str, int], list[int]] = os.getgrouplist) -> Any:
    """The passwd entry of a user jobs may run as; Refused (saying why) otherwise. Shared by the
    service (at task creation) and the helper (again, just before acting). Groups come from
    getgrouplist, so that supplementary groups from LDAP or SSSD count as well as /etc/group."""
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise Refused(f"{name!r} is not a valid Unix user name")
    try:
        entry = getpwnam(name)
    except KeyError:
        raise Refused(f"Unix user {name!r} does not exist") from None
    if entry.pw_name == policy.service_user:
        raise Refused(f"Unix user {name!r} is the service account: jobs never run as it through the helper")
    if entry.pw_name in policy.deny_users:
        raise Refused(f"Unix user {name!r} is a system account jobs never run as (deny_users)")
    if entry.pw_uid == 0 or not policy.min_uid <= entry.pw_uid <= policy.max_uid:
        raise Refused(f"Unix user {name!r} has uid {entry.pw_uid}: jobs run only as users with a uid "
                      f"from {policy.min_uid} to {policy.max_uid}")
    gids = set(getgrouplist(entry.pw_name, entry.pw_gid))
    if 0 in gids:
        raise Refused(f"Unix user {name!r} is in the group root (gid 0)")
    try:
        service_gid = getpwnam(policy.service_user).pw_gid
    except KeyError:
        raise Refused(f"service account {policy.service_user!r} does not exist") from None
    if service_gid in gids:
        raise Refused(f"Unix user {name!r} is in the service account's group (gid {service_gid}), "
                      "which reads every task's status directory")
    for denied in policy.deny_groups:
        try:
            gid = getgrnam(denied).gr_gid
        except KeyError:
            continue  # not on this machine: no one can be in it
        if gid in gids:
            raise Refused(f"Unix user {name!r} is in the privileged group {denied!r} (deny_groups)")
    if policy.users_group is not None:
        try:
            group = getgrnam(policy.users_group)
        except KeyError:
            raise Refused(f"Unix group {policy.users_group!r} does not exist") from None
        if group.gr_gid not in gids:
            raise Refused(f"Unix user {name!r} is not in the group {policy.users_group!r}")
    return entry


def check_issuer(owner: str, issuers: tuple[str, ...] | list[str]) -> None:
    """In claim mode a token names its own Unix user: only tokens of the issuers the site trusts
    for that may (owners are `<issuer>#<subject>`; the first '#' splits, issuers have none)."""
    issuer, sep, _ = owner.partition("#")
    if not sep or issuer not in issuers:
        raise Refused(f"owner {owner!r}: only tokens of {', '.join(issuers) or 'no issuer'} may name a "
                      "Unix user here (claim_issuers)")


@dataclass(frozen=True)
class TaskState:
    id: str
    owner: str
    state: str
    run_as: str | None
    job_id: str | None
    cancel_requested: bool
    end_time: str | None
    cleaned_at: str | None


@dataclass(frozen=True)
class RunState:
    """A WES run: its engine is started as the run's user."""

    id: str
    owner: str
    state: str
    run_as: str | None
    run_dir: str
    end_time: str | None = None
    cleaned_at: str | None = None


ENGINE_STATES = frozenset({"INITIALIZING", "RUNNING", "PAUSED"})


def authorize(task: TaskState | RunState, config: Config, **lookups: Any) -> Any:
    """The passwd entry of the task's user, after every check the helper's own configuration asks."""
    if not task.run_as:
        raise Refused(f"task {task.id} runs as the service account, not through this helper")
    entry = check_user(task.run_as, config.policy, **lookups)
    if config.mode == "table" and config.table.get(task.owner) != task.run_as:
        raise Refused(f"this helper's table does not map owner {task.owner!r} to Unix user {task.run_as!r}")
    if config.mode == "claim":
        check_issuer(task.owner, config.claim_issuers)
    return entry


def decide(task: TaskState | RunState) -> str:
    """What the task's own state calls for: 'submit', 'cancel' or 'clean'; for a run 'engine' or
    'clean_run'."""
    if isinstance(task, RunState):
        if task.state in RUN_FINAL_STATES:
            if task.cleaned_at:
                raise Refused(f"run {task.id}: its directory was already removed")
            return "clean_run"
        if task.state not in ENGINE_STATES:
            raise Refused(f"run {task.id} is {task.state}: its engine is not due to start")
        return "engine"
    if task.state in TERMINAL_STATES:
        if task.cleaned_at:
            raise Refused(f"task {task.id}: its work area was already removed")
        return "clean"
    if task.cancel_requested:
        if not task.job_id:
            raise Refused(f"task {task.id} is being cancelled and has no job")
        return "cancel"
    if task.state == "QUEUED" and not task.job_id:
        return "submit"
    job = f" (job {task.job_id})" if task.job_id else ""
    raise Refused(f"task {task.id} is {task.state}{job}: nothing to do")


# -- privileges -------------------------------------------------------------------------------


def drop_privileges(entry: Any) -> None:
    """For good: supplementary groups, then real/effective/saved gid and uid. Checked afterwards."""
    uid, gid = entry.pw_uid, entry.pw_gid
    os.initgroups(entry.pw_name, gid)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise RuntimeError("privileges were not dropped")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("root could be regained after dropping privileges")


def user_env(entry: Any) -> dict[str, str]:
    """The whole environment of what runs as the user (sbatch passes it on to the job)."""
    return {"PATH": SAFE_PATH, "HOME": entry.pw_dir, "USER": entry.pw_name,
            "LOGNAME": entry.pw_name, "LANG": "C.UTF-8"}


def as_user(entry: Any, func: Callable[[], Any]) -> Any:
    """func() in a child process that dropped every privilege to `entry`; its (JSON) result,
    or its refusal, comes back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; exercised by the integration tests
        try:
            os.close(read_end)
            try:
                drop_privileges(entry)
                answer = {"ok": func()}
            except Refused as exc:
                answer = {"refused": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(answer).encode()
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as fh:
        chunks.append(fh.read())
    os.waitpid(pid, 0)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise RuntimeError(f"no answer from the child running as {entry.pw_name}") from None
    if "refused" in answer:
        raise Refused(answer["refused"])
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return answer["ok"]


# -- the task's row ---------------------------------------------------------------------------


def query_task(database: str, task_id: str) -> dict[str, Any] | None:
    uri = "file:" + urllib.parse.quote(database) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30.0)
    try:
        conn.execute("PRAGMA query_only = 1")
        row = conn.execute("SELECT id, owner, state, run_as, job_id, cancel_requested, end_time, "
                           "cleaned_at FROM tasks WHERE id = ?", [task_id]).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    keys = ("id", "owner", "state", "run_as", "job_id", "cancel_requested", "end_time", "cleaned_at")
    return dict(zip(keys, row, strict=True))


def query_run(database: str, run_id: str) -> dict[str, Any] | None:
    uri = "file:" + urllib.parse.quote(database) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30.0)
    try:
        conn.execute("PRAGMA query_only = 1")
        row = conn.execute("SELECT id, owner, state, run_as, run_dir, end_time, cleaned_at FROM runs WHERE id = ?",
                           [run_id]).fetchone()
    finally:
        conn.close()
    keys = ("id", "owner", "state", "run_as", "run_dir", "end_time", "cleaned_at")
    return None if row is None else dict(zip(keys, row, strict=True))


def read_task(config: Config, service: Any, task_id: str) -> TaskState | RunState:
    """The task, or else the WES run, with this id. Read as the service account, so that whatever
    SQLite creates next to the database (the shared-memory file) belongs to the account that
    writes it, never to root."""
    row = as_user(service, lambda: query_task(config.database, task_id))
    if row is None:
        run = as_user(service, lambda: query_run(config.database, task_id))
        if run is None:
            raise Refused(f"no task or run {task_id} in {config.database}")
        return RunState(id=str(run["id"]), owner=str(run["owner"]), state=str(run["state"]),
                        run_as=run["run_as"], run_dir=str(run["run_dir"]), end_time=run["end_time"],
                        cleaned_at=run["cleaned_at"])
    return TaskState(id=str(row["id"]), owner=str(row["owner"]), state=str(row["state"]),
                     run_as=row["run_as"], job_id=None if row["job_id"] is None else str(row["job_id"]),
                     cancel_requested=bool(row["cancel_requested"]), end_time=row["end_time"],
                     cleaned_at=row["cleaned_at"])


# -- the work area ----------------------------------------------------------------------------


def open_work_root(config: Config, service: Any) -> int:
    try:
        fd = os.open(config.work_root, _DIR_FLAGS)
    except OSError as exc:
        raise Refused(f"cannot open the work root {config.work_root}: {exc.strerror}") from None
    _trusted(os.fstat(fd), config.work_root, (0, service.pw_uid))
    return fd


def _open_child(name: str, dir_fd: int, where: str, flags: int = _ANY_FLAGS) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:  # ELOOP: a symlink; ENXIO: a socket; ENOTDIR: not a directory
        raise Refused(f"{where}: cannot be opened without following links ({exc.strerror})") from None


def hand_over(dir_fd: int, user: Any, service_uid: int, where: str, depth: int = 0,
              gid: int | None = None) -> None:
    """Give a tree the service account built to the user (group `gid`, else the user's own):
    each object is checked on the descriptor that is then chowned, so nothing swapped in between
    is ever touched."""
    if depth > MAX_DEPTH:
        raise Refused(f"{where}: nested too deeply")
    owners = (service_uid, user.pw_uid)  # the user's: chowned by an earlier, interrupted run
    st = os.fstat(dir_fd)
    if st.st_uid not in owners:
        raise Refused(f"{where}: owned by uid {st.st_uid}, not by the service account")
    with os.scandir(dir_fd) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        path = f"{where}/{name}"
        fd = _open_child(name, dir_fd, path)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                hand_over(fd, user, service_uid, path, depth + 1, gid)
            elif stat.S_ISREG(st.st_mode):
                if st.st_uid not in owners:
                    raise Refused(f"{path}: owned by uid {st.st_uid}, not by the service account")
                if st.st_nlink != 1:
                    raise Refused(f"{path}: has {st.st_nlink} hard links")
                if st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
                    raise Refused(f"{path}: has a set-id bit")
                os.fchown(fd, user.pw_uid, user.pw_gid if gid is None else gid)
            else:
                raise Refused(f"{path}: not a regular file or directory")
        finally:
            os.close(fd)
    os.fchown(dir_fd, user.pw_uid, user.pw_gid if gid is None else gid)


def _is_empty(fd: int) -> bool:
    with os.scandir(fd) as entries:
        return next(iter(entries), None) is None


def make_status_dir(root_fd: int, config: Config, task_id: str, user: Any, service: Any) -> None:
    """`<work_root>/.status/<task id>`: the user's, group the service account's, mode 2750, so
    the job writes its record and logs there and the daemon reads them (the work area is 0700)."""
    status_root = f"{config.work_root}/{STATUS_DIR}"
    try:
        sfd = os.open(STATUS_DIR, _DIR_FLAGS, dir_fd=root_fd)
    except OSError as exc:
        raise Refused(f"cannot open {status_root} (the daemon makes it): {exc.strerror}") from None
    try:
        _trusted(os.fstat(sfd), status_root, (0, service.pw_uid))
        try:
            os.mkdir(task_id, 0o700, dir_fd=sfd)
        except FileExistsError:
            pass
        fd = _open_child(task_id, sfd, f"{status_root}/{task_id}", _DIR_FLAGS)
        try:
            st = os.fstat(fd)
            if st.st_uid == 0 and _is_empty(fd):  # made just now, or by a run that stopped here
                os.fchown(fd, user.pw_uid, service.pw_gid)
            elif (st.st_uid, st.st_gid) != (user.pw_uid, service.pw_gid):
                raise Refused(f"{status_root}/{task_id}: owned by {st.st_uid}:{st.st_gid}, not by "
                              f"{user.pw_uid}:{service.pw_gid}")
            os.fchmod(fd, 0o2750)
        finally:
            os.close(fd)
    finally:
        os.close(sfd)


# -- actions ----------------------------------------------------------------------------------


def submit(config: Config, task: TaskState, user: Any, service: Any) -> NoReturn:
    root_fd = open_work_root(config, service)
    workdir = f"{config.work_root}/{task.id}"
    area_fd = _open_child(task.id, root_fd, workdir, _DIR_FLAGS)
    owner = os.fstat(area_fd).st_uid
    if owner == service.pw_uid:
        hand_over(area_fd, user, service.pw_uid, workdir)
    elif owner != user.pw_uid:
        raise Refused(f"{workdir}: owned by uid {owner}, neither the service account nor {user.pw_name}")
    os.fchmod(area_fd, 0o700)
    script = _open_child("job.sh", area_fd, f"{workdir}/job.sh")
    try:
        st = os.fstat(script)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != user.pw_uid:
            raise Refused(f"{workdir}/job.sh: not a regular file of {user.pw_name}")
    finally:
        os.close(script)
    make_status_dir(root_fd, config, task.id, user, service)
    os.fchdir(area_fd)  # sbatch reads ./job.sh from the directory checked above
    os.close(area_fd)
    os.close(root_fd)
    drop_privileges(user)
    os.umask(0o027)  # Slurm creates slurm.out with the submitter's umask: group-readable
    sys.stdout.flush()
    os.execve(config.sbatch, [config.sbatch, "--parsable", f"--chdir={workdir}", "job.sh"],
              user_env(user))


def _job_of(config: Config, task: TaskState, user: Any) -> str | None:
    """The job's state if it is the user's and carries the task's comment; None if Slurm no longer
    knows it. Runs as the user."""
    argv = [config.squeue, "--noheader", "--states=all", f"--jobs={task.job_id}",
            "--Format=UserName:|,State:|,Comment:|"]
    proc = subprocess.run(argv, env=user_env(user), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return None
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode or 1)  # Slurm's own message: the daemon retries
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        return None
    name, state, comment = (part.strip() for part in lines[0].split("|", 2))
    if name != user.pw_name or comment.rstrip("|").strip() != f"hpc-bridge:{task.id}":
        raise Refused(f"job {task.job_id} is not the job of task {task.id} run by {user.pw_name}")
    return state


def cancel(config: Config, task: TaskState, user: Any, service: Any) -> int:
    if not JOB_ID.match(task.job_id or ""):
        raise Refused(f"task {task.id}: {task.job_id!r} is not a Slurm job id")
    drop_privileges(user)
    state = _job_of(config, task, user)
    if state is None or state in ENDED_JOB_STATES:
        print(f"job {task.job_id} already ended")
        return 0
    sys.stdout.flush()
    os.execve(config.scancel, [config.scancel, str(task.job_id)], user_env(user))


def _open_dir(name: str, dir_fd: int, where: str) -> int | None:
    """A directory entry opened without following links (None: there is none)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: not a directory
        raise Refused(f"{where}: cannot be opened without following links ({exc.strerror})") from None


def _empty(fd: int, keep: str | None = None) -> None:
    """As the directory's owner: delete everything in it but `keep`. Through the descriptor the
    helper opened and checked, inherited by the child, never a path looked up again (a parent
    swapped for a symlink in between would lead elsewhere). rmtree with dir_fd follows no link."""
    with os.scandir(fd) as entries:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_dir in names:
        if name == keep:
            continue
        if is_dir:
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()  # 3.11 reads the trailing Z
    except ValueError:
        return None


def _due(what: str, end_time: str | None, hours: float, now: float | None) -> None:
    ended = _parse_time(end_time)
    if ended is None or (time.time() if now is None else now) - ended < hours * 3600:
        raise Refused(f"{what} ended less than {hours:g} h ago (at {end_time})")


def clean(config: Config, task: TaskState, user: Any, service: Any, now: float | None = None) -> int:
    hours = config.work_retention_hours
    if hours is None:
        raise Refused("work areas are kept here (work_retention_hours is null)")
    _due(f"task {task.id}", task.end_time, hours, now)
    root_fd = open_work_root(config, service)
    opened: list[int] = []
    try:
        area = _open_dir(task.id, root_fd, f"{config.work_root}/{task.id}")
        status_root = _open_dir(STATUS_DIR, root_fd, f"{config.work_root}/{STATUS_DIR}")
        status = None if status_root is None else _open_dir(task.id, status_root,
                                                            f"{config.work_root}/{STATUS_DIR}/{task.id}")
        opened = [fd for fd in (area, status_root, status) if fd is not None]

        # The contents as the user (root never deletes what the user could have planted) ...
        def empty_both() -> None:
            for fd in (area, status):
                if fd is not None:
                    _empty(fd)

        as_user(user, empty_both)
        # ... and the two directories, now empty, whose entries only root (or the daemon) may remove.
        _rmdir(task.id, root_fd)
        if status_root is not None:
            _rmdir(task.id, status_root)
    finally:
        for fd in [*opened, root_fd]:
            os.close(fd)
    print(f"removed the work area of task {task.id}")
    return 0


def _rmdir(name: str, dir_fd: int) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)  # only ever removes an empty directory
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise Refused(f"{name}: still holds files its owner could not delete (or wrote since)") from None
        raise


def _open_runs_root(runs_root: str, run: RunState, service: Any) -> tuple[int, str]:
    """The runs root (trusted: root's or the service's, writable by no one else) and the run's
    directory under it, which must be the one the run's row names."""
    run_dir = f"{runs_root}/{run.id}"
    if run.run_dir.rstrip("/") != run_dir:
        raise Refused(f"run {run.id}: its directory {run.run_dir} is not {run_dir}")
    try:
        root_fd = os.open(runs_root, _DIR_FLAGS)
    except OSError as exc:
        raise Refused(f"cannot open the runs root {runs_root}: {exc.strerror}") from None
    try:
        _trusted(os.fstat(root_fd), runs_root, (0, service.pw_uid))
    except BaseException:
        os.close(root_fd)
        raise
    return root_fd, run_dir


def clean_run(config: Config, run: RunState, user: Any, service: Any, now: float | None = None) -> int:
    """An ended run's directory, emptied by whoever owns it (the run's user once its engine started,
    the service account before) and then removed; with run_retention_keep_outputs its outputs/
    stays, and so does the directory (the record's output object still names it)."""
    hours, runs_root = config.run_retention_hours, config.runs_root
    if hours is None or not runs_root:
        raise Refused("run directories are kept here (run_retention_hours or runs_root is null)")
    _due(f"run {run.id}", run.end_time, hours, now)
    root_fd, run_dir = _open_runs_root(runs_root, run, service)
    run_fd = None
    try:
        run_fd = _open_dir(run.id, root_fd, run_dir)
        if run_fd is None:
            print(f"run {run.id}: no directory to remove")
            return 0
        owner = os.fstat(run_fd).st_uid
        if owner not in (user.pw_uid, service.pw_uid):
            raise Refused(f"{run_dir}: owned by uid {owner}, neither the service account nor {user.pw_name}")
        keep = "outputs" if config.run_retention_keep_outputs else None
        fd = run_fd
        as_user(user if owner == user.pw_uid else service, lambda: _empty(fd, keep))
        if keep is None:
            _rmdir(run.id, root_fd)
    finally:
        if run_fd is not None:
            os.close(run_fd)
        os.close(root_fd)
    print(f"{'emptied all but outputs/ of' if keep else 'removed'} the run directory of run {run.id}")
    return 0


def start_engine(config: Config, run: RunState, user: Any, service: Any) -> NoReturn:
    """A WES run's engine (its user's code: CWL expressions run in it) as the run's user: the run
    directory the service made is handed over (owner the user, group the service account's, 2750,
    so the service reads logs and outputs), then the engine is exec'd in it without privileges."""
    if not config.runs_root or not config.engine_python:
        raise Refused("workflow engines are not enabled in this helper's configuration")
    root_fd, run_dir = _open_runs_root(config.runs_root, run, service)
    run_fd = _open_child(run.id, root_fd, run_dir, _DIR_FLAGS)
    owner = os.fstat(run_fd).st_uid
    if owner == service.pw_uid:
        hand_over(run_fd, user, service.pw_uid, run_dir, gid=service.pw_gid)
    elif owner != user.pw_uid:
        raise Refused(f"{run_dir}: owned by uid {owner}, neither the service account nor {user.pw_name}")
    os.fchmod(run_fd, 0o2750)
    os.fchdir(run_fd)
    os.close(run_fd)
    os.close(root_fd)
    drop_privileges(user)
    os.umask(0o027)
    sys.stdout.flush()
    os.execve(config.engine_python, [config.engine_python, "-I", "-m", "hpc_bridge.cwl"], user_env(user))


ACTIONS: dict[str, Callable[..., int]] = {"submit": submit, "cancel": cancel, "clean": clean,
                                          "engine": start_engine, "clean_run": clean_run}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None, config_path: str = CONFIG_PATH) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(args) != 1 or not TASK_ID.match(args[0]):
            raise Refused("usage: submit-as ID (exactly one argument, a lowercase UUID: a task or a run)")
        if os.geteuid() != 0:
            raise Refused("must run as root, through sudo")
        os.umask(0o077)
        config = load_config(config_path)
        try:
            service = pwd.getpwnam(config.policy.service_user)
        except KeyError:
            raise Refused(f"service account {config.policy.service_user!r} does not exist") from None
        task = read_task(config, service, args[0])
        user = authorize(task, config)
        action = decide(task)
        return ACTIONS[action](config, task, user, service)
    except Refused as exc:
        print(f"submit-as: refused: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:  # noqa: BLE001 - fail closed, in one line
        print(f"submit-as: internal error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
