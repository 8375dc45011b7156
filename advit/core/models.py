"""Models: timm ViTs by name, CIFAR-native ViTs at 32x32, and DeiT variants with a distillation token.

The CIFAR-native models are registered with timm, so ``timm.create_model('vit_tiny_patch4_32')``
builds them once ``advit`` is imported. Their ``deit_*_distilled_patch4_32`` twins carry a
distillation token (two heads while training, their average at inference), like timm's DeiT.

``vit_*_convstem_32`` are the CPU bundle's models: shallow ViTs whose patch embedding is a small
convolutional stem ("early convolutions", Xiao et al. 2021), which learns far faster per second
from scratch at 32x32. They stay timm ``VisionTransformer``s with a [CLS] token and an 8x8 grid,
so capture, losses and the app treat them like any other ViT.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.layers import LayerNorm, PatchEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from .checks import number, shown_value
from .weights import model_weights, read_tensors

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Patch 4 on a 32x32 image gives an 8x8 grid: 64 patch tokens, the CIFAR analogue of 14x14 at 224.
_CIFAR_SIZES = {
    'tiny': dict(embed_dim=192, depth=12, num_heads=3),
    'small': dict(embed_dim=384, depth=12, num_heads=6),
    'base': dict(embed_dim=768, depth=12, num_heads=12),
}


def _cifar_cfg() -> dict[str, Any]:
    return dict(
        url='', num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0,
        interpolation='bilinear', mean=CIFAR10_MEAN, std=CIFAR10_STD,
        first_conv='patch_embed.proj', classifier='head',
    )


# Conv-stem ViTs: depth and width for short CPU budgets (the bundle's teacher and students).
CONVSTEM_SIZES = {
    'tiny6': dict(embed_dim=192, depth=6, num_heads=3),
    'mini6': dict(embed_dim=128, depth=6, num_heads=2),
    'mini4': dict(embed_dim=128, depth=4, num_heads=2),
}


class ConvStem(PatchEmbed):
    """A patch embedding made of 3x3 convolutions: one at full resolution, then one of stride 2 per
    halving, to the same grid as a ``patch_size`` patchify (so patch 4 gives three convolutions).

    Takes ``PatchEmbed``'s arguments (timm's ``embed_layer`` contract); ``patch_size`` must be a power of 2.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 192,
                 bias: bool = True, **kwargs: Any) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         bias=bias, **kwargs)
        halvings = int(patch_size).bit_length() - 1
        if patch_size != 2 ** halvings or halvings == 0:
            raise ValueError(f'a conv stem needs a patch size that is a power of 2 above 1, got {patch_size}')
        widths = [in_chans] + [embed_dim // 2 ** (halvings - i) for i in range(halvings)] + [embed_dim]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Conv2d(width_in, width_out, 3, stride=1 if index == 0 else 2, padding=1,
                                    bias=index == halvings))
            if index < halvings:  # the last convolution is the embedding itself, as in a patchify
                layers += [nn.BatchNorm2d(width_out), nn.GELU()]
        self.proj = nn.Sequential(*layers)


default_cfgs = generate_default_cfgs({
    **{f'vit_{size}_patch4_32': _cifar_cfg() for size in _CIFAR_SIZES},
    **{f'vit_{size}_convstem_32': dict(_cifar_cfg(), first_conv='patch_embed.proj.0') for size in CONVSTEM_SIZES},
    **{f'deit_{size}_distilled_patch4_32': dict(_cifar_cfg(), classifier=('head', 'head_dist'))
       for size in _CIFAR_SIZES},
})


def _create_cifar_vit(variant: str, size: str, pretrained: bool, distilled: bool, **kwargs) -> VisionTransformer:
    model_args = dict(img_size=32, patch_size=4, num_classes=10, **_CIFAR_SIZES[size])
    return build_model_with_cfg(
        VisionTransformerDistilled if distilled else VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **dict(model_args, **kwargs),
    )


def _create_convstem_vit(variant: str, size: str, pretrained: bool, **kwargs) -> VisionTransformer:
    model_args = dict(img_size=32, patch_size=4, num_classes=10, embed_layer=ConvStem, **CONVSTEM_SIZES[size])
    return build_model_with_cfg(VisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                **dict(model_args, **kwargs))


@register_model
def vit_tiny6_convstem_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """6 blocks of width 192, 3 heads, conv stem to an 8x8 grid, 32x32 inputs (the CPU bundle's teacher)."""
    return _create_convstem_vit('vit_tiny6_convstem_32', 'tiny6', pretrained, **kwargs)


