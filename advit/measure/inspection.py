"""Teacher vs student [CLS] attention on one image, layer by layer, as the training loss sees it.

The maps are taken as the student was trained (its recorded ``attn_norm``) and compared by
``alignment.compare_maps``, the function the training loss calls (heads fused, the teacher mapped to
the student's layers by its recorded ``layer_map`` and resampled to its grid, the gaps measured), so
what the app shows is what training minimised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..core.alignment import GAP_KINDS, compare_maps, fuse_heads, layer_mapping
from ..core.augment import normalize
from ..core.capture import (
    DEFAULT_NORMALIZATION,
    ClsAttentionCapture,
    trained_normalization,
)
from ..core.models import model_image_size, patch_grid


@dataclass
class AttentionReport:
    """Per student layer: both maps on the student's grid, the teacher layer used, and the gaps."""
    student_maps: np.ndarray  # (layers, patches)
    teacher_maps: np.ndarray  # (layers, patches), aligned to the student
    teacher_layers: list[int]  # the teacher layer compared with each student layer, from 0
    grid: tuple[int, int]
    gaps: dict[str, np.ndarray]  # kind -> (layers,)
    student_top5: dict[str, float]
    teacher_top5: dict[str, float]
    settings: dict[str, Any]  # fusion, layer_map ('as trained' or 'uniform'), attn_norm: how the maps were taken

    @property
    def teacher_layer_numbers(self) -> list[int]:
        """The teacher layer compared with each student layer, counted from 1 as every download and table counts."""
        return [t + 1 for t in self.teacher_layers]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: one record per layer, layers counted from 1 as the page's tables count them, and
        ``teacher_layers``, the teacher layer compared with each student layer."""
        layers = [
            dict(layer=i + 1, teacher_layer=t, student_map=self.student_maps[i].tolist(),
                 teacher_map=self.teacher_maps[i].tolist(), **{k: float(v[i]) for k, v in self.gaps.items()})
            for i, t in enumerate(self.teacher_layer_numbers)]
        return dict(grid=list(self.grid), layers=layers, student_top5=self.student_top5,
                    teacher_top5=self.teacher_top5,
                    settings=dict(self.settings, teacher_layers=self.teacher_layer_numbers))


def seen_image(image: Image.Image, model: nn.Module, meta: dict[str, Any] | None = None) -> Image.Image:
    """The image as a model reads it: whole, resized (bicubic) to the size it was trained at (``image_size`` in
    its metadata: a CNN takes any size), else its input size (32x32 for CIFAR models)."""
    size = (meta or {}).get('image_size') or model_image_size(model)
    return image.convert('RGB').resize((size, size), Image.BICUBIC)


def model_input(image: Image.Image, meta: dict[str, Any], model: nn.Module) -> torch.Tensor:
    """The image as the model reads it (``seen_image``), normalised with its mean/std, as a batch of one."""
    pixels = np.asarray(seen_image(image, model, meta), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    mean = meta.get('mean') or model.pretrained_cfg['mean']
    std = meta.get('std') or model.pretrained_cfg['std']
    return normalize(tensor, tuple(mean), tuple(std))


def forward_head_maps(model: nn.Module, inputs: torch.Tensor,
                      attn_norm: str = DEFAULT_NORMALIZATION) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, every layer's per-head [CLS] maps, (batch, layers, heads, patches)) of one forward; not to be taken
    for ``rollout.head_maps``, one layer's maps from attention already recorded."""
    with ClsAttentionCapture(model, attn_norm) as capture, torch.inference_mode():
        logits = model(inputs)
        maps = capture.pop()
    if not torch.isfinite(maps).all() or not torch.isfinite(logits).all():
        raise ValueError(f'{type(model).__name__} produced non-finite attention or logits for this image')
    return logits, maps


def top5(logits: torch.Tensor, classes: list[str]) -> dict[str, float]:
    probs = logits.float().softmax(dim=-1)[0]
    values, index = probs.topk(min(5, len(probs)))
    names = classes or [str(i) for i in range(len(probs))]
    return {names[i]: float(v) for v, i in zip(values, index)}


