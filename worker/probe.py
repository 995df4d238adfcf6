"""The engine options checked for `wanq worker` and `wanq generate` before anything loads, in a fresh interpreter
where the check needs the GPU.

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
from worker.options import registry
from worker.options.option import Environment


def environment_problems_in_child(settings: EngineSettings, timeout_s: float = 300) -> list[str]:
    """Every problem of the engine options (worker/options/registry.py `validate`): impossible combinations, the
    packages, and where an option needs the GPU (a compute capability, the GPU count for several GPUs) what the
    device the worker will use offers, found in a child interpreter. Otherwise checked here without initializing
    CUDA, so that `wanq worker` and `wanq generate` run it first of all."""
    if not registry.needs_gpu_check(settings):
        device = settings.device if settings.device != "auto" else None
        return registry.validate(settings, Environment(device=device, machine=True)).all()
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
    # Now that the device is known (fa4 / fp8 need CUDA), and how many GPUs this machine shows.
    gpu_count = torch.cuda.device_count() if device.type == "cuda" else None
    env = accel.environment(settings, device=device, gpu_count=gpu_count, machine=True)
    print(json.dumps(registry.validate(settings, env).all()))


if __name__ == "__main__":
    main()
