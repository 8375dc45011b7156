"""Losses: plain ViT, DeiT hard/soft distillation, and ADViT attention distillation.

Method names, each combining cross-entropy with the terms it names:

- ``vit``: cross-entropy only.
- ``deit_hard`` (paper eq. 3): (1 - alpha) CE(label) + alpha CE(teacher argmax), alpha = 0.5.
- ``deit_soft`` (paper eq. 2): (1 - lambda) CE(label) + lambda tau^2 KL(p_t^tau || p_s^tau).
- ``advit_l1`` / ``advit_l2`` (eqs. 5, 6): CE + w mean_layers sum_patches |A_s - A_t| (or squared).
- ``advit_kl_paper`` (eq. 4 as printed): CE + w tau^2 KL(softmax(A_t / tau) || softmax(A_s / tau)).
  The softmax is applied to maps that are already distributions, which flattens them.
- ``advit_kl``: CE + w KL(A_t || A_s) on the attention distributions themselves.
- ``advit_relevance``: CE + w mean_layers sum_patches |A_s - R_t|, with R_t the teacher's gradient-weighted
  [CLS] attention of the mapped layer (``relevance.layer_relevance``: the heads' mean of (dy/dA * A)+, y the
  true class's logit, or the mixed target's weighted logits): the student's attention is pulled towards what
  the teacher's decision uses, not only where it looks. It costs one teacher backward per batch.
- ``deit_hard+advit_l1`` etc.: a DeiT logit term and an ADViT attention term at once.

Labels may be soft targets (mixup / CutMix): cross-entropy takes them as given, the teacher sees the
same mixed images as the student, and the DeiT-hard target stays the teacher's argmax.

With a distillation token the student returns (class logits, distillation logits) while training;
the DeiT term is computed on the distillation head and cross-entropy on the class head.

The training step calls the teacher once per batch (``TeacherForward``, shared by every student of a
run) and each student, and passes the loss what it needs: the logits, the teacher's output, the
student's maps of that forward. The loss calls no model and reads no hook.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .alignment import compare_maps, layer_mapping
from .capture import DEFAULT_NORMALIZATION, ClsAttentionCapture
from .checks import shown_value
from .models import model_normalization, patch_grid
from .relevance import RELEVANCE_TARGETS, attention_gradients, layer_relevance

LOGIT_METHODS = ('deit_hard', 'deit_soft')
ATTENTION_METHODS = ('advit_l1', 'advit_l2', 'advit_kl_paper', 'advit_kl', 'advit_relevance')
RELEVANCE_DISTANCE = 'l1'  # advit_relevance compares its maps as advit_l1 does
METHODS = ('vit', *LOGIT_METHODS, *ATTENTION_METHODS) + tuple(
    f'{logit}+{attn}' for logit in LOGIT_METHODS for attn in ATTENTION_METHODS)


@dataclass(frozen=True)
class Method:
    """A parsed method name: which logit distillation and which attention distance, if any, towards which of the
    teacher's maps (``'attention'``: its [CLS] attention; ``'relevance'``: its gradient-weighted attention)."""
    logit: str | None
    attention: str | None
    target: str = 'attention'

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
    if attention == 'relevance':
        return Method(logit=logit, attention=RELEVANCE_DISTANCE, target='relevance')
    return Method(logit=logit, attention=attention)


