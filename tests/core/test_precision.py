"""Precision (precision.py): bf16 autocast where the device runs bf16 natively, float32 elsewhere or when not asked."""
from __future__ import annotations

import pytest
import torch

from advit.core.precision import autocast, compute_dtype, native_bf16

CPU, CUDA, META = torch.device('cpu'), torch.device('cuda'), torch.device('meta')


def test_bf16_is_native_on_cuda_and_on_no_device_advit_does_not_know():
    assert native_bf16(CUDA) and native_bf16(torch.device('cuda', 1))  # by the device's type: no GPU needed
    assert not native_bf16(META)


def test_matmuls_run_in_bf16_only_where_native_and_asked_for():
    assert compute_dtype(CUDA) == torch.bfloat16 and compute_dtype(CUDA, amp=False) == torch.float32
    assert compute_dtype(META) == torch.float32 and compute_dtype(CPU, amp=False) == torch.float32
    assert compute_dtype(CPU) == (torch.bfloat16 if native_bf16(CPU) else torch.float32)


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
