"""FlashAttention-4 (the locally installed flash-attn-4 package, `flash_attn.cute`) as diffusers' attention backend "fa4".

diffusers 0.42.1's only FA4 backend, `flash_4_hub`, downloads its kernels from a hub at run time and
has no context-parallel support. This one is local and named: `register()` adds a member FA4 = "fa4"
to diffusers' closed `AttentionBackendName` enum (inserted into the enum's own lookup tables, which is
all that `AttentionBackendName("fa4")`, `__members__`, iteration and pickling read) and registers the
backend function with `supports_context_parallel=True`. `native` and every other backend stay as
they are; `set_attention_backend("fa4")`, `attention_backend("fa4")` and `enable_parallelism` then
accept the name.

- The kernel is one `torch.library.custom_op` (`wanq::fa4_forward`) with a fake implementation, so
  regional compile with `fullgraph=True` keeps it as a single graph node and never traces into the
  CuTe-DSL / TVM-FFI code behind it.
- Ulysses and ring attention go through diffusers' own templates with `_fa4_forward_op`, which
  returns the log-sum-exp the ring merge needs in diffusers' layout: (B, S, H), float32, natural log
  (FA4 gives (B, H, S); its LSE is `(row_max * scale_log2 + log2(row_sum)) * ln 2`, a natural log).
- Inference only: the op has no backward (wanq never differentiates through attention).

FA4 4.0.0b36's limits (flash_attn/cute/interface.py): CUDA, bf16/fp16, sm90 head dims 8..256 divisible
by 8, sm100 8..128 (or (192, 128), (256, 256)); no mask, no dropout. Its kernels are JIT-compiled by
the CuTe DSL on the first call per (dtype, head dim, causal) key, not per sequence length (~2.3 s).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

BACKEND = "fa4"
INSTALL = "pip install 'wanq[fa4]' (flash-attn-4[cu13]==4.0.0b36 with nvidia-cutlass-dsl[cu13] and quack-kernels)"
MIN_CAPABILITY = (9, 0)

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, bool], tuple[torch.Tensor, torch.Tensor]]
"""(q, k, v (B, S, H, D), softmax scale, causal) -> (out (B, S, H, Dv) in q's dtype, lse (B, H, S) float32, natural log)."""


def missing_package() -> str | None:
    """What keeps `flash_attn.cute` from importing here, in words with the fix; None if it imports."""
    try:
        importlib.import_module("flash_attn.cute")
    except ModuleNotFoundError as exc:
        name = exc.name or str(exc)
        if name.startswith("flash_attn"):
            return f"--attention-backend fa4 needs the flash-attn-4 package, which is not installed: {INSTALL}"
        return f"--attention-backend fa4: flash-attn-4 is installed but its dependency {name!r} is missing: {INSTALL}"
    except Exception as exc:  # a CUDA library that does not load, an ABI mismatch
        return f"--attention-backend fa4: flash_attn.cute failed to import ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def gpu_problem(name: str, capability: tuple[int, int]) -> str | None:
    if capability < MIN_CAPABILITY:
        return (
            f"--attention-backend fa4 needs a Hopper (sm90) or newer GPU; {name} is sm{capability[0]}{capability[1]}: "
            "use the default backend (cuDNN attention through SDPA)"
        )
    return None


SM90_TILES: dict[tuple[int, bool], dict[str, Any]] = {}
"""(head dim, causal) -> FA4's sm90 forward configuration (`tile_mn`, `intra_wg_overlap`, `num_threads` of
`_flash_attn_fwd`) where one measured faster than FA4's own choice (128 x 128, intra-warpgroup overlap, 384 threads
at head dim 128); see `set_sm90_tile` and benchmarks/RESULTS.md. Empty: FA4 chooses."""


def set_sm90_tile(
    head_dim: int, tile: tuple[int, int] | None, *, causal: bool = False, overlap: bool = True, threads: int = 384
) -> None:
    """Sets (or, with None, clears) the sm90 forward configuration for one head dim: benchmarks compare them with it."""
    if tile is None:
        SM90_TILES.pop((head_dim, causal), None)
    else:
        SM90_TILES[(head_dim, causal)] = {
            "tile_mn": (int(tile[0]), int(tile[1])),
            "intra_wg_overlap": overlap,
            "num_threads": threads,
        }


def _fa4_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    config = SM90_TILES.get((q.shape[-1], causal)) if _STATE.limits == ("cuda", 9) else None
    if config is not None:
        # flash_attn_func takes no tile; its forward is `_flash_attn_fwd`, with FA4's own choice when tile_mn is None
        from flash_attn.cute.interface import _flash_attn_fwd

        out, lse, *_ = _flash_attn_fwd(q, k, v, softmax_scale=scale, causal=causal, return_lse=True, **config)
        return out, lse
    from flash_attn.cute import flash_attn_func

    out, lse = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_lse=True)
    return out, lse


