"""How the faithfulness measure removes patches: the removal protocols the field uses, one named choice each.

Deleting a patch has no single meaning, and the choice can change which map looks faithful (Hooker et
al. 2019, ROAR; Rong et al. 2022, ROAD), so the measure names its protocol and can be run under each:

- ``mean``: the patch's pixels set to the mean the model normalises with (0 once normalised). Far from
  anything the model saw in training: grey squares cost accuracy by themselves, whatever the map says.
- ``drop``: the patch's token removed from the sequence before the first block (its position embedding
  goes with it; the prefix tokens and the other patches keep theirs). A ViT needs no fill, so nothing
  out of distribution enters ("missingness bias", Jain et al. 2022); the same as masking the patch's key
  in every layer's attention. A model without a token sequence (a CNN) cannot drop: it is refused.
  EVA and BEiT take it that second way: their rotary embeddings and relative position bias are laid out
  for the whole grid, so their blocks keep every token with the dropped ones' keys masked, and the head
  sees the kept tokens only (their pooling averages the patches). With every patch dropped, a model that
  averages its patch tokens averages what is left, its prefix tokens (the mean of none is not a number).
- ``blur``: the patch's pixels replaced by a Gaussian blur of the image (sigma half a patch): its colour
  and the shapes around it stay, its detail goes; closer to the training images than a grey square.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from timm.models.beit import Beit
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

from ..core.augment import mask_patches
from ..core.checks import shown_value

PROTOCOLS = ('mean', 'drop', 'blur')
# What each does to a patch, in the words a page or a message uses.
REMOVED_AS = {'mean': 'set to the mean', 'drop': 'dropped from the tokens', 'blur': 'blurred'}


def check_protocol(model: nn.Module | None, protocol: str) -> None:
    """Refuse, in words, a protocol that is unknown or that the model (where given) cannot take."""
    if protocol not in PROTOCOLS:
        raise ValueError(f'unknown removal protocol {shown_value(protocol)}: choose one of {", ".join(PROTOCOLS)}')
    if protocol == 'drop' and model is not None and _dropping_forward(model) is None:
        raise ValueError(f'{type(model).__name__} has no token sequence to drop patches from that advit knows '
                         '(timm\'s ViT, DeiT, DeiT III, EVA and BEiT have): use the mean or blur protocol')


def removed_logits(model: nn.Module, inputs: torch.Tensor, masked: torch.Tensor, grid: tuple[int, int],
                   protocol: str = 'mean') -> torch.Tensor:
    """The model's logits on ``inputs`` with the ``masked`` patches removed by ``protocol``.

    Args:
        model: The model (eval mode).
        inputs: Normalised images (batch, channels, H, W).
        masked: (batch, rows * cols) booleans, True where a patch is removed.
        grid: (rows, cols) of the model's patches.
        protocol: One of ``PROTOCOLS``.
    """
    check_protocol(model, protocol)
    if protocol == 'mean':
        return model(mask_patches(inputs, masked, grid))
    if protocol == 'blur':
        return model(blur_patches(inputs, masked, grid))
    # Images that drop as many tokens share a forward; each count its own.
    removed = masked.sum(dim=1)
    logits = None
    for count in removed.unique():
        rows = removed == count
        out = _dropping_forward(model)(model, inputs[rows], masked[rows])
        if logits is None:
            logits = out.new_empty(len(inputs), *out.shape[1:])
        logits[rows] = out
    return logits


def blur_patches(inputs: torch.Tensor, masked: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``inputs`` with the masked patches' pixels taken from a Gaussian blur of the whole image (sigma half
    a patch, the kernel two patches wide), the rest untouched."""
    patch = inputs.shape[-2] // grid[0]
    blurred = TF.gaussian_blur(inputs, kernel_size=2 * patch + 1, sigma=patch / 2)
    kept = mask_patches(torch.ones_like(inputs[:, :1]), masked, grid)  # 1 where kept, 0 where removed
    return inputs * kept + blurred * (1 - kept)


def _dropping_forward(model: nn.Module) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The forward that drops masked patch tokens from ``model``'s sequence; None for a model without one."""
    return next((forward for family, forward in _DROPPING_FORWARDS.items() if isinstance(model, family)), None)


def _dropped_forward(model: VisionTransformer, inputs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """timm's ``forward_features`` and ``forward_head`` with the masked patch tokens left out after the position
    embedding (every image of the batch drops as many)."""
    tokens = model._pos_embed(model.patch_embed(inputs))
    x = model.norm_pre(_kept_tokens(tokens, masked, model.num_prefix_tokens))
    return model.forward_head(_head_tokens(model.norm(model.blocks(x)), model.num_prefix_tokens))


def _kept_tokens(tokens: torch.Tensor, masked: torch.Tensor, prefix: int) -> torch.Tensor:
    """The prefix tokens and the kept patch tokens of each image (every image keeps as many)."""
    kept = (~masked).to(tokens.device)
    patches = tokens[:, prefix:][kept].view(len(tokens), int(kept[0].sum()), tokens.shape[-1])
    return torch.cat([tokens[:, :prefix], patches], dim=1)


def _head_tokens(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """The tokens the head pools: as they are, or with no patch left, the prefix tokens in the patches' place
    too, so that a head averaging the patch tokens averages the prefix tokens, and one reading [CLS] reads it."""
    return tokens if tokens.shape[1] > prefix else torch.cat([tokens, tokens], dim=1)


def _key_mask(model: nn.Module, masked: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(batch, 1, 1, tokens) booleans, False at the dropped patches' keys: SDPA's and timm's convention."""
    prefix = torch.zeros(len(masked), model.num_prefix_tokens, dtype=torch.bool)
    return ~torch.cat([prefix, masked.cpu()], dim=1)[:, None, None, :].to(device)


def _eva_dropped_forward(model: Eva, inputs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """EVA's own forward with the masked patches' keys masked in every block (its ``attn_mask``), the head on
    the kept tokens: what dropping them is, with each kept token's rotary embedding where it was."""
    features = model.forward_features(inputs, attn_mask=_key_mask(model, masked, inputs.device))
    return model.forward_head(_head_tokens(_kept_tokens(features, masked, model.num_prefix_tokens),
                                           model.num_prefix_tokens))


def _beit_dropped_forward(model: Beit, inputs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """BEiT's ``forward_features`` with the masked patches' keys at -inf in every block (added to the shared
    relative position bias its blocks take, whose own bias is laid out for the whole grid), the head on the
    kept tokens."""
    x = model.patch_embed(inputs)
    x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    if model.pos_embed is not None:
        x = x + model.pos_embed
    x = model.pos_drop(x)
    keys = _key_mask(model, masked, x.device)
    bias = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill(~keys, float('-inf'))
    if model.rel_pos_bias is not None:
        bias = bias + model.rel_pos_bias()
    for block in model.blocks:
        x = block(x, shared_rel_pos_bias=bias)
    return model.forward_head(_head_tokens(_kept_tokens(model.norm(x), masked, model.num_prefix_tokens),
                                           model.num_prefix_tokens))


# Model classes whose patch tokens can be dropped, and how (``isinstance``: DeiT's distilled ViT is a ViT).
_DROPPING_FORWARDS: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    VisionTransformer: _dropped_forward, Eva: _eva_dropped_forward, Beit: _beit_dropped_forward}
