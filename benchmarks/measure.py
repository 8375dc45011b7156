"""Readings the benchmarks share: seconds of repeated calls, a process's memory and CPU time, a ViT's FLOPs,
and the matmul ceiling with the utilisation (MFU) measured against it."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from advit.core.models import patch_grid


def time_repeats(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device is not None and device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start_s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start_s)
    return times


def matmul_ceiling(rows: int, inner: int, cols: int, dtype: torch.dtype,
                   device: torch.device = torch.device('cpu'), repeats: int = 20) -> float:
    """The dense FLOP/s of a (rows, inner) @ (inner, cols) matmul at its best: the fastest of ``repeats`` calls.

    A ceiling is what the hardware can do, so slow moments (other work on the cores, a clock dip) are
    dropped, not averaged in; the benchmarks take it before and after the work it divides, and keep the higher.
    """
    a = torch.randn(rows, inner, device=device, dtype=dtype)
    b = torch.randn(inner, cols, device=device, dtype=dtype)
    return 2 * rows * inner * cols / min(time_repeats(lambda: a @ b, warmup=3, repeats=repeats, device=device))


def utilisation(achieved: float, ceiling: float) -> float | None:
    """Achieved over ceiling FLOP/s (MFU); None where it would exceed 1, which no true ceiling allows: the
    ceiling was measured wrong, and the figure is reported as not measured rather than as a result."""
    return achieved / ceiling if 0 < achieved <= ceiling else None


def rss_mib(pid: int | str = 'self', field: str = 'VmRSS') -> float:
    """Resident memory of a process (this one by default) in MiB: ``VmRSS`` of ``/proc/<pid>/status``, or its
    high-water mark since the process started with ``field='VmHWM'``."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(f'{field}:'):
            value, unit = line.split()[1:3]
            assert unit == 'kB', line
            return int(value) / 1024
    raise RuntimeError(f'no {field} for process {pid}')


def cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (all its threads; ``/proc/<pid>/stat``)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def vit_forward_flops(model: nn.Module) -> int:
    """Floating-point operations of one image's forward pass through a timm ViT, from its shapes.

    Counts the matrix products at 2 FLOPs per multiply-add: the patch embedding, each block's qkv
    and output projections, attention scores and weighted values (2 x tokens^2 x width), and MLP,
    and the classifier head(s) on one token. Norms, softmax, activations and biases are left out
    (under 1% of a ViT's work), as in the usual model-FLOPs-utilisation accounting; a backward
    pass costs twice the forward.

    Args:
        model: A timm ``VisionTransformer`` (or DeiT distilled) with ``Mlp`` blocks.
    """
    rows, cols = patch_grid(model)
    patches = rows * cols
    tokens = patches + model.num_prefix_tokens
    macs = 0
    height, width = model.patch_embed.img_size
    for conv in model.patch_embed.proj.modules():  # a patchify convolution, or the layers of a conv stem
        if isinstance(conv, nn.Conv2d):
            height, width = (height + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1, \
                (width + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
            macs += height * width * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        macs += tokens * sum(layer.in_features * layer.out_features
                             for layer in (attn.qkv, attn.proj, mlp.fc1, mlp.fc2))
        macs += 2 * tokens * tokens * attn.num_heads * attn.head_dim
    for name in ('head', 'head_dist'):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            macs += head.in_features * head.out_features
    return 2 * macs
