"""http(s) input downloads against real local servers: the address policy (the SSRF guard), pinning,
redirects, caps, atomic writes and TLS verification."""

from __future__ import annotations

import datetime
import gzip
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from hpc_bridge import __version__
from hpc_bridge.config import HttpInputSettings
from hpc_bridge.staging import http
from hpc_bridge.staging.http import (
    DownloadError,
    check_url,
    download,
    is_allowed_address,
)

PAYLOAD = bytes(range(256)) * 400  # 102400 bytes, every byte value
GZIPPED = gzip.compress(PAYLOAD, mtime=0)
LOOPBACK = ["127.0.0.0/8", "::1/128"]


class Handler(BaseHTTPRequestHandler):
    """One route per behaviour a download must cope with; requests are recorded on the server."""

    protocol_version = "HTTP/1.1"
    server: LocalServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.close_connection = True
        self.server.requests.append((self.path, dict(self.headers.items())))
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        try:
            self._route(path, query)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client gave up, as it should

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        if path == "/file":
            self._send(200, PAYLOAD)
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            # Relative references of both kinds: absolute-path and dot-segment.
            self._send(302, headers={"Location": f"/chain/{left - 1}" if left > 1 else "../file"})
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif path == "/to":
            self._send(int(query.get("status", ["302"])[0]), headers={"Location": query["url"][0]})
        elif path == "/big":
            self._send(200, b"x" * int(query["n"][0]))
        elif path == "/declared-huge":
            self._send(200, headers={"Content-Length": str(10**12)})
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(int(query["n"][0]) // 1000):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/short":  # claims more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"z" * 10)
        elif path == "/trickle":  # each byte well within any read timeout, the whole far beyond
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"t")
                self.wfile.flush()
                time.sleep(0.05)
        elif path == "/hang":
            time.sleep(float(query.get("s", ["3"])[0]))
            self._send(200, b"late")
        elif path == "/utf8-redirect":  # raw UTF-8 bytes in the header, as some servers send
            self._send(302, headers={"Location": "/f\u00efle".encode().decode("latin-1")})
        elif unquote(path) == "/f\u00efle":
            self._send(200, PAYLOAD)
        elif path == "/gzip":
            self._send(200, GZIPPED, {"Content-Encoding": "gzip"})
        else:
            self._send(404, b"not here")


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, context: ssl.SSLContext | None = None) -> None:
        super().__init__((host, 0), Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if context else "http"

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.server_address[0]}:{self.port}{path}"


def _serve(server: LocalServer) -> Iterator[LocalServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    yield from _serve(LocalServer("127.0.0.1"))


@pytest.fixture
def other_server() -> Iterator[LocalServer]:
    """On 127.0.0.2 (Linux answers on all of 127/8): reachable, but outside 127.0.0.1/32."""
    yield from _serve(LocalServer("127.0.0.2"))


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name "localhost" only (no IP address)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(cert_files: tuple[Path, Path]) -> Iterator[LocalServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert_files)
    yield from _serve(LocalServer("127.0.0.1", context))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def settings(**overrides: object) -> HttpInputSettings:
    values: dict[str, object] = {"allowed_networks": LOOPBACK, "timeout": 10.0, "connect_timeout": 2.0}
    values.update(overrides)
    return HttpInputSettings(**values)


def assert_nothing_left(folder: Path) -> None:
    """No destination and no temporary file: a failed download leaves the work area as it was."""
    assert sorted(p.name for p in folder.iterdir()) == []


# --- downloads ------------------------------------------------------------------------------------


def test_download_writes_the_body_and_returns_its_size(server: LocalServer, work: Path) -> None:
    dest = work / "input.bin"
    assert download(server.url("/file"), dest, settings()) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in work.iterdir()] == ["input.bin"]
    path, headers = server.requests[-1]
    assert path == "/file"
    assert headers["User-Agent"] == f"hpc-bridge/{__version__}"
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Host"] == f"127.0.0.1:{server.port}"


def test_download_replaces_an_existing_destination(server: LocalServer, work: Path) -> None:
    dest = work / "input.bin"
    dest.write_bytes(b"old")
    download(server.url("/file"), dest, settings())
    assert dest.read_bytes() == PAYLOAD


def test_bytes_are_stored_as_sent_never_decoded(server: LocalServer, work: Path) -> None:
    dest = work / "data.gz"
    assert download(server.url("/gzip"), dest, settings()) == len(GZIPPED)
    assert dest.read_bytes() == GZIPPED


