"""What a `--model-path` names, checked before anything slow starts (no torch here).

- `configs` / `resolve`: a pipeline directory, or a Hugging Face repository id (`Wan-AI/Wan2.2-TI2V-5B-Diffusers`)
  resolved through huggingface_hub's cache, HF_HUB_OFFLINE respected, as diffusers' `from_pretrained` and
  SGLang-diffusion take one. `configs` fetches the repository's model_index.json and component configs alone (a few
  KB), so that what they decide is checked before `resolve` fetches the weights (tens of GB). A failed fetch is one
  line saying what failed and what to do (`PipelineDirError`).
- `inspect` / `check`: which Wan2.2 pipeline a directory holds, read from its model_index.json and the transformers'
  and VAE's config.json (class, experts, expand_timesteps, channels), and whether that is the one a model id means:
  `wanq worker --model wan2.2-i2v-a14b` on a TI2V-5B directory is refused, saying which model the directory holds.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.catalog import PRESETS

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]", re.ASCII)
"""owner/name, as the hub spells them (no leading `.`, `/` or `~`: those are paths)."""

TITLES = {"t2v-a14b": "Wan2.2 T2V-A14B", "i2v-a14b": "Wan2.2 I2V-A14B", "ti2v-5b": "Wan2.2 TI2V-5B"}
_TINY_INNER_DIM = 1024
"""Transformers narrower than this (heads x head dim) are `wanq tiny-model`'s (2 x 12); the real ones are 3072 and 5120."""


TRANSFORMERS = ("transformer", "transformer_2")
"""A Wan2.2 pipeline's transformers as diffusers names them: the high-noise expert (the only one of TI2V-5B) and the
low-noise expert of the A14B models."""


def transformers_of(pipe: Any) -> list[Any]:
    """The loaded pipeline's transformers, high-noise expert first."""
    return [m for m in (getattr(pipe, name, None) for name in TRANSFORMERS) if m is not None]


class PipelineDirError(ValueError):
    """What is wrong with a --model-path, in one line that says what to do."""


@dataclass(frozen=True)
class PipelineShape:
    """What decides which Wan2.2 model a pipeline directory holds."""

    pipeline_class: str
    experts: int
    expand_timesteps: bool
    in_channels: int | None
    latent_channels: int | None
    tiny: bool = False

    @property
    def variant(self) -> str | None:
        """t2v-a14b, i2v-a14b or ti2v-5b; None for anything else (Wan2.1, a half-copied directory, ...)."""
        for variant, shape in EXPECTED.items():
            if self.matches(shape):
                return variant
        return None

    def matches(self, other: PipelineShape) -> bool:
        return (self.pipeline_class, self.experts, self.expand_timesteps, self.in_channels, self.latent_channels) == (
            other.pipeline_class,
            other.experts,
            other.expand_timesteps,
            other.in_channels,
            other.latent_channels,
        )

    def describe(self) -> str:
        experts = {0: "no transformer", 1: "one transformer", 2: "two experts"}.get(self.experts, f"{self.experts} transformers")
        parts = [self.pipeline_class, experts]
        if self.expand_timesteps:
            parts.append("expand_timesteps")
        parts.append(f"{self.in_channels if self.in_channels is not None else '?'} input channels")
        parts.append(f"{self.latent_channels if self.latent_channels is not None else '?'}-channel VAE")
        return ", ".join(parts)


EXPECTED = {
    "t2v-a14b": PipelineShape("WanPipeline", 2, False, 16, 16),
    "i2v-a14b": PipelineShape("WanImageToVideoPipeline", 2, False, 36, 16),
    "ti2v-5b": PipelineShape("WanPipeline", 1, True, 48, 48),
}
"""The three Wan2.2 pipelines as their diffusers repositories (and `wanq tiny-model`) save them. I2V-A14B takes 36
channels: 16 of noise, 4 of frame mask and 16 of the first frame's latent."""


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PipelineDirError(f"{path} is unreadable ({exc})") from None
    return data if isinstance(data, dict) else {}


