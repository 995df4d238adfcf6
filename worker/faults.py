"""Fault injection for the reliability tests: only active with WANQ_ENGINE_FAULT_INJECTION=true.

A prompt containing `[[fault:NAME@STEP]]` triggers NAME when denoising reaches STEP:
  oom    raise torch.OutOfMemoryError inside the pipeline (the engine's real OOM path handles it)
  error  raise RuntimeError
  crash  SIGKILL the worker process (a poison job that kills its worker every time)
  hang   sleep forever, deaf to the soft time limit and SIGTERM (only the hard limit's SIGKILL ends it)
  sleep  sleep 0.5 s at each step from STEP on (a slow job)
and `[[fault:slowexport@SECONDS]]` makes the export (MP4, thumbnail, spritesheet) take SECONDS longer.
Markers combine: "[[fault:sleep@1]] [[fault:slowexport@2]]".
"""

from __future__ import annotations

import os
import re
import signal
import time

from shared.schemas import GenerationSpec

_MARKER = re.compile(r"\[\[fault:(oom|error|crash|hang|sleep)@(\d+)\]\]", re.ASCII)
_SLOW_EXPORT = re.compile(r"\[\[fault:slowexport@(\d+)\]\]", re.ASCII)


def parse(prompt: str) -> tuple[str, int] | None:
    match = _MARKER.search(prompt)
    return (match.group(1), int(match.group(2))) if match else None


def export_delay(spec: GenerationSpec) -> float:
    """Seconds the export of this job is held up (0 without a marker)."""
    match = _SLOW_EXPORT.search(spec.prompt)
    return float(match.group(1)) if match else 0.0


def inject(spec: GenerationSpec, step: int) -> None:
    fault = parse(spec.prompt)
    if fault is None:
        return
    name, at = fault
    if name == "sleep" and step >= at:
        time.sleep(0.5)
        return
    if step != at:
        return
    if name == "oom":
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected fault)")
    if name == "error":
        raise RuntimeError("injected fault")
    if name == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if name == "hang":
        # Stuck like a wedged kernel: deaf to the soft limit and to SIGTERM; only SIGKILL ends it.
        while True:
            try:
                time.sleep(3600)
            except BaseException:
                pass
