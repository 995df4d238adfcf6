"""Fairness: one tenant's burst of 200 queued jobs does not starve another tenant's single job.

The bound (shared/fairqueue.py): a job submitted while other tenants wait starts after at most
`backlog x W + T - 1` job completions of its model. Here W = 1 live worker, backlog = 1 (the
default) and T = 2 tenants: at most 2 completions. Only those few of the 200 jobs run; the rest are
drained, and none of them starts afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from shared.store import JobStore
from tests.conftest import wait_for_status
from tests.e2e.test_dispatch import wait_idle
from tests.tenants import FAIR_A, FAIR_B, TINY_JOB, client, make_key
from wanq.stack import Stack

MODEL = "tiny-t2v-a14b"
BURST = 200
BACKLOG, WORKERS, TENANTS = 1, 1, 2
BOUND = BACKLOG * WORKERS + TENANTS - 1


def test_a_burst_of_200_does_not_starve_another_tenant(stack: Stack, api: httpx.Client, store: JobStore, artifacts: Path) -> None:
    wait_idle(api, MODEL)
    models = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    assert models[MODEL]["live_workers"] == WORKERS
    with client(stack, make_key(api, FAIR_A)) as a, client(stack, make_key(api, FAIR_B)) as b:
        burst = [a.post("/v1/videos", json={"prompt": f"burst {n}", "model": MODEL, **TINY_JOB}) for n in range(BURST)]
        assert [r.status_code for r in burst] == [202] * BURST
        a_ids = [r.json()["id"] for r in burst]
        last_position = a.get(f"/v1/videos/{a_ids[-1]}").json()["queue_position"]

        created = b.post("/v1/videos", json={"prompt": "just one", "model": MODEL, **TINY_JOB})
        assert created.status_code == 202
        b_id = created.json()["id"]
        b_position = created.json()["queue_position"]
        depth = {q["model"]: q for q in api.get("/v1/admin/queues").json()["data"]}[MODEL]
        assert depth["tenants"][FAIR_A]["waiting"] > BURST / 2, depth

        video = wait_for_status(b, b_id, {"completed", "failed"}, timeout=180)
        assert video["status"] == "completed", video

    drained = api.post(f"/v1/admin/models/{MODEL}/drain", params={"tenant": FAIR_A}).json()
    wait_idle(api, MODEL)

    b_record = store.get(b_id)
    assert b_record is not None and b_record.started_at is not None
    a_records = store.get_many(a_ids)
    # A's jobs that finished between B's submission and B's start: what B waited for.
    waited_for = [
        r for r in a_records if r.completed_at is not None and b_record.created_at < r.completed_at <= b_record.started_at
    ]
    started = [r for r in a_records if r.started_at is not None]
    result = {
        "burst": BURST,
        "bound": BOUND,
        "completions_before_b_started": len(waited_for),
        "b_queue_position_at_submit": b_position,
        "a_last_job_queue_position": last_position,
        "a_jobs_started": len(started),
        "a_jobs_drained": drained["canceled"],
        "b_wait_s": round(b_record.started_at - b_record.created_at, 3),
    }
    (artifacts / "fairness.json").write_text(json.dumps(result, indent=2))
    print(f"\nfairness: {result}")

    assert len(waited_for) <= BOUND, result
    assert b_position is not None and b_position <= BOUND, result
    assert last_position > BURST / 2, result  # A's own burst queues behind itself
    # Every A job that did not start was drained and stays unstarted.
    assert drained["canceled"] + len(started) == BURST, result
    assert all(r.status.value == "canceled" for r in a_records if r.started_at is None)
