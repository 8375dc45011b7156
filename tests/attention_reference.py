"""The explicit attention a capture and the views must match: softmax(Q K^T / sqrt(d)) built in full from a
block's input, by each family's formula (ViT, DeiT III; EVA's rope; BEiT's relative position bias)."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Attention, AttentionRope, apply_rot_embed_cat
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention


def _vit_logits(attn: nn.Module, x: torch.Tensor, _kwargs: dict) -> torch.Tensor:
    """timm's Attention (ViT, DeiT, DeiT III): q K^T / sqrt(d) from the qkv projection, q/k norms applied."""
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return (q * attn.scale) @ k.transpose(-2, -1)


def _biased_qk(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k, (batch, heads, tokens, head_dim), of EVA's and BEiT's projections written out: one fused weight
    with the q/k biases (k's a zero buffer) added by hand, or EVA's separate q/k projections (no grouped heads)."""
    batch, tokens, _ = x.shape
    if attn.qkv is None:
        q, k = attn.q_proj(x), attn.k_proj(x)
    else:
        width = attn.qkv.weight.shape[0] // 3
        qk = x @ attn.qkv.weight[:2 * width].T
        if attn.qkv.bias is not None:  # AttentionRope's, in the Linear
            qk = qk + attn.qkv.bias[:2 * width]
        if getattr(attn, 'q_bias', None) is not None:  # EvaAttention's and BEiT's, beside it
            qk = qk + torch.cat([attn.q_bias, attn.k_bias])
        q, k = qk[..., :width], qk[..., width:]
    return tuple(t.reshape(batch, tokens, attn.num_heads, -1).transpose(1, 2) for t in (q, k))


def _eva_logits(attn: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """EVA's EvaAttention and AttentionRope: q/k norms, then the patch tokens' q and k rotated by the rope
    the model passed the block (timm's own rotation), then q K^T / sqrt(d)."""
    q, k = _biased_qk(attn, x)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rope, prefix = kwargs.get('rope'), attn.num_prefix_tokens
    if rope is not None:
        half = getattr(attn, 'rotate_half', False)
        q, k = (torch.cat([t[:, :, :prefix], apply_rot_embed_cat(t[:, :, prefix:], rope, half=half)], dim=2)
                for t in (q, k))
    return (q * attn.scale) @ k.transpose(-2, -1)


def _beit_logits(attn: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """BEiT's Attention: q K^T / sqrt(d) plus each head's relative position bias, looked up by hand in its
    table, plus the model's shared bias where it has one."""
    q, k = _biased_qk(attn, x)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.relative_position_bias_table is not None:
        tokens = logits.shape[-1]
        index = attn.relative_position_index.view(-1)
        logits = logits + attn.relative_position_bias_table[index].view(tokens, tokens, -1).permute(2, 0, 1)
    shared = kwargs.get('shared_rel_pos_bias')
    return logits if shared is None else logits + shared


FAMILY_LOGITS = {Attention: _vit_logits, EvaAttention: _eva_logits, AttentionRope: _eva_logits,
                 BeitAttention: _beit_logits}


@torch.no_grad()
def full_attention(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Every layer's softmax attention on ``inputs``, shape (batch, layers, heads, tokens, tokens), built from
    each attention module's input (and the rope or shared bias the model passes it) with its own weights, by
    its family's formula written out (``FAMILY_LOGITS``), whichever path its forward runs."""
    maps: list[torch.Tensor] = []

    def record(attn: nn.Module, args: tuple, kwargs: dict) -> None:
        maps.append(FAMILY_LOGITS[type(attn)](attn, args[0], kwargs).float().softmax(dim=-1))

    handles = [block.attn.register_forward_pre_hook(record, with_kwargs=True) for block in model.blocks]
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