def test_chunked_body_without_content_length(server: LocalServer, work: Path) -> None:
    dest = work / "c"
    assert download(server.url("/chunked?n=50000"), dest, settings()) == 50000
    assert dest.read_bytes() == b"y" * 50000


def test_loopback_is_refused_by_default(server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1 is not a public address"):
        download(server.url("/file"), work / "f", HttpInputSettings())
    assert server.requests == []
    assert_nothing_left(work)


def test_host_names_are_resolved_and_checked(server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match=r"host 'localhost' resolves to .* not a public address"):
        download(server.url("/file", host="localhost"), work / "f", HttpInputSettings())
    assert server.requests == []


def test_host_name_download_sends_the_name_as_host(server: LocalServer, work: Path) -> None:
    dest = work / "f"
    assert download(server.url("/file", host="localhost"), dest, settings()) == len(PAYLOAD)
    assert server.requests[-1][1]["Host"] == f"localhost:{server.port}"


def test_connection_is_pinned_to_the_checked_address(server: LocalServer, work: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebinding resolver answers an allowed address first, the metadata address after: the
    name is resolved once per hop and the connection goes to the address that was checked."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1", "169.254.169.254", "169.254.169.254"])
    lookups: list[str] = []

    def rebinding(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host == "rebind.test":
            lookups.append(host)
            return real(next(answers), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    dest = work / "f"
    assert download(f"http://rebind.test:{server.port}/file", dest, settings()) == len(PAYLOAD)
    assert lookups == ["rebind.test"]
    assert server.requests[-1][1]["Host"] == f"rebind.test:{server.port}"


def test_any_refused_address_refuses_the_host(server: LocalServer, work: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def two_answers(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host == "mixed.test":
            return real("127.0.0.1", port, *args, **kwargs) + real("10.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    with pytest.raises(DownloadError, match=r"resolves to 10\.0\.0\.1"):
        download(f"http://mixed.test:{server.port}/file", work / "f", settings())
    assert server.requests == []


def test_unresolvable_host(work: Path) -> None:
    with pytest.raises(DownloadError, match="cannot resolve host 'no-such-host.invalid'"):
        download("http://no-such-host.invalid/file", work / "f", settings())


def test_redirect_chain_is_followed(server: LocalServer, work: Path) -> None:
    dest = work / "f"
    assert download(server.url("/chain/3"), dest, settings(max_redirects=4)) == len(PAYLOAD)
    assert [p for p, _ in server.requests] == ["/chain/3", "/chain/2", "/chain/1", "/file"]


def test_redirect_location_in_utf8(server: LocalServer, work: Path) -> None:
    assert download(server.url("/utf8-redirect"), work / "f", settings()) == len(PAYLOAD)
    assert server.requests[-1][0] == "/f%C3%AFle"


def test_too_many_redirects(server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match=r"too many redirects \(more than 2"):
        download(server.url("/chain/3"), work / "f", settings(max_redirects=2))
    with pytest.raises(DownloadError, match="too many redirects"):
        download(server.url("/loop"), work / "f", settings(max_redirects=5))
    assert len(server.requests) == 3 + 6
    assert_nothing_left(work)


def test_redirects_can_be_disabled(server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match="too many redirects"):
        download(server.url("/chain/1"), work / "f", settings(max_redirects=0))


@pytest.mark.parametrize("target", [
    "http://10.0.0.1/secret",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/file",
    "http://2130706434:{port}/file",  # 127.0.0.2
    "http://0x7f.2:{port}/file",
])
def test_redirect_to_a_refused_address_is_not_followed(server: LocalServer, work: Path, target: str) -> None:
    only_this_server = settings(allowed_networks=["127.0.0.1/32"])
    url = server.url("/to?url=" + target.format(port=server.port).replace("[", "%5B").replace("]", "%5D"))
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"redirect to .* refused: .*not a public address"):
        download(url, work / "f", only_this_server)
    assert time.monotonic() - started < 2  # refused, not attempted and timed out
    assert [p for p, _ in server.requests] == [urlsplit(url).path + "?" + urlsplit(url).query]
    assert_nothing_left(work)


def test_redirect_is_refused_before_any_connection(server: LocalServer, other_server: LocalServer,
                                                   work: Path) -> None:
    url = server.url("/to?url=" + other_server.url("/file"))
    with pytest.raises(DownloadError, match=r"127\.0\.0\.2 is not a public address"):
        download(url, work / "f", settings(allowed_networks=["127.0.0.1/32"]))
    assert other_server.requests == []
    # The same hop is fine once its network is allowed.
    download(url, work / "f", settings(allowed_networks=["127.0.0.1/32", "127.0.0.2/32"]))
    assert [p for p, _ in other_server.requests] == ["/file"]


def test_redirect_with_credentials_or_bad_scheme_is_refused(server: LocalServer, work: Path) -> None:
    for target, reason in [("ftp://example.org/x", "not http or https"),
                           (f"http://u:pw@127.0.0.1:{server.port}/file", "credentials")]:
        with pytest.raises(DownloadError, match=reason) as caught:
            download(server.url("/to?url=" + target), work / "f", settings())
        assert "pw" not in str(caught.value).partition(" refused")[0].partition("redirect to")[2]


def test_not_found(server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/missing: "
                                            r"the server answered HTTP 404 Not Found"):
        download(server.url("/missing"), work / "f", settings())
    assert_nothing_left(work)


def test_size_cap_on_declared_length_refuses_early(server: LocalServer, work: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"1000000000000 bytes, more than the limit of 1000"):
        download(server.url("/declared-huge"), work / "f", settings(max_bytes=1000))
    assert time.monotonic() - started < 2
    assert_nothing_left(work)


def test_size_cap_on_streamed_body_leaves_no_partial_file(server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match="larger than the limit of 20000 bytes"):
        download(server.url("/chunked?n=200000"), work / "f", settings(max_bytes=20000))
    assert_nothing_left(work)
    with pytest.raises(DownloadError, match="more than the limit of 20000"):
        download(server.url("/big?n=200000"), work / "f", settings(max_bytes=20000))
    assert_nothing_left(work)
    assert download(server.url("/big?n=20000"), work / "f", settings(max_bytes=20000)) == 20000


def test_body_shorter_than_its_content_length(server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match="closed before the whole body arrived"):
        download(server.url("/short"), work / "f", settings())
    assert_nothing_left(work)


def test_total_timeout_on_a_trickling_body(server: LocalServer, work: Path) -> None:
    """Every byte arrives well within a read timeout; only the total deadline stops it."""
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out after 1 s"):
        download(server.url("/trickle"), work / "f", settings(timeout=1.0))
    assert time.monotonic() - started < 3
    assert_nothing_left(work)


def test_total_timeout_while_waiting_for_headers(server: LocalServer, work: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out after 0.5 s"):
        download(server.url("/hang?s=3"), work / "f", settings(timeout=0.5))
    assert time.monotonic() - started < 2
    assert_nothing_left(work)


def test_connection_refused(work: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"cannot connect to 127\.0\.0\.1 port {port}"):
        download(f"http://127.0.0.1:{port}/x", work / "f", settings())


def test_disabled(work: Path) -> None:
    with pytest.raises(DownloadError, match="disabled"):
        download("https://example.org/x", work / "f", settings(enabled=False))
    with pytest.raises(ValueError, match="disabled"):
        check_url("https://example.org/x", settings(enabled=False))


def test_error_messages_never_show_credentials(work: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        download("http://alice:s3cret@127.0.0.1:1/x", work / "f", HttpInputSettings())
    assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)
    assert "http://127.0.0.1:1/x" in str(caught.value)


# --- https ----------------------------------------------------------------------------------------


def test_untrusted_certificate_is_refused(tls_server: LocalServer, work: Path) -> None:
    with pytest.raises(DownloadError, match="TLS certificate verification failed"):
        download(tls_server.url("/file", host="localhost"), work / "f", settings())
    assert tls_server.requests == []
    assert_nothing_left(work)


def test_trusted_certificate_with_pinned_address(tls_server: LocalServer, work: Path,
                                                 cert_files: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Connecting to the checked address still sends SNI and verifies against the URL's name."""
    monkeypatch.setattr(http, "_ca_bundle", lambda: str(cert_files[0]))
    dest = work / "f"
    assert download(tls_server.url("/file", host="localhost"), dest, settings()) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert tls_server.requests[-1][1]["Host"] == f"localhost:{tls_server.port}"


def test_certificate_for_another_name_is_refused(tls_server: LocalServer, work: Path,
                                                 cert_files: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "_ca_bundle", lambda: str(cert_files[0]))
    with pytest.raises(DownloadError, match="TLS certificate verification failed"):
        download(tls_server.url("/file"), work / "f", settings())  # 127.0.0.1: not in the cert
    assert tls_server.requests == []


def test_https_to_http_redirect_is_refused(tls_server: LocalServer, server: LocalServer, work: Path,
                                           cert_files: tuple[Path, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "_ca_bundle", lambda: str(cert_files[0]))
    url = tls_server.url("/to?url=" + server.url("/file"), host="localhost")
    with pytest.raises(DownloadError, match="from https to http refused"):
        download(url, work / "f", settings())
    assert server.requests == []


def test_next_hop_validation() -> None:
    s = settings(allowed_networks=[])
    assert http._next_hop("https://a.example/x/y", "../z?q=1", s).url == "https://a.example/z?q=1"
    assert http._next_hop("http://a.example/x", "https://b.example/", s).host == "b.example"
    assert http._next_hop("https://a.example/x", "//b.example/y", s).scheme == "https"
    with pytest.raises(ValueError, match="from https to http"):
        http._next_hop("https://a.example/x", "http://a.example/x", s)
    with pytest.raises(ValueError, match="not a public address"):
        http._next_hop("http://a.example/x", "http://[::ffff:10.1.2.3]/", s)
    with pytest.raises(ValueError, match="contains"):
        http._next_hop("http://a.example/x", "/a\r\nX-Injected: 1", s)


# --- check_url ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.org/file", "not http or https"),
    ("file:///etc/passwd", "not http or https"),
    ("example.org/file", "not http or https"),
    ("https://user:secret@example.org/file", "credentials"),
    ("https://token@example.org/file", "credentials"),
    ("https://example.org/a file", r"U\+0020"),
    (" https://example.org/file", r"U\+0020"),
    ("https://example.org/file\n", r"U\+000A"),
    ("https://exa\tmple.org/file", r"U\+0009"),
    ("https://example.org/\x00", r"U\+0000"),
    ("https://example.org/\u200bfile", r"U\+200B"),
    ("https://example.org\\@evil.test/", "backslash"),
    ("http://2130706433/", r"127\.0\.0\.1 is not a public"),
    ("http://0x7f000001/", r"127\.0\.0\.1 is not a public"),
    ("http://0x7f.1/", r"127\.0\.0\.1 is not a public"),
    ("http://0177.0.0.1/", r"127\.0\.0\.1 is not a public"),
    ("http://127.1/", r"127\.0\.0\.1 is not a public"),
    ("http://[::ffff:127.0.0.1]/", "not a public"),
    ("http://[::1]/", r"::1 is not a public"),
    ("http://[::]/", "not a public"),
    ("http://0.0.0.0/", "not a public"),
    ("http://169.254.169.254/latest/meta-data/", "not a public"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://10.1.2.3/", "not a public"),
    ("http://100.64.0.1/", "not a public"),
    ("http://224.0.0.1/", "not a public"),
    ("http://1.2.3.256/", "invalid IPv4"),
    ("http://example.0x10/", "invalid IPv4"),
    ("http:///file", "no host"),
    ("http://:80/file", "no host"),
    ("https://example.org:0/", "invalid port"),
    ("https://example.org:65536/", "invalid port"),
    ("https://example.org:8o/", "invalid port"),
    ("https://example.org:/", "invalid port"),
    ("https://exa_mple..org/", "invalid host"),
    ("https://%65xample.org/", "invalid host"),
    ("https://[not-v6]/", "IPv6|malformed"),
    ("https://example.org/" + "a" * http.MAX_URL_LENGTH, "longer than"),
    ("", "empty"),
])
def test_check_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        check_url(url, HttpInputSettings())
    assert "secret" not in str(caught.value)
    assert not any(char in str(caught.value) for char in " \t\n\x00\u200b"[1:])  # shown encoded


@pytest.mark.parametrize("url", [
    "https://example.org/data/file.bam",
    "HTTP://Example.ORG:8080/a?b=c&d=%20e#frag",
    "https://8.8.8.8/x",
    "http://134744072/x",  # 8.8.8.8 as a number: an address, and a public one
    "https://[2606:4700:4700::1111]/x",
    "https://bücher.example/ä",
    "https://example.org./trailing-dot",
    "https://host_with_underscore.example/x",
])
def test_check_url_accepts(url: str) -> None:
    check_url(url, HttpInputSettings())


def test_check_url_honours_allowed_networks() -> None:
    allowed = HttpInputSettings(allowed_networks=["10.0.0.0/8", "fd00::/8"])
    check_url("http://10.1.2.3:8080/x", allowed)
    check_url("http://[fd00::5]/x", allowed)
    check_url("http://0x0a010203/x", allowed)
    with pytest.raises(ValueError, match="not a public"):
        check_url("http://192.168.1.1/x", allowed)


def test_request_target_is_ascii_and_keeps_its_encoding() -> None:
    target = http._parse("https://bücher.example/ä b%20c?q=ü#frag".replace(" ", "%20"), HttpInputSettings())
    assert target.host == "xn--bcher-kva.example"
    assert target.request_target == "/%C3%A4%20b%20c?q=%C3%BC"
    assert target.host_header == "xn--bcher-kva.example"
    v6 = http._parse("http://[2606:4700::1]:8080/", HttpInputSettings())
    assert v6.host_header == "[2606:4700::1]:8080" and v6.request_target == "/"


# --- is_allowed_address ---------------------------------------------------------------------------


@pytest.mark.parametrize("address, allowed, expected", [
    ("8.8.8.8", [], True),
    ("2606:4700:4700::1111", [], True),
    ("127.0.0.1", [], False),
    ("127.0.0.1", ["127.0.0.0/8"], True),
    ("127.0.0.2", ["127.0.0.1/32"], False),
    ("::1", [], False),
    ("::1", ["127.0.0.0/8"], False),
    ("0.0.0.0", [], False),
    ("::", [], False),
    ("10.0.0.1", [], False),
    ("172.16.5.4", [], False),
    ("192.168.0.1", [], False),
    ("169.254.169.254", [], False),
    ("100.64.0.1", [], False),
    ("100.127.255.254", [], False),
    ("224.0.0.1", [], False),
    ("239.255.255.250", [], False),
    ("255.255.255.255", [], False),
    ("240.0.0.1", [], False),
    ("192.0.2.1", [], False),
    ("198.18.0.1", [], False),
    ("fe80::1", [], False),
    ("fe80::1%eth0", [], False),
    ("fc00::1", [], False),
    ("fd12:3456::1", ["fd00::/8"], True),
    ("ff02::1", [], False),
    ("2001:db8::1", [], False),
    ("::ffff:127.0.0.1", [], False),
    ("::ffff:127.0.0.1", ["127.0.0.0/8"], True),
    ("::ffff:169.254.169.254", [], False),
    ("::ffff:8.8.8.8", [], True),
    ("::127.0.0.1", [], False),  # IPv4-compatible
    ("::8.8.8.8", [], False),
    ("2002:7f00:1::1", [], False),  # 6to4 of 127.0.0.1
    ("2002:808:808::1", [], True),  # 6to4 of 8.8.8.8
    ("64:ff9b::a9fe:a9fe", [], False),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", [], True),
    ("64:ff9b::7f00:1", ["127.0.0.0/8"], True),
    ("64:ff9b:1::808:808", [], False),  # local-use NAT64: only if allowed
    ("64:ff9b:1::808:808", ["64:ff9b:1::/48"], True),
    ("not-an-address", [], False),
    ("", [], False),
    ("127.0.0.1", ["10.0.0.0/8", "::/0"], False),  # an IPv6 network never covers IPv4
    ("[::1]", ["::1/128"], True),
])
def test_is_allowed_address(address: str, allowed: list[str], expected: bool) -> None:
    assert is_allowed_address(address, allowed) is expected


def test_malformed_allowed_network_is_reported() -> None:
    with pytest.raises(ValueError, match="allowed_networks: 'nope' is not a CIDR"):
        is_allowed_address("8.8.8.8", ["nope"])


def test_temporary_files_are_private(server: LocalServer, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body is written to a 0600 file created exclusively next to the destination."""
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def spy(src: str, dst: object) -> None:
        seen.append((os.path.dirname(src), os.stat(src).st_mode & 0o777))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    download(server.url("/file"), work / "f", settings())
    assert seen == [(str(work), 0o600)]



def test_fetch_into_memory_has_the_same_policy_and_caps(server: LocalServer) -> None:
    """http.fetch (CWL documents the service reads itself): the body as sent, or DownloadError."""
    assert http.fetch(server.url("/chain/2"), settings()) == PAYLOAD
    with pytest.raises(DownloadError, match="not a public address"):
        http.fetch(server.url("/file"), settings(allowed_networks=[]))
    with pytest.raises(DownloadError, match="larger than the limit of 1000 bytes"):
        http.fetch(server.url("/chunked?n=5000"), settings(max_bytes=1000))
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out after 0.5 s"):
        http.fetch(server.url("/hang?s=3"), settings(timeout=0.5))
    assert time.monotonic() - started < 2.5
    with pytest.raises(DownloadError, match="disabled"):
        http.fetch(server.url("/file"), settings(enabled=False))
    # The chain's three hops, the oversized body and the hang; none for the refused or disabled ones.
    assert len(server.requests) == 5
