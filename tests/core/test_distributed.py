"""Process setup (distributed.py): one process is rank 0 of 1; ranks launched as torchrun launches them join one
group, and its collectives give every rank the same answer."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from advit.core.distributed import (Context, any_rank, barrier, broadcast_float, cleanup, mean_over_ranks,
                                    resolve_device, setup)
from conftest import REPO

# One rank as torchrun starts it (its place in the environment): what it reports after each collective.
RANK = '''
import json
from advit.core import distributed
ctx = distributed.setup('cpu')
report = dict(rank=ctx.rank, world_size=ctx.world_size, is_main=ctx.is_main, distributed=ctx.distributed,
              any_true=distributed.any_rank(ctx.rank == 1, ctx), any_false=distributed.any_rank(False, ctx),
              mean=distributed.mean_over_ranks({'loss': 1.0 + ctx.rank, 'top1': 10.0 * ctx.rank}, ctx),
              broadcast=distributed.broadcast_float(0.5 + ctx.rank, ctx))
distributed.barrier(ctx)
distributed.cleanup()
print(json.dumps(report))
'''


def test_devices_are_auto_cpu_or_this_processs_gpu():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto') == (torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu'))
    with pytest.raises(ValueError, match="unknown device 'tpu': choose auto, cpu or cuda"):
        resolve_device('tpu')
    if torch.cuda.is_available():
        assert resolve_device('cuda', 1) == torch.device('cuda', 1)  # the local rank's GPU
    else:
        with pytest.raises(RuntimeError, match='device cuda asked for, but no CUDA GPU is available'):
            resolve_device('cuda')


def test_one_process_is_rank_0_of_1_and_the_collectives_keep_its_values(monkeypatch):
    for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    ctx = setup('cpu')
    assert ctx == Context(rank=0, world_size=1, device=torch.device('cpu'))
    assert ctx.is_main and not ctx.distributed and not dist.is_initialized()
    values = {'loss': 2.5, 'top1': 40.0}
    assert mean_over_ranks(values, ctx) == values and broadcast_float(0.25, ctx) == 0.25
    assert any_rank(True, ctx) is True and any_rank(False, ctx) is False
    barrier(ctx)
    cleanup()
    assert not dist.is_initialized()


@pytest.mark.slow  # starts two processes
def test_two_ranks_join_one_group_and_agree_on_every_collective(tmp_path):
    with socket.socket() as free:
        free.bind(('127.0.0.1', 0))
        port = free.getsockname()[1]
    ranks = [subprocess.Popen([sys.executable, '-c', RANK], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
                                                  WORLD_SIZE='2', RANK=str(rank), LOCAL_RANK=str(rank)))
             for rank in range(2)]
    reports = []
    for process in ranks:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        reports.append(json.loads(out.splitlines()[-1]))
    assert [(r['rank'], r['world_size'], r['is_main'], r['distributed']) for r in reports] == \
        [(0, 2, True, True), (1, 2, False, True)]
    for report in reports:
        assert report['any_true'] is True and report['any_false'] is False  # true on rank 1 only: true on both
        assert report['mean'] == {'loss': 1.5, 'top1': 5.0}  # each value averaged over the two ranks
        assert report['broadcast'] == 0.5  # rank 0's value