@dataclass
class _State:
    kernel: Kernel = _fa4_kernel
    limits: tuple[str, int] | None = None
    """(device type, compute capability major) whose limits are checked, read once so that dynamo sees constants."""


_STATE = _State()


def use_kernel(kernel: Kernel, *, limits: tuple[str, int] | None = None) -> None:
    """Swaps the kernel behind the op (tests run a float32 reference on the CPU); `limits` None checks none."""
    _STATE.kernel, _STATE.limits = kernel, limits


@torch.library.custom_op("wanq::fa4_forward", mutates_args=())
def fa4_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, H, D) x 3 -> out (B, S, H, Dv) in q's dtype, lse (B, H, S) float32 (natural log)."""
    out, lse = _STATE.kernel(q, k, v, softmax_scale, causal)
    return out.contiguous(), lse.contiguous()  # the layouts the fake promises


@fa4_forward.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    b, s, h, _ = q.shape
    return q.new_empty((b, s, h, v.shape[-1])), q.new_empty((b, h, s), dtype=torch.float32)


def _check_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> None:
    """FA4's own limits, checked in traced Python against constants (diffusers runs constraints only when
    DIFFUSERS_ATTN_CHECKS=1, so the backend function calls this itself)."""
    if kwargs.get("attn_mask") is not None:
        raise ValueError("attention backend 'fa4' takes no attn_mask")
    if kwargs.get("dropout_p", 0.0):
        raise ValueError("attention backend 'fa4' has no dropout")
    if kwargs.get("enable_gqa"):
        raise ValueError("attention backend 'fa4' is used without GQA (the same head count for q, k and v)")
    if _STATE.limits is None:
        return
    device_type, major = _STATE.limits
    if query.device.type != device_type:
        raise ValueError(f"attention backend 'fa4' needs {device_type} tensors, got {query.device.type}")
    if query.dtype not in (torch.float16, torch.bfloat16) or not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"attention backend 'fa4' needs bf16 or fp16 q, k and v, got {query.dtype}/{key.dtype}/{value.dtype}")
    d, dv = query.shape[-1], value.shape[-1]
    if major == 9 and not (8 <= d <= 256 and 8 <= dv <= 256 and d % 8 == 0 and dv % 8 == 0):
        raise ValueError(f"FA4 on sm90 needs head dims in 8..256 divisible by 8, got ({d}, {dv})")
    if major in (10, 11) and not (
        (8 <= d <= 128 and 8 <= dv <= 128 and d % 8 == 0 and dv % 8 == 0) or (d, dv) in ((192, 128), (256, 256))
    ):
        raise ValueError(f"FA4 on sm100 needs head dims in 8..128 divisible by 8, (192, 128) or (256, 256), got ({d}, {dv})")


def softmax_scale(query: torch.Tensor, scale: float | None) -> float:
    return float(scale) if scale is not None else 1.0 / math.sqrt(query.shape[-1])


