"""Attention views beyond the distilled map: rollout, per-head maps, attention-mass masks, prefix shares.

These are the views users of ViT attention tools know (vit-explain's rollout with head fusion and a
discard ratio, after Abnar & Zuidema 2020; DINO's last-layer per-head maps and masks that keep a
share of the attention mass; gradient-weighted rollout, after Chefer, Gur & Wolf 2021). Unlike training, they need every layer's full N x N attention: for
one image in the app that is cheap: ``explain`` runs the blocks' explicit attention for one forward
(and the backward gradient rollout needs), whatever path they train or serve on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..core.models import patch_grid
from ..core.relevance import attention_gradients, relevance_rollout
from .inspection import model_input

ROLLOUT_FUSIONS = ('mean', 'max', 'min')


def rollout(attention: torch.Tensor, num_prefix_tokens: int, rollout_fusion: str = 'mean',
            discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout: the [CLS] token's attention to the patches through all layers, (batch, patches).

    Per layer, heads are fused; the ``discard_ratio`` smallest entries of the fused matrix are set to
    zero (all its entries at once, never the [CLS]-to-[CLS] one, as vit-explain does); the residual
    connection counts as an identity, (A + I) / 2, with rows renormalised (vit-explain's division
    lacks ``keepdim`` and scales columns instead); the layers' matrices multiply from the first up.

    Args:
        attention: Full attention, (batch, layers, heads, tokens, tokens) (``full_attention``).
        num_prefix_tokens: Tokens before the patches ([CLS], distillation, registers).
        rollout_fusion: ``'mean'``, ``'max'`` or ``'min'`` over heads.
        discard_ratio: Share of each fused row's entries set to zero, the smallest first, in [0, 1).
    """
    if rollout_fusion not in ROLLOUT_FUSIONS:
        raise ValueError(f'unknown rollout head fusion {rollout_fusion!r}: choose one of {ROLLOUT_FUSIONS}')
    if not 0 <= discard_ratio < 1:
        raise ValueError(f'discard ratio must be in [0, 1), got {discard_ratio}')
    batch, layers, _, tokens, _ = attention.shape
    eye = torch.eye(tokens, dtype=attention.dtype, device=attention.device)
    result = eye.expand(batch, tokens, tokens)
    for layer in range(layers):
        heads = attention[:, layer]
        fused = {'mean': heads.mean(dim=1), 'max': heads.amax(dim=1), 'min': heads.amin(dim=1)}[rollout_fusion]
        dropped = int(discard_ratio * tokens * tokens)
        if dropped:
            flat = fused.reshape(batch, -1)
            lowest = flat.clone()
            lowest[:, 0] = float('inf')  # [CLS] to [CLS] is kept
            fused = flat.scatter(-1, lowest.topk(dropped, dim=-1, largest=False).indices, 0.0).view_as(fused)
        mixed = (fused + eye) / 2
        result = (mixed / mixed.sum(dim=-1, keepdim=True)) @ result
    row = result[:, 0, num_prefix_tokens:]
    return row / row.sum(dim=-1, keepdim=True)


@dataclass
class Explanation:
    """One forward and one backward of a ViT on a batch: what it predicts, the attention its blocks used,
    and gradient rollout's relevance of the patches (``explain``)."""
    logits: torch.Tensor  # (batch, classes), detached
    attention: torch.Tensor  # (batch, layers, heads, tokens, tokens): every layer's softmax(Q K^T / sqrt(d)), detached
    relevance: torch.Tensor  # (batch, patches): gradient rollout, each row summing to one


