"""Checkpoints: self-describing safetensors files, and plain ``.pth``/``.pt`` state dicts.

A checkpoint's metadata (one JSON header under the key ``advit``) holds the architecture and its
arguments, class names, image size, normalisation, method, teacher and accuracy, so the file
alone rebuilds its model. A training checkpoint (``last``) also holds the optimiser state and
RNG states under ``train_state/`` keys, which loading a model ignores. Files are written
atomically: a crash mid-write leaves the previous file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .checks import RequestError, number, shown_value
from .io import atomic_path
from .models import create_model, model_image_size, model_normalization
from .weights import (
    TRAIN_STATE_PREFIX,
    CheckpointError,
    existing_file,
    model_weights,
    read_tensors,
    strip_wrapper_prefixes,
)

FORMAT = 'advit-checkpoint/1'
MAX_METADATA_CHARS = 1_000_000  # a checkpoint's settings are a few kB; a 100 MB header is not settings


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and its metadata."""
    model: nn.Module
    meta: dict[str, Any]


def save_checkpoint(
        path: str | Path,
        model: nn.Module,
        meta: dict[str, Any],
        train_state: dict[str, torch.Tensor] | None = None,
        half: bool = False,
) -> None:
    """Write a model and its metadata atomically as safetensors.

    Args:
        path: Target file (``.safetensors``).
        model: The model (unwrapped: no DDP or compile wrapper).
        meta: JSON-serialisable metadata; must hold ``model`` and ``model_args`` to be rebuildable.
        train_state: Extra tensors to resume training (stored under ``train_state/``).
        half: Store floating-point weights as float16 (a smaller file for shipping).
    """
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().to('cpu')
        if half and value.is_floating_point():
            value = value.half()
        tensors[strip_wrapper_prefixes(name)] = value.contiguous()
    for name, value in (train_state or {}).items():
        tensors[TRAIN_STATE_PREFIX + name] = value.detach().to('cpu').contiguous()
    header = {'advit': json.dumps(dict(meta, format=FORMAT))}
    payload = save(tensors, metadata=header)  # bytes: safetensors' own save_file leaves a temp file when killed
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


# Model arguments a checkpoint's metadata holds as its own fields too (its classes, its image_size).
DERIVED_ARGS = ('num_classes', 'img_size')


