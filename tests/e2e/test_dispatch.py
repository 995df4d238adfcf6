"""The dispatcher: jobs wait in per-tenant queues until a dispatcher hands them to a model's workers.

Jobs survive having no dispatcher; a job canceled or deleted while it waits never starts; any number
of dispatchers (standalone or inside API processes) send each job once; a tenant's running cap holds
across models.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from shared.fairqueue import FairQueue
from shared.settings import Settings
from shared.store import JobStore
from tests.conftest import TINY, wait_for_status
from tests.tenants import HEAVY, LIGHT, ONE_AT_A_TIME, SMALL, TENANT_QUOTAS, TINY_JOB, client, make_key
from wanq.stack import Managed, Stack, wait_until

MODEL = "tiny-t2v-a14b"


def _dispatchers(stack: Stack) -> list[Managed]:
    return [p for p in stack.processes if p.name.startswith("dispatcher") and p.alive()]


@pytest.fixture
def no_dispatcher(stack: Stack, api: httpx.Client) -> Iterator[None]:
    """Stops the session's dispatcher once earlier jobs are done; afterwards exactly one runs again."""
    for model in TINY:
        wait_idle(api, model)
    for managed in _dispatchers(stack):
        managed.stop()
    try:
        yield
    finally:
        running = _dispatchers(stack)
        if not running:
            stack.start_dispatcher()
        for extra in running[1:]:
            extra.stop()


def wait_idle(api: httpx.Client, model: str, timeout: float = 120) -> None:
    """Until no job of `model` waits, sits in its worker queue or runs (earlier tests leave some)."""

    def idle() -> bool:
        depth = {q["model"]: q for q in api.get("/v1/admin/queues").json()["data"]}[model]
        return depth["waiting"] == depth["dispatched"] == depth["running"] == 0

    wait_until(idle, timeout, f"{model} to have no queued or running job", interval=0.2)


def _dispatched_ids(stack: Stack) -> Counter[str]:
    """Job ids of every "dispatched" log line of every process (dispatchers and APIs)."""
    counts: Counter[str] = Counter()
    for path in (stack.workdir / "logs").glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"msg": "dispatched"' in line:
                counts[json.loads(line)["job_id"]] += 1
    return counts


def test_jobs_wait_for_a_dispatcher_and_none_is_lost(
    stack: Stack, api: httpx.Client, store: JobStore, no_dispatcher: None
) -> None:
    job = {"model": MODEL, **TINY_JOB}
    limit = int(TENANT_QUOTAS[SMALL]["max_queued_jobs"])
    with client(stack, make_key(api, SMALL)) as tenant:
        # 1. With no dispatcher, jobs wait in the tenant's queue, up to its quota.
        first = [tenant.post("/v1/videos", json={**job, "prompt": f"wait {n}"}) for n in range(limit)]
        assert [r.status_code for r in first] == [202] * limit
        ids = [r.json()["id"] for r in first]
        assert [r.json()["queue_position"] for r in first] == [0, 1]
        full = tenant.post("/v1/videos", json={**job, "prompt": "one too many"})
        assert full.status_code == 429, full.text
        assert (
            full.json()["error"]["param"] == "max_queued_jobs" and f"max_queued_jobs = {limit}" in full.json()["error"]["message"]
        )
        assert int(full.headers["retry-after"]) >= 1

        depth = {q["model"]: q for q in api.get("/v1/admin/queues").json()["data"]}[MODEL]
        assert depth["tenants"][SMALL]["waiting"] == limit and depth["tenants"][SMALL]["dispatched"] == 0

        # 2. Canceled and deleted while waiting; an admin cancels another tenant's job.
        canceled = tenant.post(f"/v1/videos/{ids[0]}/cancel").json()
        assert canceled["status"] == "canceled"
        deleted = tenant.delete(f"/v1/videos/{ids[1]}")
        assert deleted.status_code == 200
        survivor = tenant.post("/v1/videos", json={**job, "prompt": "survivor"})
        by_admin = tenant.post("/v1/videos", json={**job, "prompt": "admin cancels me"})
        assert survivor.status_code == by_admin.status_code == 202  # room again
        assert api.post(f"/v1/videos/{by_admin.json()['id']}/cancel").json()["status"] == "canceled"
        time.sleep(1.0)
        assert tenant.get(f"/v1/videos/{survivor.json()['id']}").json()["status"] == "queued"  # nothing dispatches it

        # 3. A dispatcher inside a second API process takes over: the waiting job runs.
        second_api = stack.spawn("api-embedded-dispatcher", _api_args(), {"WANQ_DISPATCH_IN_API": "true"})
        try:
            video = wait_for_status(tenant, survivor.json()["id"], {"completed", "failed"})
            assert video["status"] == "completed" and video["attempts"] == 1
        finally:
            second_api.stop()
        assert '"msg": "dispatched"' in second_api.log()

        # 4. Nothing that was canceled or deleted while waiting ever started.
        for video_id in (ids[0], by_admin.json()["id"]):
            record = store.get(video_id)
            assert record is not None and record.status.value == "canceled"
            assert record.started_at is None and record.attempts == 0 and record.worker is None
        assert tenant.get(f"/v1/videos/{ids[1]}").status_code == 404
        assert _dispatched_ids(stack)[survivor.json()["id"]] == 1
        assert not {ids[0], ids[1], by_admin.json()["id"]} & set(_dispatched_ids(stack))


def _api_args() -> list[str]:
    import sys

    from wanq.stack import free_port

    return [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(free_port())]


