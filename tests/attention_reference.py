"""The explicit attention a capture and the views must match: softmax(Q K^T / sqrt(d)) built in full from a block's input."""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def full_attention(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Every layer's softmax(Q K^T / sqrt(d)) on ``inputs``, shape (batch, layers, heads, tokens, tokens),
    built from each attention module's input with its own weights, whichever path its forward runs."""
    maps: list[torch.Tensor] = []

    def record(attn: nn.Module, args: tuple) -> None:
        x = args[0]
        batch, tokens, _ = x.shape
        qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        maps.append(((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1))

    handles = [block.attn.register_forward_pre_hook(record) for block in model.blocks]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(maps, dim=1)


def explicit_cls_attention(model: nn.Module, images: torch.Tensor, renormalize: bool = True) -> torch.Tensor:
    """Per layer, the [CLS] row of the full N x N attention (``full_attention``), prefix tokens dropped and
    (with ``renormalize``) the rest renormalised per head.

    Computed from each attention module's input with its own weights, independently of the
    module's forward (fused or not) and of ``advit.core.capture``. Shape (batch, layers, heads, patches).
    """
    maps = full_attention(model, images)[:, :, :, 0, model.num_prefix_tokens:]
    return maps / maps.sum(dim=-1, keepdim=True) if renormalize else maps


def gradient_weighted_attention_matrices(model: nn.Module, images: torch.Tensor,
                                        labels: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the heads' mean of (dy/dA * A)+, (batch, tokens, tokens): y the labels' logits, A every block's
    softmax attention.

    Written out by hand: the ViT's forward is run block by block with the attention built explicitly and its
    gradient kept by autograd (``retain_grad``), independently of hooks, attention paths and ``advit``.
    """
    x = model.norm_pre(model._pos_embed(model.patch_embed(images.detach().requires_grad_())))  # frozen weights too
    attentions = []
    for block in model.blocks:
        attn, h = block.attn, block.norm1(x)
        batch, tokens, width = h.shape
        qkv = attn.qkv(h).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        a.retain_grad()
        attentions.append(a)
        mixed = attn.proj(attn.norm((a @ v).transpose(1, 2).reshape(batch, tokens, width)))
        x = x + block.ls1(mixed)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    logits = model.forward_head(model.norm(x))
    logits.gather(1, labels[:, None]).sum().backward()
    return [(a.grad * a).clamp(min=0).mean(dim=1).detach() for a in attentions]


def gradient_weighted_cls_attention(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per layer, the [CLS] row over the patches of ``gradient_weighted_attention_matrices``, each normalised to
    sum to one, shape (batch, layers, patches)."""
    rows = torch.stack([layer[:, 0, model.num_prefix_tokens:]
                        for layer in gradient_weighted_attention_matrices(model, images, labels)], dim=1)
    return rows / rows.sum(dim=-1, keepdim=True)