def architecture_args(meta: dict[str, Any]) -> dict[str, Any]:
    """The model arguments that tell one architecture from another: the metadata's ``model_args`` less
    ``DERIVED_ARGS``."""
    return {k: v for k, v in (meta.get('model_args') or {}).items() if k not in DERIVED_ARGS}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an advit safetensors checkpoint, without reading its tensors."""
    path = existing_file(path)
    try:
        with safe_open(str(path), framework='pt') as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f'{path} is not a readable safetensors file: {err}') from err
    if 'advit' not in header:
        raise CheckpointError(f'{path} has no advit metadata: pass the architecture (--model) to load it, or make it '
                              'a checkpoint with `advit import`')
    text = header['advit']
    if len(text) > MAX_METADATA_CHARS:
        raise CheckpointError(f'{path} has {len(text):,} characters of advit metadata: over the '
                              f'{MAX_METADATA_CHARS:,} a checkpoint\'s settings take')
    try:
        meta = json.loads(text)
    except RecursionError:
        raise CheckpointError(f'{path} has corrupt advit metadata: nested too deep') from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f'{path} has corrupt advit metadata: {err.msg} at character {err.pos}') from None
    except ValueError:  # Python reads no integer of over 4300 digits
        raise CheckpointError(f'{path} has corrupt advit metadata: a number too long to read') from None
    if not isinstance(meta, dict):
        raise CheckpointError(f'{path} has advit metadata that is a {type(meta).__name__}, not a mapping of fields')
    return meta


def check_metadata(meta: Any, model: nn.Module) -> None:
    """Refuse, in words (``CheckpointError``), metadata that contradicts the weights' model or sense: what the
    views would otherwise trust to prepare inputs and name classes. Fields a checkpoint leaves out are not asked for.

    Args:
        meta: A checkpoint's metadata, as read.
        model: Its model as the metadata builds it (on the meta device will do: only shapes are read).
    """
    if not isinstance(meta, dict):
        raise CheckpointError(f'its metadata is {type(meta).__name__}, not a mapping of fields')
    try:
        _check_fields(meta, model)
    except RequestError as err:
        raise CheckpointError(f'its metadata is wrong: {err}') from None


def _check_fields(meta: dict[str, Any], model: nn.Module) -> None:
    classes = meta.get('classes')
    if classes is not None:
        heads = getattr(model, 'num_classes', None)
        if not isinstance(classes, list) or not all(isinstance(name, str) and name for name in classes):
            raise RequestError(f'classes must be a list of names, got {shown_value(classes)}')
        if heads is not None and len(classes) != heads:
            raise RequestError(f'{len(classes)} class names for a head of {heads} classes')
    if meta.get('image_size') is not None:
        size = number(meta['image_size'], 'image_size', 1, 4096, whole=True, typed=True)
        built = getattr(getattr(model, 'patch_embed', None), 'img_size', None)
        if built is not None and not getattr(model, 'dynamic_img_size', False) and tuple(built) != (size, size):
            grid, patch = tuple(model.patch_embed.grid_size), tuple(model.patch_embed.patch_size)
            raise RequestError(f'image_size {size} does not fit the model\'s {grid[0]}x{grid[1]} grid of '
                               f'{patch[0]}-pixel patches ({built[0]}x{built[1]} pixels)')
    for field, low in (('mean', -1e3), ('std', 1e-6)):  # the images an app reads are RGB: three channels
        values = meta.get(field)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != 3:
            raise RequestError(f'{field} must be a list of 3 numbers (red, green, blue), got {shown_value(values)}')
        for value in values:
            number(value, f'each {field} value', low, 1e3, typed=True)
    if meta.get('step') is not None:
        number(meta['step'], 'step', 0, 10**12, whole=True, typed=True)
    for field in ('val_top1', 'test_top1'):  # test_top1: checkpoints of before evaluation files held it here
        if meta.get(field) is not None:
            number(meta[field], field, 0, 100, typed=True)


def describe_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
                      shown: int = 5) -> str | None:
    """Why weights of shapes ``found`` do not load into a model of shapes ``expected``, or None if they fit.

    Args:
        expected: Parameter and buffer names of the model, with their shapes.
        found: Tensor names of the weights, with their shapes.
        shown: Keys named per kind (missing, unexpected, shape mismatch); the rest are counted.
    """
    misshapen = [f'{k} {found[k]} vs {expected[k]}' for k in sorted(set(expected) & set(found))
                 if found[k] != expected[k]]
    problems = []
    for label, items in (('missing', sorted(set(expected) - set(found))),
                         ('unexpected', sorted(set(found) - set(expected))), ('shape mismatch', misshapen)):
        if items:
            more = f' (+{len(items) - shown} more)' if len(items) > shown else ''
            problems.append(f'{label}: {", ".join(items[:shown])}{more}')
    return '; '.join(problems) or None


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Load weights into a model, or raise naming every missing, unexpected and misshapen key."""
    expected = model.state_dict()
    problem = describe_mismatch({k: tuple(v.shape) for k, v in expected.items()},
                                {k: tuple(v.shape) for k, v in weights.items()})
    if problem:
        raise CheckpointError(f'{source} does not fit {type(model).__name__}: {problem}')
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})


def load_checkpoint(
        path: str | Path,
        model_name: str | None = None,
        model_args: dict[str, Any] | None = None,
        device: torch.device | str = 'cpu',
) -> Checkpoint:
    """Rebuild a model from a checkpoint, in eval mode.

    Args:
        path: An advit ``.safetensors`` checkpoint, or a ``.pth``/``.pt``/plain safetensors state dict.
        model_name: Architecture, needed when the file has no advit metadata.
        model_args: Architecture arguments for ``model_name`` (``num_classes``, ``img_size``...).
        device: Where the model goes.
    """
    path = existing_file(path)
    meta: dict[str, Any] = {}
    if path.suffix == '.safetensors' and model_name is None:
        meta = read_metadata(path)
    tensors = read_tensors(path)
    name = model_name or meta.get('model')
    if name is None:
        raise CheckpointError(f'{path} does not name its architecture: pass the model name')
    args = dict(meta.get('model_args', {})) if model_name is None else dict(model_args or {})
    try:
        model = create_model(name, **args)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f'{path}: cannot build {name} with {args}: {err}') from err
    load_weights(model, model_weights(tensors), source=str(path))
    if isinstance(meta.get('mean'), list) and isinstance(meta.get('std'), list):
        # The file's normalisation is the model's: an imported one's (a transformers processor's) need not be its
        # architecture's default, and the teacher's forward reads it from the model (model_normalization).
        model.pretrained_cfg = dict(model.pretrained_cfg, mean=tuple(meta['mean']), std=tuple(meta['std']))
    meta.setdefault('model', name)
    meta.setdefault('model_args', args)
    return Checkpoint(model=model.to(device).eval(), meta=meta)


