"""Operating a worker from outside its process, without torch: is it up (a container health check),
stop it taking jobs (a Kubernetes preStop hook), fetch a model's weights (an init container).

The worker's heartbeat in Redis names its host and Celery node, so a command run in the same
container or pod finds its own worker by the host name.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from shared.catalog import PRESETS
from shared.queue import make_celery, queue_name
from shared.settings import Settings
from shared.store import JobStore


def _store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def local_workers(settings: Settings, model: str, host: str | None = None) -> list[dict[str, Any]]:
    """Live heartbeats of `model`'s workers on `host` (default: this host)."""
    host = host or socket.gethostname()
    return [w for w in _store(settings).live_workers(model) if w.get("host") == host]


def healthy(settings: Settings, model: str, host: str | None = None) -> tuple[bool, str]:
    """True once a worker of `model` on this host has loaded its model and beats."""
    workers = local_workers(settings, model, host)
    if not workers:
        return False, f"no live worker of {model} on {host or socket.gethostname()}"
    states = sorted({str(w.get("state")) for w in workers})
    return "ready" in states, f"{len(workers)} live worker(s) of {model}: {', '.join(states)}"


def drain(settings: Settings, model: str, *, host: str | None = None, nodes: list[str] | None = None) -> list[str]:
    """Tells the workers of `model` on this host (or the named Celery nodes) to stop consuming its
    queue. A running job goes on; a later SIGTERM (Celery's warm shutdown) then waits for it."""
    nodes = nodes if nodes is not None else [str(w["node"]) for w in local_workers(settings, model, host) if w.get("node")]
    if not nodes:
        return []
    app = make_celery(settings)
    try:
        replies = (
            app.control.cancel_consumer(queue_name(model), destination=nodes, reply=True, timeout=3.0, limit=len(nodes)) or []
        )
    finally:
        app.close()
    return sorted(node for reply in replies for node in reply)


FETCHED_MARKER = ".wanq-fetched"


def fetch_model(model: str, directory: Path, *, revision: str | None = None) -> str:
    """Downloads the model's diffusers pipeline into `directory` unless it is complete there already.

    Weights never go into an image: this runs at start (compose's `models` service, the k8s init
    container) into a volume that outlives the container. A marker written after the download is
    what "complete" means, so an interrupted download resumes (huggingface_hub skips the files it
    has) instead of passing for a model. A folder filled by other means (a pipeline with no download
    state of huggingface_hub's) is taken as it is."""
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; known: {sorted(PRESETS)}")
    spec = PRESETS[model]
    marker = directory / FETCHED_MARKER
    if marker.exists():
        return f"{model}: already in {directory}"
    if (directory / "model_index.json").exists() and not (directory / ".cache" / "huggingface").exists():
        return f"{model}: {directory} holds a pipeline put there by other means; using it as it is"
    directory.mkdir(parents=True, exist_ok=True)
    if spec.tiny:
        from worker.tiny_model import write_tiny_model  # tiny models are written, not downloaded

        write_tiny_model(directory, spec.variant)
        what = "wrote a tiny random-weight pipeline"
    else:
        from worker.pipeline_dir import from_hub  # huggingface_hub ships with diffusers; it reads HF_TOKEN itself

        from_hub(spec.hf_repo, local_dir=directory, revision=revision)  # a failure: PipelineDirError, one line
        what = f"downloaded {spec.hf_repo}"
    marker.write_text(f"{spec.hf_repo}@{revision or 'main'}\n")
    return f"{model}: {what} to {directory}"
