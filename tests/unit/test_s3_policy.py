"""The pure half of s3:// support: which URLs name which configured bucket, and whose keys a task
may read or write (a refused URL is a 400 at creation, before any network)."""

from __future__ import annotations

import pytest

from hpc_bridge.config import S3Settings
from hpc_bridge.staging.areas import owner_key
from hpc_bridge.staging.s3 import S3Policy, parse
from hpc_bridge.staging.schemes import SchemeError

ALICE, BOB = "https://aai.example.org#alice", "https://aai.example.org#bob"


def policy(*buckets: dict) -> S3Policy:
    return S3Policy(S3Settings.model_validate({"enabled": True, "buckets": list(buckets)}))


@pytest.mark.parametrize(("url", "message"), [
    ("s3://Bucket/k", "plain bucket name"),
    ("s3://bucket:9000/k", "plain bucket name"),
    ("s3://key:secret@bucket/k", "plain bucket name"),
    ("s3:///k", "plain bucket name"),
    ("s3://bucket/a//b", "empty, '.' and '..'"),
    ("s3://bucket/a/../b", "empty, '.' and '..'"),
    ("s3://bucket/./b", "empty, '.' and '..'"),
    ("s3://bucket/a?versionId=1", "query or fragment"),
    ("s3://bucket/a\nb", "control characters"),
    ("s3://bucket/" + "k" * 1025, "longer than S3's 1024 bytes"),
])
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(SchemeError, match=message):
        parse(url)


def test_keys_are_taken_literally() -> None:
    url = parse("s3://my-bucket/dir/a file%20.txt")
    assert (url.bucket, url.key, url.below()) == ("my-bucket", "dir/a file%20.txt", "dir/a file%20.txt/")
    assert parse("s3://my-bucket").below() == ""


def test_owners_read_and_write_only_their_prefixes() -> None:
    p = policy({"name": "data", "read": ["{owner}/", "reference/"], "write": ["{owner}/"]})
    mine = owner_key(ALICE)
    assert p.check(f"s3://data/{mine}/x.bam", ALICE, write=True, directory=False)[0].key == f"{mine}/x.bam"
    assert p.check("s3://data/reference/hg38.fa", ALICE, write=False, directory=False)
    assert p.check(f"s3://data/{mine}", ALICE, write=False, directory=True)  # the whole area, as a directory
    with pytest.raises(SchemeError, match="may write only under"):
        p.check("s3://data/reference/hg38.fa", ALICE, write=True, directory=False)
    with pytest.raises(SchemeError, match="may read only under"):
        p.check(f"s3://data/{mine}/x.bam", BOB, write=False, directory=False)
    with pytest.raises(SchemeError, match="may read only under"):  # a prefix of the prefix is not inside it
        p.check(f"s3://data/{mine[:-1]}", ALICE, write=False, directory=True)
    with pytest.raises(SchemeError, match="is not one this service can use .configured: data"):
        p.check("s3://other/x", ALICE, write=False, directory=False)
    with pytest.raises(SchemeError, match="a FILE needs an object key"):
        p.check(f"s3://data/{mine}/", ALICE, write=False, directory=False)


def test_a_named_bucket_wins_over_the_wildcard_one() -> None:
    p = policy({"name": "*", "read": [""]}, {"name": "private", "read": ["{owner}/"]})
    assert p.check("s3://anything/x", ALICE, write=False, directory=False)
    with pytest.raises(SchemeError, match="may read only under"):
        p.check("s3://private/x", ALICE, write=False, directory=False)


@pytest.mark.parametrize("prefix", ["/abs/", "{owner}/{owner}/", "{user}/"])
def test_bad_prefix_settings_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="a key prefix"):
        S3Settings.model_validate({"buckets": [{"name": "data", "read": [prefix]}]})
