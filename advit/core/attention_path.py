"""Which attention a ViT's blocks compute with: fused SDPA or explicit math, chosen by measurement.

timm's ``Attention`` calls ``F.scaled_dot_product_attention`` when its ``fused_attn`` is set, and
otherwise ``softmax(q k^T / sqrt(d)) v`` as two matmuls. Which is faster depends on the device, the
dtype and the shapes: on an AMX CPU in bf16 the fused kernel's backward took 43% of a training step
(explicit math trained 1.7-1.9x faster), on CUDA the flash kernels win, and on an AVX2 CPU in fp32
the two are even. ``'auto'`` times both on the model's own attention shapes, where and as it runs
(forward, plus backward when it trains), and keeps explicit math where it is clearly (15%) faster. The [CLS] capture reads ``attn.qkv``,
which both paths compute, so maps, losses and gaps do not depend on the choice (up to rounding).
"""
from __future__ import annotations

import functools
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .families import attention_modules, head_dim, set_fused

ATTENTION_PATHS = ('auto', 'fused', 'explicit')
# 'auto' leaves timm's default (fused) unless explicit math is clearly faster: where the two are even,
# timing noise would otherwise pick either, and two runs of one seed on one machine could round apart.
EXPLICIT_MARGIN = 0.85  # explicit is chosen when its median time is under this share of fused's


def set_attention_path(model: nn.Module, path: str) -> None:
    """Make every attention block of a timm ViT run ``'fused'`` SDPA or ``'explicit'`` math.

    Args:
        model: A timm ``VisionTransformer`` (or subclass).
        path: ``'fused'`` or ``'explicit'``.
    """
    if path not in ATTENTION_PATHS[1:]:
        raise ValueError(f'unknown attention path {path!r}: choose fused or explicit')
    for attn in attention_modules(model):
        set_fused(attn, path == 'fused')  # a block a capture holds explicit takes it when let go


def attention_path_of(model: nn.Module) -> str:
    """``'fused'`` or ``'explicit'``: what the first block runs (``set_attention_path`` sets all alike)."""
    return 'fused' if attention_modules(model)[0].fused_attn else 'explicit'


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # timm's own unfused branch: scale the queries, softmax the scores, weight the values.
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


@functools.lru_cache(maxsize=64)  # one measurement per shape and device for the life of the process
def fastest_attention_path(device: torch.device, batch: int, heads: int, tokens: int, head_dim: int,
                           dtype: torch.dtype, backward: bool, repeats: int = 5) -> str:
    """Time fused and explicit attention on (batch, heads, tokens, head_dim); ``'explicit'`` if it is
    clearly faster (``EXPLICIT_MARGIN``), else ``'fused'``.

    Args:
        device: Where the model runs.
        batch, heads, tokens, head_dim: The attention's shapes.
        dtype: The dtype the attention runs in (bf16 under autocast, else float32).
        backward: Time a backward pass too (training).
        repeats: Timed calls of each, alternated after one warm-up call; the medians are compared.
    """
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=generator).to(device, dtype)
               .requires_grad_(backward) for _ in range(3))
    functions = {'fused': F.scaled_dot_product_attention, 'explicit': _explicit}
    times: dict[str, list[float]] = {name: [] for name in functions}
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for index in range(repeats + 1):
        for name, function in functions.items():
            sync()
            start = time.perf_counter()
            with torch.set_grad_enabled(backward):
                out = function(q, k, v)
                if backward:
                    out.sum().backward()
            sync()
            elapsed = time.perf_counter() - start
            if index:  # the first call of each warms up
                times[name].append(elapsed)
    faster = statistics.median(times['explicit']) < EXPLICIT_MARGIN * statistics.median(times['fused'])
    return 'explicit' if faster else 'fused'


def use_attention_path(model: nn.Module, path: str, device: torch.device, batch: int, training: bool,
                       dtype: torch.dtype = torch.float32) -> str:
    """Set a ViT's attention path, measuring the fastest for ``'auto'``; return the path set.

    A model without timm attention blocks (a CNN) is left as it is, and ``'none'`` is returned.

    Args:
        model: The model, on ``device``.
        path: ``'auto'``, ``'fused'`` or ``'explicit'``.
        device: Where it runs.
        batch: Images per forward (per process).
        training: Whether it trains (backward timed too) or only infers.
        dtype: The dtype its attention runs in.
    """
    if path not in ATTENTION_PATHS:
        raise ValueError(f'unknown attention path {path!r}: choose one of {", ".join(ATTENTION_PATHS)}')
    try:
        attns = attention_modules(model)
    except TypeError:
        return 'none'
    if path == 'auto':
        tokens = model.patch_embed.num_patches + model.num_prefix_tokens
        path = fastest_attention_path(torch.device(device), batch, heads=attns[0].num_heads, tokens=tokens,
                                      head_dim=head_dim(attns[0]), dtype=dtype, backward=training)
    set_attention_path(model, path)
    return path
