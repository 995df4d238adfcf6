"""Several GPUs for one worker: rank 0 (the process that takes jobs) plus N-1 follower ranks.

Layout (`mesh`). The ranks form one process group (NCCL on GPUs, gloo on CPU) and one DeviceMesh
with the dimensions ("cfg", "ring", "ulysses"). Within a CFG group, diffusers' own context
parallelism (`ContextParallelConfig` + `enable_parallelism`, Wan's `_cp_plan`) splits the video
tokens over ring x ulysses ranks. With `--cfg-parallel`, the two CFG groups compute the
conditional and the unconditional branch at the same time: `CfgParallelHook` answers the
pipeline's "cond" call with its own branch, all-gathers between the groups, and answers the
"uncond" call from the gathered result, so diffusers' denoising loop runs unchanged on every rank.

Control (`group`, `messages`, and worker/follower.py). Rank 0 starts the followers as fresh interpreters
(`python -m worker.follower`, never a fork: CUDA is not fork-safe) and talks to them over
pipes: the job (spec, image) goes down the follower's stdin, "ready"/"failed" come back on a report
pipe. Idle followers wait on that pipe, not inside a collective, so an idle worker never hits the
NCCL timeout. Prompt embeddings are broadcast from rank 0 (followers load no text encoder). After
each step rank 0 broadcasts a stop flag, so a cancel stops every rank at the same step.

Failure. A dead follower takes rank 0 down at once (`ExitStatus.RANK_DIED`, worker/exits.py: rank 0 may be
blocked inside a collective that can never finish), and followers exit when rank 0 goes (EOF on
stdin, or their parent changes). The Celery parent then starts a fresh child and the job is
redelivered. If rank 0 fails in the middle of a denoise (out of memory, say), it kills its
followers at once (they are stuck in a collective) and the engine is marked broken: the job fails
with its own error, and the next `generate` restarts the process (`ExitStatus.BROKEN`).

Nothing here imports another module of this package from `__init__`; worker/startup.py composes them on rank 0,
worker/follower.py on the other ranks. Nothing in this package imports the engine (worker/engine.py uses the
package): the two modules that build an engine are outside it.
"""