def import_state_dict(
        weights: str | Path,
        model_name: str | None,
        out: str | Path,
        classes: list[str] | None,
        image_size: int | None = None,
        method: str | None = None,
        teacher: str | None = None,
) -> dict[str, Any]:
    """Make a plain state dict (timm's own ``.pth``, DeiT's ``{'model': ...}``, safetensors without metadata), or a
    transformers ViT/DeiT classifier (a folder or a Hub id: ``hf_import``), a self-describing checkpoint the app lists
    and the CLI evaluates; return its metadata. Nothing is written unless it all checks out.

    Args:
        weights: The state dict's file, or the transformers checkpoint's folder or Hub id.
        model_name: A state dict's architecture, a timm name (``vit_base_patch16_224``); a transformers checkpoint's
            config says its own (None).
        out: The checkpoint to write (``.safetensors``), atomically.
        classes: The class names, in the order of the head's outputs (a transformers checkpoint's default: its
            config's labels).
        image_size: The input size it was trained at (default: the architecture's).
        method: How it was trained (``vit``, ``deit_hard``, ``advit_l1``...), shown by the app.
        teacher: Its teacher, shown by the app.
    """
    if Path(out).suffix != '.safetensors':
        raise CheckpointError(f'the imported checkpoint is a .safetensors file, not {Path(out).name}')
    # Imported here: hf_import builds on this module.
    from .hf_import import convert, is_transformers_source
    if is_transformers_source(weights):
        if model_name is not None:
            raise CheckpointError(f'{weights} is a transformers checkpoint, whose config.json gives its architecture: '
                                  'leave out --model')
        model, meta = convert(weights, classes, image_size)
    else:
        if model_name is None:
            raise CheckpointError(f'{weights} is a state dict: give its architecture with --model (a timm name); '
                                  'a transformers checkpoint is a folder (config.json and its weights) or a Hub id')
        if classes is None:
            raise CheckpointError('a state dict does not name its classes: give them (--classes)')
        args = dict(num_classes=len(classes), **({'img_size': image_size} if image_size else {}))
        model = load_checkpoint(weights, model_name, args).model
        mean, std = model_normalization(model)
        meta = dict(model=model_name, model_args=args, classes=list(classes),
                    image_size=image_size or model_image_size(model),  # a CNN takes any size: the one given
                    mean=list(mean), std=list(std), params=sum(p.numel() for p in model.parameters()),
                    imported_from=Path(weights).name)
    meta.update(method=method, teacher=teacher)
    check_metadata(meta, model)
    save_checkpoint(out, model, meta)
    return meta


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's state as flat tensors (param groups as JSON in a byte tensor)."""
    state = optimizer.state_dict()
    tensors = {f'optimizer/{index}/{name}': value if torch.is_tensor(value) else torch.tensor(value)
               for index, slots in state['state'].items() for name, value in slots.items()}
    groups = json.dumps(state['param_groups']).encode()
    tensors['optimizer/param_groups'] = torch.frombuffer(bytearray(groups), dtype=torch.uint8)
    return tensors


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore an optimiser from ``optimizer_tensors``' tensors (other train-state keys are ignored)."""
    saved = {key: value for key, value in tensors.items() if key.startswith('optimizer/')}
    groups = json.loads(bytes(saved.pop('optimizer/param_groups').tolist()))
    for group in groups:
        group['betas'] = tuple(group['betas'])
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in saved.items():
        _, index, name = key.split('/')
        slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({'state': slots, 'param_groups': groups})
