"""The "fa4" attention backend's plumbing on the CPU, with FA4's kernel swapped for an exact float32 reference of
the same contract (out (B, S, H, D); LSE (B, H, S), float32, natural log): a named diffusers backend next to
`native`, one graph node under regional compile with fullgraph=True, and Ulysses / ring context parallelism
(2 gloo processes) through diffusers' own templates, which merge partial results with the LSE it returns.
The real kernel needs flash-attn-4 and a Hopper GPU (benchmarks/gpu_engine.py measures it)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.attention_backends import context_parallel_results, free_port, keep_active_backend, transformer_and_inputs
from worker import fa4


def reference_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool).tril(diagonal=scores.shape[-1] - scores.shape[-2])
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, S), natural log: FA4's
    out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(scores - lse.unsqueeze(-1)), v.float())
    return out.to(q.dtype), lse


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return reference_kernel(*args)


@pytest.fixture(autouse=True)
def process_wide_backend() -> Any:
    yield from keep_active_backend()
    fa4.use_kernel(fa4._fa4_kernel)


@pytest.fixture
def kernel() -> Any:
    counting = Counting()
    fa4.use_kernel(counting)
    fa4.register()
    return counting


def test_fa4_is_a_named_backend_next_to_native(kernel: Counting) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    member = fa4.register()
    assert fa4.register() is member is AttentionBackendName("fa4") is AttentionBackendName.FA4
    assert AttentionBackendName("native").value == "native"  # nothing replaced
    assert _AttentionBackendRegistry._is_context_parallel_available(member)
    model, inputs = transformer_and_inputs()
    with torch.no_grad():
        model.set_attention_backend("native")
        native = model(**inputs)[0]
        model.set_attention_backend("fa4")
        out = model(**inputs)[0]
    assert {m.processor._attention_backend for m in model.modules() if hasattr(m, "processor")} == {member}
    assert kernel.calls == 2 * model.config.num_layers  # self- and cross-attention of each block
    torch.testing.assert_close(out, native, atol=2e-5, rtol=1e-5)


def test_regional_compile_with_fullgraph_keeps_the_kernel_one_node(kernel: Counting) -> None:
    graphs: list[Any] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model, inputs = transformer_and_inputs()
    with torch.no_grad():
        model.set_attention_backend("native")
        native = model(**inputs)[0]
        model.set_attention_backend("fa4")
        model.compile_repeated_blocks(fullgraph=True, backend=counting_backend)  # a graph break would raise
        out = model(**inputs)[0]
    assert len(graphs) == 1
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert ops.count("wanq.fa4_forward") == 2  # self- and cross-attention, each one opaque node
    torch.testing.assert_close(out, native, atol=2e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_fa4s_own_limits_are_checked_where_the_real_kernel_runs() -> None:
    fa4.use_kernel(reference_kernel, limits=("cpu", 9))  # FA4's sm90 rules, on CPU tensors
    fa4.register()
    q = torch.randn(1, 8, 2, 12, dtype=torch.bfloat16)  # the tiny model's head dim 12
    with pytest.raises(ValueError, match=r"FA4 on sm90 needs head dims in 8\.\.256 divisible by 8, got \(12, 12\)"):
        fa4._fa4_attention(q, q, q)
    with pytest.raises(ValueError, match="needs bf16 or fp16"):
        fa4._fa4_attention(*(torch.randn(1, 8, 2, 16) for _ in range(3)))
    out = fa4._fa4_attention(*(torch.randn(1, 8, 2, 16, dtype=torch.bfloat16) for _ in range(3)))
    assert out.shape == (1, 8, 2, 16) and out.dtype == torch.bfloat16


def _context_parallel_rank(rank: int, world: int, port: int, outdir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fa4.use_kernel(reference_kernel)
        member = fa4.register()
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(2, 8 * world, 4, 16, generator=g) for _ in range(3))
        results = context_parallel_results(member, q, k, v, rank, world)
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
    for name in ("ulysses", "ring"):  # ring attention merges the two halves of the keys by their LSE
        out, got_lse = result[name]
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(got_lse, lse, atol=1e-5, rtol=1e-5, msg=name)


def test_an_sm90_tile_goes_to_fa4s_forward_on_sm90_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """FA4 cannot run here: stand-ins for its two entry points record which one the kernel calls, and with what."""
    import sys
    import types

    calls: list[tuple[str, dict[str, Any]]] = []

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> tuple[Any, ...]:
        calls.append(("_flash_attn_fwd", kwargs))
        return (*reference_kernel(q, k, v, kwargs["softmax_scale"], kwargs["causal"]), None, None, None)

    def func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(("flash_attn_func", kwargs))
        return reference_kernel(q, k, v, kwargs["softmax_scale"], kwargs["causal"])

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = func  # type: ignore[attr-defined]
    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd = forward  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    monkeypatch.setattr(fa4, "SM90_TILES", {})
    q, k, v = (torch.randn(1, 8, 2, 128) for _ in range(3))
    expected = reference_kernel(q, k, v, 0.1, False)[0]

    fa4.use_kernel(fa4._fa4_kernel, limits=("cuda", 9))
    fa4.set_sm90_tile(128, (128, 176))
    out, _ = fa4._fa4_kernel(q, k, v, 0.1, False)
    assert calls[-1] == (
        "_flash_attn_fwd",
        {
            "softmax_scale": 0.1,
            "causal": False,
            "return_lse": True,
            "tile_mn": (128, 176),
            "intra_wg_overlap": True,
            "num_threads": 384,
        },
    )
    assert torch.equal(out, expected)
    fa4._fa4_kernel(q, k, v, 0.1, True)  # causal has no tile of its own: FA4 chooses
    fa4._fa4_kernel(q[..., :64], k[..., :64], v[..., :64], 0.1, False)  # nor does head dim 64
    assert [name for name, _ in calls[-2:]] == ["flash_attn_func", "flash_attn_func"]
    fa4.use_kernel(fa4._fa4_kernel, limits=("cuda", 10))  # sm100: FA4's own choice, whatever sm90's table says
    fa4._fa4_kernel(q, k, v, 0.1, False)
    assert calls[-1][0] == "flash_attn_func"
    fa4.set_sm90_tile(128, None)
    assert fa4.SM90_TILES == {}