def inspect(path: Path) -> PipelineShape:
    """The shape of the pipeline in `path` (which has a model_index.json)."""
    index = _json(path / "model_index.json")
    experts = [name for name in TRANSFORMERS if any(index.get(name) or [])]
    transformer = _json(path / experts[0] / "config.json") if experts else {}
    vae = _json(path / "vae" / "config.json")
    inner = int(transformer.get("num_attention_heads") or 0) * int(transformer.get("attention_head_dim") or 0)
    return PipelineShape(
        pipeline_class=str(index.get("_class_name", "?")),
        experts=len(experts),
        expand_timesteps=bool(index.get("expand_timesteps")),
        in_channels=transformer.get("in_channels"),
        latent_channels=vae.get("z_dim"),
        tiny=0 < inner < _TINY_INNER_DIM,
    )


def shape_of(pipe: Any) -> PipelineShape:
    """The shape of a loaded pipeline (one built by a factory, without a directory), read as `inspect` reads one."""
    transformers = transformers_of(pipe)
    vae = getattr(pipe, "vae", None)
    return PipelineShape(
        pipeline_class=type(pipe).__name__,
        experts=len(transformers),
        expand_timesteps=bool(pipe.config.get("expand_timesteps")),
        in_channels=transformers[0].config.in_channels if transformers else None,
        latent_channels=vae.config.z_dim if vae is not None else None,
    )


def variant_of(shape: PipelineShape, where: object) -> str:
    """t2v-a14b, i2v-a14b or ti2v-5b; a ValueError naming what `where` holds for anything else."""
    if shape.variant is None:
        raise PipelineDirError(
            f"{where} holds no Wan2.2 pipeline wanq knows ({shape.describe()}); wanq runs {', '.join(TITLES.values())}"
        )
    return shape.variant


def model_ids(variant: str, *, tiny: bool) -> list[str]:
    """The model ids a directory of `variant` serves, those of its own scale (tiny or real) first."""
    ids = [m for m, spec in PRESETS.items() if spec.variant == variant]
    return sorted(ids, key=lambda m: PRESETS[m].tiny != tiny)


def check(model_id: str, path: Path, *, flag: str = "--model") -> PipelineShape:
    """The directory's shape, if it is the pipeline `model_id` means; else PipelineDirError saying what it holds."""
    shape = inspect(path)
    wanted = PRESETS[model_id].variant
    if shape.matches(EXPECTED[wanted]):
        return shape
    held = shape.variant
    if held is None:
        what = f"no Wan2.2 pipeline wanq knows ({shape.describe()})"
        advice = f"point --model-path at a {TITLES[wanted]} pipeline"
    else:
        what = f"a {TITLES[held]} pipeline ({shape.describe()})"
        advice = f"serve it as {flag} {' or '.join(model_ids(held, tiny=shape.tiny))}, or point --model-path at a {TITLES[wanted]} pipeline"
    raise PipelineDirError(
        f"{flag} {model_id} needs a {TITLES[wanted]} pipeline ({EXPECTED[wanted].describe()}), but {path} holds {what}: {advice}"
    )


# Resolving --model-path ------------------------------------------------------------------------------

COMPONENT_CONFIGS = ("transformer/config.json", "transformer_2/config.json", "vae/config.json")
"""What `inspect` reads besides model_index.json."""


def configs(value: str) -> Path:
    """A directory holding what `inspect` reads of the pipeline `value` names: the local directory itself, or the
    hub repository's snapshot folder with model_index.json and the component configs fetched alone, no weights."""
    path = _local(value)
    if path is not None:
        return path
    with _hub(value, local_dir=None, revision=None):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        try:
            index = Path(hf_hub_download(value, "model_index.json"))
        except RemoteEntryNotFoundError:
            raise PipelineDirError(
                f"--model-path {value!r}: the Hugging Face repository holds no diffusers pipeline (no model_index.json)"
            ) from None
        listed = _json(index)
        for name in COMPONENT_CONFIGS:
            if any(listed.get(name.partition("/")[0]) or []):
                hf_hub_download(value, name)
    return index.parent


