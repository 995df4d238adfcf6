"""`n` videos per request through the real stack (POST /v1/videos with `n` / `seeds`): n ordinary jobs created in
one atomic step, with seeds seed, seed+1, ... or the given list; the answer is the first job's object with
`video_ids`. All or none at the tenant's queue limit, the same ids on an idempotent retry, and a cancel of one
leaves the others to complete.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from shared.store import JobStore
from tests.clips import SOURCE, extend, frames_of, make_video
from tests.conftest import png_bytes, wait_for_status
from tests.tenants import SMALL, TENANT_QUOTAS, TINY_JOB, client, make_key
from wanq.stack import Stack

MODEL = "tiny-t2v-a14b"


def _job_keys(store: JobStore) -> int:
    return sum(1 for _ in store.redis.scan_iter(match=store.keys.job("*"), count=1000))


def test_n_jobs_are_created_all_or_none_at_the_queue_limit(stack: Stack, api: httpx.Client, store: JobStore) -> None:
    limit = int(TENANT_QUOTAS[SMALL]["max_queued_jobs"])
    with client(stack, make_key(api, SMALL)) as tenant:
        listed = len(tenant.get("/v1/videos", params={"limit": 100}).json()["data"])
        before = _job_keys(store)
        refused = tenant.post("/v1/videos", json={"prompt": "three", "model": MODEL, **TINY_JOB, "n": limit + 1})
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["param"] == "max_queued_jobs" and f"max_queued_jobs = {limit}" in error["message"], error
        # Nothing of the request exists: no record, no entry in the tenant's list.
        assert _job_keys(store) == before
        assert len(tenant.get("/v1/videos", params={"limit": 100}).json()["data"]) == listed

        # n within the limit, as a multipart form with the seeds as repeated seeds[] fields: all n, in seed order.
        form = {"prompt": "two", "model": MODEL, **{k: str(v) for k, v in TINY_JOB.items()}, "n": "2"}
        parts = [(k, (None, v)) for k, v in form.items()] + [("seeds[]", (None, "40")), ("seeds[]", (None, "3"))]
        made = tenant.post("/v1/videos", files=parts)
        assert made.status_code == 202, made.text
        ids = made.json()["video_ids"]
        assert len(ids) == 2 and ids[0] == made.json()["id"] and made.json()["seed"] == 40
        assert [tenant.get(f"/v1/videos/{i}").json()["seed"] for i in ids] == [40, 3]
        assert _job_keys(store) == before + 2
        for video_id in ids:
            tenant.post(f"/v1/videos/{video_id}/cancel")


def test_n_and_seeds_refusals_name_the_field(api: httpx.Client, store: JobStore) -> None:
    before = _job_keys(store)
    body = {"prompt": "x", "model": MODEL, **TINY_JOB}
    cases = [
        ({"n": 5}, "n", "between 1 and 4"),
        ({"n": 0}, "n", "'n'"),
        ({"n": True}, "n", "true or false"),
        ({"n": 2, "seeds": [1, 2, 3]}, "seeds", "3 seeds for n=2"),
        ({"seeds": [1, 2, 3, 4, 5]}, "seeds", "between 1 and 4"),
        ({"n": 2, "seeds": [1, 2**32]}, "seeds", str(2**32)),
        ({"n": 2, "seeds": [1, 2], "seed": 9}, "seeds", "contradicts 'seed' 9"),
        ({"seeds": "not json"}, "seeds", "JSON list"),
        ({"seeds": []}, "seeds", "between 1 and 4"),
        # n is checked before any I/O: the image URL (refused or unreachable otherwise) is never looked at.
        ({"n": 9, "image_url": "http://127.0.0.1:9/never-fetched.png"}, "n", "between 1 and 4"),
        ({"num_inference_steps": 10**400}, "num_inference_steps", "invalid 'num_inference_steps'"),
    ]
    for extra, param, words in cases:
        answer = api.post("/v1/videos", json={**body, **extra})
        assert answer.status_code == 400, (extra, answer.text)
        error = answer.json()["error"]
        assert error["param"] == param and words in error["message"], (extra, error)
    # In a form, seeds may also be one field holding the list as JSON text.
    form = {"prompt": "x", "model": MODEL, "n": "2", "seeds": "[1, 2, 3]"}
    answer = api.post("/v1/videos", files=[(k, (None, v)) for k, v in form.items()])
    assert answer.status_code == 400 and "3 seeds for n=2" in answer.json()["error"]["message"], answer.text
    assert _job_keys(store) == before


def test_seeds_follow_in_order_with_the_same_frames_as_single_jobs_and_a_cancel_leaves_the_others(
    api: httpx.Client, tmp_path: Path
) -> None:
    body = {"prompt": "a lighthouse at dusk", "model": MODEL, **SOURCE, "seed": 2**32 - 2, "n": 3}
    headers = {"Idempotency-Key": f"n-{tmp_path.name}"}
    first = api.post("/v1/videos", json=body, headers=headers)
    assert first.status_code == 202, first.text
    ids = first.json()["video_ids"]
    canceled = api.post(f"/v1/videos/{ids[2]}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] in ("canceled", "in_progress"), canceled.text

    # A retry with the same key and body names the same jobs; nothing new is created.
    again = api.post("/v1/videos", json=body, headers=headers)
    assert again.status_code == 202 and again.headers.get("idempotent-replayed") == "true", again.text
    assert again.json()["id"] == ids[0] and again.json()["video_ids"] == ids

    done = [wait_for_status(api, i, {"completed", "failed", "canceled"}) for i in ids]
    assert [v["status"] for v in done] == ["completed", "completed", "canceled"], done
    # seed, seed+1, then wrapped within the seed range
    assert [v["seed"] for v in done] == [2**32 - 2, 2**32 - 1, 0]
    assert all("video_ids" not in v for v in done)  # each is an ordinary video

    # Job i makes exactly what one job with seed + i makes.
    single = api.post("/v1/videos", json={**body, "n": 1, "seed": 2**32 - 1})
    assert single.status_code == 202 and "video_ids" not in single.json(), single.text
    assert wait_for_status(api, single.json()["id"], {"completed", "failed"})["status"] == "completed"
    frames = {i: frames_of(api, i, tmp_path) for i in (ids[0], ids[1], single.json()["id"])}
    assert np.array_equal(frames[ids[1]], frames[single.json()["id"]])
    assert not np.array_equal(frames[ids[0]], frames[ids[1]])


def test_n_image_to_video_jobs_each_keep_their_own_image(api: httpx.Client) -> None:
    fields = {"prompt": "the square spins", "model": "tiny-i2v-a14b", "size": "64x64", "num_frames": "5", "n": "2"}
    fields |= {"num_inference_steps": "1", "seeds": ["1", "2"]}  # the field repeated, as wanq's client sends it
    made = api.post("/v1/videos", data=fields, files={"input_reference": ("red.png", png_bytes(), "image/png")})
    assert made.status_code == 202, made.text
    first, second = made.json()["video_ids"]
    assert api.get(f"/v1/videos/{second}").json()["seed"] == 2
    # Deleting the first leaves the second's stored image: it still runs to the end.
    assert api.delete(f"/v1/videos/{first}").status_code == 200
    assert wait_for_status(api, second, {"completed", "failed"})["status"] == "completed"


def test_an_extension_with_n_continues_the_source_n_times(api: httpx.Client) -> None:
    source = make_video(api)
    assert source["status"] == "completed", source
    made = extend(api, source["id"], model="tiny-ti2v-5b", num_frames=5, n=2)
    assert made.status_code == 202, made.text
    done = [wait_for_status(api, i, {"completed", "failed"}) for i in made.json()["video_ids"]]
    assert [v["status"] for v in done] == ["completed", "completed"], done
    assert [v["seed"] for v in done] == [SOURCE["seed"] + 1, SOURCE["seed"] + 2]  # the source's + 1, then + 1 more
    assert all(v["extended_from_video_id"] == source["id"] for v in done)
