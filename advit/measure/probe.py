"""The attention probe: at every evaluation, how far each student's attention is from the teacher's.

On a fixed set of probe images (held-out training images: a fixed random ``PROBE_IMAGES`` of the validation
split, never test images), each evaluation records the student's per-layer gap to the teacher
(L1, L2 and KL, compared by ``alignment.compare_maps`` as the loss compares them, averaged over the probe images), the
faithfulness of its maps (the quarter drop of each layer's map, of rollout and of gradient rollout,
``faithfulness.quarter_drops``) and both models' maps on the first ``MAP_IMAGES`` of them, in one small file per run
(``probe_file``: its format, writer and reader), which the app draws without a second training.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..core.alignment import GAP_KINDS, compare_maps
from ..core.augment import BatchTransform
from ..core.capture import DEFAULT_NORMALIZATION, ClsAttentionCapture
from ..core.losses import renormalize
from ..core.models import model_normalization, patch_grid
from ..core.precision import autocast
from ..core.relevance import attention_gradients, layer_relevance
from .faithfulness import source_names
from .probe_file import PROBE_FILE, faithfulness_columns, probe_protocol, read_probe, write_probe
from .verdicts import HEADLINE_PROTOCOL

PROBE_IMAGES = 256
MAP_IMAGES = 8


class AttentionProbe:
    """Per-layer attention gaps of students to one teacher on fixed images, recorded evaluation by evaluation.

    Args:
        teacher: The frozen teacher (a timm ViT).
        images: The probe images, uint8 (N, 3, H, W), on the models' device.
        transform: The students' evaluation transform (normalises for the students).
        head_fusion: How heads are fused before comparing (the run's, as the loss fuses them).
        layer_map: Teacher layer per student layer (the run's); default uniform.
        amp: bf16 autocast where native, as the run evaluates.
        attn_norm: How the maps are normalised (the run's, ``capture.NORMALIZATIONS``).
        labels: The probe images' labels, whose class scores weigh the teacher's relevance (students of
            ``advit_relevance``); None: no relevance is measured.
        relevance_target: The run's ``relevance_target`` (``relevance.RELEVANCE_TARGETS``).
    """

    def __init__(self, teacher: nn.Module, images: torch.Tensor, transform: BatchTransform,
                 head_fusion: str = 'mean', layer_map: list[int] | None = None, amp: bool = True,
                 attn_norm: str = DEFAULT_NORMALIZATION, labels: torch.Tensor | None = None,
                 relevance_target: str = 'rollout_last') -> None:
        self.teacher, self.images, self.transform = teacher, images, transform
        self.head_fusion, self.layer_map, self.amp, self.attn_norm = head_fusion, layer_map, amp, attn_norm
        self.labels, self.relevance_target = labels, relevance_target
        self.teacher_grid = patch_grid(teacher)
        self._teacher_maps: torch.Tensor | None = None  # the teacher is frozen: its per-head maps once
        self._teacher_relevance: torch.Tensor | None = None  # and its relevance, where a student learns it

    @torch.no_grad()
    def _maps(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        with ClsAttentionCapture(model, self.attn_norm) as capture, autocast(inputs.device, self.amp):
            model(inputs)
            maps = capture.pop()
        model.train(was_training)
        return maps

    def _relevance(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's gradient-weighted maps of the probe images, (N, layers, 1, patches), as training takes them."""
        if self.labels is None:
            raise ValueError('the teacher\'s relevance needs the probe images\' labels')
        with autocast(inputs.device, self.amp):
            gradients = attention_gradients(self.teacher, inputs, self.labels)
        return layer_relevance(gradients.weighted, int(self.teacher.num_prefix_tokens), self.relevance_target)[:, :, None]

    def gaps(self, student: nn.Module, student_maps: torch.Tensor,
             target: str = 'attention') -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """(gaps (3, layers), student maps, aligned teacher maps (MAP_IMAGES, layers, patches), the teacher
        layer of each student layer), to the teacher's attention or (``target='relevance'``) its relevance.

        Args:
            student: The student (its grid and normalisation).
            student_maps: Its per-head maps of the probe images (``student_maps``).
            target: What the student is compared with: ``attention`` or ``relevance``.
        """
        inputs = self.transform.eval(self.images)
        teacher_inputs = renormalize(inputs, model_normalization(student), model_normalization(self.teacher))
        if target == 'relevance':
            if self._teacher_relevance is None:
                self._teacher_relevance = self._relevance(teacher_inputs)
            teacher_maps = self._teacher_relevance
        else:
            if self._teacher_maps is None:
                self._teacher_maps = self._maps(self.teacher, teacher_inputs)
            teacher_maps = self._teacher_maps
        fusion = 'mean' if target == 'relevance' else self.head_fusion  # the relevance's heads are fused already
        compared = compare_maps(student_maps, teacher_maps, patch_grid(student),
                                self.teacher_grid, fusion=fusion, layer_map=self.layer_map)
        # Per layer: averaged over images and (with per-head fusion) heads.
        gaps = np.stack([compared.gap(kind).mean(dim=(0, 2)).cpu().numpy() for kind in GAP_KINDS])
        return (gaps, compared.student[:MAP_IMAGES, :, 0].cpu().numpy(),
                compared.teacher[:MAP_IMAGES, :, 0].cpu().numpy(), compared.teacher_layers)

    def student_maps(self, student: nn.Module) -> torch.Tensor:
        """The student's per-head [CLS] maps of the probe images, (N, layers, heads, patches)."""
        return self._maps(student, self.transform.eval(self.images))

    def record(self, student: nn.Module, step: int, run: Path, faithfulness: dict[str, float] | None = None,
               target: str = 'attention') -> dict[str, list[float]]:
        """Add this evaluation's gaps, maps and faithfulness (quarter drops by source, measured by the
        caller on the same images) to ``run/attention_probe.npz``; return the gaps by kind. A student trained
        towards the teacher's relevance (``target='relevance'``) has its gaps to that target recorded too."""
        maps = self.student_maps(student)  # once, for the gaps to attention and (a relevance student's) to relevance
        gaps, student_maps, teacher_maps, teacher_layers = self.gaps(student, maps)
        sources = source_names(student_maps.shape[1])
        faithful = np.array([(faithfulness or {}).get(source, np.nan) for source in sources], dtype=np.float32)
        path = Path(run) / PROBE_FILE
        earlier = read_probe(path) if path.is_file() else None
        keep = earlier['steps'] < step if earlier is not None else None  # a resumed run writes its steps again
        earlier_faithful = faithfulness_columns(earlier, sources) if earlier is not None else None
        if earlier is not None and probe_protocol(earlier) != HEADLINE_PROTOCOL:
            earlier_faithful[:] = np.nan  # measured under another protocol: not on this file's scale
        arrays = dict(
            steps=np.append(earlier['steps'][keep], step) if earlier is not None else np.array([step]),
            faithfulness=np.concatenate([earlier_faithful[keep], faithful[None]]) if earlier is not None
            else faithful[None],
            faithfulness_sources=np.array(sources),
            faithfulness_protocol=np.array(HEADLINE_PROTOCOL),
            gaps=np.concatenate([earlier['gaps'][keep], gaps[None]]) if earlier is not None else gaps[None],
            student_maps=np.concatenate([earlier['student_maps'][keep], student_maps[None].astype(np.float16)])
            if earlier is not None else student_maps[None].astype(np.float16),
            teacher_maps=teacher_maps.astype(np.float16),
            images=self.images[:MAP_IMAGES].cpu().numpy(),
            teacher_layers=np.array(teacher_layers),
            grid=np.array(patch_grid(student)),
            kinds=np.array(GAP_KINDS))
        if target == 'relevance':
            relevance_gaps, _, relevance_maps, _ = self.gaps(student, maps, target)
            earlier_gaps = earlier.get('relevance_gaps') if earlier is not None else None
            arrays.update(relevance_gaps=np.concatenate([earlier_gaps[keep], relevance_gaps[None]])
                          if earlier_gaps is not None else relevance_gaps[None],
                          teacher_relevance=relevance_maps.astype(np.float16))
        write_probe(path, arrays)
        recorded = {kind: [float(v) for v in row] for kind, row in zip(GAP_KINDS, gaps)}
        if target == 'relevance':
            recorded.update({f'{kind}_to_relevance': [float(v) for v in row]
                             for kind, row in zip(GAP_KINDS, arrays['relevance_gaps'][-1])})
        return recorded