def test_two_dispatchers_send_each_job_once(stack: Stack, api: httpx.Client, no_dispatcher: None) -> None:
    stack.start_dispatcher()
    stack.start_dispatcher()
    models = ["tiny-t2v-a14b", "tiny-ti2v-5b"]
    ids = [
        api.post("/v1/videos", json={"prompt": f"pair {n}", "model": models[n % 2], **TINY_JOB}).json()["id"] for n in range(6)
    ]
    videos = [wait_for_status(api, i, {"completed", "failed"}) for i in ids]
    assert [v["status"] for v in videos] == ["completed"] * 6
    assert [v["attempts"] for v in videos] == [1] * 6
    counts = _dispatched_ids(stack)
    assert [counts[i] for i in ids] == [1] * 6, counts


def test_running_cap_holds_across_models(stack: Stack, api: httpx.Client, store: JobStore) -> None:
    assert TENANT_QUOTAS[ONE_AT_A_TIME]["max_running_jobs"] == 1
    spec = {"size": "64x64", "num_frames": 9, "num_inference_steps": 3}
    with client(stack, make_key(api, ONE_AT_A_TIME)) as tenant:
        # Two models, two idle workers: without the cap both jobs would run at once.
        ids = [
            tenant.post("/v1/videos", json={"prompt": f"one at a time {m}", "model": m, **spec}).json()["id"]
            for m in ("tiny-t2v-a14b", "tiny-ti2v-5b", "tiny-t2v-a14b")
        ]
        assert [wait_for_status(tenant, i, {"completed", "failed"})["status"] for i in ids] == ["completed"] * 3
    records = sorted(store.get_many(ids), key=lambda r: r.started_at or 0)
    assert len(records) == 3
    for earlier, later in itertools.pairwise(records):
        assert later.started_at is not None and earlier.completed_at is not None
        assert later.started_at >= earlier.completed_at, (earlier, later)


def test_drain_cancels_a_models_queued_jobs(stack: Stack, api: httpx.Client, store: JobStore, no_dispatcher: None) -> None:
    ids = [api.post("/v1/videos", json={"prompt": f"drain {n}", "model": MODEL, **TINY_JOB}).json()["id"] for n in range(3)]
    other = api.post("/v1/videos", json={"prompt": "other model", "model": "tiny-ti2v-5b", **TINY_JOB}).json()["id"]
    assert api.post("/v1/admin/models/sora-2/drain").status_code == 404
    drained = api.post(f"/v1/admin/models/{MODEL}/drain").json()
    assert drained["canceled"] >= 3 and set(ids) <= set(drained["ids"]) and other not in drained["ids"]
    for video_id in ids:
        video = api.get(f"/v1/videos/{video_id}").json()
        assert video["status"] == "canceled" and "drained" in video["error"]["message"]
    stack.start_dispatcher()
    assert wait_for_status(api, other, {"completed", "failed"})["status"] == "completed"
    wait_idle(api, MODEL)
    for video_id in ids:
        record = store.get(video_id)
        assert record is not None and record.started_at is None and record.attempts == 0


def test_weights_share_dispatches_and_positions_predict_start_order(
    stack: Stack, api: httpx.Client, store: JobStore, no_dispatcher: None
) -> None:
    assert TENANT_QUOTAS[HEAVY]["weight"] == 2 and LIGHT not in TENANT_QUOTAS  # LIGHT has the default weight 1
    with client(stack, make_key(api, HEAVY)) as heavy, client(stack, make_key(api, LIGHT)) as light:
        jobs = {"heavy": heavy, "light": light}
        ids = {
            (who, n): c.post("/v1/videos", json={"prompt": f"{who} {n}", "model": MODEL, **TINY_JOB}).json()["id"]
            for who, c in jobs.items()
            for n in range(3)
        }
        positions = {k: jobs[k[0]].get(f"/v1/videos/{i}").json()["queue_position"] for k, i in ids.items()}
        # Passes: heavy 0, .5, 1; light 0, 1, 2 (ties by name: weight-a2 first). Equal weights would interleave.
        assert [positions[("heavy", n)] for n in range(3)] == [0, 2, 3], positions
        assert [positions[("light", n)] for n in range(3)] == [1, 4, 5], positions
        stack.start_dispatcher()
        for who, c in jobs.items():
            for n in range(3):
                assert wait_for_status(c, ids[(who, n)], {"completed", "failed"})["status"] == "completed"
    started = sorted(store.get_many(ids.values()), key=lambda r: r.started_at or 0)
    by_id = {i: k for k, i in ids.items()}
    assert [positions[by_id[r.id]] for r in started] == [0, 1, 2, 3, 4, 5]


def test_a_dispatch_cut_short_before_sending_is_sent_again(
    stack: Stack, api: httpx.Client, settings: Settings, store: JobStore, no_dispatcher: None
) -> None:
    video_id = api.post("/v1/videos", json={"prompt": "interrupted", "model": MODEL, **TINY_JOB}).json()["id"]
    # A dispatcher that dies right after taking the job: the real take, and no send.
    fairq = FairQueue(store, settings.quotas, settings.models, backlog=settings.dispatch.backlog)
    taken = fairq.take(MODEL, target=1)
    assert taken is not None and taken.job_id == video_id
    assert fairq.take(MODEL, target=1) is None  # its slot stays taken: nothing else goes meanwhile
    time.sleep(1.2)
    assert api.get(f"/v1/videos/{video_id}").json()["status"] == "queued"
    stack.start_dispatcher(extra_env={"WANQ_DISPATCH_RECOVER_AFTER_S": "1"})
    video = wait_for_status(api, video_id, {"completed", "failed"})
    assert video["status"] == "completed" and video["attempts"] == 1
    assert fairq.unsent(0) == []
