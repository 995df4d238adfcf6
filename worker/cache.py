"""cache-dit's DBCache on a resident Wan2.2 pipeline: installed once, set per job, one context per expert.

DBCache computes the first `fn` blocks on every step and compares their residual with the previous
step's; when it moved less than `rdt` (relative), the middle blocks are skipped and their residual
from the last computed step is reused (TaylorSeer optionally extrapolates it), the last `bn` blocks
run again. Lossy by construction; `rdt` 0 never skips.

How it is wired (cache-dit 1.5.3):
- Installed on the transformers only (a `BlockAdapter` without the pipeline), so cache-dit keeps
  persistent contexts on the transformers and leaves the pipeline classes alone; TI2V-5B's image
  pipeline, which shares the transformer, sees the same context. Two-expert models (A14B) get one
  context per expert, each counting only its own steps.
- Installed after placement (offload hooks) and compile: cache-dit wraps the forward it finds, and
  regional compile's blocks stay compiled (no graph break: the cache decisions run outside them).
- `prepare` before every job replaces each expert's context with a fresh one built from exactly that
  job's setting and step count (nothing carried over from the previous job, step count changes
  included); `None` puts the uncached forward back for the job.
- With CFG-parallel each rank runs one branch per step, so branches are not told apart by call
  parity; cache-dit averages the residual test over all ranks (`dist.all_reduce`), so every rank
  skips the same steps.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from shared.schemas import CacheOptions, CacheStats, DBCacheSetting, JobCache
from shared.settings import EngineSettings

log = logging.getLogger("wanq.engine")

__all__ = ["DBCacheSetting", "StepCache", "check_fits", "expert_steps", "resolve", "summary"]


def resolve(settings: EngineSettings, job: JobCache) -> DBCacheSetting | None:
    """The setting a job runs with: its own fields over the worker's; False = none; None = the worker's default."""
    if job is False or (job is None and settings.cache == "none"):
        return None
    worker = DBCacheSetting(
        fn=settings.cache_fn,
        bn=settings.cache_bn,
        warmup=settings.cache_warmup,
        rdt=settings.cache_rdt,
        mc=settings.cache_mc,
        taylorseer=settings.cache_taylorseer,
        ts_order=settings.cache_ts_order,
    )
    return job.over(worker) if isinstance(job, CacheOptions) else worker


def expert_steps(pipe: Any, scheduler: Any, num_inference_steps: int) -> list[int]:
    """How many of the job's steps each transformer runs (WanPipeline: t >= boundary -> `transformer`)."""
    experts = _experts(pipe)
    boundary_ratio = pipe.config.get("boundary_ratio")
    if len(experts) == 1 or boundary_ratio is None:
        return [num_inference_steps]
    probe = type(scheduler).from_config(scheduler.config)  # the job's own scheduler stays untouched
    probe.set_timesteps(num_inference_steps, device="cpu")
    high = int((probe.timesteps >= boundary_ratio * probe.config.num_train_timesteps).sum())
    return [high, num_inference_steps - high]


def check_fits(setting: DBCacheSetting, pipe: Any) -> None:
    """The `fn` first and `bn` last blocks always computed must fit in the model (cache-dit asserts it)."""
    from shared.errors import InvalidRequest

    blocks = min(len(m.blocks) for m in _experts(pipe))
    if setting.fn + setting.bn > blocks:
        raise InvalidRequest(f"invalid 'cache' fn {setting.fn} + bn {setting.bn}: the model has {blocks} blocks", param="cache")


def summary(stats: dict[str, Any] | None) -> CacheStats | None:
    """A job's public statistics (the video object's `cache_stats`) from `StepCache.stats()`; None: it ran uncached."""
    if stats is None or stats["setting"] is None:
        return None
    return CacheStats(
        blocks_skipped_share=stats["blocks_skipped_share"],
        steps={e["expert"]: e["steps"] for e in stats["experts"]},
        steps_reused={e["expert"]: e["steps_reused"] for e in stats["experts"]},
    )


def _experts(pipe: Any) -> list[Any]:
    """The transformers (typed loosely: cache-dit adds its context attributes to them)."""
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


