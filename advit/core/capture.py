"""[CLS]-attention capture that leaves fused attention in place.

A forward hook on each block's ``attn.qkv`` projection takes the query of the [CLS] token and
the keys of all tokens, and computes the one row of logits q_cls K^T / sqrt(d); the softmax runs
once over every layer's row when the maps are taken. The block itself keeps calling
``scaled_dot_product_attention``, and no N x N map is ever built: the extra cost is
O(heads x tokens x head_dim) per layer, against the block's O(tokens^2).

That holds for timm's ViT, DeiT and DeiT III. EVA and BEiT put rotary embeddings or a relative
position bias between the projection and the softmax (``families``): their blocks run the
explicit path while captured, and the row is read from the softmax the block computes.
"""
from __future__ import annotations

import threading
from functools import partial

import torch
import torch.nn as nn

from .families import attention_modules, family_of, hold_explicit, release_explicit

# How a head's [CLS] row becomes a map over the patches:
# - 'renormalized': the row's patch entries renormalised to sum to one in each head, before heads
#   are fused (a head that gives 90% of its attention to [CLS] has its other 10% scaled tenfold);
# - 'raw': the softmax row's patch entries as they are (each head's sum is the share it gives the
#   patches), heads fused, and the fused map normalised once, so heads weigh by what they give the patches.
# The paper's text ("the attention of the [CLS] token over the patches, averaged over heads") fits
# both; it does not say that heads are renormalised first.
NORMALIZATIONS = ('renormalized', 'raw')
DEFAULT_NORMALIZATION = 'renormalized'  # runs, and checkpoints from before the setting was recorded


def trained_normalization(meta: dict) -> str:
    """How a checkpoint's maps were normalised in training (its metadata's ``attn_norm``), so shown the same way."""
    return meta.get('attn_norm') or DEFAULT_NORMALIZATION


def cls_attention_logits(qkv: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """The [CLS] query's attention logits over all tokens, from the output of ``attn.qkv``.

    Args:
        qkv: Output of the qkv projection, shape (batch, tokens, 3 * heads * head_dim).
        attn: The timm ``Attention`` module that produced it (for heads, norms and scale).

    Returns:
        q_cls . k / sqrt(head_dim) per head, shape (batch, heads, tokens), in qkv's dtype.
    """
    batch, tokens, _ = qkv.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    if isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity):
        # One batched matmul over the keys where they lie in qkv (rows 3 * width apart, which
        # BLAS takes as they are: no copy, nothing new saved for backward). The [CLS] query is
        # spread over a block-diagonal (width, heads) matrix, so that each head's dot products come
        # out as one column; the zeros cost heads x more multiply-adds, which is still under 1% of
        # the qkv projection's.
        query = (qkv[:, 0, :width] * attn.scale).unsqueeze(-1) * _head_blocks(heads, head_dim, qkv)
        return torch.bmm(qkv[:, :, width:2 * width], query).transpose(1, 2)
    q_cls = qkv[:, :1, :width].reshape(batch, 1, heads, head_dim).transpose(1, 2)
    keys = qkv[:, :, width:2 * width].reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    q_cls, keys = attn.q_norm(q_cls), attn.k_norm(keys)
    # Per-head norms need the heads apart: a broadcast product and sum over views of qkv.
    return (q_cls * attn.scale * keys).sum(dim=-1)


def _head_blocks(heads: int, head_dim: int, like: torch.Tensor) -> torch.Tensor:
    """(heads * head_dim, heads) with ones where a row's channel belongs to the column's head."""
    return torch.eye(heads, device=like.device, dtype=like.dtype).repeat_interleave(head_dim, dim=0)


class ClsAttentionCapture:
    """Records, on every forward of a ViT, each layer's [CLS] attention over its patch tokens.

    Gradients flow through the recorded maps when the forward runs with grad enabled (the
    student); run the forward under ``torch.no_grad()`` for a teacher. A capture records only
    the forwards of the thread that created it, so concurrent requests sharing one model (the
    app's) each get their own maps. A model of a ``'softmax'`` family (EVA, BEiT: ``families``)
    runs the explicit attention path until the capture is removed.

    Args:
        model: A timm ViT with a class token, of a family in ``families.FAMILIES``. Prefix tokens
            (CLS, distillation, registers) are dropped from the maps.
        normalization: ``'renormalized'`` (each head's patch part sums to one) or ``'raw'`` (the
            softmax row's patch entries as they are); see ``NORMALIZATIONS``.
    """

    def __init__(self, model: nn.Module, normalization: str = DEFAULT_NORMALIZATION) -> None:
        self._attns = attention_modules(model)
        family = family_of(model)
        if getattr(model, 'cls_token', None) is None:
            raise ValueError(f'{type(model).__name__} has no class token (class_token=False): [CLS] attention '
                            'capture needs a ViT with one (the maps would be some patch\'s attention)')
        if normalization not in NORMALIZATIONS:
            raise ValueError(f'unknown attention normalization {normalization!r}: choose one of {NORMALIZATIONS}')
        self.normalization = normalization
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self._thread = threading.get_ident()
        self._rows: list[torch.Tensor | None] = [None] * len(self._attns)
        # What a row holds: the logits (the qkv fast path) or the softmax itself (the explicit path's).
        self._softmaxed = family.capture == 'softmax'
        if self._softmaxed:
            hold_explicit(self._attns)
            # Before attn_drop, not after: the softmax as computed, as the logits path sees it, whatever
            # dropout a training forward applies to it.
            self._handles = [attn.attn_drop.register_forward_pre_hook(partial(self._record_softmax, index))
                             for index, attn in enumerate(self._attns)]
        else:
            self._handles = [attn.qkv.register_forward_hook(partial(self._record, index, attn))
                             for index, attn in enumerate(self._attns)]

    def _record(self, index: int, attn: nn.Module, _module: nn.Module, _inputs, output: torch.Tensor) -> None:
        # A compiled forward skips the thread check, which torch.compile cannot trace (a graph break
        # per layer): compiled models are trained, never shared between request threads.
        if torch.compiler.is_compiling() or threading.get_ident() == self._thread:
            self._rows[index] = cls_attention_logits(output, attn)

    def _record_softmax(self, index: int, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if torch.compiler.is_compiling() or threading.get_ident() == self._thread:  # as ``_record``
            self._rows[index] = inputs[0][:, :, 0]  # (batch, heads, tokens): the [CLS] query's row

    def pop(self) -> torch.Tensor:
        """The maps of the last forward, shape (batch, layers, heads, patches); clears them.

        Renormalised, each head's map sums to one; raw, to the share of its attention it gives the patches.
        """
        if any(row is None for row in self._rows):
            raise RuntimeError('no attention recorded: run a forward pass of the model first')
        rows = torch.stack(self._rows, dim=1).float()
        self._rows = [None] * len(self._attns)
        if self._softmaxed:  # probabilities already: the patch part as it is, or renormalised per head
            patches = rows[..., self.num_prefix_tokens:]
            return patches if self.normalization == 'raw' else patches / patches.sum(dim=-1, keepdim=True)
        if self.normalization == 'raw':  # logits: the fast path's rows
            return rows.softmax(dim=-1)[..., self.num_prefix_tokens:]
        # All layers at once. The softmax over the patches alone is the full row's softmax with the
        # prefix tokens dropped and the rest renormalised.
        return rows[..., self.num_prefix_tokens:].softmax(dim=-1)

    def remove(self) -> None:
        """Detach the hooks from the model, and give a ``'softmax'`` family's blocks their attention path back."""
        if self._handles and self._softmaxed:
            release_explicit(self._attns)
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> 'ClsAttentionCapture':
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
