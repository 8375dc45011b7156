"""Losses: plain ViT, DeiT hard/soft distillation, and ADViT attention distillation.

Method names, each combining cross-entropy with the terms it names:

- ``vit``: cross-entropy only.
- ``deit_hard`` (paper eq. 3): (1 - alpha) CE(label) + alpha CE(teacher argmax), alpha = 0.5.
- ``deit_soft`` (paper eq. 2): (1 - lambda) CE(label) + lambda tau^2 KL(p_t^tau || p_s^tau).
- ``advit_l1`` / ``advit_l2`` (eqs. 5, 6): CE + w mean_layers sum_patches |A_s - A_t| (or squared).
- ``advit_kl_paper`` (eq. 4 as printed): CE + w tau^2 KL(softmax(A_t / tau) || softmax(A_s / tau)).
  The softmax is applied to maps that are already distributions, which flattens them.
- ``advit_kl``: CE + w KL(A_t || A_s) on the attention distributions themselves.
- ``deit_hard+advit_l1`` etc.: a DeiT logit term and an ADViT attention term at once.

Labels may be soft targets (mixup / CutMix): cross-entropy takes them as given, the teacher sees the
same mixed images as the student, and the DeiT-hard target stays the teacher's argmax.

With a distillation token the student returns (class logits, distillation logits) while training;
the DeiT term is computed on the distillation head and cross-entropy on the class head.

The teacher call is a ``TeacherForward``: one per loss by default, or one shared by the losses of
several students trained on the same batches, which then pay for one teacher forward per batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import shown_value
from .capture import ClsAttentionCapture, align_teacher_maps, fuse_heads, layer_mapping
from .models import model_normalization, patch_grid

LOGIT_METHODS = ('deit_hard', 'deit_soft')
ATTENTION_METHODS = ('advit_l1', 'advit_l2', 'advit_kl_paper', 'advit_kl')
METHODS = ('vit', *LOGIT_METHODS, *ATTENTION_METHODS) + tuple(
    f'{logit}+{attn}' for logit in LOGIT_METHODS for attn in ATTENTION_METHODS)
_EPS = 1e-8


@dataclass(frozen=True)
class Method:
    """A parsed method name: which logit distillation and which attention distance, if any."""
    logit: str | None
    attention: str | None

    @property
    def needs_teacher(self) -> bool:
        return self.logit is not None or self.attention is not None


def parse_method(name: str) -> Method:
    """Parse a method name such as ``advit_l1`` or ``deit_hard+advit_kl``."""
    if name not in METHODS:
        raise ValueError(f'unknown method {shown_value(name)}: choose one of {", ".join(METHODS)}')
    parts = name.split('+')
    logit = next((p for p in parts if p in LOGIT_METHODS), None)
    attention = next((p.removeprefix('advit_') for p in parts if p in ATTENTION_METHODS), None)
    return Method(logit=logit, attention=attention)


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


def renormalize(images: torch.Tensor, source: tuple, target: tuple) -> torch.Tensor:
    """Re-express images normalised with ``source`` (mean, std) in ``target`` (mean, std)."""
    if source == target:
        return images
    def column(values):
        return torch.tensor(values, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    (src_mean, src_std), (dst_mean, dst_std) = source, target
    return (images * column(src_std) + column(src_mean) - column(dst_mean)) / column(dst_std)


class TeacherForward:
    """The frozen teacher's logits and per-head [CLS] maps of a batch.

    Shared (``shared=True``), it runs once per batch: keyed by the batch tensor itself and its
    version counter (an in-place change is a new batch), every loss holding it and called with the
    same ``images`` reads the one forward, so several students on the same batches pay for one.

    Args:
        teacher: The teacher; put in eval mode and frozen.
        input_norm: The (mean, std) the images come normalised with (the students'); they are
            re-expressed in the teacher's own normalisation.
        capture: Record the teacher's attention (needed by attention methods).
        shared: Reuse the outputs while the same batch comes back; otherwise every call runs the teacher.
        attn_norm: How the captured maps are normalised (``capture.NORMALIZATIONS``).
    """

    def __init__(self, teacher: nn.Module, input_norm: tuple, capture: bool, shared: bool = False,
                 attn_norm: str = 'renormalized') -> None:
        self.model = teacher.eval().requires_grad_(False)
        self.norm, self.input_norm = model_normalization(teacher), input_norm
        capture = capture and hasattr(teacher, 'blocks')  # a CNN has no attention: its losses refuse it
        self.grid = patch_grid(teacher) if capture else None
        self.capture = ClsAttentionCapture(teacher, attn_norm) if capture else None
        self.shared = shared
        self._batch: tuple[torch.Tensor, int] | None = None
        self._outputs: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, maps of shape (batch, layers, heads, patches) or None) of the teacher on ``images``."""
        # The reference held in _batch keeps a new batch from taking the old one's identity.
        if not self.shared or self._batch is None or self._batch[0] is not images or self._batch[1] != images._version:
            logits = self.model(renormalize(images, self.input_norm, self.norm))
            self._outputs = logits, self.capture.pop() if self.capture else None
            self._batch = (images, images._version) if self.shared else None
        return self._outputs


class DistillationLoss(nn.Module):
    """Cross-entropy plus the chosen distillation terms; owns the teacher call.

    Args:
        method: A name from ``METHODS``.
        student: The (unwrapped) student; its attention is captured when the method needs it.
        teacher: The teacher, or None for ``vit``. Frozen and kept in eval mode. A ``TeacherForward``
            shares one teacher forward per batch between several losses.
        attn_weight: Weight of the attention term.
        alpha: Weight of the DeiT term (0.5 in the paper's eq. 3; lambda in eq. 2).
        tau: Temperature of ``deit_soft`` and ``advit_kl_paper``.
        label_smoothing: Label smoothing of the cross-entropy on class indices (soft targets
            carry their own, see ``forward``).
        head_fusion: How attention heads are fused before comparison (the paper: mean).
        layer_map: Teacher layer per student layer; default uniform.
        attn_norm: How each head's [CLS] row becomes a map (``capture.NORMALIZATIONS``; default
            ``renormalized``).
    """

    def __init__(
            self,
            method: str,
            student: nn.Module,
            teacher: nn.Module | TeacherForward | None = None,
            attn_weight: float = 1.0,
            alpha: float = 0.5,
            tau: float = 1.0,
            label_smoothing: float = 0.0,
            head_fusion: str = 'mean',
            layer_map: Sequence[int] | None = None,
            attn_norm: str = 'renormalized',
    ) -> None:
        super().__init__()
        self.method = parse_method(method)
        if self.method.needs_teacher and teacher is None:
            raise ValueError(f'method {method!r} needs a teacher')
        teacher_model = teacher.model if isinstance(teacher, TeacherForward) else teacher
        for role, model in (('teacher', teacher_model), ('student', student)):
            if self.method.attention and not hasattr(model, 'blocks'):
                raise ValueError(f'method {method!r} distils attention and needs a ViT {role}, '
                                 f'not {type(model).__name__}')
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.attn_weight, self.alpha, self.tau = attn_weight, alpha, tau
        self.head_fusion = head_fusion
        # Not a submodule: the teacher's weights stay out of this loss's state_dict and parameters.
        self.teacher_forward = TeacherForward(teacher, model_normalization(student), self.method.attention is not None,
                                              attn_norm=attn_norm) if isinstance(teacher, nn.Module) else teacher
        self.student_capture = None
        if self.method.attention:
            if self.teacher_forward.capture is None:
                raise ValueError(f'method {method!r} distils attention: its shared teacher must capture attention')
            if self.teacher_forward.input_norm != model_normalization(student):
                raise ValueError('a shared teacher takes images normalised as this student takes them')
            if self.teacher_forward.capture.normalization != attn_norm:
                raise ValueError(f'the shared teacher captures {self.teacher_forward.capture.normalization} maps, '
                                 f'this loss compares {attn_norm} ones')
            if head_fusion == 'none' and student.blocks[0].attn.num_heads != teacher_model.blocks[0].attn.num_heads:
                raise ValueError('per-head distillation needs the same head count in teacher and student')
            self.student_capture = ClsAttentionCapture(student, attn_norm)
            self.student_grid = patch_grid(student)
            self.layer_map = layer_map
            layer_mapping(len(student.blocks), len(teacher_model.blocks), layer_map)  # refuse a bad map now

    def train(self, mode: bool = True) -> 'DistillationLoss':
        super().train(mode)
        if self.teacher_forward is not None:
            self.teacher_forward.model.eval()  # the teacher never trains (dropout, drop-path stay off)
        return self

    def forward(
            self,
            images: torch.Tensor,
            outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
            labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch, and its terms (detached) for logging.

        Args:
            images: The batch the student saw (normalised for the student).
            outputs: Student logits, or (class logits, distillation logits) with a distillation token.
            labels: Class indices, or (batch, classes) probabilities (mixup / CutMix targets), taken
                as given: they already hold their label smoothing.
        """
        class_logits, distill_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        criterion = F.cross_entropy if labels.is_floating_point() else self.criterion  # no second smoothing
        ce = criterion(class_logits, labels)
        terms = {'ce': ce.detach()}
        if not self.method.needs_teacher:
            terms['loss'] = terms['ce']
            return ce, terms

        teacher_logits, teacher_maps = self.teacher_forward(images)
        loss = ce
        if self.method.logit is not None:
            kd = self._logit_term(distill_logits, teacher_logits.float())
            terms['kd'] = kd.detach()
            loss = (1 - self.alpha) * ce + self.alpha * kd
        if self.method.attention is not None:
            attn = self.attention_term(teacher_maps)
            terms['attn'] = attn.detach()
            loss = loss + self.attn_weight * attn
        terms['loss'] = loss.detach()
        return loss, terms

    def _logit_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.method.logit == 'deit_hard':
            return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
        log_p_student = F.log_softmax(student_logits / self.tau, dim=-1)
        log_p_teacher = F.log_softmax(teacher_logits / self.tau, dim=-1)
        return F.kl_div(log_p_student, log_p_teacher, reduction='batchmean', log_target=True) * self.tau ** 2

    def aligned_maps(self, teacher_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student maps of the student's last forward and the teacher's ``teacher_maps`` (per head, as
        ``TeacherForward`` gives them), fused and aligned as the loss compares them."""
        student = fuse_heads(self.student_capture.pop(), self.head_fusion)
        teacher = fuse_heads(teacher_maps, self.head_fusion)
        teacher = align_teacher_maps(
            teacher, student.shape[1], self.teacher_forward.grid, self.student_grid, self.layer_map)
        return student, teacher

    def attention_term(self, teacher_maps: torch.Tensor) -> torch.Tensor:
        """The attention distance of the student's last forward, averaged over batch, layers and heads."""
        student, teacher = self.aligned_maps(teacher_maps)
        return attention_gap(student, teacher, self.method.attention, self.tau).mean()