def explain(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor | None = None) -> Explanation:
    """Every layer's full attention and gradient-weighted attention rollout (Chefer, Gur & Wolf, "Generic
    Attention-model Explainability", ICCV 2021) from one forward and one backward (``relevance``).

    Gradient rollout is the [CLS] token's relevance to the patches: per layer, the heads' mean of
    (dy/dA * A) kept where positive, with A the attention the forward used and y the class's logit;
    relevance R = I, then R <- R + that R, from the first layer up; the [CLS] row, normalised to sum 1.
    Unlike the attention alone, it weighs each link by how much the class's score depends on it.

    Args:
        model: A timm ViT (eval mode).
        inputs: Normalised images.
        classes: The class explained per image; None: the predicted one.
    """
    gradients = attention_gradients(model, inputs, classes)
    return Explanation(logits=gradients.logits, attention=torch.stack([a.float() for a in gradients.attention], dim=1),
                       relevance=relevance_rollout(gradients.weighted, int(model.num_prefix_tokens)))


def gradient_rollout(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient rollout alone, (batch, patches): ``explain``'s relevance."""
    return explain(model, inputs, classes).relevance


def head_maps(attention: torch.Tensor, num_prefix_tokens: int, layer: int = -1) -> torch.Tensor:
    """One layer's [CLS] map per head (DINO's view of the last layer), patch part renormalised,
    shape (batch, heads, patches)."""
    row = attention[:, layer, :, 0, num_prefix_tokens:]
    return row / row.sum(dim=-1, keepdim=True)


def prefix_share(attention: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Per layer, the share of the [CLS] query's attention that goes to prefix tokens (itself included),
    heads averaged, shape (batch, layers): what a renormalised patch map does not show."""
    return attention[:, :, :, 0, :num_prefix_tokens].sum(dim=-1).mean(dim=-1)


def mass_mask(maps: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """The fewest patches that hold at least ``keep`` of each map's mass (DINO's attention masks), as a
    boolean mask of the maps' shape (..., patches).

    Args:
        maps: Distributions over the patches.
        keep: The share of the mass to keep, in (0, 1].
    """
    if not 0 < keep <= 1:
        raise ValueError(f'the kept share of attention must be in (0, 1], got {keep}')
    values, order = maps.sort(dim=-1, descending=True)
    before = values.cumsum(dim=-1) - values  # the mass of the larger patches before each one
    kept_sorted = before < keep * maps.sum(dim=-1, keepdim=True)
    return torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted)


@dataclass
class ModelViews:
    """One model's views of one image: rollout, the rollout's mass mask, gradient rollout (for the class
    the model predicts), last-layer heads, prefix shares."""
    rollout: np.ndarray  # (patches,)
    mask: np.ndarray  # (patches,) bool: the fewest patches holding ``keep`` of the rollout's mass
    heads: np.ndarray  # (heads, patches)
    prefix_share: np.ndarray  # (layers,)
    grid: tuple[int, int]
    gradient_rollout: np.ndarray  # (patches,)

    def as_dict(self) -> dict[str, Any]:
        return dict(rollout=self.rollout.tolist(), mask=self.mask.tolist(), heads=self.heads.tolist(),
                    prefix_share=self.prefix_share.tolist(), grid=list(self.grid),
                    gradient_rollout=self.gradient_rollout.tolist())


def model_views(model: nn.Module, meta: dict[str, Any], image: Image.Image, rollout_fusion: str = 'mean',
                discard_ratio: float = 0.0, keep: float = 0.6) -> ModelViews:
    """The views of ``model`` on ``image`` (resized and normalised as the model takes it).

    Args:
        model: A timm ViT (eval mode).
        meta: Its checkpoint metadata (mean, std).
        image: Any RGB image.
        rollout_fusion: Rollout's fusion of heads (``ROLLOUT_FUSIONS``).
        discard_ratio: Rollout's share of discarded attention entries.
        keep: The share of the rollout's mass its mask keeps.
    """
    explained = explain(model, model_input(image, meta, model))  # one forward and backward for every view
    attention, prefix = explained.attention, int(model.num_prefix_tokens)
    flow = rollout(attention, prefix, rollout_fusion, discard_ratio)
    return ModelViews(rollout=flow[0].numpy(), mask=mass_mask(flow, keep)[0].numpy(),
                      heads=head_maps(attention, prefix)[0].numpy(),
                      prefix_share=prefix_share(attention, prefix)[0].numpy(), grid=patch_grid(model),
                      gradient_rollout=explained.relevance[0].numpy())
