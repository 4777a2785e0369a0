"""Per-user execution, the pure parts: settings, the identity -> Unix user mapping, the root helper's
argument, configuration, user and state checks, its work-area hand-over (on a scratch tree, as root),
the job script's status directory, and the Slurm client's helper calls. The real sudo rule and real
users are exercised in tests/integration/test_run_as.py."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from hpc_bridge.auth.settings import AuthSettings, IssuerSettings
from hpc_bridge.auth.verifier import NO_AUTH_IDENTITY, Identity
from hpc_bridge.config import SiteConfig
from hpc_bridge.runas import helper
from hpc_bridge.runas.helper import (
    Config,
    Refused,
    TaskState,
    authorize,
    decide,
    hand_over,
    load_config,
    make_status_dir,
    parse_config,
)
from hpc_bridge.runas.mapping import NoUnixUser, unix_user_for
from hpc_bridge.runas.settings import RunAsSettings
from hpc_bridge.slurm.client import CliSlurmClient, SlurmError
from hpc_bridge.slurm.record import parse_record
from hpc_bridge.slurm.script import ExecutorScript, JobScript, render

from ..conftest import ROOT
from ..fake_slurm import FakeSlurm
from .test_slurm_client import FakeRunner

TEMPLATES = [ROOT / "slurm_templates"]
TASK = "0b6f1c2e-1111-4222-8333-944445555666"
ME = os.getuid()
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

# -- fake passwd / group databases -------------------------------------------------------------

USERS = {
    "alice": SimpleNamespace(pw_name="alice", pw_uid=2000, pw_gid=2000, pw_dir="/home/alice"),
    "bob": SimpleNamespace(pw_name="bob", pw_uid=2001, pw_gid=2001, pw_dir="/home/bob"),
    "lowly": SimpleNamespace(pw_name="lowly", pw_uid=990, pw_gid=990, pw_dir="/"),
    "root": SimpleNamespace(pw_name="root", pw_uid=0, pw_gid=0, pw_dir="/root"),
    "rootgroup": SimpleNamespace(pw_name="rootgroup", pw_uid=3000, pw_gid=0, pw_dir="/"),
    "svc": SimpleNamespace(pw_name="svc", pw_uid=4000, pw_gid=4000, pw_dir="/var/lib/svc"),
    "carol": SimpleNamespace(pw_name="carol", pw_uid=2002, pw_gid=5000, pw_dir="/home/carol"),
    # in the users' group, but refused by the policy all the same
    "high": SimpleNamespace(pw_name="high", pw_uid=60000, pw_gid=5000, pw_dir="/"),
    "nobody": SimpleNamespace(pw_name="nobody", pw_uid=65534, pw_gid=65534, pw_dir="/nonexistent"),
    "slurm": SimpleNamespace(pw_name="slurm", pw_uid=2100, pw_gid=5000, pw_dir="/"),  # a site's own uid
    "munge": SimpleNamespace(pw_name="munge", pw_uid=2101, pw_gid=5000, pw_dir="/"),
    "admin1": SimpleNamespace(pw_name="admin1", pw_uid=2200, pw_gid=5000, pw_dir="/"),  # sudo
    "docker1": SimpleNamespace(pw_name="docker1", pw_uid=2201, pw_gid=5000, pw_dir="/"),  # docker
    "disk1": SimpleNamespace(pw_name="disk1", pw_uid=2202, pw_gid=6, pw_dir="/"),  # disk, as primary group
    "root1": SimpleNamespace(pw_name="root1", pw_uid=2203, pw_gid=5000, pw_dir="/"),  # root, supplementary
    "svcmate": SimpleNamespace(pw_name="svcmate", pw_uid=2204, pw_gid=5000, pw_dir="/"),  # the service's
}
GROUPS = {
    "hpcusers": SimpleNamespace(gr_name="hpcusers", gr_gid=5000, gr_mem=["alice", "bob"]),
    "root": SimpleNamespace(gr_name="root", gr_gid=0, gr_mem=["root1"]),
    "disk": SimpleNamespace(gr_name="disk", gr_gid=6, gr_mem=[]),
    "sudo": SimpleNamespace(gr_name="sudo", gr_gid=27, gr_mem=["admin1"]),
    "docker": SimpleNamespace(gr_name="docker", gr_gid=998, gr_mem=["docker1"]),
    "svc": SimpleNamespace(gr_name="svc", gr_gid=4000, gr_mem=["svcmate"]),
}


def getpwnam(name: str) -> SimpleNamespace:
    return USERS[name]


def getgrnam(name: str) -> SimpleNamespace:
    return GROUPS[name]


def getgrouplist(name: str, gid: int) -> list[int]:
    return [gid, *(group.gr_gid for group in GROUPS.values() if name in group.gr_mem)]


LOOKUPS = {"getpwnam": getpwnam, "getgrnam": getgrnam, "getgrouplist": getgrouplist}
SERVICE = pytest.importorskip("pwd").getpwuid(ME).pw_name  # an existing account for service_user
ISSUER = "https://aai.example.org"


def fake_service(settings: RunAsSettings) -> RunAsSettings:
    """Validated with a real account (the settings check it exists), then pointed at the fake
    passwd's service account "svc"."""
    return settings.model_copy(update={"service_user": "svc"})


def table(**kwargs: object) -> RunAsSettings:
    return fake_service(RunAsSettings(mode="table", service_user=SERVICE, table={"local": "alice"}, **kwargs))


def claim(**kwargs: object) -> RunAsSettings:
    return fake_service(RunAsSettings(**{"mode": "claim", "claim": "posix_user", "service_user": SERVICE,
                                         "users_group": "hpcusers", "claim_issuers": [ISSUER], **kwargs}))


# -- settings --------------------------------------------------------------------------------


