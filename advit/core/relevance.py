"""Gradient-weighted attention: which of a ViT's attention links its decision depends on.

After Chefer, Gur & Wolf, "Generic Attention-model Explainability" (ICCV 2021): per layer the heads' mean of
(dy/dA * A)+, with A a block's softmax attention and y a class score, and its rollout through the layers,
R = I, then R <- R + weighted R from the first layer up. The measure's gradient rollout (``measure.rollout``)
and the training target of ``advit_relevance`` (``losses.TeacherForward``) both take it from here, so what
the app shows as the teacher's relevance is what such a student was pulled towards.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn as nn

from .families import attention_modules, explicit_attention

RELEVANCE_TARGETS = ('layers', 'rollout_last')


@dataclass
class AttentionGradients:
    """One forward and one backward of a ViT: its logits, every layer's attention, and the gradient-weighted
    attention of each layer."""
    logits: torch.Tensor  # (batch, classes), detached
    attention: list[torch.Tensor]  # per layer (batch, heads, tokens, tokens): softmax(Q K^T / sqrt(d)), detached
    weighted: list[torch.Tensor]  # per layer (batch, tokens, tokens): the heads' mean of (dy/dA * A)+, float32


def attention_gradients(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | None = None) -> AttentionGradients:
    """Run ``model`` with explicit attention, keep each layer's attention, and take the gradient of the target's
    score with respect to it.

    The model's weights need no gradient (a frozen teacher): the inputs are made to carry one, and only the
    attention's gradients are computed, never the weights'.

    Args:
        model: A timm ViT of a registered family (``families``), in eval mode.
        inputs: Normalised images.
        target: Per image, the class whose logit is the score (batch,), or weights over the classes
            (batch, classes) whose weighted sum of logits is the score (a mixed training target); None: the
            predicted class.
    """
    attentions: list[torch.Tensor] = []
    thread = threading.get_ident()

    def keep(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        if threading.get_ident() == thread:
            attentions.append(output)

    modules = attention_modules(model)
    # Every registered family's explicit path passes its softmax through attn_drop (timm's convention). The path
    # is held for one forward and backward: other threads running the same model meanwhile (the app's) compute
    # the same outputs on it, and are not recorded.
    handles = [attn.attn_drop.register_forward_hook(keep) for attn in modules]
    try:
        with explicit_attention(modules), torch.enable_grad():
            logits = model(inputs.detach().requires_grad_())
            score = class_score(logits.float(), target)
            gradients = torch.autograd.grad(score, attentions)
    finally:
        for handle in handles:
            handle.remove()
    weighted = [(gradient.float() * attention.detach().float()).clamp(min=0).mean(dim=1)
                for attention, gradient in zip(attentions, gradients)]
    return AttentionGradients(logits=logits.detach(), attention=[a.detach() for a in attentions], weighted=weighted)


def class_score(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The summed score whose gradient is taken: each image's target logit, or its target-weighted logits.

    Args:
        logits: (batch, classes).
        target: Class indices (batch,), class weights (batch, classes), or None for the predicted class.
    """
    if target is None:
        target = logits.argmax(dim=-1)
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f'class weights of shape {tuple(target.shape)} do not match logits {tuple(logits.shape)}')
        return (logits * target).sum()
    return logits.gather(1, target[:, None].long()).sum()


def relevance_rollout(weighted: list[torch.Tensor], num_prefix_tokens: int) -> torch.Tensor:
    """Gradient rollout: the [CLS] token's relevance to the patches through every layer, (batch, patches),
    each row a distribution.

    Args:
        weighted: ``AttentionGradients.weighted``.
        num_prefix_tokens: Tokens before the patches.
    """
    batch, tokens, _ = weighted[0].shape
    relevance = torch.eye(tokens, device=weighted[0].device).expand(batch, tokens, tokens)
    for layer in weighted:
        relevance = relevance + layer @ relevance
    return as_distribution(relevance[:, 0, num_prefix_tokens:])


def layer_relevance(weighted: list[torch.Tensor], num_prefix_tokens: int, target: str = 'layers') -> torch.Tensor:
    """Each layer's gradient-weighted [CLS] row over the patches, (batch, layers, patches), each a distribution;
    with ``'rollout_last'`` the last layer's is the rollout through every layer instead.

    Args:
        weighted: ``AttentionGradients.weighted``.
        num_prefix_tokens: Tokens before the patches.
        target: ``'layers'`` or ``'rollout_last'`` (``RELEVANCE_TARGETS``).
    """
    if target not in RELEVANCE_TARGETS:
        raise ValueError(f'unknown relevance target {target!r}: choose one of {", ".join(RELEVANCE_TARGETS)}')
    rows = [as_distribution(layer[:, 0, num_prefix_tokens:]) for layer in weighted]
    if target == 'rollout_last':
        rows[-1] = relevance_rollout(weighted, num_prefix_tokens)
    return torch.stack(rows, dim=1)


def as_distribution(rows: torch.Tensor) -> torch.Tensor:
    """Non-negative rows scaled to sum to one; a row with no mass (the class score depends on none of its
    links) becomes uniform: it prefers no patch, where zeros would not be a distribution."""
    total = rows.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(rows, 1.0 / rows.shape[-1])
    return torch.where(total > 0, rows / total.clamp(min=torch.finfo(rows.dtype).tiny), uniform)
