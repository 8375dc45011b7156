"""The view forms' requests: each form's values as one dataclass, checked once as they enter.

A slider bounds what a browser sends, not what any client may send: the ranges below are both the
page's sliders and the rule ``checks.number`` holds every request to (refused in words, never
rounded). The job form's request is ``train_desk.JobForm``: its limits are the job desk's.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import number
from ..measure.removal import check_protocol
from ..measure.verdicts import HEADLINE_PROTOCOL

# Whole-number boxes have no `precision` on the page: Gradio would round a 1.5 to 2 unseen; `number` refuses it.
HEADS, LAYERS, OPACITY, DISCARD, KEEP = (0, 15), (1, 12), (0.0, 1.0), (0.0, 0.95), (0.1, 1.0)
MAX_INDEX = 10**6  # layer, image and evaluation numbers: the views check them against what exists


@dataclass
class AttentionRequest:
    """The Attention form: an image, a teacher and a student as the lists name them, and how to show them.

    Args:
        image: The uploaded image file (None in the few-images view, which takes its files apart).
        fusion: ``'trained'`` (the student's own, from its metadata), ``'mean'``, ``'max'`` or ``'head'``
            (then ``head`` selects it).
        head: Head index for ``fusion='head'``.
        opacity: Heatmap opacity over the image.
        layer: The student layer shown large, from 1 (past the student's last: its last).
        protocol: How the deletion curves remove a patch (``removal.PROTOCOLS``).
    """
    image: str | None = None
    teacher: str | None = None
    student: str | None = None
    fusion: str = 'trained'
    head: int = 0
    opacity: float = 0.6
    layer: int = 1
    protocol: str = HEADLINE_PROTOCOL

    def __post_init__(self) -> None:
        self.head = number(self.head, 'head', *HEADS, whole=True)
        self.opacity = number(self.opacity, 'heatmap opacity', *OPACITY)
        self.layer = number(self.layer, 'layer', 1, MAX_INDEX, whole=True)
        check_protocol(None, self.protocol)


@dataclass
class RolloutRequest:
    """The More views settings: attention rollout as vit-explain has it, and the mass mask.

    Args:
        fusion: Rollout's fusion of heads: ``'mean'``, ``'max'`` or ``'min'``.
        discard: Rollout's share of the smallest attention entries dropped.
        keep: Share of the rollout's mass the mask keeps.
    """
    fusion: str = 'mean'
    discard: float = 0.0
    keep: float = 0.6

    def __post_init__(self) -> None:
        self.discard = number(self.discard, 'rollout discard ratio', *DISCARD)
        self.keep = number(self.keep, 'mask share', *KEEP)


@dataclass
class ProbeRequest:
    """The Distillation over time form.

    Args:
        probed: A checkpoint or run with an attention probe, as the list names it (the API calls it ``source``).
        student: Which student of its run (empty or None: its own, or a run's ADViT one).
        kind: The gap drawn: ``l1``, ``l2`` or ``kl``.
        evaluation: Which evaluation the frame shows, an index into the steps (-1: the last).
        image: Which probe image the frame shows.
        opacity: Heatmap opacity over the probe image.
    """
    probed: str | None = None
    student: str | None = None
    kind: str = 'l1'
    evaluation: int = -1
    image: int = 0
    opacity: float = 0.6

    def __post_init__(self) -> None:
        self.student = self.student or None
        self.evaluation = number(self.evaluation, 'evaluation', -1, MAX_INDEX, whole=True)
        self.image = number(self.image, 'probe image', 0, MAX_INDEX, whole=True)
        self.opacity = number(self.opacity, 'heatmap opacity', *OPACITY)