def test_default_is_the_service_account_and_site_config_accepts_it(dev_config: SiteConfig) -> None:
    assert dev_config.run_as.mode == "service" and not dev_config.run_as.enabled
    assert unix_user_for(NO_AUTH_IDENTITY, RunAsSettings()) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "table", "service_user": SERVICE}, "non-empty table"),
    ({"mode": "claim", "service_user": SERVICE}, "needs claim"),
    ({"mode": "claim", "claim": "posix_user", "service_user": SERVICE, "claim_issuers": [ISSUER]},
     "mode 'claim' needs users_group"),
    ({"mode": "claim", "claim": "posix_user", "service_user": SERVICE, "users_group": "g"},
     "mode 'claim' needs claim_issuers"),
    ({"mode": "table", "table": {"x": "a"}, "service_user": SERVICE, "claim_issuers": [ISSUER]},
     "claim_issuers is only used with mode 'claim'"),
    ({"min_uid": 2000, "max_uid": 1999}, "max_uid (1999) is below min_uid (2000)"),
    ({"deny_groups": ["sudo", "a b"]}, "not valid POSIX user or group names: ['a b']"),
    ({"mode": "table", "table": {"local": "alice"}}, "needs service_user"),
    ({"mode": "claim", "claim": "posix_user", "table": {"x": "alice"}, "service_user": SERVICE,
      "users_group": "g", "claim_issuers": [ISSUER]}, "only used with mode 'table'"),
    ({"mode": "table", "table": {"x": "alice"}, "claim": "c", "service_user": SERVICE}, "only used with mode 'claim'"),
    ({"mode": "table", "table": {"x": "-rf"}, "service_user": SERVICE}, "not valid POSIX user names"),
    ({"mode": "table", "table": {"x": "a,b"}, "service_user": SERVICE}, "not valid POSIX user names"),
    ({"mode": "table", "table": {"x": "a"}, "service_user": "no-such-user-hpcb"}, "does not exist"),
    ({"helper": "submit-as"}, "absolute path"),
    ({"sudo": "sudo"}, "absolute path"),
    ({"min_uid": 0}, "greater than or equal to 1"),
    ({"mode": "ldap"}, "mode"),
    ({"unknown": 1}, "Extra inputs"),
])
def test_inconsistent_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        RunAsSettings(**kwargs)


# -- mapping ---------------------------------------------------------------------------------


def test_table_maps_the_owner() -> None:
    assert unix_user_for(NO_AUTH_IDENTITY, table(), **LOOKUPS) == "alice"
    other = Identity(issuer="https://aai.example.org", subject="u1")
    with pytest.raises(NoUnixUser, match="no Unix user is mapped to 'https://aai.example.org#u1'"):
        unix_user_for(other, table(), **LOOKUPS)


def test_claim_names_the_user() -> None:
    ident = Identity(issuer=ISSUER, subject="u1", claims={"posix_user": "bob"})
    assert unix_user_for(ident, claim(), **LOOKUPS) == "bob"
    for claims, message in [({}, "has no 'posix_user' claim"), ({"posix_user": ["bob"]}, "not a user name"),
                            ({"posix_user": "bob;id"}, "not a valid Unix user name"),
                            ({"posix_user": "nobody-here"}, "does not exist")]:
        with pytest.raises(NoUnixUser, match=re.escape(message)):
            unix_user_for(Identity(issuer=ISSUER, subject="u1", claims=claims), claim(), **LOOKUPS)


def test_a_claim_names_a_user_only_in_tokens_of_the_sites_claim_issuers() -> None:
    """A trusted issuer (it may log users in) that the site did not name for claims: no Unix user,
    and nothing falls back (not the table, not the service account)."""
    other = Identity(issuer="https://other.example.org", subject="u1", claims={"posix_user": "bob"})
    with pytest.raises(NoUnixUser, match=re.escape("only tokens of https://aai.example.org may name a Unix user")):
        unix_user_for(other, claim(), **LOOKUPS)
    lookalike = Identity(issuer=ISSUER + "/", subject="u1", claims={"posix_user": "bob"})
    with pytest.raises(NoUnixUser, match="claim_issuers"):
        unix_user_for(lookalike, claim(), **LOOKUPS)
    with pytest.raises(NoUnixUser, match="claim_issuers"):  # no authentication: no issuer at all
        unix_user_for(NO_AUTH_IDENTITY, claim(), **LOOKUPS)


def test_claim_issuers_must_be_issuers_the_site_verifies(dev_config: SiteConfig) -> None:
    data = dev_config.model_dump(mode="json")
    data["auth"] = {"mode": "jwt", "issuers": [{"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"}]}
    data["run_as"] = {"mode": "claim", "claim": "posix_user", "service_user": SERVICE, "users_group": "g",
                      "claim_issuers": [ISSUER]}
    assert SiteConfig.model_validate(data).run_as.claim_issuers == [ISSUER]
    data["run_as"]["claim_issuers"] = [ISSUER, "https://other.example.org"]
    with pytest.raises(ValidationError, match=re.escape("run_as.claim_issuers ['https://other.example.org'] "
                                                        "are not in auth.issuers")):
        SiteConfig.model_validate(data)


@pytest.mark.parametrize(("user", "message"), [
    ("lowly", "has uid 990: jobs run only as users with a uid from 1000 to 59999"),
    ("root", "has uid 0"),
    ("high", "has uid 60000"),  # Debian's reserved range starts here
    ("nobody", "is a system account jobs never run as (deny_users)"),
    ("slurm", "'slurm' is a system account"),
    ("munge", "'munge' is a system account"),
    ("rootgroup", "is in the group root (gid 0)"),
    ("root1", "is in the group root (gid 0)"),  # supplementary
    ("admin1", "is in the privileged group 'sudo' (deny_groups)"),
    ("docker1", "is in the privileged group 'docker'"),
    ("disk1", "is in the privileged group 'disk'"),  # primary
    ("svcmate", "is in the service account's group (gid 4000)"),
    ("svc", "is the service account"),
    ("ghost", "does not exist"),
])
def test_the_policy_refuses_every_privileged_or_system_user(user: str, message: str) -> None:
    """The same check runs at task creation and in the helper (below): one rule, two places."""
    settings = table(users_group="hpcusers").model_copy(update={"table": {"local": user}})
    with pytest.raises(NoUnixUser, match=re.escape(message)):
        unix_user_for(NO_AUTH_IDENTITY, settings, **LOOKUPS)
    cfg = _cfg(table={"local": user})
    with pytest.raises(Refused, match=re.escape(message)):
        authorize(_task(run_as=user), cfg, **LOOKUPS)