@register_model
def vit_mini6_convstem_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """6 blocks of width 128, 2 heads, conv stem to an 8x8 grid, 32x32 inputs."""
    return _create_convstem_vit('vit_mini6_convstem_32', 'mini6', pretrained, **kwargs)


@register_model
def vit_mini4_convstem_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """4 blocks of width 128, 2 heads, conv stem to an 8x8 grid, 32x32 inputs."""
    return _create_convstem_vit('vit_mini4_convstem_32', 'mini4', pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny for 32x32 inputs, patch 4 (8x8 grid)."""
    return _create_cifar_vit('vit_tiny_patch4_32', 'tiny', pretrained, distilled=False, **kwargs)


@register_model
def vit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small for 32x32 inputs, patch 4 (8x8 grid)."""
    return _create_cifar_vit('vit_small_patch4_32', 'small', pretrained, distilled=False, **kwargs)


@register_model
def vit_base_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Base for 32x32 inputs, patch 4 (8x8 grid)."""
    return _create_cifar_vit('vit_base_patch4_32', 'base', pretrained, distilled=False, **kwargs)


@register_model
def deit_tiny_distilled_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """ViT-Tiny with a distillation token for 32x32 inputs, patch 4."""
    return _create_cifar_vit('deit_tiny_distilled_patch4_32', 'tiny', pretrained, distilled=True, **kwargs)


@register_model
def deit_small_distilled_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """ViT-Small with a distillation token for 32x32 inputs, patch 4."""
    return _create_cifar_vit('deit_small_distilled_patch4_32', 'small', pretrained, distilled=True, **kwargs)


@register_model
def deit_base_distilled_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """ViT-Base with a distillation token for 32x32 inputs, patch 4."""
    return _create_cifar_vit('deit_base_distilled_patch4_32', 'base', pretrained, distilled=True, **kwargs)


# timm modules whose models are ViTs built for one input size (``img_size``); CNNs take any size.
_VIT_MODULES = ('vision_transformer', 'deit', 'eva', 'beit', __name__.rsplit('.', 1)[-1])  # families: core/families.py


def is_vit_name(name: str) -> bool:
    """True for the ViTs of timm's vision_transformer, deit (DeiT III too), eva and beit modules, and ours."""
    return timm.models.is_model_in_modules(name.split('.', 1)[0], _VIT_MODULES)


# The keyword arguments a model may be given from outside (``--model-arg``, the app's Train form, a
# checkpoint's metadata): its shape and regularisation only. Keys that name files or configs
# (``checkpoint_path``, ``pretrained_cfg``, ``pretrained_cfg_overlay``...) never pass, so no request
# and no checkpoint can make a run or the app open a file of its choosing.
ARCHITECTURE_ARGS = frozenset({
    'depth', 'embed_dim', 'num_heads', 'mlp_ratio', 'patch_size', 'in_chans', 'qkv_bias', 'qk_norm', 'proj_bias',
    'init_values', 'class_token', 'reg_tokens', 'no_embed_class', 'pos_embed', 'global_pool', 'pre_norm',
    'final_norm', 'fc_norm', 'pool_include_prefix', 'scale_attn_norm', 'scale_mlp_norm', 'dynamic_img_size',
    'dynamic_img_pad', 'drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate', 'attn_drop_rate',
    'drop_path_rate', 'norm_eps',
})


# The ranges numeric architecture arguments are taken in, checked before anything is built: building
# depth=10000 on the meta device alone took 90 s of CPU before the size limit could refuse it. The
# bounds are past the largest ViTs (ViT-22B: 48 blocks of width 6144, 48 heads).
ARCHITECTURE_BOUNDS: dict[str, tuple[float, float, bool]] = {  # key: (low, high, whole)
    'depth': (1, 64, True), 'embed_dim': (1, 8192, True), 'num_heads': (1, 128, True), 'mlp_ratio': (0.25, 16, False),
    'patch_size': (1, 64, True), 'in_chans': (1, 16, True), 'reg_tokens': (0, 64, True), 'norm_eps': (0, 0.1, False),
    **{rate: (0, 1, False) for rate in ('drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate',
                                        'attn_drop_rate', 'drop_path_rate')},
}


def check_architecture_args(args: dict[str, Any]) -> None:
    """Refuse keys other than architecture keys (``ARCHITECTURE_ARGS``), naming them, and numeric
    values outside ``ARCHITECTURE_BOUNDS``, with the range."""
    refused = sorted(shown_value(key, quoted=False) for key in set(args) - ARCHITECTURE_ARGS)
    if refused:
        raise ValueError(f'not an architecture argument: {", ".join(refused)} (allowed: '
                         f'{", ".join(sorted(ARCHITECTURE_ARGS))})')
    for key, (low, high, whole) in ARCHITECTURE_BOUNDS.items():
        if key in args:
            number(args[key], key, low, high, whole)


def create_model(
        name: str,
        num_classes: int = 10,
        pretrained: bool = False,
        pretrained_file: str | Path | None = None,
        img_size: int | None = None,
        **model_args: Any,
) -> nn.Module:
    """Build a timm model by name with a fresh ``num_classes`` head.

    Args:
        name: timm model name, optionally with a pretrained tag (``vit_small_patch16_224.augreg_in21k_ft_in1k``).
        num_classes: Size of the classification head(s).
        img_size: Input size of a ViT (its patch grid follows); ignored for CNNs, which take any size.
        pretrained: Load the tag's pretrained weights from the Hugging Face hub (needs a network).
        pretrained_file: Load pretrained weights from this local file instead (no network). Its head
            is kept when it has ``num_classes`` outputs, otherwise replaced by a fresh one.
        model_args: Architecture arguments passed to the timm entrypoint (``depth``, ``embed_dim``...;
            ``ARCHITECTURE_ARGS`` only). ``norm_eps`` sets a ViT's LayerNorm epsilon (timm's is 1e-6).
    """
    check_architecture_args(model_args)
    if 'norm_eps' in model_args:
        # transformers' ViTs normalise with eps 1e-12: a checkpoint's JSON carries the number, never a layer.
        model_args['norm_layer'] = partial(LayerNorm, eps=model_args.pop('norm_eps'))
    base_name = name.split('.', 1)[0]
    if not timm.is_model(base_name):
        raise ValueError(f'unknown model {shown_value(name)}: not a timm model name (see timm.list_models())')
    overlay = None
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f'pretrained weights file not found: {path}')
        # timm keeps the file's head only when its size is the cfg's num_classes: tell it the file's.
        overlay = dict(file=str(path), num_classes=_head_size(path, name))
        pretrained = True
    if img_size is not None and is_vit_name(name):
        model_args['img_size'] = img_size
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, pretrained_cfg_overlay=overlay, **model_args)
    except TypeError as err:  # an architecture argument the model does not take
        raise ValueError(f'cannot build {name} with {model_args}: {err}') from err
    except RuntimeError as err:  # load_state_dict's size mismatches and missing keys
        raise ValueError(f'pretrained weights {pretrained_file} do not fit {name}: {err}') from err
    except OSError as err:  # the hub unreachable and the weights not in its local cache
        if overlay is not None:
            raise
        raise ValueError(f'cannot fetch pretrained weights of {name} from the Hugging Face hub '
                         f'({type(err).__name__}): without a network, give a local file '
                         '(--pretrained-file / --teacher-pretrained-file)') from err


