"""Readable names for people: a model as "ADViT-L1 student · conv-stem ViT 4x128 · 69.0%", not a file path.

The app shows these in its model lists; its API still takes the paths (``catalog.ModelEntry.key``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..core.checkpoint import architecture_args
from ..core.models import CONVSTEM_SIZES, is_vit_name
from ..results.bundle import EARLIER
from ..training.run_folder import BEST

METHOD_NAMES = {
    'vit': 'ViT', 'deit_hard': 'DeiT-hard', 'deit_soft': 'DeiT-soft', 'advit_l1': 'ADViT-L1',
    'advit_l2': 'ADViT-L2', 'advit_kl': 'ADViT-KL', 'advit_kl_paper': "ADViT-KL (paper's)",
    'advit_relevance': 'ADViT-relevance',
}
_VIT_SIZES = {'tiny': 'Ti', 'small': 'S', 'base': 'B', 'large': 'L', 'huge': 'H'}
TEACHER_STEM = 'teacher'  # the bundle's teacher file, checkpoints/teacher.safetensors


def method_name(method: str) -> str:
    """``deit_hard+advit_l1`` -> ``DeiT-hard + ADViT-L1``."""
    return ' + '.join(METHOD_NAMES.get(part, part) for part in method.split('+'))


def architecture_name(model: str, model_args: dict[str, Any] | None = None) -> str:
    """``vit_tiny_patch4_32`` -> ``ViT-Ti/4``; ``vit_mini4_convstem_32`` -> ``conv-stem ViT 4x128``;
    other timm names as they are (without their pretrained tag)."""
    base = model.split('.', 1)[0]
    args = model_args or {}
    stem = re.fullmatch(r'vit_(\w+?)_convstem_32', base)
    if stem and stem.group(1) in CONVSTEM_SIZES:
        size = dict(CONVSTEM_SIZES[stem.group(1)], **args)
        return f"conv-stem ViT {size['depth']}x{size['embed_dim']}"
    plain = re.fullmatch(r'(vit|deit)_(tiny|small|base|large|huge)_(distilled_)?patch(\d+)_(\d+)', base)
    if plain:
        family, size, distilled, patch, _ = plain.groups()
        name = f"{'ViT' if family == 'vit' else 'DeiT'}-{_VIT_SIZES[size]}/{patch}" + (' distilled' if distilled else '')
        changed = [f'{args[key]} {unit}' if unit == 'layers' else f'{unit} {args[key]}'
                   for key, unit in (('depth', 'layers'), ('embed_dim', 'width')) if key in args]
        return name + (f' ({", ".join(changed)})' if changed else '')
    return base


def model_label(key: str, meta: dict[str, Any], test_top1: float | None = None) -> str:
    """A model list's line: role and method, architecture, test top-1; a run's folder, or the earlier bundle's
    name (``bundle.EARLIER``), when not the bundle's.

    Args:
        key: The checkpoint's path (or ``timm:<name>``).
        meta: Its metadata.
        test_top1: Its test top-1 as its evaluation records it (``evaluate.recorded_test_top1``); None: not shown.
    """
    method = meta.get('method')
    if Path(key).stem == TEACHER_STEM:
        role = 'Teacher'
    elif not method:  # a state dict brought in by `advit import` without its method, or a timm model from the hub cache
        role = 'Imported' if meta.get('imported_from') else 'ImageNet-pretrained (timm)'
    elif method == 'vit':
        role = 'ViT (no distillation)' if is_vit_name(meta.get('model') or '') else 'CNN (cross-entropy)'
    else:
        role = f'{method_name(method)} student'
    parts = [role, architecture_name(meta.get('model', '?'), architecture_args(meta))]
    if meta.get('image_size') not in (None, 32):  # the paper's 224: a 32x32 bundle is the rule, not worth a word
        parts.append(f"{meta['image_size']}px")
    if test_top1 is not None:
        parts.append(f'{test_top1:.1f}%')
    if Path(key).name == BEST:  # a run of runs/: its folder tells runs of one method apart
        parts.append(Path(key).parent.name)
    elif Path(key).parent.name == EARLIER:  # the bundle the shipped one replaced: same names, same architectures
        parts.append(f'{EARLIER} bundle')
    return ' · '.join(parts)
