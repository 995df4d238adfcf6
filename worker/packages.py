"""The packages an engine option needs that can be found missing without importing torch (the worker's first
check, before anything loads); FA4's and FP8's need torch and live in `accel.environment_problems`."""

from __future__ import annotations

import importlib.util

from shared.settings import EngineSettings


def missing_packages(settings: EngineSettings) -> list[str]:
    """The packages asked for that are not installed, found without importing them (FA4's and FP8's are checked by
    `accel.environment_problems`: they need torch)."""
    if settings.cache != "none" and importlib.util.find_spec("cache_dit") is None:
        return ["--cache dbcache needs the cache-dit package: pip install 'cache-dit>=1.5.3'"]
    return []
