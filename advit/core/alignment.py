"""The one rule that compares a student's [CLS] maps with its teacher's.

Per-head maps (as ``capture.ClsAttentionCapture`` takes them, normalised as the run says) are fused
over heads, the teacher's layers mapped to the student's (uniformly, or by an explicit layer map), its
grid resampled to the student's, and the gaps measured. The training loss, the attention probe and
the app's inspection all call ``compare_maps``, so what the app shows is what training minimised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

HEAD_FUSIONS = ('mean', 'max', 'none')
GAP_KINDS = ('l1', 'l2', 'kl')  # the gaps the app and the probe show (kl_paper is a loss, not a distance)
_EPS = 1e-8


@dataclass
class MapComparison:
    """A student's fused maps and its teacher's on the student's layers and grid."""
    student: torch.Tensor  # (batch, layers, H', patches), distributions
    teacher: torch.Tensor  # the same shape: the teacher layer compared with each student layer
    teacher_layers: list[int]  # that teacher layer, per student layer, from 0

    def gap(self, kind: str, tau: float = 1.0) -> torch.Tensor:
        """Per-sample, per-layer, per-head distance of kind ``kind`` (``attention_gap``)."""
        return attention_gap(self.student, self.teacher, kind, tau)


def compare_maps(
        student_maps: torch.Tensor,
        teacher_maps: torch.Tensor,
        student_grid: tuple[int, int],
        teacher_grid: tuple[int, int],
        fusion: str | int = 'mean',
        layer_map: Sequence[int] | None = None,
) -> MapComparison:
    """Fuse both models' per-head maps and align the teacher's to the student's layers and grid.

    Args:
        student_maps: Student per-head maps (batch, layers, heads, patches).
        teacher_maps: Teacher per-head maps (batch, layers, heads, patches) of the same images.
        student_grid: Student patch grid (rows, cols).
        teacher_grid: Teacher patch grid.
        fusion: Head fusion (``fuse_heads``); ``'none'`` needs equal head counts.
        layer_map: Teacher layer per student layer; default uniform.
    """
    student = fuse_heads(student_maps, fusion)
    teacher = fuse_heads(teacher_maps, fusion)
    if student.shape[2] != teacher.shape[2]:
        raise ValueError(f'per-head maps need the same head count: the student has {student.shape[2]}, '
                         f'the teacher {teacher.shape[2]}')
    teacher_layers = layer_mapping(student.shape[1], teacher.shape[1], layer_map)
    aligned = align_teacher_maps(teacher, student.shape[1], teacher_grid, student_grid, layer_map)
    return MapComparison(student=student, teacher=aligned, teacher_layers=teacher_layers)


def attention_gap(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """Per-sample, per-layer, per-head distance between attention maps, summed over patches.

    Args:
        student: Student maps (..., patches), distributions over the patches.
        teacher: Teacher maps of the same shape.
        kind: ``'l1'``, ``'l2'``, ``'kl'`` (KL(teacher || student)) or ``'kl_paper'`` (KL of the
            softmax-with-temperature of both maps, times tau^2).
        tau: Temperature of ``'kl_paper'``.

    Returns:
        Distances of shape ``student.shape[:-1]``.
    """
    if kind == 'l1':
        return (student - teacher).abs().sum(dim=-1)
    if kind == 'l2':
        return (student - teacher).pow(2).sum(dim=-1)
    if kind == 'kl':
        return (teacher * (teacher.clamp_min(_EPS).log() - student.clamp_min(_EPS).log())).sum(dim=-1)
    if kind == 'kl_paper':
        log_p_teacher = F.log_softmax(teacher / tau, dim=-1)
        log_p_student = F.log_softmax(student / tau, dim=-1)
        return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1) * tau * tau
    raise ValueError(f'unknown attention distance {kind!r}: choose l1, l2, kl or kl_paper')


def fuse_heads(maps: torch.Tensor, fusion: str | int = 'mean') -> torch.Tensor:
    """Fuse per-head maps (batch, layers, heads, patches) into distributions (batch, layers, H', patches).

    Args:
        maps: Per-head maps from ``ClsAttentionCapture.pop`` (renormalised or raw).
        fusion: ``'mean'`` (the paper's: H' = 1), ``'max'`` (H' = 1), ``'none'`` (keep every head)
            or an int selecting one head. The result is normalised to sum to one (once, after fusing).
    """
    if isinstance(fusion, int):
        if not 0 <= fusion < maps.shape[2]:
            raise ValueError(f'head {fusion} does not exist: this model has {maps.shape[2]} heads (0-{maps.shape[2] - 1})')
        fused = maps[:, :, fusion:fusion + 1]
    elif fusion == 'mean':
        fused = maps.mean(dim=2, keepdim=True)
    elif fusion == 'max':
        fused = maps.amax(dim=2, keepdim=True)
    elif fusion == 'none':
        fused = maps
    else:
        raise ValueError(f'unknown head fusion {fusion!r}: choose one of {HEAD_FUSIONS} or a head index')
    return fused / fused.sum(dim=-1, keepdim=True)


def layer_mapping(student_layers: int, teacher_layers: int, explicit: Sequence[int] | None = None) -> list[int]:
    """For each student layer, the teacher layer it is distilled from.

    Args:
        student_layers: Student depth.
        teacher_layers: Teacher depth.
        explicit: One teacher index per student layer; default spreads them uniformly so
            that the last student layer meets the last teacher layer.
    """
    if explicit is None:
        return [-(-(i + 1) * teacher_layers // student_layers) - 1 for i in range(student_layers)]  # ceil
    mapping = [int(i) for i in explicit]
    if len(mapping) != student_layers:
        raise ValueError(f'layer map has {len(mapping)} entries, the student has {student_layers} layers')
    if not all(0 <= i < teacher_layers for i in mapping):
        raise ValueError(f'layer map {mapping} names layers outside the teacher\'s 0..{teacher_layers - 1}')
    return mapping


def resample_to_grid(maps: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int]) -> torch.Tensor:
    """Resample patch maps (..., rows*cols) from one patch grid to another, renormalised.

    Args:
        maps: Attention distributions over ``source_grid`` patches.
        source_grid: (rows, cols) of the maps.
        target_grid: (rows, cols) wanted.
    """
    if tuple(source_grid) == tuple(target_grid):
        return maps
    lead = maps.shape[:-1]
    grid = maps.reshape(-1, 1, *source_grid)
    resized = F.interpolate(grid, size=tuple(target_grid), mode='bilinear', align_corners=False, antialias=True)
    resized = resized.clamp_min(0).reshape(*lead, target_grid[0] * target_grid[1])
    return resized / resized.sum(dim=-1, keepdim=True)


def align_teacher_maps(
        teacher_maps: torch.Tensor,
        student_layers: int,
        teacher_grid: tuple[int, int],
        student_grid: tuple[int, int],
        layer_map: Sequence[int] | None = None,
) -> torch.Tensor:
    """Select and resample teacher maps (batch, L_t, H, P_t) to match the student's layers and grid.

    Args:
        teacher_maps: Fused teacher maps.
        student_layers: Student depth.
        teacher_grid: Teacher patch grid.
        student_grid: Student patch grid.
        layer_map: Optional explicit teacher layer per student layer.
    """
    index = layer_mapping(student_layers, teacher_maps.shape[1], layer_map)
    selected = teacher_maps[:, index] if index != list(range(teacher_maps.shape[1])) else teacher_maps
    return resample_to_grid(selected, teacher_grid, student_grid)