class StepCache:
    """cache-dit on one pipeline's transformers (and on any pipeline sharing them)."""

    def __init__(self, pipe: Any, *, cfg_parallel: bool = False) -> None:
        import cache_dit
        from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern

        # cache-dit logs to stdout through one handler of its own, not through wanq's JSON logging; its warnings
        # about this (intended) set-up ("pipe is None", "skip pattern check") would print on every start.
        handler = getattr(getattr(cache_dit, "logger", None), "_default_handler", None)
        if handler is not None:
            handler.setLevel(logging.ERROR)
        self.pipe = pipe
        self.cfg_parallel = cfg_parallel
        self.experts = _experts(pipe)
        two = len(self.experts) > 1
        self.adapter = BlockAdapter(
            # No `pipe`: persistent contexts on the transformers, the pipeline class left alone.
            transformer=self.experts if two else self.experts[0],
            blocks=[m.blocks for m in self.experts] if two else self.experts[0].blocks,  # type: ignore[misc]
            forward_pattern=[ForwardPattern.Pattern_2] * 2 if two else ForwardPattern.Pattern_2,  # Wan blocks return h only
            has_separate_cfg=True,
            check_forward_pattern=True,
        )
        # The forward before cache-dit (it may carry accelerate's or diffusers' offload hook), for uncached jobs.
        self._plain_forward = [m.forward for m in self.experts]
        cache_dit.enable_cache(self.adapter, cache_config=DBCacheConfig(residual_diff_threshold=0.0))
        self._cached_forward = [m.forward for m in self.experts]
        if not all(getattr(m, "_is_cached", False) and getattr(m, "_context_names", None) for m in self.experts):
            raise RuntimeError("cache-dit did not install its contexts on the transformers (its internals changed?)")
        self.setting: DBCacheSetting | None = None
        self._steps = [0] * len(self.experts)
        self._calls_per_step = 1

    def prepare(self, setting: DBCacheSetting | None, *, num_inference_steps: int, do_cfg: bool, scheduler: Any) -> None:
        """Right before the pipeline runs: fresh contexts with exactly this job's setting; None = no cache."""
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        self.setting = setting
        self._steps = expert_steps(self.pipe, scheduler, num_inference_steps)
        # Without CFG-parallel WanPipeline calls each transformer twice per step (cond, uncond) when guidance > 1;
        # cache-dit tells the branches apart by call parity, so this follows the job.
        separate_cfg = do_cfg and not self.cfg_parallel
        self._calls_per_step = 2 if separate_cfg else 1
        for index, model in enumerate(self.experts):
            if setting is None:
                model.forward = self._plain_forward[index]
                continue
            config = DBCacheConfig(
                Fn_compute_blocks=setting.fn,
                Bn_compute_blocks=setting.bn,
                max_warmup_steps=setting.warmup,
                warmup_interval=1,
                residual_diff_threshold=setting.rdt,
                max_continuous_cached_steps=setting.mc,
                enable_separate_cfg=separate_cfg,
                cfg_compute_first=False,
                cfg_diff_compute_separate=True,
                num_inference_steps=None,  # no automatic refresh: every job starts from a fresh context here
            )
            calibrator = (
                TaylorSeerCalibratorConfig(
                    enable_calibrator=True, enable_encoder_calibrator=False, taylorseer_order=setting.ts_order
                )
                if setting.taylorseer
                else None
            )
            model.forward = self._cached_forward[index]
            manager = model._context_manager
            for name in model._context_names:
                manager.reset_context(name, cache_config=copy.deepcopy(config), calibrator_config=copy.deepcopy(calibrator))

    def stats(self) -> dict[str, Any]:
        """After a job: per expert, its steps, transformer calls and cached calls, and the share of blocks skipped."""
        experts = []
        total = skipped = 0
        for index, model in enumerate(self.experts):
            blocks = len(model.blocks)
            if self.setting is None:
                calls, cached, reused = self._steps[index] * self._calls_per_step, 0, 0
                skipped_per_call = 0
            else:
                context = model._context_manager.get_context(model._context_names[0])
                calls = context.transformer_executed_steps
                cached = len(context.cached_steps) + len(context.cfg_cached_steps)
                reused = len(set(context.cached_steps) | set(context.cfg_cached_steps))  # either guidance pass
                skipped_per_call = blocks - self.setting.fn - self.setting.bn
            experts.append(
                {
                    "expert": ("transformer", "transformer_2")[index],
                    "steps": self._steps[index],
                    "transformer_calls": calls,
                    "cached_calls": cached,
                    "steps_reused": reused,
                    "blocks_skipped": cached * skipped_per_call,
                    "blocks_total": calls * blocks,
                }
            )
            total += calls * blocks
            skipped += cached * skipped_per_call
        return {
            "setting": self.setting.model_dump() if self.setting else None,
            "experts": experts,
            "blocks_skipped_share": round(skipped / total, 4) if total else 0.0,
        }

    def release(self) -> None:
        """After a job: frees the hidden-state-sized residual buffers and TaylorSeer states."""
        for model in self.experts:
            manager = model._context_manager
            for name in model._context_names:
                context = manager.get_context(name)
                context.clear_buffers()
                for calibrator in (
                    context.calibrator,
                    context.encoder_calibrator,
                    context.cfg_calibrator,
                    context.cfg_encoder_calibrator,
                ):
                    if calibrator is not None:
                        calibrator.states.clear()
