"""The deployment marker (shared/deployment.py) and upkeep's orphan sweep (api/daemons/upkeep.py), against a
redis-server and a moto S3 server of their own: a first start writes the marker; an emptied Redis is told apart
from a first start and stops upkeep; stored objects no record names are deleted past the grace period, an input
image stored before its job's record included."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
import redis

from api.daemons.upkeep import Upkeep
from shared.deployment import Deployment
from shared.fairqueue import FairQueue
from shared.keys import Keys
from shared.lora_files import LoraFileInfo
from shared.loras import LoraRecord, LoraStore, storage_key
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore
from tests.records import job_record, store_job
from wanq.stack import Stack

MODEL = "tiny-t2v-a14b"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = Stack(tmp_path_factory.mktemp("moto"))
    try:
        yield stack.start_s3()
    finally:
        stack.stop()


def upkeep_of(client: redis.Redis, moto: str, **maintenance: object) -> Upkeep:
    """Upkeep over a fresh key prefix and a fresh bucket: a deployment of its own."""
    url = client.connection_pool.connection_kwargs
    prefix = f"o{uuid.uuid4().hex[:8]}"
    settings = Settings(
        models=[MODEL],
        redis={"url": f"redis://{url['host']}:{url['port']}/0", "key_prefix": prefix},
        s3={"endpoint_url": moto, "bucket": prefix},
        maintenance=maintenance,
    )
    storage = Storage(settings.s3)
    storage.ensure_bucket()
    store = JobStore(client, keys=Keys(prefix))
    return Upkeep(settings, store, storage, FairQueue(store, settings.quotas, [MODEL]), lambda job, model: None)


def test_a_first_start_writes_the_marker_and_an_emptied_redis_is_told_apart(
    own_redis: redis.Redis, moto: str, caplog: pytest.LogCaptureFixture
) -> None:
    upkeep = upkeep_of(own_redis, moto)
    keys, storage = upkeep.store.keys, upkeep.storage
    assert upkeep.deployment.problem() is None  # a first start: both halves written
    assert own_redis.exists(keys.deployment) and storage.exists(storage.deployment_key)

    own_redis.delete(keys.deployment)  # what a Redis restarted without persistence comes back without
    again = Deployment(own_redis, keys, storage)  # a process started after the loss
    with caplog.at_level(logging.CRITICAL, logger="wanq.deployment"):
        assert again.problem() == Deployment.LOST
        assert again.problem() == Deployment.LOST
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "WANQ_MAINTENANCE_FRESH_START=true" in critical[0].getMessage()  # once, not per look
    assert not own_redis.exists(keys.deployment)  # nothing written over the loss

    # Upkeep does nothing meanwhile: to its sweep, every stored object would look orphaned.
    stray = storage.key(f"video_{uuid.uuid4().hex}", "image")
    storage.put_bytes(b"png", stray, "image/png")
    upkeep.settings.maintenance.orphan_grace_s = 0
    upkeep.deployment = again
    assert upkeep.run_once() == []
    assert storage.exists(stray)

    # A deliberate fresh start writes a new marker.
    assert Deployment(own_redis, keys, storage, fresh_start=True).problem() is None
    assert own_redis.exists(keys.deployment) and again.problem() is None


def test_orphans_under_the_job_and_lora_prefixes_are_swept_past_the_grace_period(own_redis: redis.Redis, moto: str) -> None:
    upkeep = upkeep_of(own_redis, moto, orphan_grace_s=3600)
    storage, settings = upkeep.storage, upkeep.settings
    assert upkeep.deployment.problem() is None

    # A job's input image stored before its record, which a crash between the two never wrote (item 10).
    crashed = f"video_{uuid.uuid4().hex}"
    storage.put_bytes(b"png", storage.key(crashed, "image"), "image/png")
    # A job that exists: its input and its outputs stay.
    record = job_record(MODEL, "t")
    store_job(upkeep.store, record)
    kept = [storage.key(record.id, "image"), storage.output_key(record.id, 1, "video")]
    for key in kept:
        storage.put_bytes(b"data", key, "image/png")
    # Something under the prefix that is no job's: not wanq's to judge.
    foreign = f"{settings.s3.key_prefix}notes/readme.txt"
    storage.put_bytes(b"hi", foreign, "text/plain")
    # A LoRA file whose record is gone, and one whose record is there.
    lost_lora = storage_key(settings.loras, "t", "lora_lost")
    storage.put_bytes(b"st", lost_lora, "application/octet-stream")
    kept_lora = storage_key(settings.loras, "t", "lora_kept")
    storage.put_bytes(b"st", kept_lora, "application/octet-stream")
    assert LoraStore(own_redis, upkeep.store.keys).create(_lora("kept", kept_lora))

    assert upkeep.sweep_orphans() == []  # younger than the grace period: a create may be on its way
    assert storage.exists(storage.key(crashed, "image"))

    settings.maintenance.orphan_grace_s = 0
    assert sorted(upkeep.sweep_orphans()) == sorted([storage.key(crashed, "image"), lost_lora])
    assert not storage.exists(storage.key(crashed, "image")) and not storage.exists(lost_lora)
    assert all(storage.exists(key) for key in [*kept, kept_lora, foreign])
    assert storage.exists(storage.deployment_key)  # beside the prefix, out of the sweep's reach


def _lora(name: str, key: str) -> LoraRecord:
    info = LoraFileInfo(format="diffusers", rank=4, modules=["attn1.to_q"], blocks=[0], num_modules=1, scale=1.0, dtype="F32")
    return LoraRecord(
        id=f"lora_{name}", name=name, owner="t", model=MODEL, size_bytes=2, sha256="0" * 64, storage_key=key, file=info
    )
