"""Builds the engine a process serves jobs with: one rank's engine on one GPU, or, with several,
rank 0's engine in a group of follower processes that it starts first."""

from __future__ import annotations

import atexit
import logging
import time
from pathlib import Path
from typing import Any

from shared import logs
from shared.settings import EngineSettings, LoraSettings
from worker import accel
from worker.engine import WanEngine, rank_device
from worker.parallel.group import Group

log = logging.getLogger("wanq.engine")


def start_engine(
    model_path: str | Path | None,
    settings: EngineSettings,
    *,
    model_id: str = "",
    factory: str | None = None,
    factory_kwargs: dict[str, Any] | None = None,
    loras: LoraSettings | None = None,
) -> WanEngine:
    """The engine this process serves jobs with. The arguments are `WanEngine`'s; with several GPUs,
    each follower builds its engine with the same ones."""
    logs.route_third_party()  # diffusers, transformers and torch are imported by now: their output into our log lines
    started = time.perf_counter()
    path = Path(model_path) if model_path is not None else None

    # 1. Refuse an impossible configuration before anything loads or any process starts: the one check of the
    # engine options (worker/options/registry.py), on rank 0 only (the followers run what it accepted)
    accel.validate_before_loading(settings, path, rank_device(settings, 0))
    if settings.num_gpus == 1:
        return WanEngine(path, settings, model_id=model_id, factory=factory, factory_kwargs=factory_kwargs, loras=loras)

    # 2. Start the other ranks first, so that they load while we do, and join their group as rank 0
    group = Group(settings, model_path=path, model_id=model_id, factory=factory, factory_kwargs=factory_kwargs, loras=loras)
    member = group.start()

    # 3. Rank 0's engine, then every rank ready
    try:
        engine = WanEngine(
            path,
            settings,
            model_id=model_id,
            factory=factory,
            factory_kwargs=factory_kwargs,
            member=member,
            followers=group,
            loras=loras,
        )
    except BaseException:
        group.stop()
        raise
    atexit.register(engine.close)
    group.wait_ready()
    # The worker is ready when every rank is: its load time includes the slowest follower's.
    engine.load_time_s = time.perf_counter() - started
    log.info("every rank ready", extra={"world_size": settings.num_gpus, "load_s": round(engine.load_time_s, 2)})
    return engine
