"""The engine: a resident Wan2.2 diffusers pipeline that turns a GenerationSpec into frames.

Stages are explicit and timed: encode prompt -> denoise -> decode. The engine knows nothing of
Celery, Redis or S3; the runner (worker/runner.py) wires it to those. With `num_gpus > 1` there
is one engine per rank (worker/parallel/): each is given its `Member` of the group, and rank 0's
is also given its `Followers`, to which it sends each job; rank 0 alone encodes the prompt, decodes
and returns frames. worker/startup.py starts the group and builds rank 0's engine.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from diffusers import DiffusionPipeline, WanImageToVideoPipeline, WanPipeline
from PIL import Image

from shared.errors import InvalidRequest, JobCanceled, OutOfMemory
from shared.schemas import GenerationSpec, Stage
from shared.settings import EngineSettings, LoraSettings
from worker import accel, cfg_batch, fused_lora, lora_slots, pipeline_dir, uniform_timestep
from worker.cache import DBCacheSetting, StepCache, check_fits, resolve
from worker.exits import ExitStatus
from worker.lora_cache import LoraCache
from worker.lora_slots import LoraSlots
from worker.options import cache as cache_options
from worker.options.option import context_parallel
from worker.parallel import mesh
from worker.parallel.messages import Adapters, Job
from worker.pipeline_dir import transformers_of
from worker.previews import Previewer, Publish
from worker.taehv import TINY_FILE, Taehv, load_taehv

log = logging.getLogger("wanq.engine")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SEQUENCE_LENGTH = 512

StageCallback = Callable[[Stage], None]
StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total); may raise JobCanceled."""
FrameSink = Callable[[np.ndarray], None]
"""Given the decoded frames (uint8 [n, H, W, 3]) chunk by chunk, in order, as the decode makes them."""


