"""Hugging Face ``transformers`` ViT and DeiT classifiers as timm models: mapped, then checked, not assumed.

A folder written by ``save_pretrained`` (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, optionally
``preprocessor_config.json``), or a Hub id (downloaded, or found in the local Hugging Face cache when offline), becomes
the timm ``VisionTransformer`` that computes the same function:

- ``ViTForImageClassification``: a ViT with a class token;
- ``DeiTForImageClassification``: transformers' DeiT always carries a distillation token, which attends and is attended
  to but is not classified: in timm, a register token (``reg_tokens=1``) after the class token;
- ``DeiTForImageClassificationWithTeacher``: timm's distilled DeiT, two heads averaged at inference as transformers does.

The import is refused, in words, unless both models give the same logits and every layer's [CLS] attention row on a
fixed batch. ``transformers`` is optional (the ``hf`` extra) and imported only when such a checkpoint is imported.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
import torch.nn as nn

from .capture import ClsAttentionCapture, attention_modules, cls_attention_logits
from .checkpoint import load_weights
from .checks import shown_value
from .models import create_model
from .weights import CheckpointError

# The architectures taken: the model_type their config.json must name, and what transformers' distillation token
# becomes in timm (None: they have none).
SUPPORTED = {
    'ViTForImageClassification': ('vit', None),
    'DeiTForImageClassification': ('deit', 'reg_token'),
    'DeiTForImageClassificationWithTeacher': ('deit', 'dist_token'),
}
# timm's names of the standard widths (embed_dim, depth, heads), so that google/vit-base-patch16-224 is recorded as
# vit_base_patch16_224; any other shape is recorded under its family's base name, its model_args saying the rest.
_SIZES = {(192, 12, 3): 'tiny', (384, 12, 6): 'small', (768, 12, 12): 'base', (1024, 24, 16): 'large',
          (1280, 32, 16): 'huge'}
_FAMILIES = {
    'ViTForImageClassification': 'vit_{size}_patch{patch}_{image}',
    'DeiTForImageClassification': 'deit_{size}_patch{patch}_{image}',
    'DeiTForImageClassificationWithTeacher': 'deit_{size}_distilled_patch{patch}_{image}',
}
LOGIT_TOLERANCE = 1e-4  # of the logits' scale (their largest magnitude, at least 1): float32 rounding, not a mapping error
ATTENTION_TOLERANCE = 1e-4  # attention weights are probabilities
# A Hub snapshot's files: weights as safetensors, else (older repositories) pickled; never both downloaded.
_HUB_FILES = ['config.json', 'preprocessor_config.json', 'model.safetensors', 'model.safetensors.index.json',
              'model-*.safetensors']
_HUB_PICKLED = ['pytorch_model.bin', 'pytorch_model.bin.index.json', 'pytorch_model-*.bin']
_WEIGHT_SUFFIXES = ('.pth', '.pt', '.safetensors', '.bin', '.ckpt')

# transformers' weight names, as files hold them (4.x: encoder.layer.N.attention.attention.query) and as 5.x models
# name them in memory (layers.N.attention.q_proj), to timm's: transformers' convert_vit_timm_to_pytorch.py, inverted.
_BLOCK_NAMES = {
    r'attention\.(?:attention\.query|q_proj)': 'attn.q', r'attention\.(?:attention\.key|k_proj)': 'attn.k',
    r'attention\.(?:attention\.value|v_proj)': 'attn.v', r'attention\.(?:output\.dense|o_proj)': 'attn.proj',
    r'layernorm_before': 'norm1', r'layernorm_after': 'norm2',
    r'intermediate\.dense|mlp\.fc1': 'mlp.fc1', r'output\.dense|mlp\.fc2': 'mlp.fc2',
}
_TOP_NAMES = {
    r'(?:vit|deit)\.embeddings\.cls_token': 'cls_token',
    r'(?:vit|deit)\.embeddings\.position_embeddings': 'pos_embed',
    r'(?:vit|deit)\.embeddings\.patch_embeddings\.projection\.(weight|bias)': r'patch_embed.proj.\1',
    r'(?:vit|deit)\.layernorm\.(weight|bias)': r'norm.\1',
    r'(?:classifier|cls_classifier)\.(weight|bias)': r'head.\1',
    r'distillation_classifier\.(weight|bias)': r'head_dist.\1',
}


def is_transformers_source(source: str | Path) -> bool:
    """True for what ``advit import`` reads as a transformers checkpoint: a folder, or a Hub id (``org/name``) that
    names nothing here. A file, or the path of a weights file that is missing, is a state dict's.

    Args:
        source: What was given to import.
    """
    path = Path(source)
    if path.is_dir():
        return True
    if path.exists() or path.suffix in _WEIGHT_SUFFIXES:
        return False
    return re.fullmatch(r'[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?', str(source)) is not None


def resolve_folder(source: str | Path) -> Path:
    """The folder holding a transformers checkpoint: ``source`` itself, or a Hub id's snapshot (downloaded when online,
    taken from the Hugging Face cache when not).

    Args:
        source: A folder, or a Hub id such as ``google/vit-base-patch16-224``.
    """
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f'{path} is not a folder: a transformers checkpoint is a folder (config.json and its '
                              'weights); a timm state dict is imported with --model')
    # timm's dependency, needed only for a Hub id.
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    try:
        folder = Path(snapshot_download(str(source), allow_patterns=_HUB_FILES))
        if not any(folder.glob('*.safetensors')):
            folder = Path(snapshot_download(str(source), allow_patterns=_HUB_PICKLED))
    except (OSError, ValueError) as err:  # not on the Hub, offline and not cached, or not a valid id
        raise CheckpointError(f'{source} is neither a file nor a folder here, nor a Hub model that is in the Hugging '
                              f'Face cache ({HF_HUB_CACHE}) or can be downloaded: {_one_line(err)}') from None
    return folder


def read_architecture(folder: Path) -> tuple[str, dict[str, Any]]:
    """The architecture a folder's config.json names, and the config as written; any but ``SUPPORTED`` is refused.

    Args:
        folder: A transformers checkpoint folder.
    """
    config_file = folder / 'config.json'
    if not config_file.is_file():
        raise CheckpointError(f'{folder} has no config.json: not a transformers checkpoint (a timm state dict is a '
                              'file, imported with --model)')
    config = _json_object(config_file, 'a config')
    names = config.get('architectures') if isinstance(config.get('architectures'), list) else []
    found = next((name for name in names if isinstance(name, str) and name in SUPPORTED), None)
    if found is None or SUPPORTED[found][0] != config.get('model_type'):
        named = ', '.join(shown_value(name, quoted=False) for name in names) or 'no architecture named'
        raise CheckpointError(
            f'{folder} holds a {shown_value(config.get("model_type"))} model ({named}), not one advit imports: '
            f'{", ".join(SUPPORTED)} (a ViT with a [CLS] token and a classification head)')
    return found, config


def _transformers() -> Any:
    """The transformers package, or a refusal that says how to install it (it is an optional dependency)."""
    try:
        import transformers
    except ImportError:
        raise CheckpointError('importing a transformers checkpoint needs the transformers package: '
                              'pip install transformers (or pip install -e .[hf])') from None
    return transformers


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' load reports and progress bars off while loading: the import's own refusals say what is wrong."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _one_line(err: BaseException) -> str:
    """An error's message on one line, as the CLI's one-line refusal prints it."""
    return ' '.join(str(err).split())


def _square(value: Any, name: str) -> int:
    """A size transformers allows as an int or a (height, width) pair, as one int; a non-square one is refused."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f'its {name} is {shown_value(value)}: advit imports square images and patches only')
    return value


