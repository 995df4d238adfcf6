"""The engine: a resident Wan2.2 diffusers pipeline that turns a GenerationSpec into frames.

Stages are explicit and timed: encode prompt -> denoise -> decode. The engine knows nothing of
Celery, Redis or S3; the runner (worker/runner.py) wires it to those.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, WanImageToVideoPipeline, WanPipeline
from PIL import Image

from shared.errors import InvalidRequest, JobCanceled, OutOfMemory
from shared.schemas import GenerationSpec, Stage
from shared.settings import EngineSettings
from worker import accel

log = logging.getLogger("wanq.engine")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SEQUENCE_LENGTH = 512

StageCallback = Callable[[Stage], None]
StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total); may raise JobCanceled."""


@dataclass
class Generation:
    frames: np.ndarray
    """uint8 [num_frames, height, width, 3]."""
    timings: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)


def detect_variant(model_path: Path) -> str:
    """t2v-a14b, i2v-a14b or ti2v-5b, from the model directory's model_index.json and configs."""
    index = json.loads((model_path / "model_index.json").read_text())
    if index.get("_class_name") == "WanImageToVideoPipeline":
        return "i2v-a14b"
    if index.get("expand_timesteps"):
        return "ti2v-5b"
    return "t2v-a14b"


class PromptCache:
    """Bounded LRU of text-encoder outputs, kept on the CPU, keyed by (model, text)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: tuple[str, str], value: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class WanEngine:
    def __init__(self, model_path: str | Path, settings: EngineSettings, *, model_id: str = "") -> None:
        started = time.perf_counter()
        self.model_path = Path(model_path)
        self.settings = settings
        self.model_id = model_id or self.model_path.name
        self.variant = detect_variant(self.model_path)
        self.device = torch.device(accel.resolve_device(settings.device))
        self.dtype = (
            DTYPES[settings.dtype]
            if settings.dtype != "auto"
            else (torch.float32 if self.device.type == "cpu" else torch.bfloat16)
        )
        if self.device.type == "cpu" and self.dtype is torch.float16:
            raise ValueError("--dtype fp16 is not supported on CPU; use bf16 or fp32")

        # 1. Load the pipeline named by model_index.json
        self.pipe: Any = DiffusionPipeline.from_pretrained(self.model_path, dtype=self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        # TI2V-5B: one set of weights drives both text and image mode (expand_timesteps conditioning).
        self.image_pipe: Any = None
        if self.variant == "ti2v-5b":
            self.image_pipe = WanImageToVideoPipeline(
                tokenizer=self.pipe.tokenizer,
                text_encoder=self.pipe.text_encoder,
                vae=self.pipe.vae,
                scheduler=self.pipe.scheduler,
                transformer=self.pipe.transformer,
                expand_timesteps=True,
            )
            self.image_pipe.set_progress_bar_config(disable=True)
        elif self.variant == "i2v-a14b":
            self.image_pipe = self.pipe

        # 2. Apply the configured placement, offload, parallelism, attention, cache and compile
        self.plan = accel.apply(self.pipe, settings, self.device)
        if self.image_pipe is not None and self.image_pipe is not self.pipe:
            accel.share_placement(self.pipe, self.image_pipe)
        self._schedulers: dict[float, Any] = {}
        self.prompt_cache = PromptCache(settings.prompt_cache_size)
        self.load_time_s = time.perf_counter() - started
        log.info("engine ready", extra={"model": self.model_id, "variant": self.variant, "load_s": round(self.load_time_s, 2)})

    @property
    def has_two_experts(self) -> bool:
        return getattr(self.pipe, "transformer_2", None) is not None

    @property
    def execution_device(self) -> torch.device:
        return torch.device(self.pipe._execution_device)

    # -----------------------------------------------------------------------------------------
    def generate(
        self,
        spec: GenerationSpec,
        image: Image.Image | None = None,
        *,
        on_stage: StageCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> Generation:
        on_stage = on_stage or (lambda stage: None)
        timings: dict[str, float] = {}
        step_times: list[float] = []
        pipe = self._pipeline_for(image)
        try:
            # 1. Encode the prompts (cached per text)
            on_stage(Stage.encoding_prompt)
            t0 = time.perf_counter()
            do_cfg = spec.guidance_scale > 1.0
            prompt_embeds = self.encode_text(spec.prompt)
            negative_embeds = self.encode_text(spec.negative_prompt) if do_cfg else None
            timings["encoding_prompt"] = time.perf_counter() - t0

            # 2. Denoise
            on_stage(Stage.denoising)
            t0 = time.perf_counter()
            latents = self._denoise(pipe, spec, image, prompt_embeds, negative_embeds, on_step, step_times)
            self._sync()
            timings["denoising"] = time.perf_counter() - t0

            # 3. Decode
            on_stage(Stage.decoding)
            t0 = time.perf_counter()
            frames = self.decode(pipe, latents)
            timings["decoding"] = time.perf_counter() - t0
        except torch.OutOfMemoryError as exc:
            self.release_memory()
            raise OutOfMemory(f"out of GPU memory at {spec.size}x{spec.num_frames}: {str(exc).splitlines()[0]}") from None
        except JobCanceled:
            self.release_memory()
            raise
        return Generation(frames=frames, timings=timings, step_times=step_times)

    def encode_text(self, text: str) -> torch.Tensor:
        key = (self.model_id, text)
        cached = self.prompt_cache.get(key)
        if cached is None:
            with torch.no_grad():
                embeds, _ = self.pipe.encode_prompt(
                    prompt=text,
                    do_classifier_free_guidance=False,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                    device=self.execution_device,
                )
            cached = embeds.to("cpu")
            self.prompt_cache.put(key, cached)
        return cached.to(self.execution_device, non_blocking=True)

    def _pipeline_for(self, image: Image.Image | None) -> Any:
        if image is None:
            if self.variant == "i2v-a14b":
                raise InvalidRequest("this model needs an input image", param="input_reference")
            return self.pipe
        if self.image_pipe is None:
            raise InvalidRequest("this model takes no input image", param="input_reference")
        return self.image_pipe

    def _scheduler(self, flow_shift: float) -> Any:
        scheduler = self._schedulers.get(flow_shift)
        if scheduler is None:
            scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config, flow_shift=flow_shift)
            self._schedulers[flow_shift] = scheduler
        return scheduler

    def _denoise(
        self,
        pipe: Any,
        spec: GenerationSpec,
        image: Image.Image | None,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        on_step: StepCallback | None,
        step_times: list[float],
    ) -> torch.Tensor:
        total = spec.num_inference_steps
        last = [time.perf_counter()]

        def callback(_pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now
            if on_step is not None:
                on_step(index + 1, total)  # raising JobCanceled here stops before the next step
            return kwargs

        pipe.scheduler = self._scheduler(spec.flow_shift)
        kwargs: dict[str, Any] = dict(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            height=spec.height,
            width=spec.width,
            num_frames=spec.num_frames,
            num_inference_steps=total,
            guidance_scale=spec.guidance_scale,
            generator=torch.Generator(device="cpu").manual_seed(spec.seed),
            output_type="latent",
            callback_on_step_end=callback,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        if self.has_two_experts and spec.guidance_scale_2 is not None:
            kwargs["guidance_scale_2"] = spec.guidance_scale_2
        if image is not None:
            kwargs["image"] = image
        with torch.no_grad():
            latents = pipe(**kwargs).frames
        return latents  # type: ignore[no-any-return]

    def decode(self, pipe: Any, latents: torch.Tensor) -> np.ndarray:
        """The pipeline's own decode, split out so that it is timed (and overlappable) on its own."""
        vae = pipe.vae
        with torch.no_grad():
            device = accel.module_device(vae)
            latents = latents.to(device=device, dtype=vae.dtype)
            mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(device, latents.dtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(device, latents.dtype)
            video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
            frames = pipe.video_processor.postprocess_video(video, output_type="pt")[0]  # [F, C, H, W] in 0..1
            frames = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        pipe.maybe_free_model_hooks()
        return frames  # type: ignore[no-any-return]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warmup(self) -> float:
        """One small generation so that compile and allocator warm-up never land on a user's job."""
        started = time.perf_counter()
        multiple = 32 if self.variant == "ti2v-5b" else 16
        spec = GenerationSpec(
            model=self.model_id,
            prompt="warmup",
            negative_prompt="",
            width=multiple * 4,
            height=multiple * 4,
            num_frames=5,
            fps=16,
            num_inference_steps=2,
            guidance_scale=2.0,
            guidance_scale_2=2.0 if self.has_two_experts else None,
            flow_shift=5.0,
            seed=0,
        )
        image = Image.new("RGB", (spec.width, spec.height)) if self.variant == "i2v-a14b" else None
        self.generate(spec, image)
        return time.perf_counter() - started


_ = WanPipeline  # the class model_index.json names for T2V-A14B and TI2V-5B
