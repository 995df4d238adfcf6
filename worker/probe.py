"""What this machine lacks for the engine options asked for, found in a fresh interpreter.

`wanq worker` refuses to start when, say, `--attention-backend fa4` is asked for and flash-attn-4 or a
Hopper GPU is missing. It must not find that out itself: asking CUDA for a GPU's compute capability
initializes CUDA, and a Celery parent that did so cannot fork working children. So it runs
`python -m worker.probe` with the engine settings and reads the problems back.
"""

from __future__ import annotations

import json
import subprocess
import sys

from shared.settings import EngineSettings
from worker.packages import missing_packages


def environment_problems_in_child(settings: EngineSettings, timeout_s: float = 300) -> list[str]:
    """`accel.environment_problems` for the device the worker will use, and whether it shows the GPUs and degrees
    asked for, run in a child interpreter; only when an option needs more than a package to be there (FA4, FP8,
    several GPUs or parallel degrees). Otherwise checked here without importing torch, so that `wanq worker` and
    `wanq generate` run it first of all."""
    parallel = settings.num_gpus > 1 or settings.ulysses_degree > 1 or settings.ring_degree > 1 or settings.cfg_parallel
    if settings.attention_backend != "fa4" and settings.quantization == "none" and not parallel:
        return missing_packages(settings)
    done = subprocess.run(
        [sys.executable, "-m", "worker.probe"],
        input=settings.model_dump_json(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        return [f"the environment check failed: {done.stderr.strip()[-400:]}"]
    problems: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return problems


def main() -> None:
    import torch

    from worker import accel

    settings = EngineSettings.model_validate_json(sys.stdin.read())
    device = torch.device(accel.resolve_device(settings.device))
    problems = []
    try:
        # Now that the device is known (fa4 / fp8 need CUDA), and how many GPUs this machine shows.
        accel.validate(settings, device=device.type, gpu_count=torch.cuda.device_count() if device.type == "cuda" else None)
    except ValueError as exc:
        problems.append(str(exc).removeprefix("impossible engine configuration: "))
    problems.extend(accel.environment_problems(settings, device))
    print(json.dumps(problems))


if __name__ == "__main__":
    main()