def _fa4_forward_op(
    ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, _save_ctx: bool = True, **kwargs: Any
) -> Any:
    """The forward op of diffusers' context-parallel templates (the signature of `_flash_attention_forward_op`: ctx,
    then the backend's own arguments): out (B, S, H, D) and, when asked, lse (B, S, H): what the ring merge
    (`sigmoid(lse - prev_lse)`) and the Ulysses all-to-all take, and what the flash, cuDNN and FA3 ops return."""
    return _fa4_attention(query, key, value, *args, **{**kwargs, "_parallel_config": None})


def _fa4_backward_op(ctx: Any, grad_out: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("attention backend 'fa4' is inference-only in wanq (no backward)")


def _fa4_attention(
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
    """The registered backend: (B, S, H, D) in, (B, S, H, D) out, and lse (B, S, H) when asked."""
    _check_inputs(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, enable_gqa=enable_gqa)
    if _parallel_config is None:
        out, lse = torch.ops.wanq.fa4_forward(query, key, value, softmax_scale(query, scale), is_causal)
        return (out, lse.transpose(1, 2).contiguous()) if return_lse else out  # (B, H, S) -> diffusers' (B, S, H)
    return context_parallel(query, key, value, is_causal, scale, return_lse, _fa4_forward_op, _fa4_backward_op, _parallel_config)


def context_parallel(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    is_causal: bool,
    scale: float | None,
    return_lse: bool,
    forward_op: Callable[..., Any],
    backward_op: Callable[..., Any],
    parallel_config: Any,
) -> Any:
    """Ulysses / ring attention through diffusers' own templates, with a backend's forward op (fa4's, fa3's)."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    return _templated_context_parallel_attention(
        query,
        key,
        value,
        None,
        0.0,
        is_causal,
        scale,
        False,
        return_lse,
        forward_op=forward_op,
        backward_op=backward_op,
        _parallel_config=parallel_config,
    )


def _add_enum_member(enum_cls: Any, name: str, value: str) -> Any:
    """Adds `name = value` to a closed `str` Enum in place (Python 3.11-3.13), once.

    Everything diffusers does with a backend name goes through these tables: `Enum(value)`
    (`_value2member_map_`), `__members__` (`_member_map_`), iteration (`_member_names_`), `Enum.NAME`
    (the class attribute) and pickling (by value)."""
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        return existing
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member._sort_order_ = len(enum_cls._member_names_)
    member.__objclass__ = enum_cls
    member.__init__(value)
    if hasattr(enum_cls, "_add_member_"):  # Python >= 3.13 sets the map entry and the class attribute
        enum_cls._add_member_(name, member)
    else:
        enum_cls._member_map_[name] = member
        type.__setattr__(enum_cls, name, member)
    if name not in enum_cls._member_names_:
        enum_cls._member_names_.append(name)
    enum_cls._value2member_map_[value] = member
    return member


def add_backend_name(enum_name: str, value: str) -> Any:
    """Adds a backend name to diffusers' `AttentionBackendName` (once) and returns the member (fa4, fa3, fa3-fp8)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return _add_enum_member(AttentionBackendName, enum_name, value)


def register() -> Any:
    """Registers the backend "fa4" with diffusers (once) and returns its enum member. Availability is checked
    at start (its registry entry, worker/options/attention.py), not here: registering needs neither the package nor a GPU."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, _check_device, _check_shape

    member = _add_enum_member(AttentionBackendName, "FA4", BACKEND)
    if _STATE.kernel is _fa4_kernel and _STATE.limits is None and torch.cuda.is_available():
        _STATE.limits = ("cuda", torch.cuda.get_device_capability()[0])
    if member not in _AttentionBackendRegistry._backends:
        _AttentionBackendRegistry.register(
            member, constraints=[_check_device, _check_shape, _check_inputs], supports_context_parallel=True
        )(_fa4_attention)
    return member
