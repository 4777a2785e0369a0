"""The run-as target policy on the real machine: the root helper as `dev/cluster install` installs it
(through sudo, as the service account) refuses every privileged or system account itself, and the
real server (as the service account, real tokens from local OIDC issuers) refuses the same users and
any claim from an issuer the site did not name for claims, with a 403 that stores nothing.

Throwaway users and groups are made with useradd/groupadd for the test and removed afterwards; each
user is in the users' group (`hpcbusers`) with an ordinary uid unless the rule under test is the uid,
so the refusal can only come from the rule under test.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from hpc_bridge.config import SiteConfig
from hpc_bridge.runas import helper

from ..oidc import Issuer, claims, jwk, token
from .test_run_as import HELPER, HELPER_CONFIG, RUNAS, SERVICE, RunAs, _store_as_service, run_helper

USERS_GROUP = "hpcbusers"


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, (argv, proc.stderr)


class Accounts:
    """Users and groups made for one test; `remove` deletes exactly those."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.groups: list[str] = []

    def user(self, *groups: str, uid: int | None = None, primary: str = USERS_GROUP) -> str:
        name = f"hpcbpol{uuid.uuid4().hex[:8]}"
        argv = ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                "--gid", primary, "-K", "UID_MIN=2000", "-K", "UID_MAX=59999"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        if uid is not None:
            argv += ["--uid", str(uid)]
        _run(*argv, name)
        self.users.append(name)
        return name

    def group(self, name: str) -> str:
        """The group, made now if this machine has none of that name (docker, here)."""
        try:
            grp.getgrnam(name)
        except KeyError:
            _run("groupadd", name)
            self.groups.append(name)
        return name

    def remove(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", name], capture_output=True, check=False)
        for name in self.groups:
            subprocess.run(["groupdel", name], capture_output=True, check=False)


def _free_uid(start: int) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


@pytest.fixture()
def helper_config() -> dict[str, Any]:
    """The installed helper must be this tree's helper.py (dev/cluster copies it verbatim)."""
    if not (HELPER.is_file() and HELPER_CONFIG.is_file()):
        pytest.fail(f"{HELPER} or {HELPER_CONFIG} missing: run `dev/cluster install` (make test does)")
    if HELPER.read_text() != Path(helper.__file__).read_text():
        pytest.fail(f"{HELPER} is not this tree's hpc_bridge/runas/helper.py: run `dev/cluster install`")
    return json.loads(HELPER_CONFIG.read_text())


@pytest.fixture()
def accounts() -> Iterator[Accounts]:
    made = Accounts()
    yield made
    made.remove()


def _privileged(accounts: Accounts) -> dict[str, tuple[str, str]]:
    """Case -> (Unix user, the reason the helper and the service give)."""
    high = accounts.user(uid=_free_uid(60001))
    cases = {
        "uid above max_uid": (high, f"has uid {pwd.getpwnam(high).pw_uid}: jobs run only as users with a "
                                    "uid from 1000 to 59999"),
        "nobody": ("nobody", "'nobody' is a system account jobs never run as (deny_users)"),
        "the slurm user": ("slurm", "'slurm' is a system account jobs never run as (deny_users)"),
        "root as supplementary group": (accounts.user("root"), "is in the group root (gid 0)"),
        "the service account's group": (accounts.user(SERVICE), "is in the service account's group"),
    }
    for group in ("sudo", "docker", "disk"):
        cases[f"member of {group}"] = (accounts.user(accounts.group(group)),
                                       f"is in the privileged group '{group}' (deny_groups)")
    cases["disk as primary group"] = (accounts.user(USERS_GROUP, primary="disk"),
                                      "is in the privileged group 'disk' (deny_groups)")
    return cases


def test_the_helper_itself_refuses_privileged_and_system_users(helper_config: dict[str, Any],
                                                               accounts: Accounts) -> None:
    """Tasks a compromised service account wrote straight into the database, each naming a denied
    user: the helper run through sudo refuses every one before acting (exit 2, one line), and an
    ordinary user of the same kind (made the same way) gets past these checks."""
    cases = _privileged(accounts)
    ordinary = accounts.user()
    cases["ordinary (control)"] = (ordinary, "does not map owner")  # only the helper's own table stops it
    ids = {case: str(uuid.uuid4()) for case in cases}
    task = {"executors": [{"image": "busybox", "command": ["true"]}]}
    _store_as_service(*(f"store.tasks.create(id={ids[case]!r}, owner='policy-test', name=None, task={task!r}, "
                        f"tags={{}}, run_as={user!r})" for case, (user, _) in cases.items()))
    for case, (user, message) in cases.items():
        proc = run_helper(ids[case])
        assert proc.returncode == 2 and message in proc.stderr, (case, user, proc)
        assert proc.stderr.startswith("submit-as: refused: ") and proc.stderr.count("\n") == 1, (case, proc)
    work_root = Path(helper_config["work_root"])
    assert not [i for i in ids.values() if (work_root / ".status" / i).exists()]  # nothing was acted on


# -- through the real server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture()
def issuers(key: rsa.RSAPrivateKey) -> Iterator[tuple[Issuer, Issuer]]:
    """Two issuers the site trusts for logging in; only the first is named for claims."""
    listed, other = Issuer(), Issuer()
    for idp in (listed, other):
        idp.jwks = {"keys": [jwk(key, "k1")]}
    yield listed, other
    listed.close()
    other.close()


@pytest.fixture()
def claim_server(dev_config: SiteConfig, slurm: object, helper_config: dict[str, Any],
                 issuers: tuple[Issuer, Issuer]) -> Iterator[RunAs]:
    """The server as the service account in claim mode, on a database and work root of its own
    (the helper's are other tests'): nothing here reaches the helper but the one accepted task."""
    directory = RUNAS / f"policy-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o755)
    service = pwd.getpwnam(SERVICE)
    for name, mode in (("db", 0o700), ("work", 0o755)):
        (directory / name).mkdir(mode=mode)
        os.chown(directory / name, service.pw_uid, service.pw_gid)
    env = RunAs(dev_config, {**helper_config, "database": str(directory / "db" / "hpc-bridge.sqlite"),
                             "work_root": str(directory / "work")}, directory)
    listed, other = issuers
    env.start(auth={"mode": "jwt", "issuers": [{"issuer": listed.issuer}, {"issuer": other.issuer}]},
              run_as={"mode": "claim", "table": {}, "claim": "posix_user", "claim_issuers": [listed.issuer]})
    yield env
    env.stop()
    shutil.rmtree(directory)


def _bearer(key: rsa.RSAPrivateKey, idp: Issuer, user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token(key, claims(idp, sub=f"sub-{user}", posix_user=user), kid="k1")}


def test_a_claim_from_an_issuer_not_named_for_claims_gets_403(claim_server: RunAs, issuers: tuple[Issuer, Issuer],
                                                              key: rsa.RSAPrivateKey, accounts: Accounts) -> None:
    """The other issuer's tokens log in (GET works) but name no Unix user: TES and WES creation
    are 403 and store nothing; the listed issuer's claims get the user policy, then a task."""
    assert claim_server.server is not None
    url = claim_server.server.url
    listed, other = issuers
    body = {"executors": [{"image": "busybox", "command": ["true"]}]}
    foreign = _bearer(key, other, "alice")
    resp = requests.post(f"{url}/ga4gh/tes/v1/tasks", json=body, headers=foreign, timeout=10)
    assert resp.status_code == 403, resp.text
    assert f"only tokens of {listed.issuer} may name a Unix user here (claim_issuers)" in resp.json()["msg"]
    wes = requests.post(f"{url}/ga4gh/wes/v1/runs", headers=foreign, timeout=30,
                        data={"workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "wf.cwl"},
                        files=[("workflow_attachment", ("wf.cwl", b"cwlVersion: v1.2\nclass: Workflow\n"))])
    assert wes.status_code == 403 and "claim_issuers" in wes.json()["msg"], wes.text
    listing = requests.get(f"{url}/ga4gh/tes/v1/tasks", headers=foreign, timeout=10)
    assert listing.status_code == 200 and listing.json()["tasks"] == []
    runs = requests.get(f"{url}/ga4gh/wes/v1/runs", headers=foreign, timeout=10)
    assert runs.status_code == 200 and runs.json()["runs"] == []

    # The listed issuer: its claims are checked against the same policy as the helper's ...
    for user, message in _privileged(accounts).values():
        resp = requests.post(f"{url}/ga4gh/tes/v1/tasks", json=body, headers=_bearer(key, listed, user),
                             timeout=10)
        assert resp.status_code == 403 and message in resp.json()["msg"], (user, resp.text)
    # ... and an ordinary user in the users' group is accepted.
    resp = requests.post(f"{url}/ga4gh/tes/v1/tasks", json=body, headers=_bearer(key, listed, "alice"), timeout=10)
    assert resp.status_code == 200, resp.text
