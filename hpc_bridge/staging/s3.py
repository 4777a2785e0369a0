"""`s3://bucket/key` inputs and outputs (AWS, Ceph RGW, MinIO), moved by the daemon with boto3.

A user's URL picks a bucket the site configured (`storage.s3.buckets`) and a key under that
bucket's read or write prefixes for the task's owner; never an endpoint: every address the daemon
connects to here is the site's own choice, so the http address policy has nothing to decide.
Credentials stay in the daemon, never in a batch script, a task or a log. The transfers run on
the login node (compute nodes are often offline): inputs before the job is submitted, outputs after
it ends, both streaming with boto3's multipart transfers and the caps of `storage.s3`.

Nothing partial is left behind: a download lands in the daemon's private staging directory and is
renamed into the work area only when complete; a failed upload's multipart upload is aborted
(boto3) and the objects a directory output already sent are deleted again.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from hpc_bridge.config import S3Bucket, S3Settings, SiteConfig
from hpc_bridge.staging.areas import owner_key
from hpc_bridge.staging.schemes import DIRECTORY, FILE, InputSource, SchemeError, TransferError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MAX_KEY_BYTES = 1024  # S3's own limit
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken",
           "ExpiredToken", "AllAccessDisabled"}


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def below(self) -> str:
        """The key prefix of the objects of a directory (or of a wildcard output) at this URL."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""


def parse(url: str) -> S3Url:
    """Keys are taken literally (as the aws CLI does); only the forms that different stores would
    read differently are refused: empty, `.` and `..` segments, control characters."""
    if not url[:5].lower() == "s3://":
        raise SchemeError(f"{url!r}: not an s3:// URL")
    bucket, _, key = url[5:].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise SchemeError(f"{url!r}: an s3 URL is s3://bucket/key, with a plain bucket name (3-63 of a-z 0-9 . -; "
                          "no port, credentials or capitals)")
    if "?" in key or "#" in key:
        raise SchemeError(f"{url!r}: s3 URLs cannot have a query or fragment")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise SchemeError(f"{url!r}: control characters are not allowed in keys")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise SchemeError(f"{url!r}: the key is longer than S3's {MAX_KEY_BYTES} bytes")
    if _unsafe(key.rstrip("/").split("/") if key.strip("/") else []) or key.startswith("/"):
        raise SchemeError(f"{url!r}: empty, '.' and '..' segments are not allowed in keys")
    return S3Url(bucket, key)


def _unsafe(segments: list[str]) -> bool:
    """Segments that stores (and file systems) read differently: empty, `.` and `..`."""
    return any(s in ("", ".", "..") for s in segments)


class S3Policy:
    """Which configured bucket a URL names and whether the owner may read or write its key: pure,
    so a refused URL is a 400 when the task is created."""

    def __init__(self, settings: S3Settings) -> None:
        self._exact = {b.name: b for b in settings.buckets if b.name != "*"}
        self._any = next((b for b in settings.buckets if b.name == "*"), None)

    def bucket(self, name: str) -> S3Bucket | None:
        return self._exact.get(name, self._any)

    def names(self) -> list[str]:
        return [*self._exact, *(["*"] if self._any else [])]

    @staticmethod
    def prefixes(bucket: S3Bucket, owner: str, *, write: bool) -> list[str]:
        return [p.replace("{owner}", owner_key(owner)) for p in (bucket.write if write else bucket.read)]

    def check(self, url: str, owner: str, *, write: bool, directory: bool) -> tuple[S3Url, S3Bucket]:
        parsed = parse(url)
        bucket = self.bucket(parsed.bucket)
        if bucket is None:
            raise SchemeError(f"{url!r}: bucket {parsed.bucket!r} is not one this service can use "
                              f"(configured: {', '.join(self.names()) or 'none'})")
        key = parsed.below() if directory else parsed.key
        if not directory and (not key or key.endswith("/")):
            raise SchemeError(f"{url!r}: a FILE needs an object key (a key ending in / is a DIRECTORY)")
        allowed = self.prefixes(bucket, owner, write=write)
        if not any(key.startswith(p) for p in allowed):
            shown = ", ".join(f"s3://{parsed.bucket}/{p}" for p in allowed) or "nothing"
            raise SchemeError(f"{url!r}: this task's owner may {'write' if write else 'read'} only under {shown}")
        return parsed, bucket


class _Progress:
    """boto3's progress callback, which also enforces the caps and a stop: raising here stops the
    transfer."""

    def __init__(self, url: S3Url, max_bytes: int, deadline: float, stop: threading.Event | None = None) -> None:
        self._url, self._max, self._deadline, self._stop = url, max_bytes, deadline, stop
        self._lock = threading.Lock()
        self.total = 0

    def check(self) -> None:
        """Also between objects: a prefix of many empty objects reports no progress at all."""
        if self._stop is not None and self._stop.is_set():
            raise TransferError(f"{self._url}: stopped (the task was cancelled, or the service is stopping)")
        if time.monotonic() > self._deadline:
            raise TransferError(f"{self._url}: not done within the time limit")

    def __call__(self, amount: int) -> None:
        self.check()
        with self._lock:
            self.total += amount
            if self.total > self._max:
                raise TransferError(f"{self._url}: larger than the maximum of {self._max} bytes")


