"""Image pulls: the address check and the pull's proxy (loopback sockets, a stub resolver), and how
the cache takes what a pull wrote (a fake apptainer run as the pull account; needs root)."""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpc_bridge.config import ApptainerSettings, SiteConfig
from hpc_bridge.containers import egress
from hpc_bridge.containers.cache import ImageCache, PullError
from hpc_bridge.containers.images import RegistryImage, resolve_image

PUBLIC = "93.184.215.14"


def test_public_address_needs_every_answer_public() -> None:
    assert egress.public_address("r.example", lambda _: [PUBLIC]) == PUBLIC
    for answer, why in [(["10.1.2.3"], "resolves to 10.1.2.3, not a public address"),
                        ([PUBLIC, "127.0.0.1"], "resolves to 127.0.0.1, not a public address"),
                        ([], "resolves to no address")]:
        with pytest.raises(egress.Refused, match=why):
            egress.public_address("r.example", lambda _, a=answer: a)

    def unknown(host: str) -> list[str]:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(egress.Refused, match="cannot resolve r.example"):
        egress.public_address("r.example", unknown)


def _ask(proxy: egress.CheckingProxy, request: bytes) -> tuple[bytes, socket.socket]:
    url = proxy.environment()["HTTPS_PROXY"]
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    return sock.recv(4096), sock


def _auth(proxy: egress.CheckingProxy) -> str:
    userinfo = proxy.environment()["HTTPS_PROXY"].removeprefix("http://").split("@", 1)[0]
    return "Basic " + base64.b64encode(userinfo.encode()).decode()


def test_the_proxy_serves_only_its_credential_and_only_connect() -> None:
    with egress.CheckingProxy(lambda _: [PUBLIC]) as proxy:
        env = proxy.environment()
        assert set(env) == {"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"}
        answer, _ = _ask(proxy, b"CONNECT r.example:443 HTTP/1.1\r\nHost: r.example:443\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 407 ")
        wrong = b"CONNECT r.example:443 HTTP/1.1\r\nProxy-Authorization: Basic cHVsbDp4\r\n\r\n"
        assert _ask(proxy, wrong)[0].startswith(b"HTTP/1.1 407 ")
        plain = f"GET http://r.example/v2/ HTTP/1.1\r\nProxy-Authorization: {_auth(proxy)}\r\n\r\n".encode()
        assert _ask(proxy, plain)[0].startswith(b"HTTP/1.1 405 ")
        assert proxy.refusals == ["plain http request through the pull proxy (http://r.example/v2/): refused"]


def test_the_proxy_resolves_again_and_refuses_an_internal_answer() -> None:
    with egress.CheckingProxy(lambda _: ["169.254.169.254"]) as proxy:
        request = f"CONNECT r.example:443 HTTP/1.1\r\nProxy-Authorization: {_auth(proxy)}\r\n\r\n".encode()
        assert _ask(proxy, request)[0].startswith(b"HTTP/1.1 403 ")
        assert proxy.refusals == ["r.example:443: r.example resolves to 169.254.169.254, not a public address"]


def test_the_proxy_tunnels_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback stands in for a public registry here (the policy is told so): bytes pass both ways,
    to the port asked for, at the address the resolver gave, not one apptainer looked up."""
    upstream = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def echo() -> None:
        conn, _ = upstream.accept()
        with conn:
            data = conn.recv(100)
            seen.append(data)
            conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    monkeypatch.setattr(egress, "is_allowed_address", lambda address, _: address == "127.0.0.1")
    port = upstream.getsockname()[1]
    with egress.CheckingProxy(lambda host: ["127.0.0.1"] if host == "r.example" else []) as proxy:
        request = f"CONNECT r.example:{port} HTTP/1.1\r\nProxy-Authorization: {_auth(proxy)}\r\n\r\nhello"
        answer, sock = _ask(proxy, request.encode())
        with sock:
            assert answer.startswith(b"HTTP/1.1 200 ")
            reply = answer.split(b"\r\n\r\n", 1)[1] or sock.recv(100)
    assert seen == [b"hello"] and reply == b"HELLO" and proxy.refusals == []
    upstream.close()


# -- the cache and the pull account -------------------------------------------------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="pulls switch to the pull account")


@pytest.fixture()
def place() -> Iterator[Path]:
    """A directory the pull account can traverse (tmp_path is root's, 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="hpcb-pull-", dir="/var/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def _fake(place: Path, body: str, pull_as: str | None) -> tuple[ImageCache, RegistryImage]:
    """An apptainer whose `pull` runs `body` with $t the SIF path it was asked to write."""
    binary = place / "apptainer"
    binary.write_text('#!/bin/sh\nfor a; do case $a in *.sif) t=$a;; esac; done\nid -u >"${t%/*}/uid"\n'
                      f"{body}\n")
    binary.chmod(0o755)
    settings = ApptainerSettings(binary=binary, cache_dir=place / "cache", insecure_registries=["127.0.0.1:5000"],
                                 pull_as=pull_as)
    image = resolve_image("127.0.0.1:5000/x/y:1", settings)
    assert isinstance(image, RegistryImage)
    return ImageCache(settings, env={"PATH": "/usr/bin:/bin"}), image


@as_root
def test_a_pull_runs_as_the_pull_account_and_its_sif_becomes_the_daemons(place: Path,
                                                                          dev_config: SiteConfig) -> None:
    puller = pwd.getpwnam(dev_config.apptainer.pull_as or "")
    # It writes its uid as the SIF, and cannot write into the cache itself.
    cache, image = _fake(place, f'cp "${{t%/*}}/uid" "$t"; chmod 0700 "$t"; touch {place}/cache/intruder; true',
                         puller.pw_name)
    assert cache.ensure(image) is True
    st = image.sif.stat()
    assert image.sif.read_text().strip() == str(puller.pw_uid)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (0, 0, 0o644, 1)
    assert sorted(p.name for p in (place / "cache").iterdir()) == [image.sif.name, f"{image.sif.name}.lock"]


@as_root
@pytest.mark.parametrize(("body", "why"), [
    ('ln -s /etc/shadow "$t"', "the pulled SIF is not a plain file (Too many levels of symbolic links)"),
    ('echo x >"$t.x"; ln "$t.x" "$t"', "the pulled SIF has 2 hard links (a link to another file?); not taken"),
    ("true", "apptainer reported success but wrote no SIF"),
])
def test_what_the_pull_account_leaves_is_checked_before_root_takes_it(place: Path, dev_config: SiteConfig,
                                                                     body: str, why: str) -> None:
    cache, image = _fake(place, body, dev_config.apptainer.pull_as)
    shadow = os.stat("/etc/shadow")
    with pytest.raises(PullError, match=re.escape(why)):
        cache.ensure(image)
    assert not image.sif.exists() and not list((place / "cache").glob(".pull-*"))
    after = os.stat("/etc/shadow")  # no chown or chmod went through a planted link
    assert (after.st_mode, after.st_uid, after.st_gid) == (shadow.st_mode, shadow.st_uid, shadow.st_gid)


@as_root
def test_a_root_daemon_without_a_pull_account_does_not_pull(place: Path) -> None:
    cache, image = _fake(place, f"touch {place}/ran", None)
    with pytest.raises(PullError, match="never pulls as root: set apptainer.pull_as"):
        cache.ensure(image)
    assert not (place / "ran").exists()
