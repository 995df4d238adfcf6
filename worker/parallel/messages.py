"""What crosses between the processes of a several-GPU worker: the messages on its pipes (their exit statuses are
in worker/exits.py).

Rank 0 writes `Launch` once, then one `Job` per generation, then `Stop`, down each follower's stdin;
a follower answers `Ready` or `Failed` on its report pipe. On the wire each message is an 8-byte
length and a pickle of the dataclass; both ends are our own processes, running the same code. A
per-job extra (cache settings, ...) is a new typed field of `Job` with a default, and nothing else
changes: `Job.adapters` is rank 0's LoRA slot plan, which every rank applies from its own file cache.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from shared.schemas import GenerationSpec
from shared.settings import EngineSettings, LoraSettings
from worker.cache import DBCacheSetting

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class AdapterSlot:
    """One LoRA in one adapter slot of one transformer, at a strength (worker/lora_slots.py)."""

    expert: str
    """`transformer` (the high-noise expert of A14B, TI2V-5B's only one) or `transformer_2`."""
    slot: int
    sha256: str
    name: str
    strength: float


@dataclass(frozen=True)
class Adapters:
    """A job's LoRA slot plan, decided by rank 0 so that every rank holds the same LoRA in the same slot (the
    same summation order, so the same numbers): what each slot holds, and which transformers run their LoRA
    layers at all (a transformer none of the job's LoRAs touches runs without them)."""

    slots: tuple[AdapterSlot, ...] = ()
    enabled: tuple[str, ...] = ()


@dataclass(frozen=True)
class Launch:
    """A follower's first message: its rank, where the group meets, and how to build its engine."""

    rank: int
    world_size: int
    init_method: str
    settings: EngineSettings
    model_path: Path | None
    model_id: str
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    loras: LoraSettings | None = None
    """The adapter slots and the LoRA file cache (None: no LoRA)."""


@dataclass(frozen=True)
class Job:
    """One generation: what every rank denoises, and the embeddings rank 0 broadcasts right after it
    (the prompt's, then the negative prompt's when guidance is on), so that a follower can receive them."""

    spec: GenerationSpec
    image_png: bytes | None
    embed_shapes: tuple[tuple[int, ...], ...]
    embed_dtype: str
    """A torch dtype's name, e.g. "bfloat16"."""
    adapters: Adapters = Adapters()
    cache: DBCacheSetting | None = None
    """The step cache setting rank 0 resolved for the job (the job's own over the worker's); None = no cache."""

    @classmethod
    def of(
        cls,
        spec: GenerationSpec,
        image: Image.Image | None,
        embeds: Sequence[torch.Tensor],
        adapters: Adapters = Adapters(),
        *,
        cache: DBCacheSetting | None = None,
    ) -> Job:
        png = None
        if image is not None:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            png = buffer.getvalue()
        return cls(
            spec=spec,
            image_png=png,
            embed_shapes=tuple(tuple(e.shape) for e in embeds),
            embed_dtype=str(embeds[0].dtype).removeprefix("torch."),
            adapters=adapters,
            cache=cache,
        )

    def image(self) -> Image.Image | None:
        if self.image_png is None:
            return None
        from PIL import Image

        return Image.open(io.BytesIO(self.image_png)).convert("RGB")


@dataclass(frozen=True)
class Stop:
    """Rank 0 is closing: the follower leaves its loop and exits."""


@dataclass(frozen=True)
class Ready:
    """The follower has loaded its engine and waits for jobs."""


@dataclass(frozen=True)
class Failed:
    """The follower could not load its engine; it exits after this."""

    message: str


Message = Launch | Job | Stop | Ready | Failed


def send(stream: IO[bytes], message: Message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> Message | None:
    """The next message, or None at end of stream (the other side is gone)."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        return None
    message = pickle.loads(data)
    if not isinstance(message, Message):
        raise TypeError(f"unexpected message on a rank pipe: {type(message).__name__}")
    return message
