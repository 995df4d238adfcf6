"""The step cache (cache-dit's DBCache): the worker's default for jobs that do not say; installed by the engine
per job (worker/cache.py)."""

from __future__ import annotations

import importlib.util

from shared.settings import EngineSettings
from worker.options.option import Option, context_parallel, rule


def refused_here(settings: EngineSettings) -> bool:
    """The step cache cannot run on this worker: every rank must skip the same blocks, verified only for
    --cfg-parallel, not when the video tokens are split (the worker's default and each job's `cache` alike)."""
    return context_parallel(settings)


def _missing() -> str | None:
    if importlib.util.find_spec("cache_dit") is None:
        return "--cache dbcache needs the cache-dit package: pip install 'cache-dit>=1.5.3'"
    return None


DBCACHE = Option(
    flag="--cache dbcache",
    kind="cache",
    summary="skips the middle blocks on steps whose first-block residual barely moved; lossy; per job `cache`",
    chosen=lambda s: s.cache != "none",
    conflicts=(
        rule(
            "--ulysses-degree / --ring-degree",
            lambda s, _e: refused_here(s),
            "--cache with --ulysses-degree / --ring-degree is not supported (every rank must skip the same blocks and "
            "this is verified only for --cfg-parallel); use --cache none, or --cfg-parallel alone",
        ),
    ),
    package=_missing,
    package_doc="cache-dit >= 1.5.3",
    applied="cache-dit's `enable_cache` on the transformers, per job (worker/cache.py)",
)
