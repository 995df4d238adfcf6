"""The "fa3" and "fa3-fp8" attention backends' plumbing on the CPU, with FA3's kernel swapped for worker/fa3.py's float32
reference of the same contract (FP8 inputs times their descales): named diffusers backends next to `native`, one graph
node each under regional compile with fullgraph=True (the FP8 quantization traced around it), the centred keys'
log-sum-exp given back, and Ulysses / ring context parallelism (2 gloo processes) through diffusers' templates.
The real kernels need FlashAttention-3 and a Hopper GPU (benchmarks/gpu_fusions.py --part fa3 measures them)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from shared.settings import EngineSettings
from tests.attention_backends import context_parallel_results, free_port, keep_active_backend, transformer_and_inputs
from worker import fa3
from worker.options import registry
from worker.options.option import Environment


class Counting:
    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []
        self.descaled: list[bool] = []

    def __call__(self, q: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.dtypes.append(q.dtype)
        self.descaled.append(args[-3] is not None)
        return fa3.reference_kernel(q, *args)


@pytest.fixture(autouse=True)
def process_wide_backend() -> Any:
    yield from keep_active_backend()
    fa3.use_kernel(fa3._fa3_kernel)


@pytest.fixture
def kernel() -> Counting:
    counting = Counting()
    fa3.use_kernel(counting)
    fa3.register()
    return counting


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fa3_and_fa3_fp8_are_named_backends_next_to_native(kernel: Counting) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    members = fa3.register()
    assert fa3.register() == members == [AttentionBackendName("fa3"), AttentionBackendName("fa3-fp8")]
    assert AttentionBackendName.FA3_FP8.value == "fa3-fp8" and AttentionBackendName("native").value == "native"
    assert all(_AttentionBackendRegistry._is_context_parallel_available(m) for m in members)
    model, inputs = transformer_and_inputs()
    layers = model.config.num_layers
    with torch.no_grad():
        model.set_attention_backend("native")
        native = model(**inputs)[0]
        model.set_attention_backend("fa3")
        exact = model(**inputs)[0]
        model.set_attention_backend("fa3-fp8")
        lossy = model(**inputs)[0]
    torch.testing.assert_close(exact, native, atol=2e-5, rtol=1e-5)
    # every self- and cross-attention reached the op: in the model's dtype, then in e4m3 with one descale per head
    assert kernel.dtypes == [torch.float32] * (2 * layers) + [fa3.FP8] * (2 * layers)
    assert kernel.descaled == [False] * (2 * layers) + [True] * (2 * layers)
    assert 0 < rel(lossy, native) < 0.08  # e4m3 has 3 mantissa bits: lossy, but the same function


def test_centred_keys_leave_attention_as_it_was_and_the_lse_is_given_back() -> None:
    g = torch.Generator().manual_seed(3)
    q, v = (torch.randn(2, 40, 3, 16, generator=g) for _ in range(2))
    k = torch.randn(2, 40, 3, 16, generator=g) + 4 * torch.randn(2, 1, 3, 16, generator=g)  # a large shared offset
    scale = 16**-0.5
    out, lse = fa3.reference_kernel(q, k, v, scale, False, None, None, None)
    (q8, k8, v8, qd, kd, vd), correction = fa3.fp8_inputs(q, k, v, scale)
    assert correction is not None and fa3.fp8_inputs(q, k, v, scale, lse=False)[1] is None
    assert q8.dtype == k8.dtype == v8.dtype == fa3.FP8 and qd.shape == kd.shape == vd.shape == (2, 3)
    # the quantized values use e4m3's range: each head's largest magnitude lands on 448
    assert float(k8.float().abs().amax(dim=(1, 3)).min()) == fa3.E4M3_MAX
    out8, lse8 = fa3.reference_kernel(q8, k8, v8, scale, False, qd, kd, vd)
    assert rel(out8, out) < 0.08  # e4m3 rounding of q, k and v, and the bf16 output (5.4% on an H100, random data)
    torch.testing.assert_close(lse8 + correction, lse, atol=0.05, rtol=0.01)
    assert float((lse8 - lse).abs().max()) > 1  # without the correction the LSE is off by q . mean(k)
    # centring alone (no rounding) changes nothing but the LSE, by exactly the correction
    mean_k = k.mean(dim=1, keepdim=True)
    out_c, lse_c = fa3.reference_kernel(q, k - mean_k, v, scale, False, None, None, None)
    torch.testing.assert_close(out_c, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_c + correction, lse, atol=1e-4, rtol=1e-5)
    # centred keys quantize finer than the raw ones, whose shared offset spends the scale
    _, k_raw_descale = fa3.quantize(k)
    assert bool((kd < k_raw_descale).all())


def test_regional_compile_keeps_the_kernel_one_node_and_traces_the_quantization(kernel: Counting) -> None:
    graphs: list[Any] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model, inputs = transformer_and_inputs()
    with torch.no_grad():
        model.set_attention_backend("fa3-fp8")
        eager = model(**inputs)[0]
        model.compile_repeated_blocks(fullgraph=True, backend=counting_backend)  # a graph break would raise
        compiled = model(**inputs)[0]
    assert len(graphs) == 1
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert ops.count("wanq.fa3_forward") == 2  # self- and cross-attention, each one opaque node
    methods = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_method"]
    assert methods.count("amax") == 6  # q's, k's and v's scales of both calls, in the graph, where inductor fuses them
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_fa3s_limits_are_checked_where_the_real_kernel_runs() -> None:
    fa3.use_kernel(fa3.reference_kernel, checked=True)
    fa3.register()
    q = torch.randn(1, 8, 2, 12, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="needs cuda tensors"):
        fa3._fa3_attention(q, q, q)
    assert fa3.gpu_problem("NVIDIA H100 80GB HBM3", (9, 0)) is None
    problem = fa3.gpu_problem("NVIDIA B200", (10, 0))
    assert problem is not None and "Hopper (sm90) only" in problem and "fa4" in problem


@pytest.mark.parametrize("backend", ["fa3", "fa3-fp8"])
def test_the_registry_refuses_fa3_on_a_cpu_and_where_it_is_not_installed(backend: str) -> None:
    settings = EngineSettings(device="cpu", attention_backend=backend)
    problems = registry.validate(settings, Environment(device="cpu"))
    assert any(f"--attention-backend {backend} needs a Hopper GPU" in p for p in problems.configuration)
    option = registry.one(settings, "attention")
    assert option is not None and backend in option.names
    fp16 = registry.validate(settings.model_copy(update={"device": "cuda", "dtype": "fp16"}), Environment(device="cuda"))
    # the wheel of deploy/docker/build-fa3.sh has no fp16 kernels; FP8 inputs come out in bf16, cast to fp16
    assert any("computes in bf16;" in p for p in fp16.configuration) == (backend == "fa3")


def test_a_worker_without_fa3_is_told_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # as if not installed, on any machine
    missing = fa3.missing_package()
    assert missing is not None and "needs FlashAttention-3, which is not installed" in missing
    assert "deploy/docker/build-fa3.sh" in missing


def _context_parallel_rank(rank: int, world: int, port: int, outdir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fa3.use_kernel(fa3.reference_kernel)
        g = torch.Generator().manual_seed(1)
        q, v = (torch.randn(2, 8 * world, 4, 16, generator=g) for _ in range(2))
        k = torch.randn(2, 8 * world, 4, 16, generator=g) + 3 * torch.randn(2, 1, 4, 16, generator=g)
        results = {}
        for backend, member in zip(("fa3", "fa3-fp8"), fa3.register(), strict=True):
            for name, gathered in context_parallel_results(member, q, k, v, rank, world).items():
                results[f"{backend} {name}"] = gathered
        if rank == 0:
            torch.save({"q": q, "k": k, "v": v, **results}, os.path.join(outdir, "cp.pt"))
    finally:
        dist.destroy_process_group()


def test_ulysses_and_ring_attention_give_full_attention_and_its_lse(tmp_path: Path) -> None:
    mp.spawn(_context_parallel_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "cp.pt")
    q, k, v = result["q"], result["k"], result["v"]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    full = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    lse = torch.logsumexp(scores, -1).transpose(1, 2)  # diffusers' layout (B, S, H)
    for name in ("ulysses", "ring"):
        out, got_lse = result[f"fa3 {name}"]
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(got_lse, lse, atol=1e-5, rtol=1e-5, msg=name)
        # FP8: ring attention merges the halves of the keys, each centred on its own mean, by their corrected LSEs
        out, got_lse = result[f"fa3-fp8 {name}"]
        assert rel(out, full) < 0.08, name
        torch.testing.assert_close(got_lse, lse, atol=0.05, rtol=0.01, msg=name)
