"""timm's ViT families with a class token: which attention their blocks run, and how each one's [CLS] row is taken.

A registry by attention class, as timm registers models by name: a family is added in one place, and any other
attention is refused in words rather than read wrongly (timm's relative-position ViTs, XCiT or CaiT also have a
``qkv`` Linear, but their softmax is not of q K^T alone). Two ways of taking the row:

- ``'qkv'`` (timm's ``Attention``: ViT, DeiT, DeiT III): the logits q_cls K^T / sqrt(d) from the qkv projection's
  output, q/k norms applied, beside whatever path the block runs (``capture``'s fast path, benchmarked).
- ``'softmax'`` (EVA / EVA-02's ``EvaAttention`` and ``AttentionRope``, BEiT's ``Attention``): these add, between
  the projection and the softmax, what the projection's output does not hold: EVA rotates the patch tokens' q and
  k by rotary embeddings (rope) the model passes each block, BEiT adds a learnt relative position bias per head
  (and a shared one); both add their q/v bias by ``F.linear`` on the qkv weight, so a hook on ``qkv`` never fires.
  Rather than copy each family's math (which moves between timm versions), their blocks run timm's explicit path
  while captured and the row is read from the softmax the block itself computes, where it enters ``attn_drop``:
  exact by construction, at the explicit path's O(tokens^2) cost.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch.nn as nn
from timm.layers import Attention, AttentionRope
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention

CAPTURES = ('qkv', 'softmax')


@dataclass(frozen=True)
class Family:
    """A family of class-token ViTs as the capture and the views take it."""
    name: str  # in words, as messages give it
    capture: str  # how its [CLS] row is taken (``CAPTURES``)


FAMILIES: dict[type, Family] = {}


def register_family(attention: type, name: str, capture: str) -> None:
    """Declare how the [CLS] row of blocks running ``attention`` is taken exactly.

    Args:
        attention: The attention module's class (matched exactly: a subclass may compute otherwise).
        name: The family in words.
        capture: ``'qkv'`` (logits from the qkv projection) or ``'softmax'`` (the explicit path's softmax).
    """
    if capture not in CAPTURES:
        raise ValueError(f'unknown capture {capture!r}: choose one of {", ".join(CAPTURES)}')
    FAMILIES[attention] = Family(name, capture)


register_family(Attention, 'ViT / DeiT / DeiT III', 'qkv')
register_family(EvaAttention, 'EVA / EVA-02', 'softmax')
register_family(AttentionRope, 'EVA (rope attention)', 'softmax')
register_family(BeitAttention, 'BEiT', 'softmax')


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of a class-token ViT's blocks, in depth order, each of a registered family.

    Args:
        model: A timm ViT of a family in ``FAMILIES`` (ViT, DeiT, DeiT III, EVA, BEiT).
    """
    blocks = getattr(model, 'blocks', None)
    attns = [getattr(block, 'attn', None) for block in blocks] if blocks is not None else []
    if not attns or not all(isinstance(a, nn.Module) for a in attns):
        raise TypeError(f'{type(model).__name__} is not a ViT with attention blocks: attention capture needs a timm '
                        f'ViT of one of these families: {family_names()}')
    foreign = next((a for a in attns if type(a) not in FAMILIES), None)
    if foreign is not None:
        kind = f'{type(foreign).__name__} from {type(foreign).__module__}'
        raise TypeError(f'{type(model).__name__}\'s attention ({kind}) is not one whose [CLS] row advit can take '
                        f'exactly: the families it can are {family_names()}')
    return attns


def family_of(model: nn.Module) -> Family:
    """The family of a ViT's blocks (``attention_modules``); blocks of several families are refused."""
    families = {FAMILIES[type(a)] for a in attention_modules(model)}
    if len(families) > 1:
        names = ', '.join(sorted(family.name for family in families))
        raise TypeError(f'{type(model).__name__} mixes attention families ({names}): its [CLS] rows would not be '
                        'taken alike')
    return families.pop()


def family_names() -> str:
    """The registered families in words."""
    return ', '.join(dict.fromkeys(f.name for f in FAMILIES.values()))


def head_dim(attn: nn.Module) -> int:
    """Channels per head of an attention module (BEiT's keeps no ``head_dim``: its output projection's input
    is heads x head_dim in every family)."""
    return int(getattr(attn, 'head_dim', None) or attn.proj.in_features // attn.num_heads)


# Explicit-path holds. A capture of a 'softmax' family holds its blocks on the explicit path for its life, the
# gradient rollout for one forward and backward, and several may overlap on one model (the app's request threads
# share it): a module returns to the path it had (or was set to meanwhile) only when its last holder lets go.
_HOLD_LOCK = threading.Lock()
_HELD: weakref.WeakKeyDictionary[nn.Module, list] = weakref.WeakKeyDictionary()  # module -> [holders, fused after]


def hold_explicit(modules: Sequence[nn.Module]) -> None:
    """Make ``modules`` run the explicit path (``fused_attn = False``) until as many ``release_explicit``."""
    with _HOLD_LOCK:
        for module in modules:
            held = _HELD.get(module)
            if held is None:
                _HELD[module] = [1, module.fused_attn]
                module.fused_attn = False
            else:
                held[0] += 1


def release_explicit(modules: Sequence[nn.Module]) -> None:
    """Let go of one ``hold_explicit`` of ``modules``; the last one restores each module's path."""
    with _HOLD_LOCK:
        for module in modules:
            held = _HELD[module]
            held[0] -= 1
            if not held[0]:
                module.fused_attn = held[1]
                del _HELD[module]


@contextmanager
def explicit_attention(modules: Sequence[nn.Module]) -> Iterator[None]:
    """``modules`` on the explicit path within the block, as ``hold_explicit`` and ``release_explicit``."""
    hold_explicit(modules)
    try:
        yield
    finally:
        release_explicit(modules)


def set_fused(attn: nn.Module, fused: bool) -> None:
    """Set whether ``attn`` runs fused SDPA; while it is held explicit, the setting takes effect when it is let go.

    Args:
        attn: An attention module.
        fused: True for fused SDPA, False for explicit math.
    """
    with _HOLD_LOCK:
        held = _HELD.get(attn)
        if held is None:
            attn.fused_attn = fused
        else:
            held[1] = fused
