"""Output storage on any S3-compatible endpoint (AWS, MinIO, R2, moto) through boto3.

Keys derive from the job id: the input image at `videos/{job_id}/input.png` (for an extension, the source's last
frame it continued from), each run's outputs under its attempt (`videos/{job_id}/{attempt}/video.mp4`; an image
job's `{attempt}/image.png`), so a stale run (one whose job was requeued while it
still ran) can never overwrite the outputs of the run that replaced it, and never writes beside another job's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import StorageUnavailable
from shared.settings import S3Settings

CONTENT_TYPES = {"video": "video/mp4", "thumbnail": "image/webp", "spritesheet": "image/jpeg", "image": "image/png"}
FILE_NAMES = {"video": "video.mp4", "thumbnail": "thumbnail.webp", "spritesheet": "spritesheet.jpg", "image": "input.png"}
# An output named like an input: an image job's PNG is its `image` variant, beside (not over) an input image.
OUTPUT_FILE_NAMES = {**FILE_NAMES, "image": "image.png"}


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

    def upload_file(self, path: Path, key: str, content_type: str) -> None:
        """Uploads with retries and backoff; raises StorageUnavailable once attempts are spent."""
        attempts = self.settings.upload_attempts
        for attempt in range(1, attempts + 1):
            try:
                self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type})
                return
            except (BotoCoreError, ClientError, OSError) as exc:
                if attempt == attempts:
                    raise StorageUnavailable(f"upload of {key} failed after {attempts} attempts: {exc}") from exc
                time.sleep(self.settings.upload_backoff_s * 2 ** (attempt - 1))

    @contextlib.contextmanager
    def _reading(self, key: str, doing: str) -> Iterator[None]:
        """Maps the store's errors: KeyError(key) for an absent object, StorageUnavailable for the rest."""
        try:
            yield
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from exc
            raise StorageUnavailable(f"could not {doing}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"could not {doing}: {exc}") from exc

    def put_bytes(self, data: bytes, key: str, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"could not store {key}: {exc}") from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"could not read {key}: {exc}") from exc

    def download(self, key: str, path: Path) -> None:
        """Writes the object to `path`; raises KeyError if it is absent (deleted), StorageUnavailable if unreachable."""
        with self._reading(key, f"read {key}"):
            self.client.download_file(self.bucket, key, str(path))

    def copy(self, source_key: str, key: str) -> None:
        """Copies an object inside the bucket (the store copies it; no bytes pass through here); raises KeyError if
        the source is absent."""
        with self._reading(source_key, f"copy {source_key} to {key}"):
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key})

    def open_stream(self, key: str) -> tuple[Iterator[bytes], int | None]:
        """Returns a chunk iterator and the object's length; raises KeyError if absent."""
        with self._reading(key, f"read {key}"):
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        body = obj["Body"]
        return body.iter_chunks(chunk_size=256 * 1024), obj.get("ContentLength")

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        return self.client.generate_presigned_url(  # type: ignore[no-any-return]
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=expires_s or self.settings.presign_expiry_s,
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                deleted += len(keys)
        return deleted

    def list_keys(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [o["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix) for o in page.get("Contents", [])]
