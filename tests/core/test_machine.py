"""The machine in words (machine.py), as run records and results name it: the GPU, or the CPU's model, the cores
this process may use and whether it runs bf16 natively."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from advit.core.machine import machine
from advit.core.precision import native_bf16


@pytest.mark.skipif(torch.cuda.is_available(), reason='a machine with a GPU is named by its GPU')
def test_a_cpu_is_named_by_its_model_the_cores_this_process_may_use_and_its_bf16():
    text = machine()
    cpuinfo = Path('/proc/cpuinfo')
    models = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith('model name')] if cpuinfo.is_file() else []
    if models:
        assert text.startswith(f'{models[0]}, ')
    bf16 = 'bf16 natively' if native_bf16(torch.device('cpu')) else 'no native bf16 (fp32)'
    allowed = os.sched_getaffinity(0)
    assert text.endswith(f', {len(allowed)} cores, {bf16}')
    os.sched_setaffinity(0, {min(allowed)})  # the cores this process may use, not the machine's count
    try:
        assert machine().endswith(f', 1 cores, {bf16}')
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_a_gpu_machine_is_named_by_its_gpu():
    assert machine() == torch.cuda.get_device_name()
