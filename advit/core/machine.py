"""The machine in words, as run records and results name it: the GPU, or the CPU's model, cores and bf16."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .precision import native_bf16


def machine() -> str:
    """The GPU's name, or the CPU's model, the cores this process may use and whether it runs bf16 natively."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path('/proc/cpuinfo')
    names = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith('model name')] if cpuinfo.is_file() else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    bf16 = 'bf16 natively' if native_bf16(torch.device('cpu')) else 'no native bf16 (fp32)'
    return f'{names[0] if names else platform.processor() or "CPU"}, {cores} cores, {bf16}'
