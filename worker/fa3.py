"""FlashAttention-3 (flash-attn-3, the Hopper build of flash-attention, `flash_attn_interface`) as diffusers' attention
backends "fa3" (bf16/fp16, exact) and "fa3-fp8" (q, k and v in FP8 e4m3, lossy).

diffusers 0.42.1 has `_flash_3` (local, one GPU only) and `_flash_3_hub` (downloads kernels at run time). These two are
local and support Ulysses and ring attention through diffusers' templates, like worker/fa4.py's "fa4", whose
registration they share. FA3 has no wheel on PyPI: deploy/docker/build-fa3.sh builds one from flash-attention's
`hopper/` folder with only the kernels Wan runs (docs/ENGINE.md).

- The kernel is one `torch.library.custom_op` (`wanq::fa3_forward`) with a fake, so that regional compile keeps it as
  one graph node.
- "fa3-fp8" quantizes in traced Python, before the op, so that inductor fuses it with the RoPE and norms that make q
  and k: each (batch, head) of q, k and v gets its own scale (its largest magnitude over 448, e4m3's largest finite
  value), which the kernel takes back as `q_descale`/`k_descale`/`v_descale`. k is first centred over the sequence
  (SageAttention's smoothing): subtracting one vector from every key adds the same constant to every logit of a row,
  which softmax cancels, and it removes the shared offset that would otherwise spend e4m3's few mantissa bits. The
  returned log-sum-exp gets that constant back (`scale * q . mean(k)`), so that ring attention's merge of partial
  results stays right.
- Inference only: no backward.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from worker import fa4

BACKEND = "fa3"
BACKEND_FP8 = "fa3-fp8"
INSTALL = "build its wheel with deploy/docker/build-fa3.sh OUT_DIR (a few minutes, no GPU needed) and pip install it"
CAPABILITY = (9, 0)
E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn

Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""(q, k, v (B, S, H, D), softmax scale, causal, q_descale, k_descale, v_descale (B, H) float32 or None) ->
(out (B, S, H, Dv), bf16 for FP8 inputs, else q's dtype; lse (B, H, S) float32, natural log)."""


def missing_package() -> str | None:
    """What keeps `flash_attn_interface` (FA3) from importing here, in words with the fix; None if it imports."""
    try:
        importlib.import_module("flash_attn_interface")
    except ModuleNotFoundError as exc:
        name = exc.name or str(exc)
        if name.startswith("flash_attn"):
            return f"--attention-backend fa3 needs FlashAttention-3, which is not installed: {INSTALL}"
        return f"--attention-backend fa3: FlashAttention-3 is installed but its dependency {name!r} is missing"
    except Exception as exc:  # an ABI mismatch, a CUDA library that does not load
        return f"--attention-backend fa3: flash_attn_interface failed to import ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def gpu_problem(name: str, capability: tuple[int, int]) -> str | None:
    if capability != CAPABILITY:
        return (
            f"--attention-backend fa3 runs on Hopper (sm90) only; {name} is sm{capability[0]}{capability[1]}: "
            "use --attention-backend fa4 (Hopper and Blackwell) or the default"
        )
    return None


def _fa3_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool,
    q_descale: torch.Tensor | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    from flash_attn_interface import flash_attn_func

    out, lse, *_ = flash_attn_func(
        q,
        k,
        v,
        softmax_scale=scale,
        causal=causal,
        q_descale=q_descale,
        k_descale=k_descale,
        v_descale=v_descale,
        return_attn_probs=True,
    )
    return out, lse


@dataclass
class _State:
    kernel: Kernel = _fa3_kernel
    checked: bool = False
    """Whether the inputs are checked against FA3's limits (on a Hopper GPU; tests swap in a CPU reference)."""


_STATE = _State()


def use_kernel(kernel: Kernel, *, checked: bool = False) -> None:
    """Swaps the kernel behind the op (tests run a float32 reference on the CPU)."""
    _STATE.kernel, _STATE.checked = kernel, checked