def predicted_top5(model: nn.Module, meta: dict[str, Any], image: Image.Image) -> dict[str, float]:
    """Any classifier's five most probable classes on ``image`` (a CNN's too: it has no maps to show)."""
    with torch.inference_mode():
        return top5(model(model_input(image, meta, model)), meta.get('classes', []))


@dataclass
class ModelAttention:
    """One model's fused [CLS] attention per layer on one image, and its top-5."""
    maps: np.ndarray  # (layers, patches)
    grid: tuple[int, int]
    top5: dict[str, float]


def inspect_model(model: nn.Module, meta: dict[str, Any], image: Image.Image, fusion: str | int = 'mean') -> ModelAttention:
    """One model's [CLS] attention on ``image``, normalised as it was trained (``attn_norm`` in ``meta``).

    Args:
        model: A ViT (eval mode).
        meta: Its checkpoint metadata (classes, mean, std, attn_norm).
        image: Any RGB image, resized to the model's input size.
        fusion: ``'mean'``, ``'max'`` or a head index.
    """
    logits, maps = forward_head_maps(model, model_input(image, meta, model), trained_normalization(meta))
    return ModelAttention(maps=fuse_heads(maps, fusion)[0, :, 0].numpy(), grid=patch_grid(model), top5=top5(logits, meta.get('classes', [])))


def inspect_pair(
        teacher: nn.Module, teacher_meta: dict[str, Any],
        student: nn.Module, student_meta: dict[str, Any],
        image: Image.Image, fusion: str | int = 'trained',
) -> AttentionReport:
    """Both models' [CLS] attention on ``image``, aligned as in training, and their per-layer gaps.

    The maps are normalised as the student was trained (``attn_norm`` in its metadata), and the
    teacher's layers mapped by the student's ``layer_map`` when it fits this teacher (else uniformly).

    Args:
        teacher: The teacher ViT (eval mode).
        teacher_meta: Its checkpoint metadata (classes, mean, std).
        student: The student ViT (eval mode).
        student_meta: Its checkpoint metadata (and how it was trained: head_fusion, layer_map, attn_norm).
        image: Any RGB image; each model sees it resized to its own input size.
        fusion: Head fusion: ``'trained'`` (the student's ``head_fusion``; ``none``, per head, is shown
            as ``mean``), ``'mean'``, ``'max'``, or a head index.
    """
    if fusion == 'trained':
        fusion = student_meta.get('head_fusion') or 'mean'
        fusion = 'mean' if fusion == 'none' else fusion
    if fusion == 'none':
        raise ValueError('choose mean, max or one head to display')
    attn_norm = trained_normalization(student_meta)
    teacher_logits, teacher_maps = forward_head_maps(teacher, model_input(image, teacher_meta, teacher), attn_norm)
    student_logits, student_maps = forward_head_maps(student, model_input(image, student_meta, student), attn_norm)
    layer_map = student_meta.get('layer_map')
    try:
        layer_mapping(student_maps.shape[1], teacher_maps.shape[1], layer_map)
    except ValueError:  # another teacher than the one it was trained with: map uniformly
        layer_map = None
    compared = compare_maps(student_maps, teacher_maps, patch_grid(student), patch_grid(teacher), fusion=fusion,
                            layer_map=layer_map)
    return AttentionReport(
        student_maps=compared.student[0, :, 0].numpy(), teacher_maps=compared.teacher[0, :, 0].numpy(),
        teacher_layers=compared.teacher_layers, grid=patch_grid(student),
        gaps={kind: compared.gap(kind)[0, :, 0].numpy() for kind in GAP_KINDS},
        student_top5=top5(student_logits, student_meta.get('classes', [])),
        teacher_top5=top5(teacher_logits, teacher_meta.get('classes', [])),
        # Which teacher layers: settings' teacher_layers.
        settings=dict(fusion=fusion, layer_map='as trained' if layer_map is not None else 'uniform',
                      attn_norm=attn_norm))
