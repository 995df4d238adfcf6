"""benchmarks/gpu_jobs.py --tiny: whole jobs as the worker runs them, on tiny models on the CPU. The times mean
nothing here; that every job ends in an MP4 of its frames, the draft decoder runs, the one-timestep comparison
runs both ways, and a fused LoRA's engine runs, do."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import gpu_jobs


def test_the_ti2v_jobs_and_the_fused_lightning_job_run_end_to_end(tmp_path: Path) -> None:
    gpu_jobs.main(["--part", "ti2v-e2e", "--tiny", "--out", str(tmp_path / "t")])
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert results["ti2v_timesteps"]["median_one_timestep_s"] and results["ti2v_timesteps"]["median_per_token_s"]
    assert results["ti2v_e2e_lossless"]["mp4_frames"] == 9 and results["ti2v_e2e_lossy"]["mp4_frames"] == 9
    assert {k: v["mp4_frames"] for k, v in results["ti2v_four_steps"].items()} == {"full": 9, "tiny": 9}
    gpu_jobs.main(["--part", "a14b-lightning", "--fused", "--tiny", "--out", str(tmp_path / "l")])
    lightning = json.loads((tmp_path / "l" / "results.json").read_text())["a14b_lightning"]
    assert lightning["options"]["fuse_lora"] and lightning["lora"]["fused"] is True
    assert [job["mp4_frames"] for job in lightning["jobs"]] == [9, 9] and lightning["decode_alone"]["s"] > 0
