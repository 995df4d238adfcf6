"""What the attention backends' tests share (tests/worker/test_fa4.py, test_fa3.py): the tiny transformer and its
inputs, diffusers' process-wide backend put back after a test, and one backend's Ulysses and ring results gathered
from the ranks of a gloo group."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import torch

from worker.tiny_model import build_tiny_pipeline


def transformer_and_inputs() -> tuple[Any, dict[str, Any]]:
    model = build_tiny_pipeline("ti2v-5b").transformer.eval()
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(2, model.config.in_channels, 3, 8, 8, generator=g),
        timestep=torch.tensor([500.0, 500.0]),
        encoder_hidden_states=torch.randn(2, 512, model.config.text_dim, generator=g),
        return_dict=False,
    )
    return model, inputs


def keep_active_backend() -> Iterator[None]:
    """diffusers' `set_attention_backend` also makes the backend the process-wide default: put it back (a fixture's body)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def context_parallel_results(
    member: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rank: int, world: int
) -> dict[str, list[torch.Tensor]]:
    """In a rank of an initialized gloo group: `member`'s attention of this rank's share of the tokens under Ulysses
    and under ring attention, out and LSE gathered over the ranks, by mode."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from torch.distributed.device_mesh import init_device_mesh

    results = {}
    for name, ring, ulysses in (("ulysses", 1, world), ("ring", world, 1)):
        mesh = init_device_mesh("cpu", (ring, ulysses), mesh_dim_names=("ring", "ulysses"))
        config = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=mesh)
        config.setup(rank, world, torch.device("cpu"), mesh)
        local = [x.chunk(world, dim=1)[rank].contiguous() for x in (q, k, v)]  # the model's split of the tokens
        out, lse = dispatch_attention_fn(
            *local,
            backend=member,
            parallel_config=ParallelConfig(context_parallel_config=config),
            attention_kwargs={"return_lse": True},
        )
        gathered = []
        for tensor in (out, lse):
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.contiguous())
            gathered.append(torch.cat(parts, 1))
        results[name] = gathered
    return results
