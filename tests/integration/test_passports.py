"""GA4GH Passports through the real server, Slurm and Apptainer: a directory of a data root is a
controlled-access dataset; a token without a visa for it (or with one from an issuer the site does
not trust, for another dataset, expired, or with conditions) is a 403 naming the dataset; with a
valid ControlledAccessGrants visa the task runs and reads the file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from ..ga4gh_servers import DrsEntry, DrsServer
from ..oidc import Issuer, claims, jwk, token
from ..unit.test_http_download import LOOPBACK, cert_files  # noqa: F401 - fixture
from .conftest import ServerProcess
from .test_staging import run_existing
from .test_wes import WES

DATASET = "https://ega.example.org/datasets/EGAD00001000001"


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048)
            for name in ("login", "visas", "rogue")}


@pytest.fixture
def issuers(keys: dict[str, rsa.RSAPrivateKey]) -> Iterator[dict[str, Issuer]]:
    made = {}
    for name, key in keys.items():
        made[name] = Issuer()
        made[name].jwks = {"keys": [jwk(key, name)]}
    yield made
    for issuer in made.values():
        issuer.close()


@pytest.fixture()
def drs(cert_files: tuple[Path, Path]) -> Iterator[DrsServer]:  # noqa: F811
    yield from DrsServer(cert_files).serve()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess], issuers: dict[str, Issuer], data: Path, drs: DrsServer,
           cert_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ServerProcess:  # noqa: F811
    (data / "controlled").mkdir()
    (data / "controlled" / "genotypes.vcf").write_text("##fileformat=VCFv4.3\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_files[0]))  # the service trusts the DRS server
    return server_factory(
        auth={"mode": "jwt", "issuers": [{"issuer": issuers["login"].issuer}],
              "visa_issuers": [{"issuer": issuers["visas"].issuer}]},
        storage={"one_shared_space": True, "http": {"allowed_networks": LOOPBACK},
                 "passport_areas": [{"path": str(data / "controlled"), "dataset": DATASET}],
                 "drs": {"enabled": True, "hosts": [{"host": drs.host, "dataset": DATASET}]}})


def visa(issuers: dict[str, Issuer], keys: dict[str, rsa.RSAPrivateKey], signer: str = "visas",
         **body: Any) -> str:
    content = {"type": "ControlledAccessGrants", "asserted": int(time.time()) - 3600, "value": DATASET,
               "source": "https://ega.example.org/dacs/EGAC0001", "by": "dac", **body}
    return token(keys[signer], claims(issuers[signer], sub="alice-at-visas", ga4gh_visa_v1=content), kid=signer)


def post(server: ServerProcess, issuers: dict[str, Issuer], keys: dict[str, rsa.RSAPrivateKey], data: Path,
         visas: list[str] | None, inputs: list[dict] | None = None) -> requests.Response:
    bearer = token(keys["login"], claims(issuers["login"], sub="alice", **(
        {"ga4gh_passport_v1": visas} if visas is not None else {})), kid="login")
    task = {"inputs": inputs or [{"url": (data / "controlled" / "genotypes.vcf").as_uri(), "path": "/in/g.vcf"}],
            "executors": [{"image": "busybox", "command": ["head", "-n1", "/in/g.vcf"]}]}
    return requests.post(f"{server.url}/ga4gh/tes/v1/tasks", json=task, timeout=30,
                         headers={"Authorization": f"Bearer {bearer}"})


def test_a_controlled_dataset_needs_a_trusted_visa(server: ServerProcess, issuers: dict[str, Issuer],
                                                   keys: dict[str, rsa.RSAPrivateKey], data: Path,
                                                   drs: DrsServer) -> None:
    refused = {
        "no passport": None,
        "a visa for another dataset": [visa(issuers, keys, value="https://ega.example.org/datasets/OTHER")],
        "a visa from an untrusted issuer": [visa(issuers, keys, signer="rogue")],
        "an expired visa": [token(keys["visas"], claims(issuers["visas"], sub="a", exp=int(time.time()) - 600,
                                                       ga4gh_visa_v1={"type": "ControlledAccessGrants",
                                                                      "asserted": 1, "value": DATASET}),
                                  kid="visas")],
        "a visa with conditions": [visa(issuers, keys, conditions=[[{"type": "AffiliationAndRole"}]])],
        "another kind of visa": [visa(issuers, keys, type="AffiliationAndRole")],
    }
    for why, visas in refused.items():
        resp = post(server, issuers, keys, data, visas)
        assert resp.status_code == 403, (why, resp.text)
        assert DATASET in resp.json()["msg"] and "inputs[0]" in resp.json()["msg"], (why, resp.text)
    # A directory holding the dataset reads it too; a controlled DRS server is not even asked.
    holder = post(server, issuers, keys, data, None, [{"url": data.as_uri(), "path": "/in", "type": "DIRECTORY"}])
    assert holder.status_code == 403 and DATASET in holder.json()["msg"], holder.text
    drs.objects["obj"] = DrsEntry(data=b"x")
    remote = post(server, issuers, keys, data, None, [{"url": f"drs://{drs.host}/obj", "path": "/in/g.vcf"}])
    assert remote.status_code == 403 and DATASET in remote.json()["msg"] and drs.requests == [], remote.text
    # A visa is no access token, even one signed by the login issuer.
    as_login = requests.get(f"{server.url}/ga4gh/tes/v1/tasks", timeout=10,
                            headers={"Authorization": f"Bearer {visa(issuers, keys, signer='login')}"})
    assert as_login.status_code == 401 and "visa is not an access token" in as_login.text, as_login.text
    granted = post(server, issuers, keys, data, [visa(issuers, keys, value="x"), visa(issuers, keys)])
    assert granted.status_code == 200, granted.text
    bearer = token(keys["login"], claims(issuers["login"], sub="alice"), kid="login")
    task = run_existing(server, granted.json()["id"], headers={"Authorization": f"Bearer {bearer}"})
    assert task["state"] == "COMPLETE" and task["logs"][0]["logs"][0]["stdout"] == "##fileformat=VCFv4.3\n"


CAT = """cwlVersion: v1.2
class: CommandLineTool
requirements: {DockerRequirement: {dockerPull: busybox}}
baseCommand: [head, -n1]
inputs: {vcf: {type: File, inputBinding: {position: 1}}}
stdout: head.txt
outputs: {head: {type: stdout}}
"""


def test_a_run_reading_a_controlled_dataset_needs_the_visa_and_its_tasks_inherit_it(
        server: ServerProcess, issuers: dict[str, Issuer], keys: dict[str, rsa.RSAPrivateKey], data: Path) -> None:
    def submit(visas: list[str] | None) -> requests.Response:
        bearer = token(keys["login"], claims(issuers["login"], sub="bob", **(
            {"ga4gh_passport_v1": visas} if visas is not None else {})), kid="login")
        params = {"vcf": {"class": "File", "location": (data / "controlled" / "genotypes.vcf").as_uri()}}
        return requests.post(f"{server.url}{WES}/runs", headers={"Authorization": f"Bearer {bearer}"},
                             data={"workflow_type": "CWL", "workflow_type_version": "v1.2",
                                   "workflow_url": "cat.cwl", "workflow_params": json.dumps(params)},
                             files=[("workflow_attachment", ("cat.cwl", CAT.encode()))], timeout=60)

    refused = submit(None)
    assert refused.status_code == 403 and DATASET in refused.json()["msg"], refused.text
    assert "workflow_params.vcf.location" in refused.json()["msg"]
    granted = submit([visa(issuers, keys)])
    assert granted.status_code == 200, granted.text
    run_id = granted.json()["run_id"]
    bearer = token(keys["login"], claims(issuers["login"], sub="bob"), kid="login")
    headers = {"Authorization": f"Bearer {bearer}"}
    deadline = time.monotonic() + 180
    while (state := requests.get(f"{server.url}{WES}/runs/{run_id}/status", headers=headers,
                                 timeout=10).json()["state"]) not in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert state == "COMPLETE"  # the engine's task, under the run's credential, read the dataset
