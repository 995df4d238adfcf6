"""Where the weights live: the offload modes (diffusers' hooks) and their companions. worker/accel.py `_place`
applies them, all at once, since they decide together where each component goes."""

from __future__ import annotations

from worker.options.option import Option, cuda, rule, uses_group_offload

PLACED = "placement (worker/accel.py `_place`)"


def _offload(mode: str, summary: str, applied: str, *needs_on_cpu: str) -> Option:
    return Option(
        flag=f"--offload {mode}",
        kind="offload",
        summary=summary,
        chosen=lambda s: s.offload == mode,
        needs=tuple(cuda(say) for say in needs_on_cpu),
        conflicts=(
            rule(
                "--text-encoder-cpu-offload / --vae-cpu-offload",
                lambda s, _e: s.text_encoder_cpu_offload or s.vae_cpu_offload,
                f"--offload {mode} already offloads the text encoder and the VAE; "
                "drop --text-encoder-cpu-offload / --vae-cpu-offload, or use --offload none",
            ),
            rule(
                "--num-gpus > 1",
                lambda s, _e: s.num_gpus > 1,
                f"--offload {mode} is single-GPU only; with --num-gpus > 1 use --offload none "
                "(with --text-encoder-cpu-offload / --vae-cpu-offload if memory is short)",
            ),
        ),
        applied=applied,
    )


MODEL = _offload("model", "one component on the GPU at a time", "`enable_model_cpu_offload`")
GROUP = _offload(
    "group",
    "transformer blocks streamed on a CUDA side stream, the rest leaf by leaf",
    "`enable_group_offload` / `apply_group_offloading`",
)
SEQUENTIAL = _offload(
    "sequential",
    "weights streamed layer by layer: the least GPU memory, the slowest",
    "`enable_sequential_cpu_offload`",
    "--offload sequential streams weights to a GPU layer by layer; on CPU use --offload none",
)

COMPONENT_OFFLOAD = Option(
    flag="--text-encoder-cpu-offload, --vae-cpu-offload",
    kind="offload",
    summary="with --offload none: that component stays on the CPU and streams in when used",
    chosen=lambda s: s.text_encoder_cpu_offload or s.vae_cpu_offload,
    applied="`apply_group_offloading` (leaf level) on that component",
)

PIN_CPU_MEMORY = Option(
    flag="--pin-cpu-memory",
    kind="offload",
    summary="pinned host memory for group offloading: faster copies, more RAM",
    chosen=lambda s: s.pin_cpu_memory,
    needs=(
        rule(
            "group offloading",
            lambda s, _e: not uses_group_offload(s),
            "--pin-cpu-memory applies to group offloading only; add --offload group (or --text-encoder-cpu-offload / "
            "--vae-cpu-offload) or drop it",
        ),
    ),
    applied="`low_cpu_mem_usage=False` on the group offload hooks",
)


FP16 = Option(
    flag="--dtype fp16",
    kind="precision",
    summary="half precision weights and activations",
    chosen=lambda s: s.dtype == "fp16",
    needs=(cuda("--dtype fp16 is not supported on CPU; use bf16 or fp32"),),
    applied="`from_pretrained(torch_dtype=...)`",
)

COMPILE = Option(
    flag="--compile",
    kind="compile",
    summary="regional compile of the repeated transformer blocks; one static graph per video size",
    chosen=lambda s: s.compile,
    conflicts=(
        rule(
            "--offload sequential/group",
            lambda s, _e: s.offload in ("sequential", "group"),
            lambda s, _e: (
                f"--compile cannot be combined with --offload {s.offload} (its hooks move weights inside the compiled "
                "blocks); use --offload model or none with --compile"
            ),
        ),
    ),
    applied="`compile_repeated_blocks` (worker/accel.py), last",
)
