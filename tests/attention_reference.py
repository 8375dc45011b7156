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
