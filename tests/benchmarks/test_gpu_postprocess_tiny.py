"""benchmarks/gpu_postprocess.py --tiny: the GPU script's whole logic on the CPU with tiny models, in seconds. The
times mean nothing here; the keys, the frame counts and sizes, and the spandrel section's skip (or its run) do."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from benchmarks import gpu_postprocess


def test_the_tiny_mode_writes_every_stable_key(tmp_path: Path) -> None:
    gpu_postprocess.main(["--tiny", "--out", str(tmp_path / "out"), "--mirror", str(tmp_path / "mirror")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert json.loads((tmp_path / "mirror" / "results.json").read_text()) == results
    assert {"env", "matmul", *gpu_postprocess.KEYS} <= set(results)
    errors = {key: value["error"] for key, value in results.items() if isinstance(value, dict) and "error" in value}
    assert errors == {}, errors
    width, height, frames, fps = gpu_postprocess.TINY
    assert (results["interpolate_x2"]["frames_out"], results["interpolate_x4"]["frames_out"]) == (
        (frames - 1) * 2 + 1,
        (frames - 1) * 4 + 1,
    )
    assert results["upscale_x2"]["size_out"] == f"{width * 2}x{height * 2}"
    assert results["interpolate_x2"]["median_s"] > 0 and results["upscale_x2"]["first_s"] > 0
    encoded = results["encode"]
    assert set(encoded) == {
        f"{width}x{height}x{frames}",
        f"{width}x{height}x{(frames - 1) * 2 + 1}",
        f"{width * 2}x{height * 2}x{frames}",
    }
    assert encoded[f"{width}x{height}x{(frames - 1) * 2 + 1}"]["fps"] == fps * 2
    if importlib.util.find_spec("spandrel") is None:
        assert "spandrel does not import here" in results["spandrel_x2"]["skipped"]
    else:
        assert results["spandrel_x2"]["size_out"] == f"{width * 2}x{height * 2}"
    share = results["share"]
    assert share["job_s"] == gpu_postprocess.A14B_STEP_S * gpu_postprocess.A14B_STEPS and 0 < share["share"] < 1
