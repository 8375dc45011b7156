"""The models the app can offer: the checkpoint bundle, finished runs, and timm models whose weights are on disk.

Each checkpoint is checked without loading its weights (the safetensors header against the
architecture built on the ``meta`` device), so a corrupt or mismatched file is listed as
unusable with its reason instead of failing when chosen.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from ..core.attention_path import use_attention_path
from ..core.checkpoint import (
    check_metadata,
    describe_mismatch,
    load_checkpoint,
    read_metadata,
)
from ..core.checks import shown_value
from ..core.io import REPO
from ..core.models import create_model, is_vit_name
from ..core.weights import TRAIN_STATE_PREFIX, CheckpointError
from ..measure.evaluate import read_evaluation, recorded_test_top1
from ..measure.removal import PROTOCOLS, REMOVED_AS
from ..measure.verdicts import HEADLINE_PROTOCOL, describe_drop, headline
from .names import model_label

# Paper models offered when their ImageNet weights are in the local Hugging Face cache.
TIMM_MODELS = (
    'vit_tiny_patch16_224.augreg_in21k_ft_in1k',
    'vit_small_patch16_224.augreg_in21k_ft_in1k',
    'vit_base_patch16_224.augreg_in21k_ft_in1k',
)
TIMM_PREFIX = 'timm:'
STATE_DICT_PATTERNS = ('*.pth', '*.pt')  # weights without metadata (timm's and DeiT's own files)


@dataclass
class ModelEntry:
    """One model the app can load: a checkpoint path or ``timm:<name>`` (``key``), the name clients see
    (``name``: no absolute server path), its metadata, and whether it loads."""
    key: str
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    name: str = ''

    def __post_init__(self) -> None:
        self.name = self.name or self.key

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def is_vit(self) -> bool:
        return is_vit_name(self.meta.get('model') or '')

    @cached_property
    def evaluation(self) -> dict[str, Any] | None:
        """Its evaluation file (``evaluate.read_evaluation``: test top-1, per class, faithfulness), read once per
        catalog scan; None for a timm model or a checkpoint not evaluated."""
        return None if self.key.startswith(TIMM_PREFIX) else read_evaluation(self.key)

    @property
    def test_top1(self) -> float | None:
        """Its test top-1, from its evaluation (``evaluate.recorded_test_top1``); None where not evaluated."""
        return recorded_test_top1(self.evaluation, self.meta)

    def label(self) -> str:
        """A readable one-line name for a model list (``names.model_label``)."""
        return model_label(self.key, self.meta, self.test_top1)

    def faithfulness(self, protocol: str = HEADLINE_PROTOCOL) -> dict[str, dict[str, float | None]]:
        """The quarter drops (and their standard errors) of its last layer's map and rollout on the test
        images of its evaluation file under a removal ``protocol`` (``verdicts.headline``), or {} where none
        was measured."""
        drops = headline(self.evaluation, protocol) if self.evaluation is not None else {}
        return drops if any(entry['quarter_drop'] is not None for entry in drops.values()) else {}

    def describe(self) -> str:
        """Markdown: what this model is, from its metadata (and its evaluation file's faithfulness)."""
        meta = self.meta
        rows = [('file', f'`{self.name}`'), ('architecture', meta.get('model')), ('method', meta.get('method')),
                ('teacher', meta.get('teacher')), ('image size', meta.get('image_size')),
                ('classes', len(meta.get('classes', [])) or None), ('parameters',
                f"{meta['params'] / 1e6:.1f}M" if meta.get('params') else None),
                ('validation top-1', f"{meta['val_top1']:.2f}% (the checkpoint was chosen on it)"
                 if meta.get('val_top1') is not None else None),
                ('test top-1', f"{self.test_top1:.2f}%" if self.test_top1 is not None else None),
                *[(f'faithful maps? (quarter drop on test images, removed patches {REMOVED_AS[protocol]})', '; '.join(
                    f'{source}: {describe_drop(entry)}' for source, entry in self.faithfulness(protocol).items()
                    if entry['quarter_drop'] is not None) or None) for protocol in PROTOCOLS],
                ('chosen at step', meta.get('step'))]
        return '\n'.join(f'- **{name}**: {value}' for name, value in rows if value not in (None, ''))


def discover(checkpoint_dirs: list[Path], runs_dir: Path | None, home: Path = REPO) -> list[ModelEntry]:
    """Every model on offer: ``*.safetensors`` in the checkpoint folders, each run's (and each student's of a
    several-student run) ``best``, cached timm models.

    Args:
        home: The app's folder: a file in it is named by its path from there (``checkpoints/teacher.safetensors``),
            any other by its folder and file (``runs/tiny/best.safetensors``).
    """
    found: list[tuple[Path, Path]] = []  # (file, the folder it was found in)
    for folder in checkpoint_dirs:  # plain state dicts too: listed as unusable, with how to import them
        found += [(path, Path(folder)) for pattern in ('*.safetensors', *STATE_DICT_PATTERNS)
                  for path in sorted(Path(folder).glob(pattern))]
    if runs_dir is not None and Path(runs_dir).is_dir():
        # A run's best, and each student's of a several-student run (runs/<run>/<method>/best.safetensors).
        found += [(path, Path(runs_dir)) for pattern in ('*/best.safetensors', '*/*/best.safetensors')
                  for path in sorted(Path(runs_dir).glob(pattern))]
    entries = []
    for path, folder in found:
        entry = check_checkpoint(path)
        name = public_name(path, folder, home)
        entries.append(replace(entry, name=name, problem=entry.problem and entry.problem.replace(str(path), name)))
    return entries + cached_timm_models()


def public_name(path: Path, folder: Path, home: Path = REPO) -> str:
    """A checkpoint's name for clients: its path from ``home`` when inside it, else from ``folder``'s parent."""
    resolved = Path(path).resolve()
    for base in (Path(home).resolve(), Path(folder).resolve().parent):
        if resolved.is_relative_to(base):
            return str(resolved.relative_to(base))
    return resolved.name


_checked: dict[tuple[str, int, int], ModelEntry] = {}  # by (path, mtime, size): a file is checked once
_checked_lock = threading.Lock()


def check_checkpoint(path: Path) -> ModelEntry:
    """An entry for a checkpoint, with the reason if it cannot be loaded (weights are not read).

    The result is remembered until the file changes: every request looks at the catalog.
    """
    try:
        stat = Path(path).stat()
        stamp = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError as err:
        return ModelEntry(key=str(path), problem=str(err))
    with _checked_lock:
        if stamp in _checked:
            return _checked[stamp]
    entry = _check(path)
    with _checked_lock:
        _checked[stamp] = entry
    return entry


def _check(path: Path) -> ModelEntry:
    entry = ModelEntry(key=str(path))
    if path.suffix != '.safetensors':  # a state dict does not say what it is, and unpickling it to look costs
        entry.problem = (f'a plain state dict, which does not name its architecture: `advit import {path.name} '
                         f'--model ARCHITECTURE --out {path.stem}.safetensors` makes it a checkpoint this app lists')
        return entry
    try:
        meta = read_metadata(path)
        if 'model' not in meta:
            raise CheckpointError(f'{path} does not name its architecture in its metadata')
        if not isinstance(meta['model'], str) or not isinstance(meta.get('model_args', {}), dict):
            raise CheckpointError(f'its metadata is wrong: model must be a timm name and model_args a mapping, got '
                                  f'{shown_value(meta["model"])} and {shown_value(meta.get("model_args"))}')
        entry.meta = meta  # a mapping from here: a listed entry's card and name read it
        with torch.device('meta'):
            model = create_model(meta['model'], **meta.get('model_args', {}))
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        with safe_open(str(path), framework='pt') as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()
                     if not name.startswith(TRAIN_STATE_PREFIX)}
        problem = describe_mismatch(expected, found)
        if problem:
            entry.problem = f'weights do not fit {entry.meta["model"]}: {problem}'
        else:
            check_metadata(entry.meta, model)
    except (CheckpointError, SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        entry.problem = str(err) or type(err).__name__
    return entry


def cached_timm_models() -> list[ModelEntry]:
    """The paper's timm models whose weights are already in the Hugging Face cache (no download)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    entries = []
    for name in TIMM_MODELS:
        if isinstance(try_to_load_from_cache(f'timm/{name}', 'model.safetensors'), str):
            entries.append(ModelEntry(key=TIMM_PREFIX + name, meta={'model': name, 'image_size': 224}))
    return entries


class ModelCache:
    """Loaded models by entry key, the least recently used dropped beyond ``capacity`` (thread-safe)."""

    def __init__(self, capacity: int = 6) -> None:
        self.capacity = capacity
        # key -> (file modification time, model, metadata)
        self._models: OrderedDict[str, tuple[float, nn.Module, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[nn.Module, dict[str, Any]]:
        """The model (eval mode, CPU) and metadata of an entry key; a rewritten file is reloaded."""
        stamp = Path(key).stat().st_mtime if not key.startswith(TIMM_PREFIX) else 0.0
        with self._lock:
            cached = self._models.get(key)
            if cached is not None and cached[0] == stamp:
                self._models.move_to_end(key)
                return cached[1], cached[2]
        model, meta = self._load(key)
        with self._lock:
            self._models[key] = (stamp, model, meta)  # replaces a stale version of the same file
            self._models.move_to_end(key)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return model, meta

    @staticmethod
    def _load(key: str) -> tuple[nn.Module, dict[str, Any]]:
        if key.startswith(TIMM_PREFIX):
            import timm
            name = key[len(TIMM_PREFIX):]
            model = create_model(name, num_classes=1000, pretrained=True).eval()
            info = timm.data.ImageNetInfo()
            meta = {'model': name, 'classes': [info.index_to_description(i) for i in range(1000)],
                    'mean': list(model.pretrained_cfg['mean']), 'std': list(model.pretrained_cfg['std']),
                    'image_size': 224}
        else:
            loaded = load_checkpoint(key)
            model, meta = loaded.model, loaded.meta
        # The app's models read one image at a time, on the CPU, in float32.
        use_attention_path(model, 'auto', torch.device('cpu'), batch=1, training=False)
        return model, meta
