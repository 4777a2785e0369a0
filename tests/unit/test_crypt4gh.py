"""Crypt4GH: keys and recipients, a `.c4gh` input's session keys, the job-side encryption (collector)
and decryption, the plan of a task that uses them, the batch script's clean-up, `config check`."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from crypt4gh import lib
from crypt4gh.keys import c4gh, get_private_key, get_public_key

from hpc_bridge.c4gh.headers import HeaderError, session_keys
from hpc_bridge.c4gh.keys import Crypt4ghKeyError, SiteKey, load_site_key, parse_recipients, required_root
from hpc_bridge.cli import main
from hpc_bridge.config import Crypt4ghSettings, SiteConfig
from hpc_bridge.jobside import decrypt as jobside_decrypt
from hpc_bridge.jobside.collect import C4GH_BATCH, C4GH_SEGMENT, collect
from hpc_bridge.slurm.script import DecryptStep, ExecutorScript, JobScript, render
from hpc_bridge.staging.schemes import Schemes
from hpc_bridge.tes.jobspec import InvalidTask, plan_job
from hpc_bridge.tes.models import Task

from ..conftest import ROOT


def keypair(directory: Path, name: str, passphrase: bytes | None = None) -> tuple[Path, bytes, bytes]:
    sec, pub = directory / f"{name}.sec", directory / f"{name}.pub"
    c4gh.generate(str(sec), str(pub), passphrase, b"")
    sec.chmod(0o600)
    secret = get_private_key(str(sec), lambda: (passphrase or b"").decode())
    return sec, secret, get_public_key(str(pub))


def encrypt(data: bytes, *publics: bytes) -> bytes:
    out = io.BytesIO()
    lib.encrypt([(0, os.urandom(32), p) for p in publics], io.BytesIO(data), out)
    return out.getvalue()


def decrypt(data: bytes, secret: bytes) -> bytes:
    out = io.BytesIO()
    lib.decrypt([(0, secret, None)], io.BytesIO(data), out)
    return out.getvalue()


def b64(public: bytes) -> str:
    return base64.b64encode(public).decode()


# --- keys -----------------------------------------------------------------------------------------

def test_recipients_are_base64_x25519_keys_each_once() -> None:
    a, b = b64(b"a" * 32), b64(b"b" * 32)
    assert parse_recipients(f" {a},{b}\n{a} ") == [a, b]
    for text, message in [("", "no recipient"), ("%%%", "not base64"), (b64(b"x" * 16), "16 bytes, not 32"),
                          (" ".join(b64(bytes([i]) * 32) for i in range(33)), "at most 32")]:
        with pytest.raises(Crypt4ghKeyError, match=message):
            parse_recipients(text)


def test_the_site_key_must_be_private_and_unlock(tmp_path: Path) -> None:
    sec, secret, public = keypair(tmp_path, "site")
    key = load_site_key(Crypt4ghSettings(enabled=True, secret_key=sec))
    assert key is not None and key.secret == secret and key.public == b64(public)
    sec.chmod(0o640)
    with pytest.raises(Crypt4ghKeyError, match="chmod 600"):
        load_site_key(Crypt4ghSettings(secret_key=sec))
    locked, locked_secret, _ = keypair(tmp_path, "locked", b"open sesame")
    with pytest.raises(Crypt4ghKeyError, match="passphrase_file"):
        load_site_key(Crypt4ghSettings(secret_key=locked))
    phrase = tmp_path / "phrase"
    phrase.write_text("wrong\n")
    phrase.chmod(0o600)
    with pytest.raises(Crypt4ghKeyError, match="wrong passphrase"):
        load_site_key(Crypt4ghSettings(secret_key=locked, passphrase_file=phrase))
    phrase.write_text("open sesame\n")
    unlocked = load_site_key(Crypt4ghSettings(secret_key=locked, passphrase_file=phrase))
    assert unlocked is not None and unlocked.secret == locked_secret
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    with pytest.raises(Crypt4ghKeyError, match="not a Crypt4GH secret key"):
        load_site_key(Crypt4ghSettings(secret_key=junk))
    assert load_site_key(Crypt4ghSettings()) is None


def test_required_roots_match_whole_components(tmp_path: Path) -> None:
    settings = Crypt4ghSettings(required_roots=[tmp_path / "controlled"])
    assert required_root(tmp_path / "controlled/x/y", settings) == str(tmp_path / "controlled")
    assert required_root(tmp_path / "controlled", settings) == str(tmp_path / "controlled")
    assert required_root(tmp_path / "controlled2/x", settings) is None


# --- headers (daemon side) ------------------------------------------------------------------------

def test_session_keys_open_only_this_file(tmp_path: Path) -> None:
    _, site_secret, site_public = keypair(tmp_path, "site")
    site = SiteKey(site_secret)
    body = os.urandom(100_000)
    (tmp_path / "in.c4gh").write_bytes(encrypt(body, site_public, b"\x01" * 32))
    keys = session_keys(str(tmp_path / "in.c4gh"), site)
    raw = (tmp_path / "in.c4gh").read_bytes()
    assert len(keys.keys) == 1 and len(raw) - keys.offset == 100_000 + 2 * 28  # two segments follow
    out = tmp_path / "plain"
    jobside_decrypt.decrypt(str(tmp_path / "in.c4gh"), keys.offset, [base64.b64decode(k) for k in keys.keys],
                            str(out), lib.decrypt_block)
    assert out.read_bytes() == body and out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("content", "message"), [
    (b"plain text, not encrypted", "no crypt4gh magic"),
    (b"crypt4gh" + struct.pack("<II", 2, 1), "version 2"),
    (b"crypt4gh" + struct.pack("<II", 1, 1_000_000), "1000000 header packets"),
    (b"crypt4gh" + struct.pack("<III", 1, 1, 2**31), "header packet of 2147483648 bytes"),
    (b"crypt4gh" + struct.pack("<III", 1, 1, 100) + b"short", "ends inside its Crypt4GH header"),
])
def test_a_hostile_header_is_refused_before_crypt4gh_parses_it(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "x.c4gh").write_bytes(content)
    with pytest.raises(HeaderError, match=message):
        session_keys(str(tmp_path / "x.c4gh"), SiteKey(os.urandom(32)))


def test_a_file_for_someone_else_or_a_link_is_refused(tmp_path: Path) -> None:
    _, _, other = keypair(tmp_path, "other")
    (tmp_path / "x.c4gh").write_bytes(encrypt(b"secret", other))
    with pytest.raises(HeaderError, match="not encrypted for this site"):
        session_keys(str(tmp_path / "x.c4gh"), SiteKey(os.urandom(32)))
    (tmp_path / "link.c4gh").symlink_to(tmp_path / "x.c4gh")
    with pytest.raises(OSError):
        session_keys(str(tmp_path / "link.c4gh"), SiteKey(os.urandom(32)))


# --- job side -------------------------------------------------------------------------------------

def test_the_decryption_step_records_a_changed_body_as_an_input_error(tmp_path: Path) -> None:
    _, site_secret, site_public = keypair(tmp_path, "site")
    data = bytearray(encrypt(os.urandom(200_000), site_public))
    keys = session_keys_of(tmp_path, bytes(data), site_secret)
    data[-100] ^= 1  # the last segment, after the header was read
    (tmp_path / "in.c4gh").write_bytes(bytes(data))
    record = tmp_path / "record.jsonl"
    record.touch()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"record": str(record), "inputs": [
        {"index": 3, "source": str(tmp_path / "in.c4gh"), "offset": keys.offset, "keys": list(keys.keys),
         "dest": str(tmp_path / "plain")}]}))
    assert jobside_decrypt.main([str(spec)]) == 1
    [event] = [json.loads(line) for line in record.read_text().splitlines()]
    assert event["event"] == "input_error" and event["input"] == 3 and "segment 3 does not decrypt" in event["message"]
    spec.write_text("{}")
    assert jobside_decrypt.main([str(spec)]) == 2


def session_keys_of(tmp_path: Path, data: bytes, secret: bytes):  # noqa: ANN201
    (tmp_path / "in.c4gh").write_bytes(data)
    return session_keys(str(tmp_path / "in.c4gh"), SiteKey(secret))


def test_the_collector_writes_only_ciphertext_named_c4gh(tmp_path: Path) -> None:
    _, alice, alice_public = keypair(tmp_path, "alice")
    _, bob, bob_public = keypair(tmp_path, "bob")
    bind, dest = tmp_path / "work/outputs/0", tmp_path / "data/out"
    (bind / "sub").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (bind / "a.txt").write_bytes(b"alpha")
    (bind / "sub/b.txt").write_bytes(b"beta" * 50_000)
    # whole batches of whole segments; one segment more than a batch; none at all
    whole, over, empty = os.urandom(2 * C4GH_BATCH * C4GH_SEGMENT), os.urandom(C4GH_BATCH * C4GH_SEGMENT + 100), b""
    for name, content in (("whole", whole), ("over", over), ("empty", empty)):
        (bind / name).write_bytes(content)
    events: list[dict] = []
    manifest = {"workdir": str(tmp_path / "work"), "roots": [str(tmp_path / "data")],
                "recipients": [b64(alice_public), b64(bob_public)],
                "outputs": [{"index": 0, "type": "DIRECTORY", "path": "/out", "bind_container": "/out",
                             "bind_host": str(bind), "url": f"file://{dest}", "dest": str(dest)}]}
    assert collect(manifest, events.append)
    names = ["a.txt.c4gh", "empty.c4gh", "over.c4gh", "sub/b.txt.c4gh", "whole.c4gh"]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == names
    for secret in (alice, bob):  # crypt4gh's own decryption reads them
        assert decrypt((dest / "a.txt.c4gh").read_bytes(), secret) == b"alpha"
        assert decrypt((dest / "sub/b.txt.c4gh").read_bytes(), secret) == b"beta" * 50_000
        assert decrypt((dest / "whole.c4gh").read_bytes(), secret) == whole
        assert decrypt((dest / "over.c4gh").read_bytes(), secret) == over
        assert decrypt((dest / "empty.c4gh").read_bytes(), secret) == empty
    assert {e["url"]: int(e["size_bytes"]) for e in events if e["event"] == "output"} == {
        f"file://{dest}/{name}": (dest / name).stat().st_size for name in names}


def test_the_script_removes_plaintext_whatever_the_end(tmp_path: Path) -> None:
    """The decryption step and an executor write plaintext, the executor fails: the private
    directory and the work area's writable parts are gone after the job, its logs kept."""
    work, private = tmp_path / "work", tmp_path / "node-tmp/hpc-bridge-t1"
    (work / "outputs/0").mkdir(parents=True)
    private.parent.mkdir()
    job = JobScript(
        name="t1", workdir=str(work), scrub=[str(work / "outputs"), str(work / "scratch")], log_tail=100,
        decrypt=DecryptStep(private_dir=str(private), first=0,
                            argv=["sh", "-c", f"echo PLAIN > {private}/0"]),
        executors=[ExecutorScript(argv=["sh", "-c", f"cat {private}/0; cp {private}/0 {work}/outputs/0/x; exit 4"],
                                  stdout=str(work / "outputs/0/log"), roots={"stdout": str(work / "outputs/0")})])
    script = work / "job.sh"
    script.write_text(render(job, [ROOT / "slurm_templates"]))
    proc = subprocess.run(["bash", str(script)], cwd=work)
    assert proc.returncode == 4
    assert not private.exists() and not (work / "outputs").exists()
    assert (work / "executor-0.stdout").read_text() == "PLAIN\n"  # the log tail, copied out first
    assert job.log_paths(0) == (f"{work}/executor-0.stdout", f"{work}/executor-0.stderr")


