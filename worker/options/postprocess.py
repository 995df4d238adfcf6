"""Post-processing after the decode (worker/postprocess.py): the interpolator and the upscaler a worker loads at
start, so that jobs may ask for `interpolate` and `upscale`. Checked here before anything loads: the file exists;
its contents are read (and refused in one sentence) by the loaders when the worker starts."""

from __future__ import annotations

from pathlib import Path

from shared.settings import EngineSettings
from worker.options.option import Environment, Option, rule


def _missing(path: str) -> bool:
    return bool(path) and not Path(path).is_file()


INTERPOLATOR = Option(
    flag="--interpolator-path",
    kind="postprocess",
    summary="RIFE IFNet v4.x weights (our implementation, fp16 on CUDA): jobs may ask for `interpolate` 2 or 4",
    chosen=lambda s: bool(s.interpolator_path),
    needs=(
        rule(
            "an existing file",
            lambda s, _e: _missing(s.interpolator_path),
            lambda s, _e: f"--interpolator-path {s.interpolator_path} does not exist or is not a file",
        ),
    ),
    applied="loaded at worker start; run per job between the decode and the MP4 (worker/postprocess.py)",
)


def _upscaler_missing(s: EngineSettings, _e: Environment) -> bool:
    return _missing(s.upscaler_path)


UPSCALER = Option(
    flag="--upscaler-path",
    kind="postprocess",
    summary="Real-ESRGAN-class weights (compact SRVGG built in, others via spandrel), tiled: jobs may ask for "
    "`upscale` by the file's scale",
    chosen=lambda s: bool(s.upscaler_path),
    needs=(
        rule(
            "an existing file",
            _upscaler_missing,
            lambda s, _e: f"--upscaler-path {s.upscaler_path} does not exist or is not a file",
        ),
    ),
    applied="loaded at worker start; run per job after the interpolation (worker/postprocess.py)",
)