def test_the_site_sets_the_uid_range_and_deny_lists() -> None:
    def user_for(name: str, **policy: object) -> str | None:
        settings = table(**policy).model_copy(update={"table": {"local": name}})
        return unix_user_for(NO_AUTH_IDENTITY, settings, **LOOKUPS)

    assert user_for("high", max_uid=60000) == "high"
    with pytest.raises(NoUnixUser, match="uid from 1000 to 1999"):
        user_for("alice", max_uid=1999)
    assert user_for("admin1", deny_groups=["docker"]) == "admin1"  # the list replaces the default
    with pytest.raises(NoUnixUser, match="privileged group 'hpcusers'"):
        user_for("alice", deny_groups=["hpcusers"])
    with pytest.raises(NoUnixUser, match="deny_users"):
        user_for("bob", deny_users=["bob"])
    with pytest.raises(NoUnixUser, match="group root"):  # gid 0 and the service's group, always
        user_for("root1", deny_groups=[])
    with pytest.raises(NoUnixUser, match="service account's group"):
        user_for("svcmate", deny_groups=[])
    assert user_for("nobody", deny_users=[], max_uid=65534) == "nobody"  # a site can, but must say so


def test_users_group_membership_primary_or_supplementary() -> None:
    for user in ("alice", "carol"):  # alice a member, carol by primary group
        settings = table(users_group="hpcusers").model_copy(update={"table": {"local": user}})
        assert unix_user_for(NO_AUTH_IDENTITY, settings, **LOOKUPS) == user
    users = {**USERS, "dave": SimpleNamespace(pw_name="dave", pw_uid=2003, pw_gid=2003, pw_dir="/")}
    with pytest.raises(NoUnixUser, match="not in the group 'hpcusers'"):
        unix_user_for(NO_AUTH_IDENTITY, table(users_group="hpcusers").model_copy(update={"table": {"local": "dave"}}),
                      getpwnam=users.__getitem__, getgrnam=getgrnam, getgrouplist=getgrouplist)


def test_supplementary_groups_come_from_the_system_not_only_etc_group() -> None:
    """getgrouplist (NSS: LDAP, SSSD) decides membership, whatever a group's member list says."""
    settings = table(users_group="hpcusers").model_copy(update={"table": {"local": "bob"}})
    with pytest.raises(NoUnixUser, match="privileged group 'sudo'"):
        unix_user_for(NO_AUTH_IDENTITY, settings, getpwnam=getpwnam, getgrnam=getgrnam,
                      getgrouplist=lambda name, gid: [gid, 5000, 27])


# -- the helper: argument, configuration, checks ------------------------------------------------


@pytest.mark.parametrize("argv", [[], [TASK, TASK], ["x"], [TASK.upper()], [TASK + "\n"], ["../" + TASK],
                                  ["-h"], [TASK[:-1]], [TASK + "0"]])