# --- plan -----------------------------------------------------------------------------------------

def _config(tmp_path: Path, **crypt4gh: object) -> SiteConfig:
    (tmp_path / "data").mkdir(exist_ok=True)
    return SiteConfig.model_validate({
        "auth": {"mode": "none"}, "storage": {"work_root": str(tmp_path / "work"),
                                             "data_roots": [str(tmp_path / "data")]},
        "apptainer": {"image_dirs": [str(tmp_path)]},
        "crypt4gh": {"enabled": True, "secret_key": str(tmp_path / "site.sec"), "job_python": "/opt/py/bin/python",
                     "private_tmp": "/node/tmp", **crypt4gh}})


def _plan(config: SiteConfig, task: dict):  # noqa: ANN202
    (Path(config.apptainer.image_dirs[0]) / "img.sif").touch()
    return plan_job(Task.model_validate({"executors": [{"image": "img", "command": ["true"]}], **task}),
                    task_id="t1", workdir=str(config.storage.work_root / "t1"), config=config,
                    schemes=Schemes(config), owner="local")


def test_a_c4gh_input_is_bound_from_the_private_directory(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "data/in.c4gh").write_bytes(b"x")
    (tmp_path / "data/plain.txt").write_bytes(b"x")
    plan = _plan(config, {"inputs": [{"url": f"file://{tmp_path}/data/in.c4gh", "path": "/in/x"},
                                     {"url": f"file://{tmp_path}/data/plain.txt", "path": "/in/y"}]})
    assert [(d.index, d.source, d.dest) for d in plan.decrypts] == [
        (0, str(tmp_path / "data/in.c4gh"), "/node/tmp/hpc-bridge-t1/0")]
    step = plan.script.decrypt
    assert step is not None and step.private_dir == "/node/tmp/hpc-bridge-t1"
    assert step.argv[0] == "/opt/py/bin/python" and step.argv[-1].endswith("/c4gh-inputs.json")
    argv = list(plan.script.executors[0].argv)
    binds = {argv[i + 1] for i, a in enumerate(argv) if a == "--bind"}
    assert {"/node/tmp/hpc-bridge-t1/0:/in/x:ro", f"{tmp_path}/data/plain.txt:/in/y:ro"} <= binds
    assert plan.script.scrub and plan.script.log_tail > 0
    kept = _plan(config, {"inputs": [{"url": f"file://{tmp_path}/data/in.c4gh", "path": "/in/x"}],
                          "tags": {"crypt4gh_decrypt": "false"}})
    assert kept.decrypts == [] and kept.script.decrypt is None and not kept.script.scrub


