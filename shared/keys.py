"""Every Redis key and channel wanq writes, named in one place (the prefix is `WANQ_REDIS_KEY_PREFIX`).

Scripts get every key they touch from here, in KEYS; none builds a key name itself. `KEY_MAP` below is
the table docs/ARCHITECTURE.md shows. With a hash-tagged prefix (`WANQ_REDIS_KEY_PREFIX={wanq}`) every
key falls in one Redis Cluster slot, which multi-key scripts need there.

Two names are not wanq's own: Celery's queue per model (a list named `wanq.<model>`, what KEDA reads)
and kombu's hash of delivered-but-unacknowledged messages (`unacked`); the reconciler reads both.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.queue import queue_name

KEY_MAP: list[tuple[str, str, str]] = [
    # (pattern, type, what it holds)
    ("job:{id}", "string", "the job record, JSON (changed only by the state machine's transitions)"),
    ("events:{id}", "channel", "pub/sub: every new state of the job, as JSON"),
    ("jobs:{tenant}", "zset", "the tenant's job ids by creation time (listing)"),
    ("alljobs", "zset", "every job id by creation time (admin listing)"),
    ("queued:{model}", "zset", "queued jobs of the model by creation time"),
    ("running", "zset", "in_progress jobs by start time (upkeep watches their workers)"),
    ("expiring", "zset", "completed jobs by expires_at (their outputs are deleted then)"),
    ("finished:{model}", "hash", "status -> number of jobs that ended so (metrics)"),
    ("durations:{model}", "list", "recent run times in seconds (start estimates)"),
    ("runtimes:{model}", "hash", "video tokens -> the latest run's seconds before, per and after its steps (time left)"),
    ("worker:{worker}", "string", "a live worker's heartbeat, JSON, expiring"),
    ("workers:{model}", "zset", "the model's workers by last heartbeat"),
    ("pending:{model}:{tenant}", "zset", "the tenant's jobs waiting for dispatch, by creation time"),
    ("ring:{model}", "zset", "tenants with waiting jobs -> their pass (stride scheduling)"),
    ("passes:{model}", "hash", "pass of tenants that left the ring"),
    ("vtime:{model}", "string", "virtual time: the pass of the latest dispatch"),
    ("dispatched:{model}", "zset", "jobs sent to the Celery queue and not started, in dispatch order"),
    ("dseq:{model}", "string", "counter for that order"),
    ("dispatching:{model}", "hash", "job -> time: taken for dispatch, message not yet confirmed sent (journal)"),
    ("active:{tenant}", "set", "the tenant's dispatched jobs that have not ended (max_running_jobs)"),
    ("tenants", "set", "every tenant that ever submitted"),
    ("dispatch:wake", "channel", "pub/sub: a job was submitted or put back"),
    ("job-events", "stream", "webhook events written by the transitions, read by webhook delivery"),
    ("webhook-endpoint:{tenant}", "string", "the tenant's default webhook endpoint, JSON"),
    ("webhook-secret:{tenant}", "string", "signing secrets, JSON"),
    ("webhook-delivery:{id}", "string", "one delivery with its attempts, JSON"),
    ("webhook-due", "zset", "pending delivery -> time of its next attempt"),
    ("webhook-deliveries:{job}", "zset", "the job's deliveries by creation time"),
    ("webhook-gone:{job}", "set", "the job's webhook URLs that answered 410"),
    ("webhook-progress:{job}", "string", "present while the job's progress events are throttled"),
    ("key:{sha256}", "string", "an API key's record (the key itself is never stored)"),
    ("keys", "set", "every API key id"),
    ("idem:{tenant}:{sha256}", "string", "an Idempotency-Key's request fingerprint and job"),
    ("rpm/...", "strings", "requests-per-minute windows (the `limits` library's keys under this prefix)"),
    ("upkeep:lock", "string", "held by the process doing upkeep"),
    ("deployment", "string", "the deployment marker, written once (its loss means Redis lost its data: shared/deployment.py)"),
    ("lora:{owner}:{name}", "string", "a LoRA's record, JSON; owner: the tenant, or `_shared` for LoRAs published to all"),
    ("loras:{owner}", "zset", "the owner's LoRA names by creation time (listing)"),
]

BROKER_UNACKED = "unacked"
"""kombu's hash of messages delivered to a consumer and not yet acknowledged (its default name)."""