@torch.library.custom_op("wanq::fa3_forward", mutates_args=())
def fa3_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    q_descale: torch.Tensor | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, H, D) x 3 -> out (B, S, H, Dv), lse (B, H, S) float32 (natural log)."""
    out, lse = _STATE.kernel(q, k, v, softmax_scale, causal, q_descale, k_descale, v_descale)
    return out.contiguous(), lse.contiguous()


@fa3_forward.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    q_descale: torch.Tensor | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, s, h, _ = q.shape
    out_dtype = torch.bfloat16 if q.dtype == FP8 else q.dtype
    return q.new_empty((b, s, h, v.shape[-1]), dtype=out_dtype), q.new_empty((b, h, s), dtype=torch.float32)


def _check_inputs(
    name: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, fp8: bool = False, **kwargs: Any
) -> None:
    if kwargs.get("attn_mask") is not None:
        raise ValueError(f"attention backend {name!r} takes no attn_mask")
    if kwargs.get("dropout_p", 0.0):
        raise ValueError(f"attention backend {name!r} has no dropout")
    if kwargs.get("enable_gqa"):
        raise ValueError(f"attention backend {name!r} is used without GQA (the same head count for q, k and v)")
    if not _STATE.checked:
        return
    if query.device.type != "cuda":
        raise ValueError(f"attention backend {name!r} needs cuda tensors, got {query.device.type}")
    if query.dtype not in (torch.float16, torch.bfloat16) or not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"attention backend {name!r} needs bf16 or fp16 q, k and v, got {query.dtype}/{key.dtype}/{value.dtype}")
    d, dv, multiple = query.shape[-1], value.shape[-1], 16 if fp8 else 8
    if not (8 <= d <= 256 and 8 <= dv <= 256 and d % multiple == 0 and dv % multiple == 0):
        raise ValueError(f"FA3{' in FP8' if fp8 else ''} needs head dims in 8..256 divisible by {multiple}, got ({d}, {dv})")


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, H, D) -> the same in e4m3 with one scale per (batch, head), and the descale (B, H) float32."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-6)
    descale = amax / E4M3_MAX
    return (x.float() / descale[:, None, :, None]).to(FP8), descale


def fp8_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, *, lse: bool = True
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """FP8 q, k (centred), v and their descales, and (with `lse`) the (B, H, S) log-sum-exp correction the centring
    takes away. Computed in float32: under --compile (as measured) inductor fuses it into a few passes; eager, it
    allocates float32 copies of q, k and v for the call."""
    mean_k = key.float().mean(dim=1, keepdim=True)  # (B, 1, H, D)
    correction = scale * torch.einsum("bshd,bhd->bhs", query.float(), mean_k[:, 0]) if lse else None
    q8, qd = quantize(query)
    k8, kd = quantize(key.float() - mean_k)
    v8, vd = quantize(value)
    return (q8, k8, v8, qd, kd, vd), correction


def _forward(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, causal: bool, fp8: bool, lse: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out (B, S, H, D) in query's dtype, and with `lse` the log-sum-exp (B, H, S)."""
    if not fp8:
        out, logsumexp = torch.ops.wanq.fa3_forward(query, key, value, scale, causal, None, None, None)
        return out, logsumexp if lse else None
    (q8, k8, v8, qd, kd, vd), correction = fp8_inputs(query, key, value, scale, lse=lse)
    out, logsumexp = torch.ops.wanq.fa3_forward(q8, k8, v8, scale, causal, qd, kd, vd)
    return out.to(query.dtype), logsumexp + correction if correction is not None else None


def _make_backend(name: str, fp8: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def forward_op(
        ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, _save_ctx: bool = True, **kwargs: Any
    ) -> Any:
        return attention(query, key, value, *args, **{**kwargs, "_parallel_config": None})

    def backward_op(ctx: Any, grad_out: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"attention backend {name!r} is inference-only in wanq (no backward)")

    def attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        return_lse: bool = False,
        _parallel_config: Any = None,
    ) -> Any:
        """(B, S, H, D) in, (B, S, H, D) out, and lse (B, S, H) when asked (diffusers' layout)."""
        _check_inputs(name, query, key, value, fp8=fp8, attn_mask=attn_mask, dropout_p=dropout_p, enable_gqa=enable_gqa)
        if _parallel_config is None:
            out, lse = _forward(query, key, value, fa4.softmax_scale(query, scale), is_causal, fp8, lse=return_lse)
            return (out, lse.transpose(1, 2).contiguous()) if lse is not None else out
        return fa4.context_parallel(query, key, value, is_causal, scale, return_lse, forward_op, backward_op, _parallel_config)

    return attention, forward_op


_fa3_attention, _fa3_forward_op = _make_backend(BACKEND, fp8=False)
_fa3_fp8_attention, _fa3_fp8_forward_op = _make_backend(BACKEND_FP8, fp8=True)


def register() -> list[Any]:
    """Registers "fa3" and "fa3-fp8" with diffusers (once) and returns their enum members."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry, _check_device, _check_shape

    if not _STATE.checked and _STATE.kernel is _fa3_kernel and torch.cuda.is_available():
        _STATE.checked = True
    members = []
    for enum_name, value, function in (("FA3", BACKEND, _fa3_attention), ("FA3_FP8", BACKEND_FP8, _fa3_fp8_attention)):
        member = fa4.add_backend_name(enum_name, value)
        if member not in _AttentionBackendRegistry._backends:
            _AttentionBackendRegistry.register(member, constraints=[_check_device, _check_shape], supports_context_parallel=True)(
                function
            )
        members.append(member)
    return members


def reference_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool,
    q_descale: torch.Tensor | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What FA3's forward computes, in float32 on any device (FP8 inputs times their descales): the stand-in of the
    tests and of the benchmarks' CPU check."""

    def real(x: torch.Tensor, descale: torch.Tensor | None) -> torch.Tensor:
        return x.float() * descale[:, None, :, None] if descale is not None else x.float()

    qf, kf, vf = real(q, q_descale).transpose(1, 2), real(k, k_descale).transpose(1, 2), real(v, v_descale).transpose(1, 2)
    logits = qf @ kf.transpose(-1, -2) * scale  # (B, H, S, S)
    if causal:  # bottom-right aligned, as FA3's
        s_q, s_k = logits.shape[-2:]
        keep = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril(diagonal=s_k - s_q)
        logits = logits.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    out = (torch.softmax(logits, dim=-1) @ vf).transpose(1, 2)
    out_dtype = torch.bfloat16 if q.dtype == FP8 else q.dtype
    return out.to(out_dtype), lse
