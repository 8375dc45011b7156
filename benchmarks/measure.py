"""Readings the benchmarks share: seconds of repeated calls, a process's memory and CPU time."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch


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


def rss_mib(pid: int | str = 'self') -> float:
    """Resident memory of a process (this one by default) in MiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            value, unit = line.split()[1:3]
            assert unit == 'kB', line
            return int(value) / 1024
    raise RuntimeError(f'no VmRSS for process {pid}')


def cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (all its threads; ``/proc/<pid>/stat``)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
