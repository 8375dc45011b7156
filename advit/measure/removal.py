"""How the faithfulness measure removes patches: the removal protocols the field uses, one named choice each.

Deleting a patch has no single meaning, and the choice can change which map looks faithful (Hooker et
al. 2019, ROAR; Rong et al. 2022, ROAD), so the measure names its protocol and can be run under each:

- ``mean``: the patch's pixels set to the mean the model normalises with (0 once normalised). Far from
  anything the model saw in training: grey squares cost accuracy by themselves, whatever the map says.
- ``drop``: the patch's token removed from the sequence before the first block (its position embedding
  goes with it; the prefix tokens and the other patches keep theirs). A ViT needs no fill, so nothing
  out of distribution enters ("missingness bias", Jain et al. 2022); the same as masking the patch's key
  in every layer's attention. A model without a token sequence (a CNN) cannot drop: it is refused.
- ``blur``: the patch's pixels replaced by a Gaussian blur of the image (sigma half a patch): its colour
  and the shapes around it stay, its detail goes; closer to the training images than a grey square.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
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
    if protocol == 'drop' and model is not None and not isinstance(model, VisionTransformer):
        raise ValueError(f'{type(model).__name__} has no token sequence to drop patches from: use the mean or '
                         'blur protocol')


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
        out = _dropped_forward(model, inputs[rows], masked[rows])
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


def _dropped_forward(model: VisionTransformer, inputs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """timm's ``forward_features`` and ``forward_head`` with the masked patch tokens left out after the position
    embedding (every image of the batch drops as many)."""
    tokens = model._pos_embed(model.patch_embed(inputs))
    prefix = model.num_prefix_tokens
    kept = (~masked).to(tokens.device)
    patches = tokens[:, prefix:][kept].view(len(tokens), int(kept[0].sum()), tokens.shape[-1])
    x = model.norm_pre(torch.cat([tokens[:, :prefix], patches], dim=1))
    return model.forward_head(model.norm(model.blocks(x)))