def test_helper_takes_exactly_one_lowercase_uuid(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert helper.main(argv, config_path="/nonexistent/never-read.json") == helper.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith("submit-as: refused: usage:") and err.count("\n") == 1


def test_helper_refuses_to_run_without_root(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert helper.main([TASK], config_path="/nonexistent/never-read.json") == helper.EXIT_REFUSED
    assert "must run as root" in capsys.readouterr().err


def _config_data(**changes: object) -> dict:
    data = {"database": "/var/lib/hpc-bridge/db.sqlite", "work_root": "/scratch/work", "service_user": "svc",
            "mode": "table", "table": {"local": "alice"}, "min_uid": 1000, "users_group": "hpcusers",
            "claim_issuers": ...,
            "work_retention_hours": 168, "sbatch": "/usr/bin/sbatch", "squeue": "/usr/bin/squeue",
            "scancel": "/usr/bin/scancel"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


@pytest.mark.parametrize(("changes", "message"), [
    ({"extra": 1}, "unknown keys ['extra']"),
    ({"scancel": ...}, "missing keys ['scancel']"),
    ({"sbatch": "sbatch"}, "sbatch must be an absolute path"),
    ({"work_root": "/scratch/my work"}, "plain absolute path"),
    ({"mode": "service"}, "mode must be"),
    ({"min_uid": 0}, "min_uid"),
    ({"min_uid": True}, "min_uid"),
    ({"max_uid": 999}, "max_uid must be an integer of at least min_uid"),
    ({"max_uid": 1e9}, "max_uid"),
    ({"deny_groups": "sudo"}, "deny_groups must be a list of user or group names"),
    ({"deny_users": ["a:b"]}, "deny_users must be a list"),
    ({"claim_issuers": ["https://x#y"]}, "claim_issuers must be a list of issuers"),
    ({"mode": "claim", "claim_issuers": [ISSUER], "users_group": None}, "needs users_group and claim_issuers"),
    ({"mode": "claim"}, "needs users_group and claim_issuers"),  # an old claim-mode config: refused
    ({"table": {"local": "a b"}}, "table must map"),
    ({"table": {}}, "needs a table"),
    ({"service_user": "-x"}, "service_user"),
    ({"work_retention_hours": -1}, "work_retention_hours"),
    ({"engine_python": "python3"}, "engine_python must be a plain absolute path"),
    ({"runs_root": "/data/my runs"}, "runs_root must be a plain absolute path"),
])
def test_helper_config_is_checked_strictly(changes: dict, message: str) -> None:
    with pytest.raises(Refused, match=re.escape(message)):
        parse_config(_config_data(**changes))


@as_root
def test_helper_config_must_be_roots_and_not_writable_by_others(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "submit-as.json"
    path.write_text(json.dumps(_config_data()))
    os.chmod(path, 0o644)
    assert load_config(str(path)).table == {"local": "alice"}
    os.chmod(path, 0o664)
    with pytest.raises(Refused, match="not writable by group or others"):
        load_config(str(path))
    os.chmod(path, 0o644)
    os.chown(path, 1234, 0)
    with pytest.raises(Refused, match="owned by uid 0"):
        load_config(str(path))
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(Refused, match="cannot open"):
        load_config(str(link))


def _cfg(**changes: object) -> Config:
    return parse_config(_config_data(**changes))


def _claim_cfg(**changes: object) -> Config:
    return _cfg(**{"mode": "claim", "table": ..., "claim_issuers": [ISSUER], **changes})


def _task(**changes: object) -> TaskState:
    fields = {"id": TASK, "owner": "local", "state": "QUEUED", "run_as": "alice", "job_id": None,
              "cancel_requested": False, "end_time": None, "cleaned_at": None}
    fields.update(changes)
    return TaskState(**fields)


def test_helper_authorizes_only_what_its_own_configuration_allows() -> None:
    assert authorize(_task(), _cfg(), **LOOKUPS).pw_uid == 2000
    for task, cfg, message in [
        (_task(run_as=None), _cfg(), "runs as the service account"),
        (_task(run_as="bob"), _cfg(), "does not map owner 'local' to Unix user 'bob'"),
        (_task(owner="https://x#y"), _cfg(), "does not map owner"),
        (_task(run_as="lowly", owner=f"{ISSUER}#u"), _claim_cfg(), "uid 990"),
        (_task(run_as="root", owner=f"{ISSUER}#u"), _claim_cfg(), "uid 0"),
        (_task(run_as="svc", owner=f"{ISSUER}#u"), _claim_cfg(min_uid=1), "service account"),
        (_task(run_as="carol", owner=f"{ISSUER}#u"), _claim_cfg(users_group="nogroup"),
         "group 'nogroup' does not exist"),
        (_task(run_as="bob", owner="https://other.example.org#u"), _claim_cfg(), "claim_issuers"),
        (_task(run_as="bob", owner="local"), _claim_cfg(), "claim_issuers"),
    ]:
        with pytest.raises(Refused, match=re.escape(message)):
            authorize(task, cfg, **LOOKUPS)
    # claim mode: the table is not consulted, the user and issuer checks are
    assert authorize(_task(run_as="bob", owner=f"{ISSUER}#someone"), _claim_cfg(), **LOOKUPS).pw_name == "bob"


def test_an_old_helper_configuration_gets_the_safe_defaults() -> None:
    """Written before max_uid and the deny lists existed: the helper denies what a new one would."""
    policy = _cfg().policy
    assert (policy.max_uid, policy.deny_users, policy.deny_groups) == (
        helper.MAX_UID, helper.DENY_USERS, helper.DENY_GROUPS)
    assert RunAsSettings().max_uid == helper.MAX_UID == 59999
    assert tuple(RunAsSettings().deny_groups) == helper.DENY_GROUPS
    assert {"root", "sudo", "wheel", "adm", "docker", "disk", "shadow", "staff", "lxd", "libvirt", "kvm",
            "systemd-journal", "slurm", "munge"} <= set(helper.DENY_GROUPS)
    assert {"slurm", "munge", "nobody"} <= set(helper.DENY_USERS)


def test_the_stored_state_decides_what_the_helper_does() -> None:
    assert decide(_task()) == "submit"
    assert decide(_task(state="CANCELING", cancel_requested=True, job_id="42")) == "cancel"
    assert decide(_task(state="COMPLETE", job_id="42", end_time="2024-01-01T00:00:00.000000Z")) == "clean"
    for task, message in [
        (_task(state="RUNNING", job_id="42"), "is RUNNING (job 42): nothing to do"),
        (_task(state="QUEUED", job_id="42"), "nothing to do"),  # submitted already: never twice
        (_task(state="CANCELING", cancel_requested=True), "has no job"),
        (_task(state="COMPLETE", cleaned_at="2024-01-02T00:00:00Z"), "already removed"),
    ]:
        with pytest.raises(Refused, match=re.escape(message)):
            decide(task)


def test_clean_waits_for_the_retention_time(tmp_path: Path) -> None:
    ended = "2024-01-01T00:00:00.000000Z"
    task = _task(state="COMPLETE", end_time=ended)
    day = helper._parse_time(ended)
    with pytest.raises(Refused, match="ended less than 168 h ago"):
        helper.clean(_cfg(), task, USERS["alice"], USERS["svc"], now=day + 3600)
    with pytest.raises(Refused, match="kept here"):
        helper.clean(_cfg(work_retention_hours=None), task, USERS["alice"], USERS["svc"], now=day + 10**9)


# -- the helper: hand-over and status directory (real chown, scratch tree) -----------------------


def _area(tmp_path: Path) -> Path:
    area = tmp_path / "work" / TASK
    (area / "inputs" / "0").mkdir(parents=True)
    (area / "job.sh").write_text("#!/bin/bash\n")
    (area / "inputs" / "0" / "data").write_text("x")
    return area


def _hand_over(area: Path, uid: int = 4321) -> None:
    fd = os.open(area, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hand_over(fd, SimpleNamespace(pw_uid=uid, pw_gid=uid, pw_name="u"), service_uid=ME, where=str(area))
    finally:
        os.close(fd)


@as_root
def test_hand_over_gives_the_whole_tree_to_the_user(tmp_path: Path) -> None:
    area = _area(tmp_path)
    _hand_over(area)
    for path in [area, *area.rglob("*")]:
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (4321, 4321), path
    _hand_over(area)  # an interrupted earlier run left it half done: finishing is fine


@as_root
@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo", "foreign", "setuid", "socket"])
def test_hand_over_refuses_anything_the_daemon_would_not_have_made(tmp_path: Path, plant: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    area = _area(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("root's")
    target = area / "inputs" / "0" / "planted"
    if plant == "symlink":
        target.symlink_to(victim)
    elif plant == "hardlink":
        os.link(victim, target)
    elif plant == "fifo":
        os.mkfifo(target)
    elif plant == "foreign":
        target.write_text("x")
        os.chown(target, 777, 777)
    elif plant == "setuid":
        target.write_text("x")
        os.chmod(target, 0o4755)
    else:
        import socket

        monkeypatch.chdir(target.parent)  # AF_UNIX paths are short
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(target.name)
        sock.close()
    with pytest.raises(Refused, match="planted"):
        _hand_over(area)
    assert os.lstat(victim).st_uid == ME  # never chowned through the plant
    assert os.lstat(area).st_uid == ME  # the top is handed over last: still the daemon's


@as_root
def test_status_dir_is_the_users_group_readable_by_the_service(tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / ".status").mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    user = SimpleNamespace(pw_uid=4321, pw_gid=4321, pw_name="u")
    service = SimpleNamespace(pw_uid=ME, pw_gid=4444, pw_name="svc")
    try:
        make_status_dir(fd, _cfg(work_root=str(root)), TASK, user, service)
        st = os.stat(root / ".status" / TASK)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4444, 0o2750)
        make_status_dir(fd, _cfg(work_root=str(root)), TASK, user, service)  # a retry: fine
        os.chown(root / ".status" / TASK, 999, 4444)
        with pytest.raises(Refused, match="owned by 999:4444"):
            make_status_dir(fd, _cfg(work_root=str(root)), TASK, user, service)
        shutil.rmtree(root / ".status" / TASK)
        (root / ".status" / TASK).symlink_to(tmp_path)
        with pytest.raises(Refused, match="without following links"):
            make_status_dir(fd, _cfg(work_root=str(root)), TASK, user, service)
    finally:
        os.close(fd)


def test_the_helper_is_stdlib_only_and_runs_under_python3_isolated() -> None:
    """It is copied out of the package and run by the system python with -I -S."""
    source = Path(helper.__file__).read_text()
    assert source.startswith("#!/usr/bin/python3 -IS\n")
    imports = set(re.findall(r"^(?:from|import) ([a-z_.]+)", source, re.MULTILINE))
    assert not {i for i in imports if i.split(".")[0] in ("hpc_bridge", "pydantic", "yaml")}, imports
    proc = subprocess.run([sys.executable, "-IS", helper.__file__, "not-a-task"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_a_run_due_for_an_engine_starts_one_and_nothing_else_does() -> None:
    run = helper.RunState(id=TASK, owner="local", state="RUNNING", run_as="alice", run_dir=f"/runs/{TASK}")
    assert decide(run) == "engine"
    assert decide(helper.RunState(**{**run.__dict__, "state": "INITIALIZING"})) == "engine"
    assert authorize(run, _cfg(), **LOOKUPS).pw_name == "alice"  # the same user checks as for tasks
    for state in ("QUEUED", "CANCELING"):
        with pytest.raises(Refused, match="not due to start"):
            decide(helper.RunState(**{**run.__dict__, "state": state}))
    for state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):  # ended: its directory may go
        assert decide(helper.RunState(**{**run.__dict__, "state": state})) == "clean_run"
    with pytest.raises(Refused, match="already removed"):
        decide(helper.RunState(**{**run.__dict__, "state": "COMPLETE", "cleaned_at": "2024-01-02T00:00:00Z"}))
    with pytest.raises(Refused, match="does not map owner"):
        authorize(helper.RunState(**{**run.__dict__, "run_as": "bob"}), _cfg(), **LOOKUPS)


def _ended_run(runs_root: Path, **changes: object) -> helper.RunState:
    fields: dict[str, Any] = {"id": TASK, "owner": "local", "state": "COMPLETE", "run_as": "alice",
                              "run_dir": str(runs_root / TASK), "end_time": "2024-01-01T00:00:00.000000Z"}
    return helper.RunState(**{**fields, **changes})


def test_a_run_directory_goes_only_after_the_helpers_own_retention_time(tmp_path: Path) -> None:
    run = _ended_run(tmp_path / "runs")
    day = helper._parse_time(run.end_time)
    alice = USERS["alice"]
    with pytest.raises(Refused, match="kept here"):  # no run_retention_hours in the helper's configuration
        helper.clean_run(_cfg(runs_root=str(tmp_path / "runs")), run, alice, alice, now=day + 10**9)
    cfg = _cfg(runs_root=str(tmp_path / "runs"), run_retention_hours=24)
    with pytest.raises(Refused, match="ended less than 24 h ago"):
        helper.clean_run(cfg, run, alice, alice, now=day + 3600)
    with pytest.raises(Refused, match="is not " + re.escape(str(tmp_path / "runs"))):  # never a path the row names
        helper.clean_run(cfg, _ended_run(tmp_path / "elsewhere"), alice, alice, now=day + 10**9)


@as_root
def test_a_run_directory_of_another_user_is_refused_and_a_missing_one_is_fine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_root = tmp_path / "runs"
    (runs_root / TASK).mkdir(parents=True)
    os.chmod(runs_root, 0o755)
    os.chown(runs_root / TASK, 4321, 4321)  # bob's, say: not the run's user's (alice) nor the service's
    run = _ended_run(runs_root)
    cfg = _cfg(runs_root=str(runs_root), run_retention_hours=0)
    service = SimpleNamespace(pw_name="svc", pw_uid=ME, pw_gid=ME)
    with pytest.raises(Refused, match="owned by uid 4321"):
        helper.clean_run(cfg, run, USERS["alice"], service)
    assert (runs_root / TASK).is_dir()
    (runs_root / TASK).rmdir()
    assert helper.clean_run(cfg, run, USERS["alice"], service) == 0
    assert "no directory to remove" in capsys.readouterr().out


def test_emptying_works_on_the_checked_descriptor_never_the_path_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / TASK
    (run_dir / "outputs" / "deep").mkdir(parents=True)
    (run_dir / "outputs" / "deep" / "out.txt").write_text("result")
    (run_dir / "tmp").mkdir()
    (run_dir / "stderr.log").write_text("log")
    victim = tmp_path / "victims" / TASK  # a real directory of that name somewhere else
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("someone else's")
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # between the check and the deletion the runs root is swapped for a link to elsewhere
        (tmp_path / "runs").rename(tmp_path / "moved")
        (tmp_path / "runs").symlink_to(victim.parent)  # runs/TASK, found again by path, is the victim
        helper._empty(fd, keep="outputs")
        assert (victim / "precious.txt").exists()
        moved = tmp_path / "moved" / TASK
        assert [p.name for p in moved.iterdir()] == ["outputs"]
        assert (moved / "outputs" / "deep" / "out.txt").read_text() == "result"
        helper._empty(fd)
        assert list(moved.iterdir()) == [] and (victim / "precious.txt").exists()
    finally:
        os.close(fd)
    assert _cfg(run_retention_keep_outputs=True).run_retention_keep_outputs
    with pytest.raises(Refused, match="run_retention_keep_outputs must be true or false"):
        _cfg(run_retention_keep_outputs="yes")


@as_root
@pytest.mark.parametrize("keep_outputs", [False, True])
def test_clean_run_empties_as_the_owner_and_removes_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_outputs: bool) -> None:
    runs_root = tmp_path / "runs"
    run_dir = runs_root / TASK
    (run_dir / "outputs").mkdir(parents=True)
    (run_dir / "outputs" / "o.txt").write_text("o")
    (run_dir / "wf.cwl").write_text("w")
    os.chmod(runs_root, 0o755)
    for path in (run_dir, run_dir / "outputs", run_dir / "outputs" / "o.txt", run_dir / "wf.cwl"):
        os.chown(path, 2000, 2000)  # alice's, as after the hand-over
    as_whom: list[str] = []
    monkeypatch.setattr(helper, "as_user", lambda entry, func: (as_whom.append(entry.pw_name), func())[1])
    service = SimpleNamespace(pw_name="svc", pw_uid=ME, pw_gid=ME)
    cfg = _cfg(runs_root=str(runs_root), run_retention_hours=0, run_retention_keep_outputs=keep_outputs)
    assert helper.clean_run(cfg, _ended_run(runs_root), USERS["alice"], service) == 0
    assert as_whom == ["alice"]
    if keep_outputs:
        assert [p.name for p in run_dir.iterdir()] == ["outputs"]
    else:
        assert not run_dir.exists()


@as_root
def test_clean_run_refuses_a_link_in_place_of_the_run_directory(tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    os.chmod(runs_root, 0o755)
    (tmp_path / "elsewhere").mkdir()
    (runs_root / TASK).symlink_to(tmp_path / "elsewhere")
    cfg = _cfg(runs_root=str(runs_root), run_retention_hours=0)
    with pytest.raises(Refused, match="without following links"):
        helper.clean_run(cfg, _ended_run(runs_root), USERS["alice"], SimpleNamespace(pw_name="svc", pw_uid=ME,
                                                                                        pw_gid=ME))
    assert (tmp_path / "elsewhere").is_dir()


def test_the_helpers_final_run_states_are_the_services() -> None:
    from hpc_bridge.lifecycle import RUN_FINAL

    assert helper.RUN_FINAL_STATES == RUN_FINAL


def test_the_engine_action_needs_its_own_configuration_and_path(tmp_path: Path) -> None:
    run = helper.RunState(id=TASK, owner="local", state="RUNNING", run_as="alice",
                          run_dir=str(tmp_path / "runs" / TASK))
    user = SimpleNamespace(pw_uid=2000, pw_gid=2000, pw_name="alice")
    with pytest.raises(Refused, match="not enabled"):
        helper.start_engine(_cfg(), run, user, user)
    cfg = _cfg(runs_root="/elsewhere/runs", engine_python="/usr/bin/python3")
    with pytest.raises(Refused, match="is not /elsewhere/runs/"):  # never a path the row names
        helper.start_engine(cfg, run, user, user)


def test_install_derives_the_helper_files_from_the_site_config(dev_config: SiteConfig) -> None:
    from hpc_bridge.runas import install

    config = dev_config.model_copy(update={"run_as": RunAsSettings(
        mode="table", service_user=SERVICE, table={"local": "alice"}, users_group="hpcusers",
        max_uid=50000, deny_groups=["sudo", "docker"])})
    data = install.helper_config(config)
    assert parse_config(data).table == {"local": "alice"}
    assert parse_config(data).policy == config.run_as.policy  # the service and the helper check the same
    assert data["work_root"] == str(dev_config.storage.work_root) and os.path.isabs(data["sbatch"])
    assert data["runs_root"] == str(dev_config.storage.data_roots[0] / "runs")
    assert data["engine_python"] == sys.executable
    source = install.helper_source(Path("/opt/site/helper.json"))
    assert 'CONFIG_PATH = "/opt/site/helper.json"\n' in source and source.count("CONFIG_PATH = ") == 1
    rule = install.sudoers_rule(config)
    assert f"{SERVICE} ALL=(root) NOPASSWD: /usr/local/libexec/hpc-bridge/submit-as ^" in rule
    assert install.SUDOERS_TASK_ID == "^" + helper.TASK_ID.pattern.removesuffix(r"\Z") + "$"
    if shutil.which("visudo"):
        check = subprocess.run(["visudo", "-c", "-f", "-"], input=rule, capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stderr + check.stdout


def test_install_writes_the_claim_issuers_and_refuses_an_undenied_slurm_user(dev_config: SiteConfig) -> None:
    from hpc_bridge.config import ConfigError
    from hpc_bridge.runas import install

    auth = AuthSettings(mode="jwt", issuers=[IssuerSettings(issuer=ISSUER, jwks_uri=ISSUER + "/jwks")])
    run_as = RunAsSettings(mode="claim", claim="posix_user", service_user=SERVICE, users_group="hpcusers",
                           claim_issuers=[ISSUER])
    config = dev_config.model_copy(update={"auth": auth, "run_as": run_as})
    data = install.helper_config(config)
    assert data["claim_issuers"] == [ISSUER] and parse_config(data).claim_issuers == (ISSUER,)

    show = "SlurmUser               = slurmadm(450)\nSlurmdUser              = root(0)\nSlurmctldPort = 6817\n"
    assert install.slurm_daemon_users(show) == {"slurmadm", "root"}
    with pytest.raises(ConfigError, match=re.escape("Slurm runs as slurmadm (SlurmUser/SlurmdUser): add it to "
                                                    "run_as.deny_users")):
        install.check_slurm_users(config, show)
    denied = config.model_copy(update={"run_as": run_as.model_copy(update={"deny_users": ["slurmadm"]})})
    install.check_slurm_users(denied, show)
    install.check_slurm_users(config, "SlurmUser = slurm(64030)\nSlurmdUser = root(0)\n")  # in the default


# -- the job script with a status directory ---------------------------------------------------


def test_script_keeps_record_and_logs_in_the_status_dir(tmp_path: Path) -> None:
    work, status = tmp_path / "work", tmp_path / "status"
    (work / "volumes" / "0").mkdir(parents=True)
    status.mkdir()
    os.chmod(status, 0o2750)
    (work / "outputs.json").write_text("{}")
    big = "y" * 100 + "TAIL"
    job = JobScript(
        name="t", workdir=str(work), status_dir=str(status), log_tail=8,
        executors=[ExecutorScript(argv=["sh", "-c", "echo out; echo err >&2"]),
                   ExecutorScript(argv=["printf", big], stdout=str(work / "volumes/0/own.txt"),
                                  roots={"stdout": str(work / "volumes/0")})],
        # stands in for the collector: reads the manifest copy, appends to the record next to it
        collect=["sh", "-c", ('test -f "$0" && printf \'%s\\n\' \'{"event":"output","url":"file:///o",'
                              '"path":"/o","size_bytes":"3"}\' >>"$(dirname "$0")/record.jsonl"'),
                 str(work / "outputs.json")])
    text = render(job, TEMPLATES)
    assert f"#SBATCH --output={status}/slurm.out\n" in text
    (work / "job.sh").write_text(text)
    proc = subprocess.run(["bash", str(work / "job.sh")], cwd=work, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert not (work / "record.jsonl").exists() and not (work / "executor-0.stdout").exists()
    record = parse_record((status / "record.jsonl").read_text())
    assert record.finished and record.collect_exit == 0 and record.outputs[0]["url"] == "file:///o"
    assert (status / "executor-0.stdout").read_text() == "out\n"
    assert (status / "executor-0.stderr").read_text() == "err\n"
    assert (work / "volumes/0/own.txt").read_text() == big  # the task's own file is whole
    assert (status / "executor-1.stdout").read_text() == "yyyyTAIL"  # the copy is a tail
    for name in ("record.jsonl", "executor-0.stdout", "executor-1.stdout", "executor-1.stderr"):
        assert stat.S_IMODE(os.stat(status / name).st_mode) == 0o640, name  # group-readable
    assert job.log_paths(1) == (f"{status}/executor-1.stdout", f"{status}/executor-1.stderr")


def test_script_without_status_dir_is_unchanged(tmp_path: Path) -> None:
    job = JobScript(name="t", workdir="/w", executors=[ExecutorScript(argv=["true"], stdout="/w/v/o")],
                    collect=["python3", "-I", "/w/c.py", "/w/outputs.json"])
    text = render(job, TEMPLATES)
    assert "status_file" not in text and "tail -c" not in text and ".status" not in text
    assert job.log_paths(0) == job.output_paths(0) == ("/w/v/o", "/w/executor-0.stderr")
    assert job.collect_argv == job.collect and job.log_copies(0) == []


# -- the Slurm client ---------------------------------------------------------------------------


def test_client_runs_the_helper_through_sudo_with_the_task_id_only() -> None:
    run = FakeRunner(stdout="4242\n")
    client = CliSlurmClient(runner=run)
    paths = {"sudo": Path("/usr/bin/sudo"), "helper": Path("/usr/local/libexec/hpc-bridge/submit-as")}
    assert client.submit_as_user(TASK, **paths) == "4242"
    client.cancel_as_user(TASK, **paths)
    client.clean_as_user(TASK, **paths)
    assert run.calls == [["/usr/bin/sudo", "-n", "/usr/local/libexec/hpc-bridge/submit-as", TASK]] * 3
    with pytest.raises(SlurmError, match="not a task id"):
        client.submit_as_user("x; id", **paths)
    refused = FakeRunner(returncode=2, stderr="submit-as: refused: uid 990 ...")
    with pytest.raises(SlurmError, match="refused: uid 990") as info:
        CliSlurmClient(runner=refused).submit_as_user(TASK, **paths)
    assert not info.value.unavailable
    down = FakeRunner(returncode=1, stderr="sbatch: error: Batch job submission failed: Unable to contact "
                                           "slurm controller (connect failure)")
    with pytest.raises(SlurmError) as info:
        CliSlurmClient(runner=down).submit_as_user(TASK, **paths)
    assert info.value.unavailable  # retried later, as a direct sbatch would be


def test_queue_covers_the_users_tasks_run_as() -> None:
    run = FakeRunner()
    CliSlurmClient(runner=run, submit_as=None).queue(["alice", "bob"])
    user = next(a for a in run.calls[0] if a.startswith("--user="))
    assert user.split("=", 1)[1].split(",")[1:] == ["alice", "bob"]


# -- the daemon: a per-user task's way, with a fake Slurm client ---------------------------------


def job_writes(path: Path, text: str, user: str) -> None:
    """A file the job wrote, as its user: the daemon reads no other owner's file there."""
    path.write_text(text)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@as_root
def test_daemon_prepares_a_per_user_task_for_the_helper(dev_config: SiteConfig, tmp_path: Path) -> None:
    from hpc_bridge.daemon import Daemon
    from hpc_bridge.slurm.client import JobStatus
    from hpc_bridge.store import Store
    from hpc_bridge.tes.service import TaskService

    work = tmp_path / "work"
    config = dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "storage": dev_config.storage.model_copy(update={"work_root": work}),
        "run_as": RunAsSettings(mode="table", service_user="root", table={"local": "alice"}),
    })
    store = Store(config.database)
    task_id = TaskService(store, config).create(
        {"executors": [{"image": "busybox", "command": ["echo", "hi"]},
                       {"image": "busybox", "command": ["true"], "stdout": "/vol/own.txt"}],
         "volumes": ["/vol"]}, owner="local", run_as="alice")
    slurm = FakeSlurm()
    daemon = Daemon(config, store, slurm)
    daemon.cycle()
    row = store.tasks.get(task_id)
    assert row.job_id == "77"
    assert ("submit_as_user", task_id, "/usr/bin/sudo", "/usr/local/libexec/hpc-bridge/submit-as") in slurm.calls
    assert not any(c[0] == "submit" for c in slurm.calls)
    area, status = work / task_id, work / ".status" / task_id
    assert os.stat(area).st_uid == os.geteuid()  # not handed over by the daemon: the helper does that
    assert stat.S_IMODE(os.stat(work / ".status").st_mode) == 0o755
    script = (area / "job.sh").read_text()
    assert f"record={status}/record.jsonl\n" in script and f"--output={status}/slurm.out" in script
    assert row.streams == [{"stdout": f"{status}/executor-{i}.stdout", "stderr": f"{status}/executor-{i}.stderr"}
                           for i in range(2)]

    # The job (as the helper made it) writes its record and logs into the status dir; the daemon
    # reads them there, and squeue is asked about the task's user too.
    status.mkdir()
    job_writes(status / "record.jsonl", "\n".join(json.dumps(e) for e in [
        {"event": "job_start", "time": "2024-01-01T00:00:00.000Z", "job_id": "77"},
        {"event": "executor_start", "executor": 0, "time": "2024-01-01T00:00:01.000Z"},
        {"event": "executor_end", "executor": 0, "time": "2024-01-01T00:00:02.000Z", "exit_code": 0},
        {"event": "executor_start", "executor": 1, "time": "2024-01-01T00:00:02.000Z"},
        {"event": "executor_end", "executor": 1, "time": "2024-01-01T00:00:03.000Z", "exit_code": 0},
        {"event": "job_end", "time": "2024-01-01T00:00:03.000Z", "exit_code": 0}]) + "\n", "alice")
    job_writes(status / "executor-0.stdout", "hi\n", "alice")
    job_writes(status / "executor-1.stdout", "tail of own.txt", "alice")
    slurm.jobs = [JobStatus("77", "COMPLETED", "None", "x", f"hpc-bridge:{task_id}", 0, 0)]
    daemon.cycle()
    row = store.tasks.get(task_id)
    assert row.state == "COMPLETE", row.system_logs
    assert [log.get("stdout") for log in row.executor_logs] == ["hi\n", "tail of own.txt"]
    assert ("queue", ["alice"]) in slurm.calls


@as_root
def test_daemon_cancels_a_per_user_job_through_the_helper(dev_config: SiteConfig, tmp_path: Path) -> None:
    from hpc_bridge.daemon import Daemon
    from hpc_bridge.slurm.client import JobStatus
    from hpc_bridge.store import Store
    from hpc_bridge.tes.service import TaskService

    config = dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "storage": dev_config.storage.model_copy(update={"work_root": tmp_path / "work"}),
        "run_as": RunAsSettings(mode="table", service_user="root", table={"local": "alice"}),
    })
    store = Store(config.database)
    service = TaskService(store, config)
    mine = service.create({"executors": [{"image": "busybox", "command": ["sleep", "60"]}]}, owner="local",
                          run_as="alice")
    theirs = service.create({"executors": [{"image": "busybox", "command": ["sleep", "60"]}]}, owner="local")
    store.tasks.update(mine, job_id="77", state="RUNNING")
    store.tasks.update(theirs, job_id="78", state="RUNNING")
    service.cancel(mine, None)
    service.cancel(theirs, None)
    slurm = FakeSlurm()
    slurm.jobs = [JobStatus("77", "RUNNING", "None", "x", f"hpc-bridge:{mine}", None, None),
                  JobStatus("78", "RUNNING", "None", "x", f"hpc-bridge:{theirs}", None, None)]
    Daemon(config, store, slurm).cycle()
    assert ("cancel_as_user", mine) in slurm.calls and ("cancel", ["78"]) in slurm.calls


@as_root
def test_daemon_never_runs_a_task_without_a_user_when_a_mapping_mode_is_on(dev_config: SiteConfig,
                                                                           tmp_path: Path) -> None:
    from hpc_bridge.daemon import Daemon
    from hpc_bridge.store import Store
    from hpc_bridge.tes.service import TaskService

    config = dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "storage": dev_config.storage.model_copy(update={"work_root": tmp_path / "work"}),
        "run_as": RunAsSettings(mode="table", service_user="root", table={"local": "alice"}),
    })
    store = Store(config.database)
    task_id = TaskService(store, config).create({"executors": [{"image": "busybox", "command": ["true"]}]},
                                                owner="local")  # run_as None, as before the mode was on
    slurm = FakeSlurm()
    Daemon(config, store, slurm).cycle()
    row = store.tasks.get(task_id)
    assert row.state == "SYSTEM_ERROR" and "has no Unix user" in row.system_logs[-1]
    assert not [c for c in slurm.calls if c[0] != "queue"]


def test_daemon_refuses_to_start_as_another_account_than_service_user(dev_config: SiteConfig,
                                                                       tmp_path: Path) -> None:
    from hpc_bridge.config import ConfigError
    from hpc_bridge.daemon import Daemon
    from hpc_bridge.store import Store

    other = "nobody" if os.geteuid() == 0 else "root"
    config = dev_config.model_copy(update={
        "database": tmp_path / "db.sqlite",
        "run_as": RunAsSettings(mode="table", service_user=other, table={"local": "alice"})})
    with pytest.raises(ConfigError, match="needs the daemon to run as that account"):
        Daemon(config, Store(config.database), FakeSlurm())
