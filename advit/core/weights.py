"""Weight files as tensors: safetensors or weights-only ``.pth``, wrapper prefixes stripped, resume state apart.

DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes are stripped. The lowest layer under ``models`` and ``checkpoint``: both read weight files through it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

TRAIN_STATE_PREFIX = 'train_state/'
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit its model."""


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: safetensors, or a ``.pth``/``.pt`` state dict (weights only)."""
    path = existing_file(path)
    if path.suffix == '.safetensors':
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f'{path} is not a readable safetensors file: {err}') from err
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError... for bad or unsafe files
        raise CheckpointError(f'{path} is not a loadable weights-only state dict: {err}') from err
    for key in ('model', 'state_dict', 'model_state'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f'{path} does not hold a state dict of tensors')
    return state


def strip_wrapper_prefixes(name: str) -> str:
    """Remove ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from a key."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def model_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights among a checkpoint's tensors, wrapper prefixes stripped."""
    return {strip_wrapper_prefixes(k): v for k, v in tensors.items() if not k.startswith(TRAIN_STATE_PREFIX)}


def train_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The resume state among a checkpoint's tensors."""
    return {k[len(TRAIN_STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(TRAIN_STATE_PREFIX)}


def existing_file(path: str | Path) -> Path:
    """``path`` as a Path, or CheckpointError when no such file exists."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    return path
