"""Output storage on any S3-compatible endpoint (AWS, MinIO, R2, moto) through boto3.

Keys derive from the job id: the input image at `videos/{job_id}/input.png` (for an extension, the source's last
frame it continued from), each run's outputs under its attempt (`videos/{job_id}/{attempt}/video.mp4`; an image
job's `{attempt}/image.png`), so a stale run (one whose job was requeued while it
still ran) can never overwrite the outputs of the run that replaced it, and never writes beside another job's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

from shared.errors import StorageUnavailable
from shared.settings import S3Settings

T = TypeVar("T")
log = logging.getLogger("wanq.storage")

CONTENT_TYPES = {
    "video": "video/mp4",
    "thumbnail": "image/webp",
    "spritesheet": "image/jpeg",
    "image": "image/png",
    "preview": "video/mp4",
    "last_frame": "image/png",
}
FILE_NAMES = {
    "video": "video.mp4",
    "thumbnail": "thumbnail.webp",
    "spritesheet": "spritesheet.jpg",
    "image": "input.png",
    "preview": "preview.mp4",
}
# S3's answers that a later try may not get: throttling (SlowDown and its AWS-wide names) and a request that timed out.
RETRYABLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"})
# An output named like an input: an image job's PNG is its `image` variant, beside (not over) an input image.
# `last_frame`: an upscaled video's last generated frame (before post-processing), what an extension continues from;
# kept for the worker, not a downloadable variant.
OUTPUT_FILE_NAMES = {**FILE_NAMES, "image": "image.png", "last_frame": "last_frame.png"}


class Storage:
    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url or None,
            region_name=settings.region or None,
            config=Config(
                # SigV4 everywhere: presigned URLs then carry a signed X-Amz-Expires of at most 7 days, and R2 and
                # newer AWS regions accept nothing else (botocore may pick SigV2 for a custom endpoint).
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"} if settings.endpoint_url else None,
            ),
        )

    def key(self, job_id: str, variant: str) -> str:
        """Where a job's input (`image`) is kept."""
        return f"{self.settings.key_prefix}{job_id}/{FILE_NAMES[variant]}"

    def output_key(self, job_id: str, attempt: int, variant: str) -> str:
        """Where run `attempt` of a job stores an output; the job record's `outputs` name the winning run's."""
        return f"{self.attempt_prefix(job_id, attempt)}{OUTPUT_FILE_NAMES[variant]}"

    def job_prefix(self, job_id: str) -> str:
        return f"{self.settings.key_prefix}{job_id}/"

    def attempt_prefix(self, job_id: str, attempt: int) -> str:
        return f"{self.job_prefix(job_id)}{attempt}/"

    @property
    def deployment_key(self) -> str:
        """The bucket's half of the deployment marker (shared/deployment.py): beside the key prefix, not under it,
        where neither the lifecycle rule nor a sweep reaches."""
        return f"{self.settings.key_prefix.rstrip('/') or 'wanq'}.deployment"

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.settings.region and self.settings.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
            try:
                self.client.create_bucket(**kwargs)
            except ClientError as exc:
                # Another process (`wanq api --workers N`, replicas) created it meanwhile.
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def ensure_lifecycle(self, retention_s: int) -> bool:
        """Expires objects under the key prefix a day after the retention; False where not permitted."""
        days = max(1, -(-retention_s // 86400) + 1)
        try:
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket,
                LifecycleConfiguration={
                    "Rules": [
                        {
                            "ID": "wanq-retention",
                            "Status": "Enabled",
                            "Filter": {"Prefix": self.settings.key_prefix},
                            "Expiration": {"Days": days},
                        }
                    ]
                },
            )
            return True
        except (BotoCoreError, ClientError):
            return False

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def _retrying(self, call: Callable[[], T], doing: str, *, missing: str | None = None) -> T:
        """Runs one S3 call with the bounded retry every call shares: a refused or dropped connection, a 5xx, a
        SlowDown or an upload that failed is tried again after a doubling backoff, up to `upload_attempts` tries,
        then raises StorageUnavailable. A refusal that retrying cannot change (access denied, no such bucket)
        raises it at once; with `missing` (the key read), an absent object raises KeyError(missing). Messages
        name the key and S3's answer, never a local path (boto3's own messages name the file uploaded)."""
        attempts = self.settings.upload_attempts
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                raise  # this machine's file, not S3: no retry changes it
            except (NoCredentialsError, ParamValidationError) as exc:
                raise StorageUnavailable(f"could not {doing}: {_describe(exc)}") from exc  # configuration, not weather
            except (BotoCoreError, ClientError, Boto3Error, OSError) as exc:
                error = _client_error(exc)
                if missing is not None and error is not None and _error_code(error) in ("NoSuchKey", "404"):
                    raise KeyError(missing) from exc
                if error is not None and not _retryable(error):
                    raise StorageUnavailable(f"could not {doing}: {_describe(exc)}") from exc
                if attempt == attempts:
                    raise StorageUnavailable(f"could not {doing} after {attempts} attempts: {_describe(exc)}") from exc
                log.warning("S3: could not %s (try %d of %d): %s", doing, attempt, attempts, _describe(exc))
                time.sleep(self.settings.upload_backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable: upload_attempts >= 1")

    def upload_file(self, path: Path, key: str, content_type: str) -> None:
        """Uploads with retries and backoff; raises StorageUnavailable once attempts are spent."""
        self._retrying(
            lambda: self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}),
            f"store {key}",
        )

    def put_bytes(self, data: bytes, key: str, content_type: str) -> None:
        self._retrying(
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type), f"store {key}"
        )

    def exists(self, key: str) -> bool:
        try:
            self._retrying(lambda: self.client.head_object(Bucket=self.bucket, Key=key), f"read {key}", missing=key)
        except KeyError:
            return False
        return True

    def get_bytes(self, key: str) -> bytes:
        return self._retrying(lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(), f"read {key}")

    def download(self, key: str, path: Path) -> None:
        """Writes the object to `path`; raises KeyError if it is absent (deleted), StorageUnavailable if unreachable."""
        self._retrying(lambda: self.client.download_file(self.bucket, key, str(path)), f"read {key}", missing=key)

    def copy(self, source_key: str, key: str) -> None:
        """Copies an object inside the bucket (the store copies it; no bytes pass through here); raises KeyError if
        the source is absent."""
        self._retrying(
            lambda: self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key}),
            f"copy {source_key} to {key}",
            missing=source_key,
        )

    def open_stream(self, key: str) -> tuple[Iterator[bytes], int | None]:
        """Returns a chunk iterator and the object's length; raises KeyError if absent."""
        obj = self._retrying(lambda: self.client.get_object(Bucket=self.bucket, Key=key), f"read {key}", missing=key)
        body = obj["Body"]
        return body.iter_chunks(chunk_size=256 * 1024), obj.get("ContentLength")

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        return self.client.generate_presigned_url(  # type: ignore[no-any-return]
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=expires_s or self.settings.presign_expiry_s,
        )

    def delete(self, key: str) -> None:
        self._retrying(lambda: self.client.delete_object(Bucket=self.bucket, Key=key), f"delete {key}")

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            self._delete_batch([{"Key": k} for k in keys[start : start + 1000]], prefix)
        return len(keys)

    def _delete_batch(self, batch: list[dict[str, str]], prefix: str) -> None:
        self._retrying(
            lambda: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch}), f"delete under {prefix}"
        )

    def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        """The objects under `prefix` as S3 lists them (Key, LastModified, Size...)."""

        def listing() -> list[dict[str, Any]]:
            paginator = self.client.get_paginator("list_objects_v2")
            return [o for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix) for o in page.get("Contents", [])]

        return self._retrying(listing, f"list {prefix}")

    def list_keys(self, prefix: str) -> list[str]:
        return [o["Key"] for o in self.list_objects(prefix)]


def _client_error(exc: BaseException) -> ClientError | None:
    """S3's answer behind an error: the error itself, or the one boto3's transfer wrapped (S3UploadFailedError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _retryable(error: ClientError) -> bool:
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return status >= 500 or status == 429 or _error_code(error) in RETRYABLE_CODES


def _describe(exc: BaseException) -> str:
    """What S3 (or the connection) said, without the local file names boto3 and OSError put in their messages."""
    error = _client_error(exc)
    if error is not None:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{_error_code(error) or 'error'} (HTTP {status})"
    if isinstance(exc, BotoCoreError):
        return str(exc)  # connection errors: the endpoint's URL, no local path
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
