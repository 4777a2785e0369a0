"""A real S3-compatible server on loopback for the tests and benches: moto's server mode (PyPI,
in the lock), in its own process, with credentials enforced (IAM), so wrong keys are refused as
a real store refuses them. MinIO and Ceph are not installable here (no Debian package, no
internet beyond PyPI); moto speaks the same S3 REST API that boto3, the Snakemake storage plugin
and the aws CLI use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import boto3

from tests.procs import terminate

# moto lets this many requests through unauthenticated, then demands known keys: enough to create
# the IAM user, its key and its policy (4 requests), nothing more.
_SETUP_REQUESTS = 4


class S3Server:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.access_key = self.secret_key = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        server = Path(sys.executable).parent / "moto_server"
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_REQUESTS))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start:\n{self.log.read_text()}") from None
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="hpc-bridge")
        key = iam.create_access_key(UserName="hpc-bridge")["AccessKey"]
        iam.put_user_policy(UserName="hpc-bridge", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key)

    def credentials_file(self, path: Path, **extra_profiles: tuple[str, str]) -> Path:
        """An AWS shared-credentials file: `default` has the real key, plus any profiles given."""
        profiles = {"default": (self.access_key, self.secret_key), **extra_profiles}
        path.write_text("".join(f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
                                for name, (key, secret) in profiles.items()))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        terminate(self.proc)
