"""Process setup for one process or many under ``torchrun`` (DistributedDataParallel)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` and its device."""
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` means this process's local GPU."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError('device cuda asked for, but no CUDA GPU is available')
        return torch.device('cuda', local_rank)
    if name != 'cpu':
        raise ValueError(f'unknown device {name!r}: choose auto, cpu or cuda')
    return torch.device('cpu')


def setup(device: str = 'auto') -> Context:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU).

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == 'cuda':
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend='nccl' if resolved.type == 'cuda' else 'gloo')
    return Context(rank=rank, world_size=world_size, device=resolved)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def any_rank(value: bool, ctx: Context) -> bool:
    """True on every rank when ``value`` is true on any rank."""
    if not ctx.distributed:
        return value
    flag = torch.tensor([1.0 if value else 0.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def mean_over_ranks(values: dict[str, float], ctx: Context) -> dict[str, float]:
    """Each value averaged over the ranks (a logged loss is the global batch's, not rank 0's share)."""
    if not ctx.distributed or not values:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / ctx.world_size).tolist()))


def broadcast_float(value: float, ctx: Context) -> float:
    """Rank 0's value of a float, on every rank (so all ranks follow one schedule)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())