def timm_architecture(config: Any, architecture: str) -> tuple[str, dict[str, Any]]:
    """The timm model name and ``model_args`` that compute what a transformers ViT/DeiT config describes; what timm's
    ViT would compute differently is refused in words.

    Args:
        config: The transformers config (``ViTConfig`` or ``DeiTConfig``).
        architecture: One of ``SUPPORTED``.
    """
    width, depth, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    image, patch = _square(config.image_size, 'image_size'), _square(config.patch_size, 'patch_size')
    if config.hidden_act != 'gelu':  # transformers' "gelu" is the exact GELU, timm's ViT's nn.GELU
        raise CheckpointError(f'its activation is {shown_value(config.hidden_act)}: timm\'s ViT computes the exact '
                              'GELU, transformers\' "gelu", and no other')
    if config.num_channels != 3:
        raise CheckpointError(f'it reads {config.num_channels}-channel images: advit\'s models read RGB (3 channels)')
    if width % heads or getattr(config, 'head_dim', None) not in (None, width // heads):
        raise CheckpointError(f'its {heads} heads do not split its width {width} evenly: timm\'s attention needs '
                              'width = heads x head size')
    if config.num_labels < 1:
        raise CheckpointError('it has no classification head (num_labels is 0)')
    mlp_ratio = config.intermediate_size / width
    if int(mlp_ratio * width) != config.intermediate_size:
        raise CheckpointError(f'its MLP width {config.intermediate_size} is not a ratio of its width {width} that '
                              'timm rebuilds exactly')
    args = dict(num_classes=config.num_labels, img_size=image, patch_size=patch, embed_dim=width, depth=depth,
                num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=bool(getattr(config, 'qkv_bias', True)),
                norm_eps=float(config.layer_norm_eps))  # transformers' 1e-12, not timm's 1e-6
    if SUPPORTED[architecture][1] == 'reg_token':
        args['reg_tokens'] = 1
    name = _FAMILIES[architecture].format(size=_SIZES.get((width, depth, heads), 'base'), patch=patch, image=image)
    if not timm.is_model(name):
        name = _FAMILIES[architecture].format(size='base', patch=16, image=224)
    return name, args


def class_names(config: Any, given: list[str] | None) -> list[str]:
    """The class names in the head's order: those given, else the config's ``id2label``, unless it only numbers
    them (LABEL_0...), which is refused.

    Args:
        config: The transformers config.
        given: The names given on import (``--classes``), or None.
    """
    count = config.num_labels
    if given is not None:
        if len(given) != count:
            raise CheckpointError(f'{len(given)} class names given for a head of {count} classes')
        return list(given)
    names = [str(config.id2label.get(index, f'LABEL_{index}')) for index in range(count)]
    if names == [f'LABEL_{index}' for index in range(count)]:
        raise CheckpointError(f'its config names its {count} classes LABEL_0 to LABEL_{count - 1} only: give their '
                              'names with --classes (comma-separated, in the head\'s order)')
    return names


def normalization(folder: Path, model_type: str) -> tuple[list[float], list[float]]:
    """The (mean, std) the model's inputs are normalised with: preprocessor_config.json's, else what the model type's
    image processor defaults to (ViTImageProcessor 0.5 and 0.5, DeiTImageProcessor ImageNet's).

    Args:
        folder: The checkpoint folder.
        model_type: ``vit`` or ``deit``.
    """
    from transformers.utils import constants
    mean, std = ((constants.IMAGENET_STANDARD_MEAN, constants.IMAGENET_STANDARD_STD) if model_type == 'vit'
                 else (constants.IMAGENET_DEFAULT_MEAN, constants.IMAGENET_DEFAULT_STD))
    processor_file = folder / 'preprocessor_config.json'
    if processor_file.is_file():
        processor = _json_object(processor_file, 'a processor config')
        if processor.get('do_normalize') is False:
            return [0.0] * 3, [1.0] * 3
        mean, std = processor.get('image_mean', mean), processor.get('image_std', std)
    # A processor may give one number for all channels; check_metadata refuses anything but three numbers each.
    mean, std = ([value] * 3 if isinstance(value, (int, float)) else value for value in (mean, std))
    return mean, std


def load_transformers_model(transformers: Any, folder: Path, architecture: str, config: Any) -> nn.Module:
    """The transformers model with eager attention (which returns its weights), float32, eval mode; weights missing
    from the files or of other shapes than the config's are refused.

    Args:
        transformers: The transformers package.
        folder: The checkpoint folder.
        architecture: One of ``SUPPORTED``.
        config: Its config, as loaded.
    """
    try:  # mismatched shapes are loaded as reported, not raised, so that the refusal names them
        model, info = getattr(transformers, architecture).from_pretrained(
            folder, config=config, attn_implementation='eager', output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f'transformers cannot load {folder}: {_one_line(err)}') from None
    problems = [_mismatch(entry) for entry in sorted(info.get('mismatched_keys') or [])]
    problems += [f'{key} is missing' for key in sorted(info.get('missing_keys') or [])]
    if problems:
        more = f' (+{len(problems) - 5} more)' if len(problems) > 5 else ''
        raise CheckpointError(f'the weights in {folder} do not fit its config.json: {"; ".join(problems[:5])}{more}')
    return model.float().eval()


def _mismatch(entry: str | tuple[str, Any, Any]) -> str:
    """A weight of another shape than the config's, in words: transformers 5 reports the shapes, 4.x the name only."""
    if isinstance(entry, str):
        return f'{entry} has another shape in the file than in its config'
    key, found, expected = entry
    return f'{key} is {tuple(found)} in the file, {tuple(expected)} in its config'


def _timm_name(key: str, distillation_token: str | None) -> str | None:
    """timm's name of a transformers weight (q, k and v apart), or None for one that has none."""
    block = re.fullmatch(r'(?:vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)', key)
    if block:
        part = next((name for pattern, name in _BLOCK_NAMES.items() if re.fullmatch(pattern, block[2])), None)
        return part and f'blocks.{block[1]}.{part}.{block[3]}'
    if distillation_token and key == 'deit.embeddings.distillation_token':
        return distillation_token
    match = next((m for m in (re.fullmatch(pattern, key) for pattern in _TOP_NAMES) if m), None)
    return match and match.expand(_TOP_NAMES[match.re.pattern])


def timm_weights(state: dict[str, torch.Tensor], distillation_token: str | None) -> dict[str, torch.Tensor]:
    """A transformers ViT/DeiT classifier's weights under timm's names, each block's q, k and v stacked into qkv.

    Args:
        state: The transformers model's state dict (either version's names; see ``_BLOCK_NAMES``).
        distillation_token: What DeiT's distillation token is in timm (``SUPPORTED``), or None.
    """
    mapped, unknown = {}, []
    for key, value in state.items():
        name = _timm_name(key, distillation_token)
        if name is None:
            unknown.append(key)
        else:
            mapped[name] = value
    if unknown:
        raise CheckpointError(f'weights that a timm ViT has no place for: {", ".join(sorted(unknown)[:5])}'
                              f'{f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""}')
    for name in [name for name in mapped if re.search(r'\.attn\.q\.(weight|bias)$', name)]:
        stem, kind = name.rsplit('.q.', 1)
        mapped[f'{stem}.qkv.{kind}'] = torch.cat([mapped.pop(f'{stem}.{part}.{kind}') for part in 'qkv'])
    return mapped


def _timm_forward(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A timm ViT's logits, every layer's full [CLS] attention row (batch, layers, heads, tokens) as the capture
    computes it from each block's qkv, and the capture's own raw patch maps (what training and the app read)."""
    rows: dict[int, torch.Tensor] = {}

    def record(index: int, attn: nn.Module, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        rows[index] = cls_attention_logits(output, attn).float().softmax(dim=-1)

    hooks = [attn.qkv.register_forward_hook(partial(record, index, attn))
             for index, attn in enumerate(attention_modules(model))]
    try:
        with ClsAttentionCapture(model, 'raw') as capture, torch.no_grad():
            logits = model(batch)
            patches = capture.pop()
    finally:
        for hook in hooks:
            hook.remove()
    return logits.float(), torch.stack([rows[index] for index in sorted(rows)], dim=1), patches


def check_equivalent(reference: nn.Module, model: nn.Module) -> dict[str, float]:
    """Refuse (``CheckpointError``) unless ``model`` gives ``reference``'s logits and every layer's [CLS] attention
    row (every head, every token) on a fixed random batch; return the largest gaps found.

    Args:
        reference: The transformers model, eager attention, eval mode.
        model: The timm model its weights were mapped into, eval mode.
    """
    batch = torch.randn(2, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(pixel_values=batch, output_attentions=True)
    if not expected.attentions or len(expected.attentions) != len(attention_modules(model)):
        raise CheckpointError('transformers returned no attention weights per layer to check the import against')
    theirs = torch.stack([layer[:, :, 0] for layer in expected.attentions], dim=1).float()
    if not torch.isfinite(expected.logits).all() or not torch.isfinite(theirs).all():
        raise CheckpointError('the transformers model gives non-finite logits or attention on a test batch: its '
                              'weights are broken')
    logits, rows, patches = _timm_forward(model, batch)
    scale = max(1.0, expected.logits.abs().max().item())
    logit_gap = (logits - expected.logits.float()).abs().max().item()
    if not logit_gap <= LOGIT_TOLERANCE * scale:
        raise CheckpointError(f'the timm model does not compute what the transformers model does: their logits differ '
                              f'by up to {logit_gap:.3g} on a test batch (tolerance {LOGIT_TOLERANCE * scale:.1g})')
    prefix = int(model.num_prefix_tokens)
    gaps = torch.maximum((rows - theirs).abs().amax(dim=(0, 2, 3)),
                         (patches - theirs[..., prefix:]).abs().amax(dim=(0, 2, 3)))
    worst = int(gaps.argmax())
    if not gaps[worst] <= ATTENTION_TOLERANCE:
        raise CheckpointError(f'the timm model does not attend as the transformers model does: layer {worst + 1}\'s '
                              f'[CLS] attention differs by up to {gaps[worst]:.3g} (tolerance {ATTENTION_TOLERANCE:g})')
    return dict(logit_gap=logit_gap, attention_gap=float(gaps.max()))


def convert(source: str | Path, classes: list[str] | None = None,
            image_size: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A transformers ViT/DeiT classifier as a timm model (eval mode) and its checkpoint metadata, checked against
    the transformers model (``check_equivalent``); anything else is refused in words (``CheckpointError``).

    Args:
        source: A checkpoint folder or a Hub id.
        classes: Class names in the head's order (default: the config's ``id2label``).
        image_size: The input size expected, checked against the config's (its position embeddings fix it).
    """
    folder = resolve_folder(source)
    architecture, written = read_architecture(folder)
    transformers = _transformers()
    with _quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(folder)
            name, args = timm_architecture(config, architecture)
            names = class_names(config, classes)
        except (OSError, ValueError, TypeError, AttributeError) as err:  # values of the wrong type or sense
            raise CheckpointError(f'{folder}/config.json does not describe a ViT advit can rebuild: '
                                  f'{_one_line(err)}') from None
        except CheckpointError as err:  # said of "it": say of what
            raise CheckpointError(f'{source}: {err}') from None
        if image_size is not None and image_size != args['img_size']:
            raise CheckpointError(f'{source} takes {args["img_size"]}px images (its position embeddings are for '
                                  f'that size), not {image_size}px')
        reference = load_transformers_model(transformers, folder, architecture, config)
    try:
        model = create_model(name, **args).eval()
    except (ValueError, TypeError) as err:
        raise CheckpointError(f'cannot build {name} with {args}: {err}') from None
    load_weights(model, timm_weights(reference.state_dict(), SUPPORTED[architecture][1]),
                 source=f'{folder} mapped to timm')
    gaps = check_equivalent(reference, model)
    mean, std = normalization(folder, written['model_type'])
    meta = dict(model=name, model_args=args, classes=names, image_size=args['img_size'], mean=mean, std=std,
                params=sum(p.numel() for p in model.parameters()),
                imported_from=Path(source).name if Path(source).is_dir() else str(source),
                imported_architecture=architecture, import_check=gaps)
    return model, meta


def _json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object file of the folder, refused in words when unreadable or not an object.

    Args:
        path: The file.
        what: What it should hold, for the message (``'a config'``).
    """
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f'{path} is not readable JSON: {err}') from None
    if not isinstance(value, dict):
        raise CheckpointError(f'{path} holds {type(value).__name__}, not {what}')
    return value
