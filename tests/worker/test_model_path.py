"""`--model-path` of `wanq worker` and `wanq generate`: a pipeline directory, or a Hugging Face repository id resolved
through huggingface_hub's cache; either way checked to hold the pipeline the model id means, before anything loads.

No test here reaches a hub: the cache is built by hand in huggingface_hub's layout (refs/main naming a snapshot
folder) under a fake repository id, and every process runs with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from shared.settings import Settings
from shared.store import JobStore
from wanq.stack import Stack
from worker.export import probe_mp4
from worker.pipeline_dir import EXPECTED, PipelineDirError, check, inspect
from worker.tiny_model import write_tiny_model

REPO = "wanq-test/tiny-ti2v-5b"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {variant: write_tiny_model(root / variant, variant) for variant in EXPECTED}


@pytest.fixture(scope="module")
def hub_cache(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding the tiny TI2V-5B pipeline as the repository wanq-test/tiny-ti2v-5b."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny["ti2v-5b"], repo / "snapshots" / COMMIT)
    return cache


def wanq(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANQ_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "wanq", *args],
        cwd=cwd,
        env={**clean, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    return done.stderr.splitlines()[-1]


# Which pipeline a directory holds ----------------------------------------------------------------------


def test_each_tiny_pipeline_is_its_variant(tiny: dict[str, Path]) -> None:
    for variant, path in tiny.items():
        shape = inspect(path)
        assert shape.variant == variant and shape.tiny, (variant, shape)
        assert check(f"wan2.2-{variant}", path) == shape  # a tiny pipeline may serve the real id (the suite does)


@pytest.mark.parametrize(
    ("model", "variant", "line"),
    [
        (
            "wan2.2-i2v-a14b",
            "ti2v-5b",
            "--model wan2.2-i2v-a14b needs a Wan2.2 I2V-A14B pipeline (WanImageToVideoPipeline, two experts, 36 input "
            "channels, 16-channel VAE), but {path} holds a Wan2.2 TI2V-5B pipeline (WanPipeline, one transformer, "
            "expand_timesteps, 48 input channels, 48-channel VAE): serve it as --model tiny-ti2v-5b or wan2.2-ti2v-5b, "
            "or point --model-path at a Wan2.2 I2V-A14B pipeline",
        ),
        (
            "tiny-ti2v-5b",
            "i2v-a14b",
            "--model tiny-ti2v-5b needs a Wan2.2 TI2V-5B pipeline (WanPipeline, one transformer, expand_timesteps, 48 "
            "input channels, 48-channel VAE), but {path} holds a Wan2.2 I2V-A14B pipeline (WanImageToVideoPipeline, two "
            "experts, 36 input channels, 16-channel VAE): serve it as --model tiny-i2v-a14b or wan2.2-i2v-a14b, or point "
            "--model-path at a Wan2.2 TI2V-5B pipeline",
        ),
        (
            "wan2.2-t2v-a14b",
            "i2v-a14b",
            "--model wan2.2-t2v-a14b needs a Wan2.2 T2V-A14B pipeline (WanPipeline, two experts, 16 input channels, "
            "16-channel VAE), but {path} holds a Wan2.2 I2V-A14B pipeline (WanImageToVideoPipeline, two experts, 36 input "
            "channels, 16-channel VAE): serve it as --model tiny-i2v-a14b or wan2.2-i2v-a14b, or point --model-path at a "
            "Wan2.2 T2V-A14B pipeline",
        ),
    ],
)
def test_the_worker_refuses_a_directory_of_another_model(
    tiny: dict[str, Path], tmp_path: Path, model: str, variant: str, line: str
) -> None:
    path = tiny[variant]
    done = wanq(tmp_path, "worker", "--model", model, "--model-path", str(path))
    assert refused(done) == "wanq worker: " + line.format(path=path)
    assert done.stderr.count("\n") == 1  # that line alone: nothing was started, torch was not even imported


def test_a_directory_of_no_wan22_model(tmp_path: Path) -> None:
    # A Wan2.1 text-to-video pipeline: one transformer, no expand_timesteps.
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "transformer": ["diffusers", "x"]}))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"in_channels": 16}))
    with pytest.raises(PipelineDirError) as info:
        check("wan2.2-t2v-a14b", tmp_path)
    assert str(info.value).endswith(
        f"but {tmp_path} holds no Wan2.2 pipeline wanq knows (WanPipeline, one transformer, 16 input channels, "
        "?-channel VAE): point --model-path at a Wan2.2 T2V-A14B pipeline"
    )


# A Hugging Face repository id ---------------------------------------------------------------------------


def test_generate_from_a_repository_id_in_the_cache_with_the_tiny_defaults(hub_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "outputs" / "new" / "fox.mp4"
    # No size, frames or steps given: a tiny pipeline takes the tiny model's defaults (64x64, 17 frames, 4 steps),
    # not the real model's (1280x704, 121 frames, 50 steps: minutes on a CPU). The output as SGLang's flags say it, in
    # a folder that does not exist yet.
    sglang = ("--save-output", "--output-path", str(out.parent), "--output-file-name", "fox")
    done = wanq(tmp_path, "generate", "--model-path", REPO, "--prompt", "a fox", *sglang, HF_HUB_CACHE=str(hub_cache))
    assert done.returncode == 0, done.stderr
    snapshot = hub_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    lines = done.stderr.splitlines()
    assert lines[0] == f"wanq generate: --model-path {REPO}: the Hugging Face cache's snapshot in {snapshot}"
    # Not a terminal: one line per step, not 'step 1/4step 2/4'; whatever else is said is a JSON log line (torch's,
    # transformers' and diffusers' warnings included), and no progress bar is drawn.
    assert [line for line in lines if line.startswith("step")] == [f"step {i}/4" for i in range(1, 5)]
    others = [line for line in lines[1:] if not line.startswith("step")]
    assert all(line.startswith("{") and json.loads(line)["level"] for line in others), others
    assert "it/s" not in done.stderr and "\r" not in done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["spec"]["model"] == "tiny-ti2v-5b" and report["output"] == str(out)
    info = probe_mp4(out)
    assert (info["size"], info["frames"]) == ((64, 64), 17)


def test_a_repository_missing_from_the_cache_offline_is_one_line(hub_cache: Path, tmp_path: Path) -> None:
    for command in (["worker", "--model", "wan2.2-ti2v-5b"], ["generate", "--prompt", "a fox"]):
        done = wanq(tmp_path, *command, "--model-path", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", HF_HUB_CACHE=str(hub_cache))
        assert refused(done) == (
            f"wanq {command[0]}: --model-path Wan-AI/Wan2.2-TI2V-5B-Diffusers is not in the Hugging Face cache ({hub_cache}), "
            "and HF_HUB_OFFLINE is set: unset it to download it here, or download it beforehand where the hub can be "
            "reached (`hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers` with this HF_HOME)"
        )
    done = wanq(tmp_path, "fetch-model", "--model", "wan2.2-ti2v-5b", "--dir", str(tmp_path / "m"), HF_HUB_CACHE=str(hub_cache))
    assert refused(done) == (
        f"wanq fetch-model: --model wan2.2-ti2v-5b: Wan-AI/Wan2.2-TI2V-5B-Diffusers is not in {tmp_path / 'm'}, and "
        "HF_HUB_OFFLINE is set: unset it to download it here, or download it beforehand where the hub can be reached "
        f"(`hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers --local-dir {tmp_path / 'm'}`)"
    )


def test_neither_a_directory_nor_a_repository_id(tmp_path: Path, hub_cache: Path) -> None:
    done = wanq(tmp_path, "worker", "--model", "wan2.2-ti2v-5b", "--model-path", "./models/ti2v")
    assert refused(done) == (
        "wanq worker: --model-path './models/ti2v': no such directory, and not a Hugging Face repository id "
        "(owner/name, e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers)"
    )
    # `models/ti2v` reads as a repository id; with a `models` directory here, a mistyped path is the likelier story.
    (tmp_path / "models").mkdir()
    done = wanq(tmp_path, "worker", "--model", "wan2.2-ti2v-5b", "--model-path", "models/ti2v", HF_HUB_CACHE=str(hub_cache))
    assert refused(done).startswith("wanq worker: --model-path models/ti2v is not in the Hugging Face cache")
    assert refused(done).endswith("(nor is there a directory 'models/ti2v' here)")


def test_a_repository_of_another_model_is_refused_too(hub_cache: Path, tmp_path: Path) -> None:
    done = wanq(tmp_path, "worker", "--model", "wan2.2-i2v-a14b", "--model-path", REPO, HF_HUB_CACHE=str(hub_cache))
    assert refused(done).startswith("wanq worker: --model wan2.2-i2v-a14b needs a Wan2.2 I2V-A14B pipeline")
    assert "holds a Wan2.2 TI2V-5B pipeline" in refused(done)


def test_a_worker_serves_from_a_repository_id(hub_cache: Path, own_redis: redis.Redis, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{own_redis.connection_pool.connection_kwargs['port']}/0"
    stack = Stack(tmp_path / "stack")
    stack.env.update({"WANQ_REDIS_URL": url, "WANQ_REDIS_KEY_PREFIX": "wanq-model-path", "HF_HUB_OFFLINE": "1"})
    stack.env["HF_HUB_CACHE"] = str(hub_cache)
    worker = stack.spawn(
        "worker-from-hub", [sys.executable, "-m", "wanq", "worker", "--model", "tiny-ti2v-5b", "--model-path", REPO]
    )
    try:
        saved = dict(os.environ)
        os.environ.update({"WANQ_REDIS_URL": url, "WANQ_REDIS_KEY_PREFIX": "wanq-model-path"})
        try:
            store = JobStore.from_settings(Settings())
        finally:
            os.environ.clear()
            os.environ.update(saved)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(w.get("state") == "ready" for w in store.live_workers("tiny-ti2v-5b")):
            worker.check_alive()
            time.sleep(0.2)
        (ready,) = store.live_workers("tiny-ti2v-5b")
        assert ready["state"] == "ready" and ready["variant"] == "ti2v-5b"
    finally:
        stack.stop()
    first, *rest = worker.log().splitlines()
    assert first.startswith(f"wanq worker: --model-path {REPO}: the Hugging Face cache's snapshot in")
    # Then only JSON lines: Celery's, torch's and transformers' warnings included, and no loading bars. (Celery writes
    # its shutdown notice straight to the terminal, as it does for a person pressing Ctrl-C.)
    assert [line for line in rest if line.strip() and not line.startswith("{")] == ["worker: Warm shutdown (MainProcess)"]


def test_a_worker_whose_model_fails_to_load_stops_and_says_so(
    tiny: dict[str, Path], own_redis: redis.Redis, tmp_path: Path
) -> None:
    """A child that can't load the model must not take jobs it can't run (each would fail and be put back forever):
    the whole worker stops, non-zero, with the reason in the log and one plain line at the end."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny["ti2v-5b"], broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    url = f"redis://127.0.0.1:{own_redis.connection_pool.connection_kwargs['port']}/0"
    started = time.monotonic()
    done = wanq(
        tmp_path,
        "worker",
        "--model",
        "tiny-ti2v-5b",
        "--model-path",
        str(broken),
        WANQ_REDIS_URL=url,
        WANQ_REDIS_KEY_PREFIX="wanq-load-fails",
        WANQ_MODELS='["tiny-ti2v-5b"]',
        WANQ_S3_CREATE_BUCKET="false",
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 150
    assert done.stderr.splitlines()[-1] == (
        "wanq worker: tiny-ti2v-5b stopped: the model failed to load (the log above says why)"
    )
    failures = [json.loads(line) for line in done.stderr.splitlines() if '"the model failed to load' in line]
    assert failures and "diffusion_pytorch_model.safetensors" in failures[0]["msg"]
    assert not own_redis.keys("wanq-load-fails:worker*")  # it left no heartbeat claiming a live worker behind


# Where `wanq generate` writes, and what it checks before fetching a repository -----------------------------------


def test_an_output_that_cannot_be_written_is_refused_before_anything_loads(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    started = time.monotonic()
    # The model path is wrong too: the output is checked first, and nothing slow has started.
    done = wanq(tmp_path, "generate", "--model-path", "/nonexistent", "--prompt", "x", "-o", str(tmp_path / "a-file" / "x.mp4"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"wanq generate: cannot write '{tmp_path / 'a-file' / 'x.mp4'}' (a file stands where its folder would be): give -o "
        "a file in a folder you can write\n"
    )
    assert time.monotonic() - started < 30
    done = wanq(tmp_path, "generate", "--model-path", "/nonexistent", "--prompt", "x", "-o", "x.mp4", "--output-path", "d")
    assert done.returncode == 2
    assert done.stderr == "wanq generate: give -o FILE, or --output-path DIR / --output-file-name NAME, not both\n"


def _generate_args(**given: str | None) -> argparse.Namespace:
    fields = {"output": None, "output_path": None, "output_file_name": None, "prompt": "A red fox, in the snow!"}
    return argparse.Namespace(**{**fields, **given})


def test_sglang_output_flags_compose_the_output_and_make_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wanq.cli import _output_file

    monkeypatch.chdir(tmp_path)
    assert _output_file(_generate_args()) == Path("out.mp4")
    # A folder alone: the prompt names the file.
    assert _output_file(_generate_args(output_path="clips/new")) == Path("clips/new/A_red_fox_in_the_snow.mp4")
    assert (tmp_path / "clips" / "new").is_dir()
    assert _output_file(_generate_args(output_path="clips", output_file_name="fox")) == Path("clips/fox.mp4")
    assert _output_file(_generate_args(output_file_name="fox.mp4")) == Path("fox.mp4")
    assert _output_file(_generate_args(output="deep/er/x.mp4")) == Path("deep/er/x.mp4")
    assert (tmp_path / "deep" / "er").is_dir()


@pytest.mark.parametrize(
    ("command", "parallel"),
    [
        (["generate", "--prompt", "x"], ["--num-gpus", "4", "--ulysses-degree", "2", "--ring-degree", "2"]),
        (["worker", "--model", "wan2.2-t2v-a14b"], ["--num-gpus", "4", "--ulysses-degree", "2", "--ring-degree", "2"]),
        (["generate", "--prompt", "x"], ["--ulysses-degree", "2"]),  # degrees that do not make --num-gpus
    ],
)
def test_the_gpus_are_checked_before_the_repository_is_fetched(
    hub_cache: Path, tmp_path: Path, command: list[str], parallel: list[str]
) -> None:
    # The command on this machine (no GPU; CI's has none either): offline, the repository is not in the cache,
    # and 4 GPUs are asked for. Fetching it first would say that the cache lacks it (online: download ~120 GB).
    done = wanq(tmp_path, *command, "--model-path", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", *parallel, HF_HUB_CACHE=str(hub_cache))
    line = refused(done)
    assert line.startswith(f"wanq {command[0]}: engine options this machine cannot run: "), line
    assert "GPU" in line and "cache" not in line, line
    assert done.stderr.count("\n") == 1


def test_a_repository_of_another_model_is_refused_from_its_configs_alone(tiny: dict[str, Path], tmp_path: Path) -> None:
    # A cache holding the I2V repository's model_index.json and configs, no weights: enough to refuse it for TI2V-5B.
    cache = tmp_path / "hub"
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    (cache / f"models--{REPO.replace('/', '--')}" / "refs").mkdir(parents=True)
    (cache / f"models--{REPO.replace('/', '--')}" / "refs" / "main").write_text(COMMIT)
    for name in ("model_index.json", "transformer/config.json", "transformer_2/config.json", "vae/config.json"):
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny["i2v-a14b"] / name, snapshot / name)
    done = wanq(tmp_path, "worker", "--model", "wan2.2-ti2v-5b", "--model-path", REPO, HF_HUB_CACHE=str(cache))
    assert refused(done).startswith("wanq worker: --model wan2.2-ti2v-5b needs a Wan2.2 TI2V-5B pipeline (")
    assert "holds a Wan2.2 I2V-A14B pipeline" in refused(done)
