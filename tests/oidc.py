"""Test helpers: a local OIDC issuer (discovery + JWKS over http on loopback) and signed tokens."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


class Issuer:
    """An OIDC issuer on 127.0.0.1 that counts every request per path."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.requests: Counter[str] = Counter()
        self.fail_jwks = False
        self.discovery_issuer: str | None = None  # override the issuer named by discovery
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests[self.path] += 1
                if self.path == "/oidc/.well-known/openid-configuration":
                    body: object = {
                        "issuer": issuer.discovery_issuer or issuer.issuer,
                        "jwks_uri": issuer.base + "/jwks",
                    }
                elif self.path == "/jwks" and not issuer.fail_jwks:
                    body = issuer.jwks
                else:
                    self.send_error(500 if self.path == "/jwks" else 404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer = self.base + "/oidc/"  # trailing slash, like ELIXIR AAI
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def claims(issuer: Issuer, **overrides: Any) -> dict[str, Any]:
    """A valid payload for `issuer`; an override of None removes the claim."""
    now = int(time.time())
    base = {"iss": issuer.issuer, "sub": "alice@example.org", "exp": now + 600, "iat": now}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key: Any, payload: dict[str, Any], kid: str | None = "rsa-1", alg: str = "RS256") -> str:
    """Signed with pyjwt's JWS layer, so that claims pyjwt would refuse to encode can be tested."""
    headers = {"kid": kid} if kid is not None else {}
    return jwt.PyJWS().encode(json.dumps(payload).encode(), key, algorithm=alg, headers=headers)