def resolve(value: str, *, say: Any = None) -> Path:
    """The pipeline directory `value` names: a local directory, or a hub repository's whole snapshot in the cache
    (fetched where missing: the weights). `configs` first checks what needs no weights."""
    path = _local(value)
    if path is not None:
        return path
    with _hub(value, local_dir=None, revision=None):
        snapshot = _snapshot(value, local_dir=None, revision=None)
    if say is not None:
        say(f"--model-path {value}: the Hugging Face cache's snapshot in {snapshot}")
    return snapshot


def _local(value: str) -> Path | None:
    """The pipeline directory `value` names on this machine; None for a hub repository id; else PipelineDirError."""
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise PipelineDirError(
                f"--model-path {value!r} is not a diffusers pipeline directory (no model_index.json); give a Hugging Face "
                "repository id (e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers), download one with `wanq fetch-model`, or make a "
                "tiny one with `wanq tiny-model`"
            )
        return path
    if not REPO_ID.fullmatch(value):
        raise PipelineDirError(
            f"--model-path {value!r}: no such directory, and not a Hugging Face repository id (owner/name, e.g. "
            "Wan-AI/Wan2.2-TI2V-5B-Diffusers)"
        )
    return None


def from_hub(repo_id: str, *, local_dir: Path | None = None, revision: str | None = None) -> Path:
    """The repository's snapshot: from huggingface_hub's cache (or into `local_dir`), fetched where missing and the hub
    can be reached. huggingface_hub reads HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE, HF_ENDPOINT and HF_TOKEN itself."""
    with _hub(repo_id, local_dir=local_dir, revision=revision, flag=""):
        return _snapshot(repo_id, local_dir=local_dir, revision=revision)


def _snapshot(repo_id: str, *, local_dir: Path | None, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, local_dir=local_dir))


@contextmanager
def _hub(repo_id: str, *, local_dir: Path | None, revision: str | None, flag: str = "--model-path ") -> Iterator[None]:
    """Around calls to the hub: no progress bars in a log file, and huggingface_hub's errors as one PipelineDirError
    line each, saying what to do. `flag` opens the line."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars

    if not sys.stderr.isatty():
        disable_progress_bars()
    where = str(local_dir) if local_dir is not None else f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    beforehand = f"`hf download {repo_id}" + (f" --local-dir {local_dir}`" if local_dir is not None else "` with this HF_HOME")
    try:
        yield
    except GatedRepoError:
        raise PipelineDirError(
            f"{flag}{repo_id} is gated on the Hugging Face hub: accept its terms at https://huggingface.co/{repo_id} and "
            "set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise PipelineDirError(
            f"{flag}{repo_id}: no such repository on the Hugging Face hub (a private one needs HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise PipelineDirError(f"{flag}{repo_id}: no revision {revision!r} on the Hugging Face hub") from None
    except LocalEntryNotFoundError:
        # `models/ti2v` reads as a repository id too: if `models` is a directory here, a path was probably meant.
        path = Path(repo_id)
        typo = (
            f" (nor is there a directory {repo_id!r} here)" if flag and path.parent.is_dir() and str(path.parent) != "." else ""
        )
        if constants.HF_HUB_OFFLINE:
            raise PipelineDirError(
                f"{flag}{repo_id} is not in {where}, and HF_HUB_OFFLINE is set: unset it to download it here, or download "
                f"it beforehand where the hub can be reached ({beforehand}){typo}"
            ) from None
        raise PipelineDirError(
            f"{flag}{repo_id} is not in {where}, and the Hugging Face hub cannot be reached from here: check the network "
            f"(HF_ENDPOINT, a proxy), or download it beforehand where the hub can be reached ({beforehand}) and copy it "
            f"here{typo}"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineDirError(f"{flag}{repo_id} could not be fetched into {where}: {reason}") from None
