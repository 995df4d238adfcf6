"""Reading a weights file a user names (a preview VAE, an interpolator, an upscaler): a .safetensors file, or a
plain PyTorch state dict read with `weights_only=True`, so nothing in a pickle ever runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file


def read_state_dict(
    path: str | Path, what: str, error: type[ValueError] = ValueError, *, wrappers: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Tensors by name; `what` names the file in errors ("interpolator weights"), raised as `error`. A dict under one
    of `wrappers` (Real-ESRGAN's {"params_ema": ...}) is unwrapped; a DataParallel `module.` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} do not exist or are not a file")
    if path.suffix == ".safetensors":
        try:
            state: object = load_file(str(path))
        except Exception as exc:
            raise error(f"{what} {path} are not a readable safetensors file: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # weights_only refuses any global outside tensors and plain containers: nothing in the file is run.
            raise error(
                f"{what} {path} hold objects other than tensors and are refused "
                "(only a plain state dict is read, with weights_only=True)"
            ) from exc
        except Exception as exc:
            raise error(f"{what} {path} are not a readable PyTorch file: {exc}") from exc
    for wrapper in wrappers:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise error(f"{what} {path} are not a state dict of tensors by name")
    return {key.removeprefix("module."): value for key, value in state.items()}