def renormalize(images: torch.Tensor, source: tuple, target: tuple) -> torch.Tensor:
    """Re-express images normalised with ``source`` (mean, std) in ``target`` (mean, std)."""
    if source == target:
        return images
    def column(values):
        return torch.tensor(values, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    (src_mean, src_std), (dst_mean, dst_std) = source, target
    return (images * column(src_std) + column(src_mean) - column(dst_mean)) / column(dst_std)


@dataclass(frozen=True)
class TeacherOutput:
    """The teacher's answer on one batch: its logits and, for attention methods, its per-head [CLS] maps and
    (for ``advit_relevance``) its gradient-weighted ones."""
    logits: torch.Tensor
    maps: torch.Tensor | None  # (batch, layers, heads, patches), or None without capture
    relevance: torch.Tensor | None = None  # (batch, layers, 1, patches): heads already fused, each a distribution


class TeacherForward:
    """The frozen teacher as the training loop calls it: once per batch, for every student of the run.

    Args:
        teacher: The teacher; put in eval mode and frozen.
        input_norm: The (mean, std) the images come normalised with (the students'); they are
            re-expressed in the teacher's own normalisation.
        capture: Record the teacher's attention (needed by attention methods).
        attn_norm: How the captured maps are normalised (``capture.NORMALIZATIONS``).
        relevance: Also compute its gradient-weighted maps (``advit_relevance``), as
            ``relevance.RELEVANCE_TARGETS`` names them; None: a forward without gradients only.
    """

    def __init__(self, teacher: nn.Module, input_norm: tuple, capture: bool, attn_norm: str = DEFAULT_NORMALIZATION,
                 relevance: str | None = None) -> None:
        self.model = teacher.eval().requires_grad_(False)
        self.norm, self.input_norm = model_normalization(teacher), input_norm
        capture = capture and hasattr(teacher, 'blocks')  # a CNN has no attention: its losses refuse it
        self.capture = ClsAttentionCapture(teacher, attn_norm) if capture else None
        if relevance is not None and relevance not in RELEVANCE_TARGETS:
            raise ValueError(f'unknown relevance target {relevance!r}: choose one of {", ".join(RELEVANCE_TARGETS)}')
        self.relevance = relevance if capture else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> TeacherOutput:
        """The teacher's logits and per-head maps on ``images`` (normalised for the students).

        Args:
            images: The batch, normalised for the students.
            labels: Its training targets (class indices, or mixed (batch, classes) weights): the class score
                whose gradient weighs the relevance; needed with ``relevance`` only.
        """
        inputs = renormalize(images, self.input_norm, self.norm)
        if self.relevance is None:
            with torch.no_grad():
                logits = self.model(inputs)
            return TeacherOutput(logits, self.capture.pop() if self.capture else None)
        if labels is None:
            raise ValueError('the teacher\'s relevance needs the batch\'s labels (the class whose score it follows)')
        gradients = attention_gradients(self.model, inputs, labels)
        relevance = layer_relevance(gradients.weighted, int(self.model.num_prefix_tokens), self.relevance)
        return TeacherOutput(gradients.logits, self.capture.pop().detach(), relevance.unsqueeze(2))


class DistillationLoss(nn.Module):
    """Cross-entropy plus the chosen distillation terms, on what the training step passes it.

    The step calls the teacher (``TeacherForward``) and the student, taking the student's maps of that
    forward (``ClsAttentionCapture.pop``); the loss is given both and calls no model itself.

    Args:
        method: A name from ``METHODS``.
        student: The (unwrapped) student, read for its grid and depth.
        teacher: The teacher, or None for ``vit``, read for its grid and depth (never called here).
        attn_weight: Weight of the attention term.
        alpha: Weight of the DeiT term (0.5 in the paper's eq. 3; lambda in eq. 2).
        tau: Temperature of ``deit_soft`` and ``advit_kl_paper``.
        label_smoothing: Label smoothing of the cross-entropy on class indices (soft targets
            carry their own, see ``forward``).
        head_fusion: How attention heads are fused before comparison (the paper: mean).
        layer_map: Teacher layer per student layer; default uniform.
    """

    def __init__(
            self,
            method: str,
            student: nn.Module,
            teacher: nn.Module | None = None,
            attn_weight: float = 1.0,
            alpha: float = 0.5,
            tau: float = 1.0,
            label_smoothing: float = 0.0,
            head_fusion: str = 'mean',
            layer_map: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.name, self.method = method, parse_method(method)
        if self.method.needs_teacher and teacher is None:
            raise ValueError(f'method {method!r} needs a teacher')
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.attn_weight, self.alpha, self.tau = attn_weight, alpha, tau
        self.head_fusion, self.layer_map = head_fusion, layer_map
        if self.method.attention:
            for role, model in (('teacher', teacher), ('student', student)):
                if not hasattr(model, 'blocks'):
                    raise ValueError(f'method {method!r} distils attention and needs a ViT {role}, '
                                     f'not {type(model).__name__}')
            if head_fusion == 'none' and self.method.target == 'relevance':
                raise ValueError(f'method {method!r} compares fused maps: the teacher\'s relevance fuses its heads '
                                 '(choose head fusion mean or max)')
            if head_fusion == 'none' and student.blocks[0].attn.num_heads != teacher.blocks[0].attn.num_heads:
                raise ValueError('per-head distillation needs the same head count in teacher and student')
            layer_mapping(len(student.blocks), len(teacher.blocks), layer_map)  # refuse a bad map now
            self.student_grid, self.teacher_grid = patch_grid(student), patch_grid(teacher)

    def forward(
            self,
            outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
            labels: torch.Tensor,
            teacher: TeacherOutput | None = None,
            student_maps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch, and its terms (detached) for logging.

        Args:
            outputs: Student logits, or (class logits, distillation logits) with a distillation token.
            labels: Class indices, or (batch, classes) probabilities (mixup / CutMix targets), taken
                as given: they already hold their label smoothing.
            teacher: The teacher's output on the same images (methods that need a teacher).
            student_maps: The student's per-head maps of the forward that gave ``outputs`` (attention methods).
        """
        class_logits, distill_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        criterion = F.cross_entropy if labels.is_floating_point() else self.criterion  # no second smoothing
        ce = criterion(class_logits, labels)
        terms = {'ce': ce.detach()}
        if not self.method.needs_teacher:
            terms['loss'] = terms['ce']
            return ce, terms

        if teacher is None:
            raise ValueError(f'{self.name}: the loss needs the teacher\'s output on the batch')
        loss = ce
        if self.method.logit is not None:
            kd = self._logit_term(distill_logits, teacher.logits.float())
            terms['kd'] = kd.detach()
            loss = (1 - self.alpha) * ce + self.alpha * kd
        if self.method.attention is not None:
            target = teacher.relevance if self.method.target == 'relevance' else teacher.maps
            if student_maps is None or target is None:
                raise ValueError(f'{self.name}: the loss needs the student\'s maps and the teacher\'s '
                                 f'{self.method.target} maps of the batch')
            attn = self.attention_term(student_maps, target)
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

    def attention_term(self, student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
        """The attention distance between both models' per-head maps of one batch, averaged over batch,
        layers and heads, compared by ``alignment.compare_maps``."""
        compared = compare_maps(student_maps, teacher_maps, self.student_grid, self.teacher_grid,
                                fusion=self.head_fusion, layer_map=self.layer_map)
        return compared.gap(self.method.attention, self.tau).mean()