class S3Scheme:
    names: tuple[str, ...] = ("s3",)
    sends_outputs = True

    def __init__(self, settings: S3Settings, *, uploads: bool = True) -> None:
        """`uploads`: False under per-user execution, where the daemon (the service account) cannot
        read the private work areas that outputs are left in."""
        self._settings = settings
        self._uploads = uploads
        self.policy = S3Policy(settings)
        self._clients: dict[tuple[str, str | None], S3Client] = {}
        self._lock = threading.Lock()
        self._transfer = TransferConfig(multipart_threshold=settings.part_size,
                                        multipart_chunksize=settings.part_size,
                                        max_concurrency=settings.concurrency)

    def locations(self) -> list[str]:
        return [f"s3://{name}/" for name in self.policy.names()]

    # -- checks when a task is created (no network)

    def input(self, url: str, declared_type: str | None, owner: str) -> InputSource:
        directory = declared_type == DIRECTORY
        self.policy.check(url, owner, write=False, directory=directory)
        return InputSource("download", url, DIRECTORY if directory else FILE)

    def output(self, url: str, owner: str, *, directory: bool = False) -> str | None:
        if not self._uploads:
            raise SchemeError(f"{url!r}: s3 outputs are not available with per-user execution (run_as) "
                              "on this service yet; write to a file:// URL")
        self.policy.check(url, owner, write=True, directory=directory)
        return None  # uploaded by the daemon from the work area once the job has ended

    # -- transfers (daemon, login node)

    def client(self, bucket: S3Bucket, owner: str) -> S3Client:
        profile = bucket.owner_profiles.get(owner, bucket.profile)
        with self._lock:
            key = (bucket.name, profile)
            if key not in self._clients:
                self._clients[key] = self._new_client(bucket, profile)
            return self._clients[key]

    def _new_client(self, bucket: S3Bucket, profile: str | None) -> S3Client:
        core = botocore.session.Session()
        if self._settings.credentials_file:
            core.set_config_variable("credentials_file", str(self._settings.credentials_file))
        if profile:
            core.set_config_variable("profile", profile)
        config = Config(connect_timeout=self._settings.connect_timeout, read_timeout=60,
                        retries={"max_attempts": 4, "mode": "standard"},
                        s3={"addressing_style": bucket.addressing_style},
                        max_pool_connections=max(10, self._settings.concurrency * 2),
                        signature_version=UNSIGNED if bucket.anonymous else None)
        client: S3Client = boto3.Session(botocore_session=core).client(
            "s3", endpoint_url=bucket.endpoint_url, region_name=bucket.region or "us-east-1", config=config)
        return client

    def download(self, url: str, dest: Path, type: str, owner: str, stop: threading.Event | None = None) -> None:
        """Into `dest` (a new file, or a new directory tree for a DIRECTORY), which the caller
        renames into place only if this returns."""
        directory = type == DIRECTORY
        parsed, bucket = self.policy.check(url, owner, write=False, directory=directory)
        client = self.client(bucket, owner)
        progress = _Progress(parsed, self._settings.max_bytes, time.monotonic() + self._settings.timeout, stop)
        try:
            if directory:
                self._download_tree(client, parsed, dest, progress)
            else:
                size = client.head_object(Bucket=parsed.bucket, Key=parsed.key)["ContentLength"]
                if size > self._settings.max_bytes:
                    raise TransferError(f"{parsed}: {size} bytes, more than the maximum of "
                                        f"{self._settings.max_bytes}")
                with open(dest, "xb") as fh:
                    client.download_fileobj(parsed.bucket, parsed.key, fh, Config=self._transfer,
                                            Callback=progress)
        except TransferError:
            raise
        except Exception as exc:  # boto3's and s3transfer's errors, OSError (a key that is also a prefix)
            raise TransferError(f"cannot download {parsed}: {self._reason(exc, client, parsed)}") from None

    def _download_tree(self, client: S3Client, url: S3Url, dest: Path, progress: _Progress) -> None:
        prefix = url.below()
        dest.mkdir(mode=0o700)
        found = 0
        for obj in self._objects(client, url.bucket, prefix):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):  # a "folder" marker some tools write
                continue
            parts = rel.split("/")
            if _unsafe(parts):
                raise TransferError(f"{url}: object {obj['Key']!r} cannot be a path in a directory")
            progress.check()
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(target, "xb") as fh:
                client.download_fileobj(url.bucket, obj["Key"], fh, Config=self._transfer, Callback=progress)
            found += 1
        if not found:
            raise TransferError(f"cannot download {url}: no objects under s3://{url.bucket}/{prefix}")

    @staticmethod
    def _objects(client: S3Client, bucket: str, prefix: str) -> Iterator[Any]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def upload(self, url: str, files: Iterator[tuple[str, int]], owner: str, *, directory: bool,
               stop: threading.Event | None = None) -> list[str]:
        """Send `files` ((path relative to the output, "" for a FILE itself; an open descriptor,
        closed here)) to `url`; all or nothing. Returns the URLs of the objects written."""
        parsed, bucket = self.policy.check(url, owner, write=True, directory=directory)
        client = self.client(bucket, owner)
        progress = _Progress(parsed, self._settings.max_bytes, time.monotonic() + self._settings.timeout, stop)
        sent: list[str] = []
        current: tuple[str, int, datetime] | None = None  # the object on its way: key, size, when
        try:
            for rel, fd in files:
                key = parsed.below() + rel if directory else parsed.key
                try:
                    progress.check()
                    size = os.fstat(fd).st_size
                    current = (key, size, datetime.now(UTC))
                    # The cap before sending: a single PUT reports its progress only once it is stored.
                    if progress.total + size > self._settings.max_bytes:
                        raise TransferError(f"{parsed}: larger than the maximum of {self._settings.max_bytes} bytes")
                    # By the descriptor's own name: boto3 reads the parts of a named file in parallel
                    # (of a file object, one after another), and /proc/self/fd/N is the file already
                    # opened, whatever its path now leads to.
                    client.upload_file(f"/proc/self/fd/{fd}", parsed.bucket, key, Config=self._transfer,
                                       Callback=progress)
                finally:
                    os.close(fd)
                sent.append(key)
                current = None
        except Exception as exc:  # whatever it was (a name boto3 cannot encode too): nothing is left
            if current is not None and self._landed(client, parsed.bucket, *current):
                sent.append(current[0])  # a single PUT stored before its callback said stop
            self._delete(client, parsed.bucket, sent)
            if isinstance(exc, TransferError):
                raise
            raise TransferError(f"cannot upload to {parsed}: {self._reason(exc, client, parsed)}") from None
        return [f"s3://{parsed.bucket}/{key}" for key in sent]

    def discard(self, urls: list[str], owner: str) -> None:
        """Delete what `upload` wrote, when a later output of the same task failed."""
        by_bucket: dict[str, list[str]] = {}
        for url in urls:
            parsed = parse(url)
            by_bucket.setdefault(parsed.bucket, []).append(parsed.key)
        for name, keys in by_bucket.items():
            bucket = self.policy.bucket(name)
            if bucket is not None:
                self._delete(self.client(bucket, owner), name, keys)

    @staticmethod
    def _landed(client: S3Client, bucket: str, key: str, size: int, since: datetime) -> bool:
        """Whether the object a failed upload was sending is there, of its size and written since
        it began (give or take the store's clock): then it is this upload's, and goes again."""
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError):
            return False
        return head["ContentLength"] == size and head["LastModified"] >= since - timedelta(seconds=5)

    @staticmethod
    def _delete(client: S3Client, bucket: str, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            try:
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                             "Quiet": True})
            except (ClientError, BotoCoreError):
                pass  # best effort: the upload's own error is the one to report

    def _reason(self, exc: Exception, client: S3Client, url: S3Url) -> str:
        """The store's answer in words; a bare 404 (HEAD has no body) is told apart by asking for
        the bucket."""
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__  # upload_file's wrapper (raised inside its `except ClientError`)
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code, text = str(error.get("Code", "")), str(error.get("Message", "") or "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return "no such bucket" if code == "404" and not self._bucket_exists(client, url) else "no such object"
            if code == "NoSuchBucket":
                return "no such bucket"
            if code in _DENIED:
                return f"access denied by the object store ({code}{': ' + text if text else ''})"
            return f"{code}: {text}" if text else code
        if isinstance(exc, OSError) and exc.strerror:
            return f"{exc.strerror}{f' ({exc.filename})' if exc.filename else ''}"
        return f"{type(exc).__name__}: {exc}" if not isinstance(exc, BotoCoreError) else str(exc)

    @staticmethod
    def _bucket_exists(client: S3Client, url: S3Url) -> bool:
        try:
            client.head_bucket(Bucket=url.bucket)
            return True
        except (ClientError, BotoCoreError):
            return False


def from_config(config: SiteConfig) -> S3Scheme | None:
    """The `hpc_bridge.schemes` entry point: nothing unless the site enabled object storage."""
    if not config.storage.s3.enabled:
        return None
    return S3Scheme(config.storage.s3, uploads=not config.run_as.enabled)

