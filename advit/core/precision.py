"""Precision: bf16 autocast where the device runs bf16 natively, float32 elsewhere.

One rule for training, evaluation, the probe and the faithfulness measure.
"""
from __future__ import annotations

import functools
from contextlib import nullcontext

import torch


@functools.lru_cache(maxsize=None)  # autocast asks on every step; the answer never changes
def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run in hardware: CUDA, and CPUs with AVX512-BF16 or AMX.

    Elsewhere a CPU emulates bf16 and autocast would be slower than fp32, so it stays off.
    """
    if device.type == 'cuda':
        return True
    if device.type == 'cpu':
        probes = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')  # private: absent on old torch, fp32
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def compute_dtype(device: torch.device, amp: bool = True) -> torch.dtype:
    """The dtype matmuls run in: bf16 under ``autocast`` where the device runs it natively, else float32."""
    return torch.bfloat16 if amp and native_bf16(device) else torch.float32


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast where the device runs bf16 natively (``native_bf16``); full precision elsewhere."""
    if compute_dtype(device, enabled) == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
