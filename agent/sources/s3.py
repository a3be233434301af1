"""S3 source (the only product module that imports boto3): list, HEAD and presign; bytes go over HTTP.

Endpoint, region and credentials come from boto3's standard chain (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, IRSA, instance profile, ...), so any S3-compatible store works. boto3 is
CPU-heavy per byte (MEASURED.md), so it never carries the data: each ranged GET goes to a
presigned URL through the shared lean data path.
"""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from agent.sources.base import HttpTarget, RemoteFile, SourceError, checked_files
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

    def __init__(self, ref: ModelRef) -> None:
        self.uri = ref.uri
        self.bucket = ref.authority
        self.prefix = ref.path
        # Path-style: works with every S3-compatible store and with nginx-as-origin in the bench.
        config = Config(retries={"mode": "standard", "max_attempts": 4}, s3={"addressing_style": "path"})
        self._client: Any = boto3.session.Session().client("s3", config=config)

    async def list_files(self) -> list[RemoteFile]:
        files = await asyncio.to_thread(self._list)
        return checked_files(self.uri, files)

    def target(self, file: RemoteFile) -> HttpTarget:
        try:
            url = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": file.key}, ExpiresIn=PRESIGN_SECONDS
            )
        except (BotoCoreError, ClientError) as exc:
            raise _source_error(self.uri, exc) from exc
        return HttpTarget(url=str(url))

    async def close(self) -> None:
        self._client.close()

    def _list(self) -> list[RemoteFile]:
        try:
            below = self._list_below(f"{self.prefix}/" if self.prefix else "")
            if below or not self.prefix:
                return below
            head = self._client.head_object(Bucket=self.bucket, Key=self.prefix)
        except (BotoCoreError, ClientError) as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise SourceError(f"no objects at {self.uri}", permanent=True) from exc
            raise _source_error(self.uri, exc) from exc
        name = self.prefix.rsplit("/", 1)[-1]
        return [
            RemoteFile(path=name, size=int(head["ContentLength"]), etag=head.get("ETag"), key=self.prefix)
        ]

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


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _source_error(uri: str, exc: Exception) -> SourceError:
    if isinstance(exc, NoCredentialsError):
        return SourceError(f"{uri}: no AWS credentials found (standard chain)", permanent=True)
    code = _code(exc)
    permanent = code in _PERMANENT_CODES
    return SourceError(f"{uri}: {exc}", permanent=permanent)
