"""Precision (precision.py): bf16 autocast where the device runs bf16 natively, float32 elsewhere or when not asked."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advit.core.precision import autocast, compute_dtype, native_bf16

CPU, CUDA, META = torch.device('cpu'), torch.device('cuda'), torch.device('meta')


def test_bf16_is_native_on_cuda_and_on_no_device_advit_does_not_know():
    assert native_bf16(CUDA) and native_bf16(torch.device('cuda', 1))  # by the device's type: no GPU needed
    assert not native_bf16(META)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel lists them (/proc/cpuinfo), or an empty set where it cannot say."""
    cpuinfo = Path('/proc/cpuinfo')
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((set(line.split(':', 1)[1].split()) for line in lines if line.startswith('flags')), set())


def test_a_cpu_runs_bf16_natively_where_its_flags_say_so():
    """Checked against the kernel's flags, not torch's probe that the code asks: AVX512-BF16 says yes; neither it
    nor AMX says no (AMX alone depends on the kernel letting a process use it, so it is not judged here)."""
    flags = cpu_flags()
    if not flags:
        pytest.skip('no /proc/cpuinfo flags to check against')
    if 'avx512_bf16' in flags:
        assert native_bf16(CPU) and compute_dtype(CPU) == torch.bfloat16
    elif not flags & {'amx_tile', 'amx_bf16'}:
        assert not native_bf16(CPU) and compute_dtype(CPU) == torch.float32


def test_matmuls_run_in_bf16_only_where_native_and_asked_for():
    assert compute_dtype(CUDA) == torch.bfloat16 and compute_dtype(CUDA, amp=False) == torch.float32
    assert compute_dtype(META) == torch.float32 and compute_dtype(CPU, amp=False) == torch.float32


@pytest.mark.parametrize('device', [CPU, pytest.param(
    CUDA, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU'))], ids=['cpu', 'cuda'])
def test_autocast_runs_a_matmul_in_the_compute_dtype(device):
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(4, 8, generator=generator).to(device) for _ in range(2))
    for enabled in (True, False):
        with autocast(device, enabled):
            product = a @ b.T
        assert product.dtype == compute_dtype(device, enabled)
        torch.testing.assert_close(product.float(), a @ b.T, atol=0.1, rtol=0.02)  # the same product, rounded
