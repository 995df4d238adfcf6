"""`/v1/loras` and a job's `loras` field against the live API (the session stack): uploads by file and by URL,
listing and deleting, tenant isolation and shared LoRAs, and every refusal, each a 4xx naming the problem, with
nothing stored or enqueued."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from shared.store import JobStore
from tests import tenants
from tests.lora_maker import make_lora, save_raw
from wanq.client import APIError, Client
from wanq.stack import Stack
from worker.tiny_model import build_tiny_pipeline

MODEL = "tiny-t2v-a14b"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-files")
    transformer = build_tiny_pipeline("t2v-a14b").transformer
    a = torch.randn(4, 24)
    return {
        "r4": make_lora(transformer, root / "r4.safetensors", rank=4, seed=1),
        "r8": make_lora(transformer, root / "r8.safetensors", rank=8, seed=2, blocks=[1]),
        "r2": make_lora(transformer, root / "r2.safetensors", rank=2, seed=3),
        "junk": _write(root / "junk.safetensors", b"this is not a safetensors file at all"),
        "pickle": _pickle(root / "pickle.safetensors"),
        "big-header": save_raw(
            {"transformer.blocks.0.attn1.to_q.lora_A.weight": a, "transformer.blocks.0.attn1.to_q.lora_B.weight": a.T.clone()},
            root / "big-header.safetensors",
            {"notes": "x" * 300_000},
        ),
        "too-big": save_raw({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 300_000)}, root / "big.safetensors"),
        "unprefixed": save_raw({"blocks.0.attn1.to_q.lora_A.weight": a, "blocks.0.attn1.to_q.lora_B.weight": a.T.clone()}, root / "u.safetensors"),
        "a14b-shaped": save_raw(
            {
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 5120, dtype=torch.bfloat16),
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 4, dtype=torch.bfloat16),
            },
            root / "a14b.safetensors",
        ),
        "ti2v-shaped": save_raw(
            {
                "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 3072, dtype=torch.bfloat16),
                "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(3072, 4, dtype=torch.bfloat16),
                "transformer.blocks.0.ffn.net.0.proj.lora_A.weight": torch.zeros(4, 3072, dtype=torch.bfloat16),
                "transformer.blocks.0.ffn.net.0.proj.lora_B.weight": torch.zeros(14336, 4, dtype=torch.bfloat16),
            },
            root / "ti2v.safetensors",
        ),
        "rank-32": save_raw(
            {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(32, 24), "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 32)},
            root / "r32.safetensors",
        ),
    }  # fmt: skip


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pickle(path: Path) -> Path:
    torch.save({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 24)}, path)
    return path


def upload(api: httpx.Client, path: Path, **fields: Any) -> httpx.Response:
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    with path.open("rb") as fh:
        return api.post("/v1/loras", data=data, files={"file": (path.name, fh, "application/octet-stream")})


@pytest.fixture(scope="module")
def file_server(files: dict[str, Path]) -> Iterator[str]:
    """An http server on loopback (which the stack's WANQ_JOBS_FETCH_ALLOWLIST admits): /r8.safetensors, and /hop,
    which redirects to it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", "/r8.safetensors")
                self.end_headers()
                return
            name = self.path.strip("/").removesuffix(".safetensors")
            if name not in files:
                self.send_error(404)
                return
            data = files[name].read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_upload_by_file_and_by_url_list_retrieve_delete(
    stack: Stack, api: httpx.Client, files: dict[str, Path], file_server: str, storage: Any
) -> None:
    key = tenants.make_key(api, "lora-library")
    with Client(stack.api_url, api_key=key) as client:
        lora = client.upload_lora(files["r4"], name="style", model=MODEL, num_inference_steps=2)
        assert lora["object"] == "lora" and lora["name"] == "style" and lora["model"] == MODEL and not lora["shared"]
        assert lora["sha256"] == hashlib.sha256(files["r4"].read_bytes()).hexdigest()
        assert lora["size_bytes"] == files["r4"].stat().st_size and lora["rank"] == 4 and lora["format"] == "diffusers"
        assert lora["num_modules"] == 20 and lora["blocks"] == [0, 1] and len(lora["modules"]) == 10
        assert lora["defaults"] == {"num_inference_steps": 2}
        with pytest.raises(APIError) as twice:
            client.upload_lora(files["r8"], name="style", model=MODEL)
        assert twice.value.status == 409 and twice.value.param == "name"

        # By URL, through a redirect; a family instead of one model
        fetched = client.upload_lora(f"{file_server}/hop", name="from-url", model="tiny-a14b", expert="high_noise")
        assert fetched["sha256"] == hashlib.sha256(files["r8"].read_bytes()).hexdigest()
        assert fetched["blocks"] == [1] and fetched["rank"] == 8 and fetched["defaults"] == {"expert": "high_noise"}

        assert [x["name"] for x in client.loras() if not x["shared"]] == ["style", "from-url"]
        assert client.lora("from-url") == fetched
        stored = storage.list_keys(f"loras/lora-library/{fetched['id']}")
        assert len(stored) == 1
        assert client.delete_lora("from-url") == {
            "id": fetched["id"],
            "object": "lora.deleted",
            "name": "from-url",
            "deleted": True,
        }
        assert not storage.list_keys(f"loras/lora-library/{fetched['id']}")
        with pytest.raises(APIError) as gone:
            client.lora("from-url")
        assert gone.value.status == 404


UPLOAD_REFUSALS = [
    ("junk", {}, 400, "file", "not a safetensors file"),
    ("pickle", {}, 400, "file", "not a safetensors file"),
    ("big-header", {}, 400, "file", "larger than WANQ_LORAS_MAX_HEADER_BYTES (262144)"),
    ("too-big", {}, 413, "file", "larger than WANQ_LORAS_MAX_BYTES (4194304 bytes)"),
    ("unprefixed", {}, 400, "file", "no tensor diffusers' Wan LoRA loader would accept"),
    ("a14b-shaped", {}, 400, "file", "LoRA for another model family (the 14B models"),
    ("ti2v-shaped", {"model": "wan2.2-t2v-a14b"}, 400, "file", "5120 -> 5120 in wan2.2-t2v-a14b: it is a LoRA for another model family (Wan2.2-TI2V-5B)"),
    ("rank-32", {}, 400, "file", "rank 32 is higher than the workers' adapter slots take (WANQ_LORAS_MAX_RANK, 16)"),
    ("r4", {"model": "wan2.2-nope"}, 400, "model", "name a served model"),
    ("r4", {"name": "no spaces"}, 400, "name", "no spaces"),
    ("r4", {"guidance_scale_2": 2, "model": "tiny-ti2v-5b"}, 400, "guidance_scale_2", "single expert"),
    ("r4", {"guidance_scale": 1, "guidance_scale_2": 3}, 400, "guidance_scale_2", "turns classifier-free guidance off"),
    ("r4", {"expert": "middle"}, 400, "expert", "middle"),
    ("r4", {"frobnicate": 1}, 400, "frobnicate", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("file", "fields", "status", "param", "says"), UPLOAD_REFUSALS, ids=[f"{r[0]}-{r[3]}" for r in UPLOAD_REFUSALS]
)
def test_bad_uploads_are_refused_naming_the_problem(
    api: httpx.Client, files: dict[str, Path], storage: Any, file: str, fields: dict[str, Any], status: int, param: str, says: str
) -> None:
    before = storage.list_keys("loras/admin/")
    response = upload(api, files[file], **{"name": f"bad-{file}", "model": MODEL, **fields})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert api.get(f"/v1/loras/bad-{file}").status_code == 404
    assert storage.list_keys("loras/admin/") == before  # nothing stored


def test_url_uploads_go_through_the_ssrf_guard(api: httpx.Client) -> None:
    for url, says in (
        ("http://10.1.2.3/x.safetensors", "a private address"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("ftp://example.com/x.safetensors", "only http and https"),
    ):
        response = api.post("/v1/loras", json={"name": "by-url", "model": MODEL, "url": url})
        assert response.status_code == 400 and says in response.json()["error"]["message"], response.text
    missing = api.post("/v1/loras", json={"name": "by-url", "model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "url"


def test_tenants_see_only_their_own_and_the_shared_loras(stack: Stack, api: httpx.Client, files: dict[str, Path]) -> None:
    mine, theirs = (tenants.client(stack, tenants.make_key(api, t)) for t in ("lora-one", "lora-two"))
    with mine, theirs:
        assert upload(mine, files["r4"], name="secret", model=MODEL).status_code == 201
        assert theirs.get("/v1/loras/secret").status_code == 404
        assert "secret" not in [x["name"] for x in theirs.get("/v1/loras").json()["data"]]
        job = theirs.post("/v1/videos", json={"prompt": "x", "model": MODEL, "loras": [{"name": "secret"}]})
        assert job.status_code == 400 and job.json()["error"]["param"] == "loras[0].name"
        assert theirs.delete("/v1/loras/secret").status_code == 404

        # An admin publishes one to everybody; a tenant cannot publish, nor delete a shared one; its own shadows it
        refused = upload(mine, files["r4"], name="house", model=MODEL, shared=True)
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "shared"
        shared = upload(api, files["r8"], name="house", model=MODEL, shared=True)
        assert shared.status_code == 201 and shared.json()["shared"] is True
        assert theirs.get("/v1/loras/house").json()["sha256"] == shared.json()["sha256"]
        assert theirs.delete("/v1/loras/house").status_code == 403
        assert theirs.delete("/v1/loras/house?shared=true").status_code == 403
        own = upload(mine, files["r4"], name="house", model=MODEL)
        assert own.status_code == 201
        assert mine.get("/v1/loras/house").json()["sha256"] == own.json()["sha256"] != shared.json()["sha256"]
        assert theirs.get("/v1/loras/house").json()["shared"] is True
        assert api.delete("/v1/loras/house?shared=true").status_code == 200
        assert theirs.get("/v1/loras/house").status_code == 404


def test_a_jobs_lora_fields_are_checked_and_nothing_is_enqueued(
    api: httpx.Client, store: JobStore, files: dict[str, Path]
) -> None:
    for name, model in (("job-a", MODEL), ("job-b", MODEL), ("job-c", MODEL), ("for-ti2v", "tiny-ti2v-5b")):
        response = upload(api, files[{"job-b": "r8", "job-c": "r2"}.get(name, "r4")], name=name, model=model)
        assert response.status_code in (201, 409), response.text
    assert upload(api, files["r8"], name="steps-4", model=MODEL, num_inference_steps=4).status_code in (201, 409)
    assert upload(api, files["r4"], name="steps-6", model="tiny-a14b", num_inference_steps=6).status_code in (201, 409)
    bad: list[tuple[Any, str, str, str]] = [
        ([{"name": "nope"}], MODEL, "loras[0].name", "no LoRA of that name"),
        ([{"name": "for-ti2v"}], MODEL, "loras[0].name", "it is a LoRA for tiny-ti2v-5b, not for tiny-t2v-a14b"),
        ([{"name": "job-a", "strength": 9}], MODEL, "loras[0].strength", "9"),
        ([{"name": "job-a", "strength": "loud"}], MODEL, "loras.0.strength", "loud"),
        ([{"name": "for-ti2v", "expert": "low_noise"}], "tiny-ti2v-5b", "loras[0].expert", "one transformer"),
        ([{"name": "job-a", "expert": "sideways"}], MODEL, "loras.0.expert", "sideways"),
        ([{"name": "job-a"}] * 5, MODEL, "loras", "at most 4 per job"),
        ([{"name": "job-a"}, {"name": "job-a", "expert": "low_noise"}], MODEL, "loras[1].name", "already named"),
        ([{"name": "job-a"}, {"name": "job-b"}, {"name": "job-c", "expert": "high_noise"}], MODEL, "loras", "more than 2 LoRAs"),
        ([{"name": "steps-4"}, {"name": "steps-6"}], MODEL, "num_inference_steps", "recommends num_inference_steps"),
        ("not a list", MODEL, "loras", "JSON list"),
        ([{"name": "job-a", "weight": 1}], MODEL, "loras.0.weight", "unknown field"),
    ]
    for loras, model, param, says in bad:
        before = store.queued_count(model)
        response = api.post("/v1/videos", json={"prompt": "x", "model": model, "loras": loras})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and says in error["message"], (loras, error)
        assert store.queued_count(model) == before
    # The same refusals in a multipart form (the field is the list as JSON text)
    form = api.post("/v1/videos", data={"prompt": "x", "model": MODEL, "loras": json.dumps([{"name": "nope"}])})
    assert form.status_code == 400 and form.json()["error"]["param"] == "loras[0].name"
    # Guidance 1 turns CFG off for both experts: a guidance_scale_2 above 1 with it is refused, an omitted one follows
    refused = api.post("/v1/videos", json={"prompt": "x", "model": MODEL, "guidance_scale": 1, "guidance_scale_2": 3})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "guidance_scale_2"
    follows = api.post("/v1/videos", json={"prompt": "x", "model": MODEL, "guidance_scale": 1, "size": "64x64", "num_frames": 5, "num_inference_steps": 1})  # fmt: skip
    assert follows.status_code == 202 and follows.json()["guidance_scale_2"] == 1.0
