"""Hostile input beyond the field checks of test_validation.py: oversized bodies (declared and chunked),
absurd numbers in every numeric field, broken encodings, deep nesting and huge images. Each is a 4xx
whose message says what was wrong; none is a 5xx, none reaches a worker, and the API stays up.
"""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from shared.store import JobStore
from tests.conftest import png_bytes
from tests.reliability_report import record
from tests.tenants import TINY_JOB
from wanq.stack import Stack, free_port, wait_until

MODEL = "tiny-t2v-a14b"
LIMIT = 200_000  # WANQ_API_MAX_BODY_BYTES of the small-limit API below
NUMERIC = ["seconds", "num_frames", "fps", "num_inference_steps", "guidance_scale", "guidance_scale_2", "seed", "flow_shift"]
# Raw JSON tokens: json.dumps cannot write most of these, a hostile client can.
ABSURD = ["1e308", "-1e308", "1e999", "NaN", "Infinity", "-Infinity", "-1", "0", "1e-320", "18446744073709551617",
          "-99999999999999999999999999", "true", "null", '"12abc"', '"NaN"', "[]", "{}"]  # fmt: skip


REFUSED: Counter[str] = Counter()  # hostile requests answered 4xx, by kind (docs/RELIABILITY.md)


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    if REFUSED:
        record("bad_input", {"hostile_requests_refused": sum(REFUSED.values()), "hostile_by_kind": dict(REFUSED)})


@pytest.fixture(scope="module")
def small_api(stack: Stack) -> Iterator[httpx.Client]:
    """A second API process of the stack whose body limit is small enough to cross cheaply."""
    port = free_port()
    process = stack.spawn(
        f"api-small-body-{port}",
        [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(port)],
        {"WANQ_API_MAX_BODY_BYTES": str(LIMIT), "WANQ_MAINTENANCE_ENABLED": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: process.check_alive() and stack._healthy(url), 60, "the small-body API")
    try:
        with httpx.Client(base_url=url, timeout=30, headers=stack.admin_headers()) as client:
            yield client
    finally:
        process.stop()
        stack.processes.remove(process)


def _chunks(total: int, piece: bytes = b" " * 16384) -> Iterator[bytes]:
    yield b'{"prompt": "'
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)
    yield b'"}'


def _refused_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "body" and str(LIMIT) in error["message"], error
    REFUSED["oversized body"] += 1


