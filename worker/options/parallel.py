"""Several GPUs per job: Ulysses and ring attention (diffusers' context parallelism) and CFG branches on two rank
groups (worker/parallel/mesh.py applies them)."""

from __future__ import annotations

from typing import Any

from shared.settings import EngineSettings
from worker.options.option import Environment, Option, context_parallel, rule


def _groups(s: EngineSettings) -> tuple[int, int]:
    cfg = 2 if s.cfg_parallel else 1
    return cfg, s.ulysses_degree * s.ring_degree * cfg


def _layout(s: EngineSettings, _e: Environment) -> str:
    cfg, groups = _groups(s)
    return (
        f"ulysses_degree ({s.ulysses_degree}) x ring_degree ({s.ring_degree}) x cfg ({cfg}) = {groups} "
        f"must equal num_gpus ({s.num_gpus}): change --num-gpus or the degrees"
    )


def _heads(s: EngineSettings, e: Environment) -> str:
    heads = e.num_heads or 0
    divisors = [d for d in range(1, heads + 1) if heads % d == 0 and d <= 8]
    return (
        f"the transformer's {heads} attention heads are not divisible by --ulysses-degree "
        f"{s.ulysses_degree}: use one of {divisors}, or --ring-degree for the rest"
    )


SEVERAL_GPUS = Option(
    flag="--num-gpus N --ulysses-degree U --ring-degree R [--cfg-parallel]",
    kind="parallel",
    summary="one job over N GPUs: U x R x (2 with --cfg-parallel) = N",
    chosen=lambda s: s.num_gpus > 1 or context_parallel(s) or s.cfg_parallel,
    needs=(
        rule("U x R x cfg = N", lambda s, _e: _groups(s)[1] != s.num_gpus, _layout),
        rule(
            "heads divisible by U",
            lambda s, e: e.num_heads is not None and e.num_heads % s.ulysses_degree != 0,
            _heads,
        ),
        rule(
            "CUDA GPUs for U, R > 1",
            lambda s, e: e.on_cpu and context_parallel(s),
            "--ulysses-degree / --ring-degree need CUDA GPUs (diffusers' context parallelism); use --cfg-parallel on CPU",
        ),
        rule(
            "--device cuda",
            lambda s, e: s.num_gpus > 1 and e.device is not None and ":" in e.device,
            lambda s, e: (
                f"--device {e.device} names one GPU but --num-gpus is {s.num_gpus}: use --device cuda "
                "(ranks take cuda:0..N-1; pick GPUs with CUDA_VISIBLE_DEVICES)"
            ),
        ),
        rule(
            "N visible GPUs",
            lambda s, e: e.gpu_count is not None and not e.on_cpu and s.num_gpus > e.gpu_count,
            lambda s, e: f"--num-gpus {s.num_gpus} but this machine has {e.gpu_count} visible GPU(s)",
        ),
    ),
    applied="rank processes (worker/parallel/), `enable_parallelism` and the CFG hook on each transformer",
)


def _batch_cfg(transformers: Any, _settings: EngineSettings, _device: Any) -> None:
    from worker import cfg_batch

    cfg_batch.enable(transformers)


CFG_BATCH = Option(
    flag="--cfg-batch",
    kind="parallel",
    summary="one GPU: the two CFG branches as one batch-2 forward (twice the activations)",
    chosen=lambda s: s.cfg_batch,
    conflicts=(
        rule(
            "one GPU",
            lambda s, _e: s.num_gpus > 1 or s.cfg_parallel or context_parallel(s),
            "--cfg-batch is for one GPU; with several, --cfg-parallel runs the two branches on two GPU groups: drop one",
        ),
        rule(
            "not --offload model",
            lambda s, _e: s.offload == "model",
            "--cfg-batch cannot be combined with --offload model (diffusers re-installs the transformer's forward "
            "after every job, which drops the batching hook): drop one",
        ),
    ),
    applies_to="transformers",
    apply=_batch_cfg,
    applied="a diffusers hook on each transformer, on per job when it guides (worker/cfg_batch.py)",
)