def test_encrypted_outputs_use_the_crypt4gh_python_and_scrub(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = _plan(config, {"outputs": [{"url": f"file://{tmp_path}/data/o", "path": "/out/o"}],
                          "tags": {"crypt4gh_recipients": b64(b"k" * 32)}})
    assert plan.script.collect is not None and plan.script.collect[0] == "/opt/py/bin/python"
    manifest = json.loads(plan.files[plan.script.collect[-1]])
    assert manifest["recipients"] == [b64(b"k" * 32)]
    assert plan.script.scrub


@pytest.mark.parametrize(("crypt4gh", "task", "field", "message"), [
    ({"required_roots": ["DATA/controlled"]}, {"outputs": [{"url": "file://DATA/controlled/o", "path": "/o/o"}]},
     "outputs[0].url", "must be encrypted"),
    ({}, {"outputs": [{"url": "s3://bucket/o", "path": "/o/o"}], "tags": {"crypt4gh_recipients": b64(b"k" * 32)}},
     "outputs[0].url", "not object storage"),
    ({"enabled": False}, {"tags": {"crypt4gh_recipients": b64(b"k" * 32)}}, "tags.crypt4gh_recipients",
     "does not offer Crypt4GH"),
])
def test_refusals(tmp_path: Path, crypt4gh: dict, task: dict, field: str, message: str) -> None:
    fix = json.loads(json.dumps(crypt4gh).replace("DATA", str(tmp_path / "data")))
    config = _config(tmp_path, **fix)
    if task.get("outputs", [{}])[0].get("url", "").startswith("s3:"):
        config = SiteConfig.model_validate({**config.model_dump(mode="json"), "storage": {
            **config.storage.model_dump(mode="json"), "s3": {"enabled": True, "buckets": [
                {"name": "bucket", "anonymous": True, "read": [""], "write": [""]}]}}})
    task = json.loads(json.dumps(task).replace("DATA", str(tmp_path / "data")))
    with pytest.raises(InvalidTask) as caught:
        _plan(config, task)
    assert caught.value.field == field and message in str(caught.value)


# --- config check ---------------------------------------------------------------------------------

def test_config_check_loads_the_key_and_tries_the_job_python(tmp_path: Path) -> None:
    sec, _, public = keypair(tmp_path, "site")
    site = tmp_path / "site.yaml"
    base = (f"auth: {{mode: none}}\nstorage: {{work_root: {tmp_path}/work, data_roots: [{tmp_path}/data]}}\n"
            f"crypt4gh: {{enabled: true, secret_key: {sec}, job_python: {sys.executable}}}\n")
    site.write_text(base)
    result = CliRunner().invoke(main, ["config", "check", "--config", str(site)])
    assert result.exit_code == 0, result.output
    assert b64(public) in result.output and "imports crypt4gh" in result.output
    site.write_text(base.replace(sys.executable, "/usr/bin/python3 -S"))
    missing = CliRunner().invoke(main, ["config", "check", "--config", str(site)])
    assert missing.exit_code == 2 and "cannot import crypt4gh" in missing.output
    sec.chmod(0o644)
    site.write_text(base)
    loose = CliRunner().invoke(main, ["config", "check", "--config", str(site)])
    assert loose.exit_code == 2 and "chmod 600" in loose.output
