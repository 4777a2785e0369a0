"""File tenancy: which parts of the data roots an owner's tasks may reach (staging.areas), the
site settings that describe them, and the URL scheme that applies them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hpc_bridge.config import SiteConfig
from hpc_bridge.staging.areas import AreaPolicy, owner_key
from hpc_bridge.staging.schemes import SchemeError, Schemes

ALICE, BOB = "https://id.example.org/#alice", "https://id.example.org/#bob"


def site(tmp: Path, **storage: Any) -> SiteConfig:
    data = tmp / "data"
    for sub in ("users", "reference", "exchange", "runs/r1", "elsewhere"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    return SiteConfig.model_validate({
        "auth": {"mode": "jwt", "issuers": [{"issuer": "https://id.example.org/"}]},
        "storage": {"work_root": str(tmp / "work"), "data_roots": [str(data)],
                    "owner_areas": str(data / "users" / "{owner}"),
                    "shared_areas": [{"path": str(data / "reference")},
                                     {"path": str(data / "exchange"), "writable": True}], **storage},
        "wes": {"runs_root": str(data / "runs")}})


def test_owner_keys_are_readable_unique_and_plain() -> None:
    assert owner_key("local") == "local"
    alice = owner_key(ALICE)
    assert alice.startswith("alice-") and alice != owner_key("https://other.example.org/#alice")
    odd = owner_key("https://id.example.org/#../..@x y/z")
    assert "/" not in odd and ".." not in odd.split("-")[0] and " " not in odd
    assert owner_key(ALICE) == alice  # stable: the area of an owner never moves


def test_each_owner_reaches_their_area_the_shared_ones_and_their_runs(tmp_path: Path) -> None:
    config = site(tmp_path)
    data = tmp_path / "data"
    policy = AreaPolicy(config, {"r1": ALICE}.get)
    alice_area = str(data / "users" / owner_key(ALICE))
    assert policy.area_of(f"{alice_area}/x/y", ALICE, write=True).path == alice_area
    assert policy.area_of(f"{alice_area}/x", BOB, write=False) is None
    assert policy.area_of(str(data / "reference" / "hg38.fa"), BOB, write=False).path == str(data / "reference")
    assert policy.area_of(str(data / "reference" / "hg38.fa"), BOB, write=True) is None
    exchange = policy.area_of(str(data / "exchange" / "f"), BOB, write=True)
    assert exchange.path == str(data / "exchange") and exchange.keep
    assert not policy.area_of(str(data / "exchange" / "f"), BOB, write=False).keep
    assert policy.area_of(str(data / "runs" / "r1" / "outputs"), ALICE, write=True).path == str(data / "runs" / "r1")
    assert policy.area_of(str(data / "runs" / "r1" / "outputs"), BOB, write=False) is None
    assert policy.area_of(str(data / "runs"), ALICE, write=False) is None  # the root of all runs
    assert policy.area_of(str(data / "runs" / "r2"), ALICE, write=False) is None  # no such run
    assert policy.area_of(str(data / "elsewhere" / "f"), ALICE, write=False) is None
    assert policy.readable(None) == [str(data / "reference"), str(data / "exchange")]
    assert policy.readable(ALICE)[0] == alice_area


def test_without_owner_areas_the_data_roots_are_one_space(tmp_path: Path) -> None:
    config = site(tmp_path, owner_areas=None, shared_areas=[], one_shared_space=True)
    data = str(tmp_path / "data")
    policy = AreaPolicy(config)
    assert policy.area_of(f"{data}/users/x", BOB, write=True).path == data
    assert policy.area_of(str(tmp_path / "work"), BOB, write=False) is None


def test_the_file_scheme_refuses_other_owners_files_naming_where_you_may(tmp_path: Path) -> None:
    config = site(tmp_path)
    data = tmp_path / "data"
    alice_area = data / "users" / owner_key(ALICE)
    alice_area.mkdir()
    (alice_area / "private.txt").write_text("alice's")
    (data / "reference" / "ref.txt").write_text("shared")
    schemes = Schemes(config)
    url = (alice_area / "private.txt").as_uri()
    assert schemes.for_url(url).input(url, None, ALICE).source == str(alice_area / "private.txt")
    with pytest.raises(SchemeError, match="outside your area .*users/bob-"):
        schemes.for_url(url).input(url, None, BOB)
    with pytest.raises(SchemeError, match="outside your area"):
        schemes.for_url(url).output(url, BOB)
    ref = (data / "reference" / "ref.txt").as_uri()
    assert schemes.for_url(ref).input(ref, "FILE", BOB).type == "FILE"
    with pytest.raises(SchemeError, match="shared writable areas .*exchange"):
        schemes.for_url(ref).output(ref, BOB)
    # a symlink in your own area leading to someone else's is judged by where it leads
    bob_area = data / "users" / owner_key(BOB)
    bob_area.mkdir()
    (bob_area / "link").symlink_to(alice_area / "private.txt")
    link = (bob_area / "link").as_uri()
    with pytest.raises(SchemeError):
        schemes.for_url(link).input(link, None, BOB)
    assert schemes.locations(BOB)[:3] == [bob_area.as_uri(), (data / "reference").as_uri(),
                                         (data / "exchange").as_uri()]
    assert alice_area.as_uri() not in schemes.locations(None)


@pytest.mark.parametrize("storage, message", [
    ({"owner_areas": None}, "storage.owner_areas is required"),
    ({"owner_areas": "/elsewhere/{owner}"}, "must lie inside one of storage.data_roots"),
    ({"owner_areas": "users/{owner}"}, "absolute path with {owner}"),
    ({"owner_areas": "/data/user-{owner}"}, "one whole component"),
    ({"shared_areas": [{"path": "DATA"}]}, "overlap"),  # a shared area over everyone's areas
    ({"shared_areas": [{"path": "DATA/runs"}]}, "overlap"),  # ... or over every run
])
def test_areas_that_would_mix_owners_are_refused(tmp_path: Path, storage: dict[str, Any], message: str) -> None:
    data = str(tmp_path / "data")
    fixed = {k: ([{"path": a["path"].replace("DATA", data)} for a in v] if k == "shared_areas" else v)
             for k, v in storage.items()}
    with pytest.raises(ValidationError, match=message):
        site(tmp_path, **fixed)


def test_one_shared_space_is_a_written_choice(tmp_path: Path) -> None:
    assert site(tmp_path, owner_areas=None, shared_areas=[], one_shared_space=True).storage.owner_areas is None
    with pytest.raises(ValidationError, match="owner_areas is required"):
        site(tmp_path, owner_areas=None, shared_areas=[])