def test_oversized_bodies_are_413_on_every_route_declared_or_chunked(small_api: httpx.Client, store: JobStore) -> None:
    before = store.queued_count(MODEL)
    big = json.dumps({"prompt": "x" * (LIMIT + 10), "model": MODEL}).encode()
    # Declared length: refused before the body is read.
    _refused_413(small_api.post("/v1/videos", content=big, headers={"content-type": "application/json"}))
    _refused_413(small_api.put("/v1/webhook_endpoint", content=big, headers={"content-type": "application/json"}))
    _refused_413(small_api.post("/v1/admin/keys", content=big, headers={"content-type": "application/json"}))
    # No declared length (chunked transfer): counted as it arrives.
    for method, path in [("POST", "/v1/videos"), ("PUT", "/v1/webhook_endpoint"), ("POST", "/v1/admin/keys")]:
        response = small_api.request(method, path, content=_chunks(LIMIT * 2), headers={"content-type": "application/json"})
        _refused_413(response)
    # A multipart upload over the limit, declared and chunked.
    upload = {"input_reference": ("a.png", b"\x89PNG" + b"\0" * (LIMIT + 1), "image/png")}
    _refused_413(small_api.post("/v1/videos", data={"prompt": "x", "model": "tiny-i2v-a14b"}, files=upload))
    boundary = "wanqboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="input_reference"; filename="a.png"\r\n\r\n'.encode()

    def multipart() -> Iterator[bytes]:
        yield head
        yield from (b"\0" * 65536 for _ in range(LIMIT // 65536 + 2))
        yield f"\r\n--{boundary}--\r\n".encode()

    chunked = small_api.post(
        "/v1/videos", content=multipart(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    _refused_413(chunked)
    # Just under the limit still works, and nothing above reached the queue.
    ok = small_api.post("/v1/videos", json={"prompt": "y" * 1000, "model": MODEL, **TINY_JOB})
    assert ok.status_code == 202, ok.text
    assert small_api.post(f"/v1/videos/{ok.json()['id']}/cancel").status_code == 200
    assert store.queued_count(MODEL) == before


@pytest.mark.parametrize("field", NUMERIC)
def test_absurd_numbers_in_every_numeric_field_are_400_naming_it(api: httpx.Client, store: JobStore, field: str) -> None:
    before = store.queued_count(MODEL)
    for token in ABSURD:
        if token == "null":
            continue  # null means "the model's default": accepted by design
        frames = "" if field == "seconds" else '"num_frames": 5, '
        body = f'{{"prompt": "x", "model": "{MODEL}", "size": "64x64", "num_inference_steps": 1, {frames}"{field}": {token}}}'
        response = api.post("/v1/videos", content=body.encode(), headers={"content-type": "application/json"})
        if response.status_code == 202:
            # A few tokens are legal values for some fields (0 guidance, seed 0, tiny floats): fine, if sane.
            video = response.json()
            legal = {("0", "guidance_scale"), ("0", "guidance_scale_2"), ("0", "seed")}
            tiny = {("1e-320", "guidance_scale"), ("1e-320", "guidance_scale_2"), ("1e-320", "seconds")}  # the shortest clip
            assert (token, field) in legal | tiny, (field, token, video)
            api.post(f"/v1/videos/{video['id']}/cancel")
            continue
        assert response.status_code == 400, (field, token, response.text)
        error = response.json()["error"]
        assert error["param"] == field and field in error["message"], (token, error)
        REFUSED["absurd number (JSON)"] += 1
    assert store.queued_count(MODEL) == before


def test_absurd_numbers_in_multipart_fields_and_query_strings(api: httpx.Client) -> None:
    for field in NUMERIC:
        for text in ("1e308", "nan", "inf", "-1", "99999999999999999999999999999", "", " ", "0x10", "½"):
            response = api.post("/v1/videos", data={"prompt": "x", "model": MODEL, field: text})
            assert response.status_code == 400, (field, text, response.text)
            assert response.json()["error"]["param"] == field, (field, text, response.text)
            REFUSED["absurd number (form)"] += 1
    for value in ("1e308", "NaN", "-1", "0", "101", "18446744073709551617", ""):
        response = api.get("/v1/videos", params={"limit": value})
        assert response.status_code == 400 and response.json()["error"]["param"] == "limit", (value, response.text)
        REFUSED["absurd number (query)"] += 1
    for params in ({"order": "sideways"}, {"after": "x" * 10_000}):
        assert api.get("/v1/videos", params=params).status_code == 400
    assert api.get("/v1/videos/video_x/content", params={"variant": "../../etc/passwd"}).status_code == 400


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"1" * 5000, "JSON"),  # an integer past Python's 4300-digit conversion limit
        (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),  # nesting past the parser's recursion limit
        (b'{"prompt": "a\\ud800b", "model": "tiny-t2v-a14b"}', "surrogate"),  # valid JSON, not valid Unicode
        (b'{"prompt": "\xff\xfe invalid utf-8"}', "JSON"),
        (b'{"prompt": "x", "prompt": 5}', "prompt"),  # duplicate key: the last one wins, and is checked
        (b"\x00" * 64, "JSON"),
    ],
    ids=["huge-int", "huge-int-field", "deep-nesting", "lone-surrogate", "invalid-utf8", "duplicate-key", "nul"],
)
def test_malformed_json_is_400_with_a_message(api: httpx.Client, body: bytes, mentions: str) -> None:
    response = api.post("/v1/videos", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert mentions in response.json()["error"]["message"], response.json()
    REFUSED["malformed JSON"] += 1


def test_invalid_utf8_in_multipart_never_breaks_anything(api: httpx.Client) -> None:
    boundary = "b0undary"

    def form(name: bytes, value: bytes) -> bytes:
        return (
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="'
            + name
            + b'"\r\n\r\n'
            + value
            + f"\r\n--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="model"\r\n\r\n'
            + MODEL.encode()
            + f"\r\n--{boundary}--\r\n".encode()
        )

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    # Undecodable bytes in a field name: an unknown field, named as received.
    bad_name = api.post("/v1/videos", content=form(b"pr\xffompt", b"x"), headers=headers)
    assert bad_name.status_code == 400 and bad_name.json()["error"]["message"], bad_name.text
    # In a value: read as Latin-1 (what Starlette does for form text that is not UTF-8), then checked like any
    # prompt: a job whose prompt is well-formed text, or a 400 naming the field. Never a 5xx.
    bad_value = api.post("/v1/videos", content=form(b"prompt", b"\xff\xfe\xc3( a fox"), headers=headers)
    assert bad_value.status_code in (202, 400), bad_value.text
    if bad_value.status_code == 202:
        video = bad_value.json()
        assert video["prompt"].endswith(" a fox") and video["prompt"].encode("utf-8")
        api.post(f"/v1/videos/{video['id']}/cancel")
    # A broken multipart body (no closing boundary, garbage headers).
    for body in (b"--b0undary\r\ngarbage\r\n\r\n", b"--b0undary\r\n" + b"X" * 10000, b"\xff" * 100):
        response = api.post("/v1/videos", content=body, headers=headers)
        assert 400 <= response.status_code < 500, response.text
        REFUSED["broken multipart/form"] += 1
    # Form-urlencoded with broken percent-escapes and bytes.
    response = api.post(
        "/v1/videos",
        content=b"prompt=%ff%fe%&model=%zz&num_frames=%00",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert 400 <= response.status_code < 500, response.text


def test_huge_and_malformed_images(api: httpx.Client) -> None:
    def post(data: bytes, name: str = "a.png", mime: str = "image/png") -> httpx.Response:
        return api.post(
            "/v1/videos",
            data={"prompt": "x", "model": "tiny-i2v-a14b", "size": "64x64"},
            files={"input_reference": (name, data, mime)},
        )

    def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
        return buf.getvalue()

    cases = {
        # Decompression bombs: small files claiming huge canvases, refused from the header.
        "png-bomb": encoded(Image.new("1", (20000, 20000)), "PNG"),
        "gif-bomb": encoded(Image.new("P", (12000, 12000)), "GIF"),
        "jpeg-header-only": encoded(Image.new("RGB", (8, 8)), "JPEG")[:200],
        "zero-bytes": b"",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>',
        "tiff": encoded(Image.new("RGB", (8, 8)), "TIFF"),  # decodable, but not an accepted format
        "random": bytes(range(256)) * 40,
        "png-garbled": png_bytes()[:40] + bytes(range(256)) * 4,
    }
    for name, data in cases.items():
        response = post(data)
        assert response.status_code in (400, 413), (name, response.text)
        assert response.json()["error"]["param"] == "input_reference", (name, response.json())
        REFUSED["hostile image"] += 1
    # A data: URL that lies about its content, and one that is not base64.
    for url in ("data:image/png;base64,////", "data:image/png;base64,%%%", "data:text/plain,hello"):
        response = api.post("/v1/videos", json={"prompt": "x", "model": "tiny-i2v-a14b", "image_url": url})
        assert response.status_code == 400, (url, response.text)
    # Extreme aspect ratios decode and are fitted, not refused (and not a crash in the worker).
    thin = api.post(
        "/v1/videos",
        data={"prompt": "thin", "model": "tiny-i2v-a14b", **{k: str(v) for k, v in TINY_JOB.items()}},
        files={"input_reference": ("thin.png", encoded(Image.new("RGB", (4000, 1), (9, 9, 9)), "PNG"), "image/png")},
    )
    assert thin.status_code == 202, thin.text
    from tests.conftest import wait_for_status

    assert wait_for_status(api, thin.json()["id"], {"completed", "failed"})["status"] == "completed"


def test_hostile_strings_in_other_routes(api: httpx.Client) -> None:
    for path in ("/v1/videos/" + "x" * 5000, "/v1/videos/%00", "/v1/videos/..%2f..%2fadmin", "/v1/videos/%ff%fe/content"):
        response = api.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert response.json()["error"]["code"] == "not_found"
    for body in ({"url": "http://[::1"}, {"url": "x" * 5000}, {"url": 5}, {"url": "http://exa mple.com/"}, {}):
        response = api.put("/v1/webhook_endpoint", json=body)
        assert response.status_code == 400, (body, response.text)
        REFUSED["hostile string"] += 1
    for body in ({"tenant": "a" * 65}, {"tenant": "../x"}, {"tenant": "ok", "name": "n" * 201}, {"tenant": ["x"]}):
        response = api.post("/v1/admin/keys", json=body)
        assert response.status_code == 400, (body, response.text)
        REFUSED["hostile string"] += 1
    # Unknown routes and methods answer in the same error shape.
    assert api.get("/v1/nothing").json()["error"]["code"] == "not_found"
    wrong_method = api.patch("/v1/videos")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