@dataclass
class Generation:
    frames: np.ndarray
    """uint8 [num_frames, height, width, 3]."""
    timings: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)
    latents: torch.Tensor | None = None
    """The denoised latents (before decoding), for comparisons across configurations."""
    cache: dict[str, Any] | None = None
    """What the step cache did (its setting, per expert the calls and cached calls, the share of blocks skipped)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """cuDNN / cuBLAS report a failed workspace allocation as a plain RuntimeError."""
    text = str(exc)
    return "out of memory" in text.lower() or "ALLOC_FAILED" in text


def load_factory(factory: str) -> Callable[..., Any]:
    """'package.module:function' -> the function (a pipeline builder, e.g. for random-weight benchmarks)."""
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def load_vae(path: str | Path, dtype: torch.dtype, *, model_path: Path | None = None) -> Any:
    """A Wan VAE from a diffusers directory (its own config.json, or a `vae/` subfolder) or a single weights
    file (.safetensors / .pth, original Wan or diffusers keys; the config is the model's own VAE config)."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    if path.is_file():
        config: dict[str, Any] = {"config": str(model_path), "subfolder": "vae"} if model_path is not None else {}
        return AutoencoderKLWan.from_single_file(str(path), torch_dtype=dtype, local_files_only=True, **config)
    for folder in (path, path / "vae"):
        if (folder / "config.json").exists():
            return AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    raise ValueError(
        f"--vae-path {path} is neither a weights file nor a diffusers directory with config.json (or vae/config.json)"
    )


def check_vae(vae: Any, transformer: Any, vae_path: str) -> None:
    """The VAE's latent channels must be the transformer's (Wan2.1's VAE has 16, Wan2.2's 48)."""
    z_dim, channels = vae.config.z_dim, transformer.config.out_channels
    if z_dim != channels:
        raise ValueError(
            f"--vae-path {vae_path} has {z_dim} latent channels but the transformer makes {channels}: "
            "TI2V-5B needs a Wan2.2 VAE (48), the A14B models a Wan2.1 VAE (16)"
        )


def decode_latents(vae: Any, video_processor: Any, latents: torch.Tensor, on_frames: FrameSink | None = None) -> np.ndarray:
    """Latents -> uint8 frames [F, H, W, 3]: the Wan pipelines' own decode (un-normalize, VAE, postprocess).

    With `on_frames`, each chunk of frames goes to it as soon as the VAE's temporal loop has made it (a forward hook
    on `vae.decoder`, which diffusers calls once per latent frame with its causal cache), so an MP4 encoder can run
    beside the decode (export.Mp4Stream). The chunks get the same elementwise postprocess as the whole video, so the
    frames are the same bytes either way. On a GPU each chunk is copied to pinned host memory without a sync and
    handed over by a relay thread once its copy is done: the decode never waits for the encoder or the copy. A
    tiled or compiled decoder is not hooked: it gets the frames at the end."""
    with torch.no_grad():
        device = accel.module_device(vae)
        latents = latents.to(device=device, dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(device, latents.dtype)
        if on_frames is None or not _streamable(vae):
            video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
            frames = _uint8_frames(video_processor, video).cpu().numpy()
            if on_frames is not None:
                on_frames(frames)
            return frames  # type: ignore[no-any-return]
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        patch = vae.config.patch_size
        relay = _Relay(on_frames)

        def streamed(_module: Any, _args: Any, out: torch.Tensor) -> None:
            video = unpatchify(out, patch_size=patch) if patch is not None else out
            relay.put(_uint8_frames(video_processor, video.clamp(-1.0, 1.0)))

        hook = vae.decoder.register_forward_hook(streamed)
        try:
            video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        except BaseException:
            relay.close(raise_error=False)  # the decode's own error (an OOM, say) is the one that counts
            raise
        finally:
            hook.remove()
        chunks = relay.close()
        if sum(len(c) for c in chunks) != video.shape[2]:
            raise RuntimeError(f"streamed decode made {sum(len(c) for c in chunks)} frames, the VAE {video.shape[2]}")
        return np.concatenate(chunks)


class _Relay:
    """Chunks of uint8 frames on the decode's device -> `on_frames`, in order. On a GPU: an asynchronous copy to
    pinned memory and an event per chunk, and a thread that waits for each event before handing the chunk over."""

    def __init__(self, on_frames: FrameSink) -> None:
        self.on_frames = on_frames
        self.chunks: list[np.ndarray] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[torch.Tensor, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def put(self, frames: torch.Tensor) -> None:
        if frames.device.type != "cuda":
            self._deliver(frames.numpy())
            return
        host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
        with torch.cuda.device(frames.device):  # the copy's stream and device, whatever the current device is
            host.copy_(frames, non_blocking=True)
            done = torch.cuda.Event(blocking=True)  # the relay thread sleeps on it instead of spinning a core
            done.record(torch.cuda.current_stream(frames.device))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wanq-decode-relay", daemon=True)
            self._thread.start()
        self._queue.put((host, done))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            host, done = item
            try:
                done.synchronize()
            except BaseException as exc:  # a CUDA error: kept for close(), the rest of the queue drained
                self.error = self.error or exc
                continue
            self._deliver(host.numpy())

    def _deliver(self, frames: np.ndarray) -> None:
        if self.error is not None:
            return
        self.chunks.append(frames)
        try:
            self.on_frames(frames)
        except BaseException as exc:  # raised again by close(), on the decode's thread
            self.error = exc

    def close(self, *, raise_error: bool = True) -> list[np.ndarray]:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self.error is not None and raise_error:
            raise self.error
        return self.chunks


def _streamable(vae: Any) -> bool:
    """Whether decode_latents can hand frames over chunk by chunk: one decoder call per latent frame (no tiling), and
    an eager decoder (a hook inside a compiled one would break its graph)."""
    return not getattr(vae, "use_tiling", False) and getattr(vae.decoder, "_compiled_call_impl", None) is None


def _uint8_frames(video_processor: Any, video: torch.Tensor) -> torch.Tensor:
    """The VAE's [1, C, F, H, W] in -1..1 -> uint8 [F, H, W, 3] (on the VAE's device)."""
    frames = video_processor.postprocess_video(video, output_type="pt")[0]  # [F, C, H, W] in 0..1
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # type: ignore[no-any-return]


def rank_device(settings: EngineSettings, rank: int) -> torch.device:
    """The device a rank computes on: the configured one, or cuda:<rank> with several GPUs."""
    device = accel.resolve_device(settings.device)
    return mesh.device_for(device, rank) if settings.num_gpus > 1 else torch.device(device)


class Followers(Protocol):
    """Rank 0's handle on the other ranks (worker.parallel.group.Group): each job goes to them before
    rank 0 broadcasts its embeddings; a job that fails mid-denoise ends them at once; `close` stops them."""

    def send_job(self, job: Job) -> None: ...

    def kill(self) -> None: ...

    def stop(self) -> None: ...

    def exit_if_one_died(self, within_s: float = 0.0) -> None: ...


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


def gpu_defaults(settings: EngineSettings, device: torch.device) -> EngineSettings:
    """The options left unset (None) that are on where they were measured faster (benchmarks/RESULTS.md): on a CUDA
    GPU, each where nothing else in the settings keeps it from applying; off on the CPU.
    - `vae_channels_last`: cuDNN's NDHWC conv3d, 7% faster decode at 720p; frames at most 4 levels of 255 apart.
    - `fused_ffn`: not with FP8 linears (they run torchao's product) nor `--offload sequential` (its per-layer hooks).
    - `vae_fused`: not with offload hooks on the VAE."""
    from worker.options import decode

    cuda = device.type == "cuda"
    update: dict[str, bool] = {}
    if settings.vae_channels_last is None:
        update["vae_channels_last"] = cuda
    if settings.fused_ffn is None:
        update["fused_ffn"] = cuda and settings.quantization != "fp8" and settings.offload != "sequential"
    if settings.vae_fused is None:
        update["vae_fused"] = cuda and not decode.vae_has_hooks(settings)
    return settings.model_copy(update=update) if update else settings


class WanEngine:
    """One resident pipeline. `model_path` is a diffusers directory; `factory` ('module:function',
    called with device, dtype and text_encoder) builds the pipeline instead (benchmarks). With several
    GPUs, every rank's engine is given its `member`, and rank 0's its `followers` too. `loras`: the
    adapter slots to create (worker/lora_slots.py) and the file cache to read LoRAs from; None: no LoRA."""

    def __init__(
        self,
        model_path: str | Path | None,
        settings: EngineSettings,
        *,
        model_id: str = "",
        factory: str | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        member: mesh.Member | None = None,
        followers: Followers | None = None,
        loras: LoraSettings | None = None,
    ) -> None:
        started = time.perf_counter()
        if model_path is None and factory is None:
            raise ValueError("WanEngine needs a model_path or a factory")
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = rank_device(settings, member.rank if member else 0)
        settings = gpu_defaults(settings, self.device)
        self.settings = settings
        self.factory, self.factory_kwargs = factory, dict(factory_kwargs or {})
        self.dtype = (
            DTYPES[settings.dtype]
            if settings.dtype != "auto"
            else (torch.float32 if self.device.type == "cpu" else torch.bfloat16)
        )
        # 1. Refuse an impossible configuration before anything loads (the engine options: worker/startup.py)
        lora_slots.check_settings(settings, loras)
        if settings.num_gpus > 1 and member is None:
            raise ValueError(
                f"num_gpus is {settings.num_gpus}: build the engine with worker.startup.start_engine, "
                "which starts the other ranks and joins their group"
            )
        self.model_id = model_id or (self.model_path.name if self.model_path is not None else "")
        self.member = member
        self.followers = followers
        self.broken = False
        """A several-GPU job failed mid-denoise: the ranks cannot agree any more; restart the process."""

        # 2. Load the pipeline (followers skip the text encoder: rank 0 broadcasts the embeddings)
        self.pipe: Any = self._load(text_encoder=self.is_leader)
        self.pipe.set_progress_bar_config(disable=True)
        self.variant = (
            pipeline_dir.variant_of(pipeline_dir.inspect(self.model_path), self.model_path)
            if self.model_path is not None
            else pipeline_dir.variant_of(pipeline_dir.shape_of(self.pipe), f"the pipeline {factory}() built")
        )
        self.model_id = self.model_id or self.variant
        # The tiny decoder of previews and draft decodes (rank 0 only): --preview-vae-path, else a tiny model's own
        self.preview_decoder: Taehv | None = self._preview_decoder() if self.is_leader else None
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

        # 3. A LoRA fused into the weights (--fuse-lora), then the adapter slots, before placement, parallelism and
        # compile (worker/lora_slots.py says why)
        self.fused_loras = fused_lora.fuse_configured(self.pipe, settings)
        self.adapters: LoraSlots | None = None
        self.lora_cache: LoraCache | None = None
        if loras is not None and loras.max_resident > 0:
            self.adapters = LoraSlots(self.pipe, slots=loras.max_resident, rank=loras.max_rank, device=self.device)
            self.lora_cache = LoraCache.from_settings(loras)
        self._warming = False

        # 4. Apply the configured placement, offload, parallelism, attention, FP8, decode options and compile
        self.plan = accel.apply(self.pipe, settings, self.device, member=self.member, sync_weights=factory is not None)
        if self.image_pipe is not None and self.image_pipe is not self.pipe:
            accel.share_placement(self.pipe, self.image_pipe)
        if self.variant == "ti2v-5b" and not context_parallel(settings):
            uniform_timestep.install(self.pipe.transformer)  # text-to-video jobs: one timestep, not one per token
        # 5. The step cache wraps the forward it finds (offload hooks, CFG-parallel hook): installed after them,
        # now if the worker caches by default, else at the first job that asks.
        self.step_cache: StepCache | None = None
        if settings.cache != "none":
            self._step_cache()
        self._schedulers: dict[float, Any] = {}
        self.prompt_cache = PromptCache(settings.prompt_cache_size)
        self.load_time_s = time.perf_counter() - started
        log.info(
            "engine ready",
            extra={
                "model": self.model_id,
                "variant": self.variant,
                "load_s": round(self.load_time_s, 2),
                "plan": self.plan.__dict__,
            },
        )

    def _load(self, *, text_encoder: bool) -> Any:
        vae = load_vae(self.settings.vae_path, self.dtype, model_path=self.model_path) if self.settings.vae_path else None
        if self.factory is not None:
            pipe = load_factory(self.factory)(
                device=self.device, dtype=self.dtype, text_encoder=text_encoder, **self.factory_kwargs
            )
            if vae is not None:
                pipe.register_modules(vae=vae)
        else:
            assert self.model_path is not None
            extra: dict[str, Any] = {} if text_encoder else {"text_encoder": None}
            if vae is not None:
                extra["vae"] = vae  # the model's own VAE is never loaded
            pipe = DiffusionPipeline.from_pretrained(self.model_path, dtype=self.dtype, **extra)
        if vae is not None:
            check_vae(pipe.vae, pipe.transformer, self.settings.vae_path)
        return pipe

    def _preview_decoder(self) -> Taehv | None:
        """The TAEHV checkpoint of --preview-vae-path (a ValueError in one sentence if its latent channels are not
        the model's), else the tiny random-weight one beside a tiny model (worker/tiny_model.py), else none."""
        path = self.settings.preview_vae_path
        if not path:
            beside = self.model_path / TINY_FILE if self.model_path is not None else None
            if beside is None or not beside.is_file():
                return None
            path = str(beside)
        elif not Path(path).is_file():
            raise ValueError(f"--preview-vae-path {path} is not a file: give a TAEHV checkpoint (taew2_1 or taew2_2)")
        try:
            return load_taehv(path, latent_channels=int(self.pipe.vae.config.z_dim), device=self.device)
        except ValueError:
            raise
        except Exception as exc:  # a corrupt or foreign file: still one sentence, at start
            raise ValueError(f"--preview-vae-path {path} is not a TAEHV checkpoint: {exc}") from None

    def preview_every(self, spec: GenerationSpec) -> int:
        """Steps between a job's previews: its own `preview_every`, else the worker's (0: none)."""
        return self.settings.preview_every if spec.preview_every is None else spec.preview_every

    def _check_decoder(self, spec: GenerationSpec) -> None:
        if spec.decoder == "tiny" and self.preview_decoder is None:
            raise InvalidRequest(
                'this worker has no tiny decoder (--preview-vae-path): send "decoder": "full" or omit it', param="decoder"
            )

    def _step_cache(self) -> StepCache:
        if self.step_cache is None:
            self.step_cache = StepCache(self.pipe, cfg_parallel=self.settings.cfg_parallel)
        return self.step_cache

    def cache_for(self, spec: GenerationSpec) -> DBCacheSetting | None:
        """The cache setting a job runs with (its `cache` over the worker's), refused where this worker cannot."""
        setting = resolve(self.settings, spec.cache)
        if setting is None:
            return None
        if cache_options.refused_here(self.settings):
            raise InvalidRequest(
                "this worker splits each video over several GPUs (--ulysses-degree / --ring-degree), where the step "
                'cache is not supported: send "cache": false or omit it',
                param="cache",
            )
        check_fits(setting, self.pipe)  # on rank 0, before any rank starts the job
        return setting

    @property
    def is_leader(self) -> bool:
        return self.member is None or self.member.is_leader

    @property
    def has_two_experts(self) -> bool:
        return len(transformers_of(self.pipe)) == 2

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
        on_preview: Publish | None = None,
        on_frames: FrameSink | None = None,
    ) -> Generation:
        """`on_preview(steps done, MP4 path)`: called on the preview thread with each preview (worker/previews.py),
        when the job asks for previews (`preview_every`) and this worker has a tiny decoder. `on_frames`: given the
        decoded frames as the decode makes them (decode_latents), e.g. an MP4 encoder that runs beside the decode;
        `Generation.frames` holds them all either way."""
        if self.broken:
            # The previous job failed while every rank was inside the same collectives.
            log.critical("several-GPU engine is broken since its last job failed mid-denoise: restarting the worker")
            logging.shutdown()
            os._exit(ExitStatus.BROKEN)
        on_stage = on_stage or (lambda stage: None)
        timings: dict[str, float] = {}
        step_times: list[float] = []
        pipe = self._pipeline_for(image)
        self._check_spec(pipe, spec)
        adapters = self._adapter_plan(spec)
        cache = self.cache_for(spec)
        self._check_decoder(spec)
        previewer = self._previewer(spec, on_preview)
        in_group = False
        out_of_memory = ""
        try:
            # 1. Encode the prompts (cached per text). Guidance 1 or less: no negative prompt, and the pipeline runs
            # one transformer forward per step (diffusers' Wan pipelines guide only when guidance_scale > 1).
            on_stage(Stage.encoding_prompt)
            t0 = time.perf_counter()
            do_cfg = spec.guidance_scale > 1.0
            prompt_embeds = self.encode_text(spec.prompt)
            negative_embeds = self.encode_text(spec.negative_prompt) if do_cfg else None
            timings["encoding_prompt"] = time.perf_counter() - t0

            # 2. The job's LoRAs into the adapter slots (a file is read only when its slot does not hold it yet)
            if self.adapters is not None:
                loaded = self._apply_adapters(adapters)
                if loaded:
                    timings["loading_loras"] = loaded

            # 3. Denoise (every rank from here on)
            on_stage(Stage.denoising)
            t0 = time.perf_counter()
            if self.followers is not None:
                in_group = True
                embeds = [e for e in (prompt_embeds, negative_embeds) if e is not None]
                self.followers.send_job(Job.of(spec, image, embeds, adapters, cache=cache))
                prompt_embeds, negative_embeds = self._share_embeds(prompt_embeds, negative_embeds)
            callback = self._leader_callback(on_step, step_times, spec, previewer)
            if self.settings.cfg_batch:
                # one batch-2 forward per step when the job guides; the step cache keeps two (its state is per branch)
                cfg_batch.set_negative(transformers_of(pipe), negative_embeds if cache is None else None)
            try:
                latents = self._denoise(pipe, spec, image, prompt_embeds, negative_embeds, callback, cache)
            finally:
                if self.settings.cfg_batch:
                    cfg_batch.set_negative(transformers_of(pipe), None)
                if previewer is not None:
                    previewer.close()  # waits for the preview in flight: a canceled job keeps its last one
                    shutil.rmtree(previewer.folder, ignore_errors=True)
            self._sync()
            in_group = False
            timings["denoising"] = time.perf_counter() - t0
            cache_stats = self._cache_done()  # its residual buffers go before the decode needs the memory

            # 4. Decode (rank 0 only)
            on_stage(Stage.decoding)
            t0 = time.perf_counter()
            if spec.decoder == "tiny":
                assert self.preview_decoder is not None  # _check_decoder
                frames = self.preview_decoder.decode_frames(latents)  # the draft: normalized latents in, frames out
                if on_frames is not None:
                    on_frames(frames)
            else:
                frames = self.decode(pipe, latents, on_frames)
            timings["decoding"] = time.perf_counter() - t0
        except torch.OutOfMemoryError as exc:
            out_of_memory = str(exc).splitlines()[0]
        except JobCanceled:
            self.release_memory()
            raise
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                self._after_failure(in_group)
                raise
            out_of_memory = str(exc).splitlines()[0]
        except BaseException:
            self._after_failure(in_group)
            raise
        if out_of_memory:
            # Outside the except block: the traceback (and the tensors its frames hold) is gone,
            # so the memory really returns to the allocator and the next job starts clean.
            self._after_failure(in_group)
            raise OutOfMemory(f"out of GPU memory at {spec.size}x{spec.num_frames}: {out_of_memory[:300]}")
        if cache_stats is not None and cache_stats["setting"] is not None:
            log.info("step cache", extra={"skipped_share": cache_stats["blocks_skipped_share"], **cache_stats["setting"]})
        return Generation(frames=frames, timings=timings, step_times=step_times, latents=latents, cache=cache_stats)

    def follow(self, job: Job) -> None:
        """A follower rank's part of one job: the same LoRAs in the same slots, then the same denoising, step for
        step with rank 0."""
        spec = job.spec
        image = job.image()
        if self.adapters is not None:
            self._apply_adapters(job.adapters)
        dtype = getattr(torch, job.embed_dtype)
        shapes = job.embed_shapes
        prompt_embeds = torch.empty(shapes[0], dtype=dtype, device=self.device)
        negative_embeds = torch.empty(shapes[1], dtype=dtype, device=self.device) if len(shapes) > 1 else None
        prompt_embeds, negative_embeds = self._share_embeds(prompt_embeds, negative_embeds)
        assert self.member is not None
        member = self.member

        def callback(_pipe: Any, _index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if member.agree_stop(False):
                raise JobCanceled("canceled")
            return kwargs

        try:
            self._denoise(self._pipeline_for(image), spec, image, prompt_embeds, negative_embeds, callback, job.cache)
        finally:
            self._cache_done()
            self.release_memory()

    def _adapter_plan(self, spec: GenerationSpec) -> Adapters:
        """Rank 0's choice of slot for each of the job's LoRAs (InvalidRequest before anything runs if they cannot fit)."""
        if self.adapters is None:
            if spec.loras:
                raise InvalidRequest(
                    "this worker has no LoRA adapter slots (WANQ_LORAS_MAX_RESIDENT=0, or the engine was built without them)",
                    param="loras",
                )
            return Adapters()
        if self._warming and not spec.loras:
            return self.adapters.warm()
        return self.adapters.plan(spec.loras)

    def _apply_adapters(self, adapters: Adapters) -> float:
        assert self.adapters is not None and self.lora_cache is not None
        return self.adapters.apply(adapters, self.lora_cache.path)

    def _share_embeds(self, prompt: torch.Tensor, negative: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rank 0's embeddings on every rank; CFG rank 1 takes the negative prompt as its "prompt"."""
        assert self.member is not None
        prompt = self.member.broadcast(prompt.to(self.device).contiguous())
        if negative is not None:
            negative = self.member.broadcast(negative.to(self.device).contiguous())
        if self.settings.cfg_parallel:
            mesh.set_cfg_active(transformers_of(self.pipe), negative is not None)
            if negative is not None and self.member.cfg_rank == 1:
                return negative, prompt
        return prompt, negative

    def _previewer(self, spec: GenerationSpec, publish: Publish | None) -> Previewer | None:
        every = self.preview_every(spec)
        if every <= 0 or publish is None or self.preview_decoder is None or spec.kind == "image":
            return None
        folder = Path(tempfile.mkdtemp(prefix="wanq-previews-"))

        def publish_and_forget(done: int, path: Path) -> None:
            try:
                publish(done, path)
            finally:
                path.unlink(missing_ok=True)

        return Previewer(
            self.preview_decoder,
            every=every,
            total=spec.num_inference_steps,
            fps=spec.fps,
            folder=folder,
            publish=publish_and_forget,
        )

    def _leader_callback(
        self, on_step: StepCallback | None, step_times: list[float], spec: GenerationSpec, previewer: Previewer | None = None
    ) -> Callable[..., Any]:
        total = spec.num_inference_steps
        last = [time.perf_counter()]
        member = self.member
        before: list[torch.Tensor | None] = [None]  # the latents before the step (those after the previous one)

        def callback(pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now
            if previewer is not None:
                latents = kwargs["latents"]
                previewer.after_step(pipe.scheduler, before[0] if before[0] is not None else latents, latents, index + 1)
                before[0] = latents
            stop: BaseException | None = None
            if on_step is not None:
                try:
                    on_step(index + 1, total)  # raising JobCanceled here stops before the next step
                except BaseException as exc:
                    stop = exc
            if member is not None and member.agree_stop(stop is not None) and stop is None:
                stop = JobCanceled("canceled")
            if stop is not None:
                raise stop
            return kwargs

        return callback

    def _after_failure(self, in_group: bool) -> None:
        if in_group and self.followers is not None:
            # A collective that failed because a follower died is that death: exit as the watchdog would.
            self.followers.exit_if_one_died(within_s=1.0)
            # Otherwise the followers wait in a collective that rank 0 will never join: end them now.
            log.error("job failed mid-denoise on rank 0: stopping the other ranks; the next job restarts the worker")
            self.followers.kill()
            self.broken = True
        self.release_memory()

    def _check_spec(self, pipe: Any, spec: GenerationSpec) -> None:
        """Context parallelism splits the video tokens evenly over ring x ulysses ranks."""
        degree = self.settings.ulysses_degree * self.settings.ring_degree
        if degree == 1:
            return
        patch = self.pipe.transformer.config.patch_size
        latent_frames = (spec.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        tokens = (
            latent_frames
            * (spec.height // pipe.vae_scale_factor_spatial // patch[1])
            * (spec.width // pipe.vae_scale_factor_spatial // patch[2])
        )
        if tokens % degree:
            raise InvalidRequest(
                f"size {spec.size} with {spec.num_frames} frames gives {tokens} video tokens, which this worker's "
                f"{degree} context-parallel ranks cannot split evenly; pick another size or frame count",
                param="size",
            )

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
        callback: Callable[..., Any],
        cache: DBCacheSetting | None = None,
    ) -> torch.Tensor:
        pipe.scheduler = self._scheduler(spec.flow_shift)
        uniform_timestep.set_uniform(pipe.transformer, image is None)
        if cache is not None or self.step_cache is not None:
            self._step_cache().prepare(
                cache, num_inference_steps=spec.num_inference_steps, do_cfg=spec.guidance_scale > 1.0, scheduler=pipe.scheduler
            )
        kwargs: dict[str, Any] = dict(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            height=spec.height,
            width=spec.width,
            num_frames=spec.num_frames,
            num_inference_steps=spec.num_inference_steps,
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
        try:
            with torch.no_grad():
                latents = pipe(**kwargs).frames
        finally:
            uniform_timestep.set_uniform(pipe.transformer, False)
        return latents  # type: ignore[no-any-return]

    def decode(self, pipe: Any, latents: torch.Tensor, on_frames: FrameSink | None = None) -> np.ndarray:
        """The pipeline's own decode, split out so that it is timed (and overlappable) on its own."""
        frames = decode_latents(pipe.vae, pipe.video_processor, latents, on_frames)
        pipe.maybe_free_model_hooks()
        return frames

    def _cache_done(self) -> dict[str, Any] | None:
        """What the step cache did in the job that just ran; its buffers are freed."""
        if self.step_cache is None:
            return None
        stats = self.step_cache.stats()
        self.step_cache.release()
        return stats

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release_memory(self) -> None:
        if self.step_cache is not None:
            self.step_cache.release()
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
        if self.adapters is not None:
            # The graph LoRA jobs run (LoRA layers on) is another one: made here too, every strength at 0.
            self._warming = True
            try:
                self.generate(spec, image)
            finally:
                self._warming = False
        return time.perf_counter() - started

    def close(self) -> None:
        """Stops the follower ranks (several GPUs); the engine is unusable afterwards."""
        if self.followers is not None:
            self.followers.stop()
            self.followers = None
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


_ = WanPipeline  # the class model_index.json names for T2V-A14B and TI2V-5B
