"""S3 source (the only product module that imports boto3): list, HEAD and presign; bytes go over HTTP.

Endpoint, region and credentials come from boto3's standard chain (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, IRSA, instance profile, ...), so any S3-compatible store works. boto3 is
CPU-heavy per byte (``bench/fetch.py``: 2-3x the CPU seconds of ours), so it never carries the
data: each ranged GET goes to a presigned URL through the shared lean data path.
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, SSLError
from botocore.utils import get_environ_proxies

from agent.fetch.sources.base import HttpTarget, SourceError, checked_files
from agent.fetch.sources.timeouts import Timeouts
from agent.store import checksums
from agent.store.files import RemoteFile
from locality.identity import ModelRef

PRESIGN_SECONDS = 6 * 3600
_PERMANENT_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "NoSuchKey",
    "InvalidBucketName",
    "AllAccessDisabled",
    "403",
    "404",
    "400",
}


class S3Source:
    """``s3://bucket/prefix``: every object below ``prefix/``, else the single object ``prefix``."""

    def __init__(self, ref: ModelRef, timeouts: Timeouts | None = None) -> None:
        self.uri = ref.uri
        self.bucket = ref.authority
        self.prefix = ref.path
        # Path-style: works with every S3-compatible store and with nginx-as-origin in the bench.
        # One try per call: the cache retries listings itself and logs each retry as it happens.
        t = timeouts or Timeouts()
        config = Config(
            connect_timeout=t.connect,
            read_timeout=t.read,
            retries={"mode": "standard", "total_max_attempts": 1},
            s3={"addressing_style": "path"},
        )
        session = boto3.session.Session()
        self._client: Any = session.client("s3", config=config)
        # The data path trusts and proxies what boto3 does: AWS_CA_BUNDLE (or ca_bundle in the
        # AWS config file) and HTTPS_PROXY/HTTP_PROXY/NO_PROXY as botocore resolves them.
        self._ca_file: str | None = session._session.get_config_variable("ca_bundle")

    async def list_files(self) -> list[RemoteFile]:
        files = await asyncio.to_thread(self._list)
        return checked_files(self.uri, files)

    def target(self, file: RemoteFile) -> HttpTarget:
        try:
            params = {"Bucket": self.bucket, "Key": file.key}
            if file.version:  # every ranged GET reads the version that was listed
                params["VersionId"] = file.version
            url = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGN_SECONDS)
        except (BotoCoreError, ClientError) as exc:
            raise _source_error(self.uri, exc) from exc
        proxy = get_environ_proxies(str(url)).get(urlsplit(str(url)).scheme)
        return HttpTarget(url=str(url), ca_file=self._ca_file, proxy=proxy, ca_setting="AWS_CA_BUNDLE")

    async def close(self) -> None:
        self._client.close()

    def _list(self) -> list[RemoteFile]:
        try:
            below = self._list_below(f"{self.prefix}/" if self.prefix else "")
            if below or not self.prefix:
                return self._with_heads(below)
            head = self._head(self.prefix)
        except (BotoCoreError, ClientError) as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise SourceError(f"no objects at {self.uri}", permanent=True) from exc
            raise _source_error(self.uri, exc) from exc
        name = self.prefix.rsplit("/", 1)[-1]
        file = RemoteFile(path=name, size=int(head["ContentLength"]), etag=head.get("ETag"), key=self.prefix)
        return [_pinned(file, head)]

    def _head(self, key: str) -> dict[str, Any]:
        head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        return head

    def _with_heads(self, files: list[RemoteFile]) -> list[RemoteFile]:
        """HEAD every object (in parallel) for its VersionId and full-object checksum.

        A listing carries neither; one HEAD per object is the price of pinning what was fetched.
        """
        if not files:
            return files
        with ThreadPoolExecutor(max_workers=min(16, len(files)), thread_name_prefix="s3-head") as pool:
            heads = list(pool.map(lambda f: self._head(f.key), files))
        return [_pinned(f, h) if h.get("ETag") == f.etag else f for f, h in zip(files, heads, strict=True)]

    def _list_below(self, prefix: str) -> list[RemoteFile]:
        files = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") and obj["Size"] == 0:
                    continue  # a "directory marker" some tools create
                files.append(
                    RemoteFile(path=key[len(prefix) :], size=int(obj["Size"]), etag=obj.get("ETag"), key=key)
                )
        return files


_CHECKSUM_FIELDS = (
    ("ChecksumSHA256", "sha256"),
    ("ChecksumCRC64NVME", "crc64nvme"),
    ("ChecksumCRC32C", "crc32c"),
    ("ChecksumSHA1", "sha1"),
    ("ChecksumCRC32", "crc32"),
)


def s3_checksum(head: dict[str, Any]) -> str | None:
    """The object's full-object checksum from a HEAD with ChecksumMode=ENABLED, strongest first.

    A composite one (``<b64>-<parts>``, a checksum of part checksums from a multipart upload) is
    skipped: checking it needs the part boundaries, which the listing does not give. So is any
    checksum of a multipart object (ETag ``<md5>-<parts>``) not marked ``FULL_OBJECT``, except
    CRC64NVME, which S3 only keeps whole: stores disagree on what they return there.
    """
    kind = head.get("ChecksumType")
    if kind == "COMPOSITE":
        return None
    multipart = "-" in str(head.get("ETag") or "").strip('"')
    for field, algorithm in _CHECKSUM_FIELDS:
        value = head.get(field)
        if multipart and kind != "FULL_OBJECT" and algorithm != "crc64nvme":
            continue
        if isinstance(value, str) and "-" not in value:
            parsed = checksums.from_base64(algorithm, value)
            if parsed and checksums.supported(parsed):
                return parsed
    return None


def _pinned(file: RemoteFile, head: dict[str, Any]) -> RemoteFile:
    version = head.get("VersionId")
    version = version if isinstance(version, str) and version != "null" else None
    return dataclasses.replace(file, checksum=s3_checksum(head), version=version)


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _source_error(uri: str, exc: Exception) -> SourceError:
    if isinstance(exc, NoCredentialsError):
        return SourceError(f"{uri}: no AWS credentials found (standard chain)", permanent=True)
    if isinstance(exc, SSLError):
        return SourceError(
            f"{uri}: TLS certificate of the S3 endpoint not trusted; set AWS_CA_BUNDLE to its CA: {exc}",
            permanent=True,
        )
    code = _code(exc)
    permanent = code in _PERMANENT_CODES
    return SourceError(f"{uri}: {exc}", permanent=permanent)


def upload_tree(bucket: str, prefix: str, files: list[tuple[str, str]], env: dict[str, str]) -> None:
    """Create ``bucket`` and upload ``(local path, relative key)`` pairs below ``prefix`` (the demo's
    seeding step: it runs here so that boto3 stays behind this one module)."""
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=bucket)
    for local, rel in files:
        client.upload_file(local, bucket, f"{prefix}/{rel}")