def _head_size(path: Path, name: str) -> int | None:
    """Output size of the classifier stored in a weights file (None if it holds none)."""
    classifier = timm.models.get_pretrained_cfg_value(name.split('.', 1)[0], 'classifier') or 'head'
    head = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    weight = model_weights(read_tensors(path)).get(f'{head}.weight')
    return None if weight is None else int(weight.shape[0])


def pretrained_classes(name: str, pretrained_file: str | Path | None = None) -> int | None:
    """How many classes the classifier of a model's pretrained weights was trained on: the head in
    ``pretrained_file``, else that of timm's pretrained config for ``name`` (None: no trained head)."""
    if pretrained_file is not None:
        return _head_size(Path(pretrained_file), name)
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False) if timm.is_model(name.split('.', 1)[0]) \
        else None
    return getattr(cfg, 'num_classes', None) if cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file) else None


def is_distilled(model: nn.Module) -> bool:
    """True for models with a DeiT distillation token and head."""
    return isinstance(model, VisionTransformerDistilled)


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """The (rows, cols) grid of patch tokens of a ViT."""
    return tuple(model.patch_embed.grid_size)


def model_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a model's inputs are normalised with, from its pretrained config."""
    cfg = model.pretrained_cfg
    return tuple(cfg['mean']), tuple(cfg['std'])


def model_image_size(model: nn.Module) -> int:
    """The square input size a ViT was built for; a CNN's pretrained input size."""
    if hasattr(model, 'patch_embed'):
        return int(model.patch_embed.img_size[0])
    return int(model.pretrained_cfg['input_size'][-1])