@dataclass(frozen=True)
class Keys:
    prefix: str = "wanq"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # Jobs
    def job(self, job_id: str) -> str:
        return self._k("job", job_id)

    def events(self, job_id: str) -> str:
        return self._k("events", job_id)

    def tenant_jobs(self, tenant: str) -> str:
        return self._k("jobs", tenant)

    @property
    def all_jobs(self) -> str:
        return self._k("alljobs")

    def queued(self, model: str) -> str:
        return self._k("queued", model)

    @property
    def running(self) -> str:
        return self._k("running")

    @property
    def expiring(self) -> str:
        return self._k("expiring")

    def finished(self, model: str) -> str:
        return self._k("finished", model)

    def durations(self, model: str) -> str:
        return self._k("durations", model)

    def runtimes(self, model: str) -> str:
        return self._k("runtimes", model)

    # Workers
    def worker(self, worker_id: str) -> str:
        return self._k("worker", worker_id)

    def workers(self, model: str) -> str:
        return self._k("workers", model)

    # Fair dispatch
    def pending(self, model: str, tenant: str) -> str:
        return self._k("pending", model, tenant)

    def ring(self, model: str) -> str:
        return self._k("ring", model)

    def passes(self, model: str) -> str:
        return self._k("passes", model)

    def vtime(self, model: str) -> str:
        return self._k("vtime", model)

    def dispatched(self, model: str) -> str:
        return self._k("dispatched", model)

    def dseq(self, model: str) -> str:
        return self._k("dseq", model)

    def journal(self, model: str) -> str:
        return self._k("dispatching", model)

    def active(self, tenant: str) -> str:
        return self._k("active", tenant)

    @property
    def tenants(self) -> str:
        return self._k("tenants")

    @property
    def wake(self) -> str:
        return self._k("dispatch", "wake")

    @staticmethod
    def broker_queue(model: str) -> str:
        return queue_name(model)

    # Webhooks
    @property
    def job_events(self) -> str:
        return self._k("job-events")

    def webhook_endpoint(self, tenant: str) -> str:
        return self._k("webhook-endpoint", tenant)

    def webhook_secret(self, tenant: str) -> str:
        return self._k("webhook-secret", tenant)

    def webhook_delivery(self, delivery_id: str) -> str:
        return self._k("webhook-delivery", delivery_id)

    @property
    def webhook_due(self) -> str:
        return self._k("webhook-due")

    def webhook_deliveries(self, job_id: str) -> str:
        return self._k("webhook-deliveries", job_id)

    def webhook_gone(self, job_id: str) -> str:
        return self._k("webhook-gone", job_id)

    def webhook_progress(self, job_id: str) -> str:
        return self._k("webhook-progress", job_id)

    # API keys, idempotency, rate limits, upkeep
    def api_key(self, digest: str) -> str:
        return self._k("key", digest)

    @property
    def api_keys(self) -> str:
        return self._k("keys")

    def idempotency(self, tenant: str, digest: str) -> str:
        return self._k("idem", tenant, digest)

    @property
    def rate_limits(self) -> str:
        return self._k("rpm")

    @property
    def upkeep_lock(self) -> str:
        return self._k("upkeep", "lock")

    @property
    def deployment(self) -> str:
        return self._k("deployment")

    # LoRA library (shared/loras.py)
    def lora(self, owner: str, name: str) -> str:
        return self._k("lora", owner, name)

    def loras(self, owner: str) -> str:
        return self._k("loras", owner)


def text(value: object) -> str:
    """A Redis reply item as str (clients are built without decode_responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def key_table() -> str:
    """KEY_MAP as a markdown table (docs/ARCHITECTURE.md's key map is generated from it)."""
    rows = ["| key (after the prefix `wanq:`) | type | holds |", "|---|---|---|"]
    rows += [f"| `{pattern}` | {kind} | {what} |" for pattern, kind, what in KEY_MAP]
    rows.append("| `wanq.<model>` (Celery's, unprefixed) | list | the model's Celery queue (what KEDA reads) |")
    rows.append(f"| `{BROKER_UNACKED}` (kombu's, unprefixed) | hash | messages delivered to a worker, not yet acknowledged |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(key_table())
