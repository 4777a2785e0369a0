"""DRS and TRS identifiers and GA4GH visas: parsing and checks that need no server."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from hpc_bridge.auth.passport import _grant, area_datasets
from hpc_bridge.config import DrsSettings, HttpInputSettings, PassportArea
from hpc_bridge.staging import drs
from hpc_bridge.wes import trs

from .test_http_download import cert_files  # noqa: F401 - fixture

SETTINGS = DrsSettings(enabled=True, hosts=[{"host": "drs.example.org"}, {"host": "localhost:8443"}],
                       prefixes={"ex": "drs.example.org"})


@pytest.mark.parametrize(("uri", "host", "object_id"), [
    ("drs://drs.example.org/abc", "drs.example.org", "abc"),
    ("drs://DRS.example.org/a%2Fb", "drs.example.org", "a/b"),
    ("drs://localhost:8443/x", "localhost:8443", "x"),
    ("drs://ex:EGAF0001", "drs.example.org", "EGAF0001"),
])
def test_drs_ids_name_an_allowed_host_and_an_object(uri: str, host: str, object_id: str) -> None:
    ref = drs.parse(uri, SETTINGS)
    assert (ref.host.host, ref.object_id) == (host, object_id)
    assert ref.base.startswith(f"https://{ref.host.host}/ga4gh/drs/v1/objects/")


@pytest.mark.parametrize(("uri", "message"), [
    ("drs://elsewhere.org/abc", "not one this site uses"),
    ("drs://nope:abc", "compact id"),
    ("drs://drs.example.org/", "no object id"),
    ("drs://drs.example.org/a%0Ab", "no object id"),
])
def test_bad_drs_ids_are_refused(uri: str, message: str) -> None:
    with pytest.raises(drs.DrsError, match=message):
        drs.parse(uri, SETTINGS)


def test_a_site_without_drs_looks_nothing_up() -> None:
    off = SETTINGS.model_copy(update={"enabled": False})
    with pytest.raises(drs.DrsError, match=r"^drs:// inputs are not enabled here \(storage.drs\)$"):
        drs.Resolver(off, HttpInputSettings()).resolve("drs://drs.example.org/obj", None)


def test_a_download_is_checked_by_size_then_by_the_strongest_checksum(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"data")
    good = hashlib.sha256(b"data").hexdigest()
    assert drs.verify(path, drs.Resolved("drs://h/x", "https://h/x", size=4, checksums={"sha-256": good})) is None
    assert drs.verify(path, drs.Resolved("drs://h/x", "u", size=5)) == \
        "drs://h/x: 4 bytes downloaded, the DRS object has 5"
    wrong = drs.Resolved("drs://h/x", "u", checksums={"md5": hashlib.md5(b"data").hexdigest(), "sha-256": "00"})
    assert "checksum mismatch" in (drs.verify(path, wrong) or "")  # sha-256 wins over a matching md5
    assert drs._headers(["Authorization: Basic abc", "bad header", "X-A:b\r\nX-Evil: 1"]) == {
        "Authorization": "Basic abc"}


@pytest.mark.parametrize(("url", "expected"), [
    ("trs://reg.example.org/%23workflow%2Fgithub.com%2Fx%2Fy/v1.0",
     ("reg.example.org", "#workflow/github.com/x/y", "v1.0")),
    ("https://reg.example.org:8443/ga4gh/trs/v2/tools/%23workflow%2Fx/versions/2/CWL/descriptor",
     ("reg.example.org:8443", "#workflow/x", "2")),
    ("https://reg.example.org/ga4gh/trs/v2/tools/t/versions/2/PLAIN_CWL/descriptor/sub/tool.cwl",
     ("reg.example.org", "t", "2")),
])
def test_trs_urls_name_a_tool_version(url: str, expected: tuple[str, str, str]) -> None:
    ref = trs.parse(url)
    assert ref is not None and (ref.host, ref.tool_id, ref.version) == expected
    assert trs.parse(ref.uri) == ref  # the trs:// form round-trips


def test_other_urls_are_no_trs_and_broken_trs_uris_are_refused() -> None:
    assert trs.parse("https://example.org/wf.cwl") is None and trs.parse("wf.cwl") is None
    for bad in ("trs://host/only-id", "trs://host/a/b/c", "trs:///id/v"):
        with pytest.raises(trs.TrsError, match="trs://HOST/ID/VERSION"):
            trs.parse(bad)
    with pytest.raises(trs.TrsError, match="not one this site allows"):
        trs.fetch(trs.TrsRef("evil.org", "t", "1"), ["reg.example.org"], None, 1)  # type: ignore[arg-type]


def test_only_asserted_unconditional_controlled_access_grants_count(tmp_path: Path) -> None:
    now = time.time()
    grant = {"type": "ControlledAccessGrants", "value": "ds", "asserted": int(now) - 10}
    assert _grant(grant, now)
    assert not _grant({**grant, "type": "AffiliationAndRole"}, now)
    assert not _grant({**grant, "conditions": [[{"type": "x"}]]}, now)
    assert not _grant({**grant, "asserted": int(now) + 3600}, now)
    assert not _grant({**grant, "value": 7}, now)
    (tmp_path / "ds" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "ds" / "sub")
    areas = [PassportArea(path=tmp_path / "ds", dataset="ds")]
    assert area_datasets(str(tmp_path / "link" / "f"), areas) == ["ds"]  # reached through a symlink too
    assert area_datasets(str(tmp_path), areas) == ["ds"]  # a directory holding the dataset reads it too
    assert area_datasets(str(tmp_path / "ds2" / "f"), areas) == []


def test_the_bearer_token_goes_only_to_hosts_the_site_marks(cert_files, monkeypatch) -> None:  # noqa: ANN001, F811
    from ..ga4gh_servers import DrsEntry, DrsServer
    from .test_http_download import LOOPBACK

    monkeypatch.setenv("SSL_CERT_FILE", str(cert_files[0]))
    for server in DrsServer(cert_files).serve():
        server.objects["obj"] = DrsEntry(data=b"x", required_token="user-token")
        http_settings = HttpInputSettings(allowed_networks=LOOPBACK)
        for forward in (False, True):
            settings = DrsSettings(enabled=True, hosts=[{"host": server.host, "forward_token": forward}])
            server.requests.clear()
            try:
                found = drs.Resolver(settings, http_settings).resolve(f"drs://{server.host}/obj", "user-token")
            except drs.DrsError as exc:
                assert not forward and "access refused by the DRS server" in str(exc)
            else:
                assert forward and found.size == 1
            sent = [h.get("Authorization") for _, h in server.requests]
            assert sent == (["Bearer user-token"] if forward else [None])
