"""Benchmark: the cost of ADViT's [CLS]-attention capture in one distillation training step.

What it measures, for a teacher/student pair of timm ViTs (default ViT-B/16 -> ViT-S/16, 224x224,
10 classes, random weights and random images):

- ``ours``: one ``advit_l1`` training step as ``advit`` runs it: teacher forward (no grad), student
  forward, ``DistillationLoss`` (cross-entropy + L1 between [CLS] attention maps), backward and an
  AdamW step. The maps come from ``advit.capture.ClsAttentionCapture``, which hooks each block's
  ``attn.qkv`` and computes only the [CLS] row; the blocks keep fused SDPA attention.
- ``full``: the same step, with the same ``DistillationLoss`` (so the same ``fuse_heads``,
  ``align_teacher_maps`` and ``attention_gap``), but its two captures swapped for ones that turn
  off fused attention (``attn.fused_attn = False``) and record every block's full N x N softmax map
  with a forward hook on ``attn.attn_drop`` -- the module-hook method of ``timm.utils.AttentionExtract``,
  which cannot be used as is here because its forward returns the maps and drops the logits that
  the training step needs. Row 0 is then taken, the prefix tokens dropped and the row renormalised.
- ``forward`` / ``forward_capture``: a student forward alone (train mode, grad enabled, no backward),
  and the same with ``ClsAttentionCapture`` installed and its maps popped: the capture's overhead.

How: every variant runs in a fresh subprocess (``--variant NAME --json PATH``) that builds the
models from the same seed, runs ``--warmup`` untimed repeats, then ``--repeats`` timed ones, and
reports the median time. On CUDA, times come from CUDA events and the step runs under bf16 autocast
(as ``advit.train`` does); peak memory is ``torch.cuda.max_memory_allocated`` minus the memory
allocated right after the models were built. On CPU, times come from ``time.perf_counter`` and
peak memory is ``ru_maxrss`` minus the resident set size right after the models were built. Both
include the AdamW state created during warm-up. The parent process then checks, in float32 on one
set of weights and inputs, that both variants give the same loss, and prints a table and the ratios.

    python benchmarks/capture_step.py                           # CPU or CUDA, whichever is there
    python benchmarks/capture_step.py --batch-size 4 --repeats 3 --warmup 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torch.nn as nn

from advit.capture import ClsAttentionCapture
from advit.distributed import resolve_device
from advit.evaluate import autocast
from advit.losses import DistillationLoss
from advit.models import create_model

STEP_VARIANTS = ('ours', 'full')
FORWARD_VARIANTS = ('forward', 'forward_capture')
VARIANTS = STEP_VARIANTS + FORWARD_VARIANTS
LOSS_TOLERANCE = 1e-4


class FullMapCapture(ClsAttentionCapture):
    """Records every block's full softmax attention map (unfused attention) through ``attn.attn_drop``.

    A drop-in for ``ClsAttentionCapture`` inside ``DistillationLoss``: ``pop()`` returns the same
    (batch, layers, heads, patches) [CLS] maps, taken from row 0 of the full maps, which stay
    alive as AttentionExtract keeps them.

    Args:
        model: A timm ViT; its blocks are switched to the unfused attention path.
    """

    def _hooked_module(self, attn: nn.Module) -> nn.Module:
        attn.fused_attn = False  # the unfused path builds softmax(q k^T) and passes it to attn_drop
        return attn.attn_drop

    def _row(self, attn: nn.Module, attn_map: torch.Tensor) -> torch.Tensor:
        return attn_map[:, :, 0].float()  # a view of the full (batch, heads, tokens, tokens) map


class Setup:
    """Teacher, student, loss, optimiser and one fixed batch, built from a seed."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(args.seed)
        self.device = device
        self.amp = device.type == 'cuda'
        self.teacher = create_model(args.teacher, num_classes=args.num_classes, img_size=args.image_size).to(device)
        self.student = create_model(args.student, num_classes=args.num_classes, img_size=args.image_size).to(device)
        self.criterion = DistillationLoss('advit_l1', self.student, self.teacher)
        self.student.train()
        self.criterion.train()
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-4, fused=device.type == 'cuda')
        generator = torch.Generator().manual_seed(args.seed)
        self.images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
        self.labels = torch.randint(args.num_classes, (args.batch_size,), generator=generator).to(device)

    def use_full_maps(self) -> None:
        """Swap the loss's [CLS] captures for full-map captures on unfused attention."""
        self.criterion.student_capture.remove()
        self.criterion.teacher_capture.remove()
        self.criterion.student_capture = FullMapCapture(self.student)
        self.criterion.teacher_capture = FullMapCapture(self.teacher)

    def loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher and student forwards and the distillation loss on the fixed batch."""
        with autocast(self.device, self.amp):
            outputs = self.student(self.images)
            return self.criterion(self.images, outputs, self.labels)

    def train_step(self) -> None:
        """One training step: forwards, loss, backward, AdamW."""
        loss, _ = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def student_forward(self, capture: bool) -> None:
        """A training-mode student forward; with ``capture``, also pop the loss's student maps."""
        with autocast(self.device, self.amp):
            self.student(self.images)
        if capture:
            self.criterion.student_capture.pop()

    def prepare(self, variant: str) -> Callable[[], None]:
        """Configure the models for ``variant`` and return the function to time."""
        if variant == 'full':
            self.use_full_maps()
        if variant in STEP_VARIANTS:
            return self.train_step
        self.criterion.teacher_capture.remove()
        if variant == 'forward':
            self.criterion.student_capture.remove()  # a plain student: no hooks at all
        return partial(self.student_forward, capture=variant == 'forward_capture')


def current_rss_kib() -> int:
    """Resident set size of this process now, in KiB (Linux)."""
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmRSS:'))


def time_repeats(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
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


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Time one variant in this process and measure its peak memory over the models' own."""
    device = resolve_device(args.device)
    setup = Setup(args, device)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = current_rss_kib() * 1024
    fn = setup.prepare(args.variant)
    times = time_repeats(fn, device, args.warmup, args.repeats)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return dict(variant=args.variant, median_s=statistics.median(times), min_s=min(times), times_s=times,
                peak_mem_bytes=peak, fused_attn=setup.student.blocks[0].attn.fused_attn)


def loss_check(args: argparse.Namespace) -> dict[str, Any]:
    """Loss and student gradient of both variants on the same weights and batch, in float32."""
    setup = Setup(args, resolve_device(args.device))
    setup.amp = False
    terms, grads = {}, {}
    for name in STEP_VARIANTS:
        if name == 'full':
            setup.use_full_maps()
        loss, terms[name] = setup.loss()
        setup.student.zero_grad(set_to_none=True)
        loss.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in setup.student.parameters()])
    result = {f'{name}_{term}': float(terms[name][term]) for name in STEP_VARIANTS for term in ('loss', 'attn')}
    result['abs_diff'] = abs(result['ours_loss'] - result['full_loss'])
    result['grad_rel_diff'] = float((grads['ours'] - grads['full']).norm() / grads['full'].norm())
    result['ok'] = result['abs_diff'] <= LOSS_TOLERANCE
    return result


def child_command(args: argparse.Namespace, variant: str, json_path: Path) -> list[str]:
    """The command line that runs ``variant`` in a fresh interpreter."""
    return [sys.executable, str(Path(__file__).resolve()), '--variant', variant, '--json', str(json_path),
            '--device', args.device, '--batch-size', str(args.batch_size), '--repeats', str(args.repeats),
            '--warmup', str(args.warmup), '--image-size', str(args.image_size), '--teacher', args.teacher,
            '--student', args.student, '--num-classes', str(args.num_classes), '--seed', str(args.seed)]


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant in its own subprocess, then the loss check here."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            print(f'running {variant} ...', file=sys.stderr, flush=True)
            path = Path(tmp) / f'{variant}.json'
            subprocess.run(child_command(args, variant, path), check=True)
            results[variant] = json.loads(path.read_text())
    print('running loss check ...', file=sys.stderr, flush=True)
    check = loss_check(args)
    ours, full, fwd, fwd_cap = (results[v] for v in VARIANTS)
    ratios = dict(
        step_time_ours_over_full=ours['median_s'] / full['median_s'],
        step_min_time_ours_over_full=ours['min_s'] / full['min_s'],
        step_mem_ours_over_full=ours['peak_mem_bytes'] / full['peak_mem_bytes'],
        forward_capture_overhead=fwd_cap['median_s'] / fwd['median_s'] - 1,
        forward_capture_min_overhead=fwd_cap['min_s'] / fwd['min_s'] - 1,
    )
    return dict(config=describe(args), variants=results, ratios=ratios, loss_check=check)


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """The settings and versions a result was produced with."""
    device = resolve_device(args.device)
    return dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                amp='bf16' if device.type == 'cuda' else 'off', threads=torch.get_num_threads(),
                teacher=args.teacher, student=args.student, image_size=args.image_size,
                batch_size=args.batch_size, num_classes=args.num_classes, repeats=args.repeats,
                warmup=args.warmup, torch=torch.__version__, timm=timm.__version__)


def print_report(report: dict[str, Any]) -> None:
    """A table of the variants, the ratios and the loss check."""
    print(' '.join(f'{key}={value}' for key, value in report['config'].items()))
    print(f'{"variant":<16}{"median ms":>12}{"min ms":>12}{"peak MiB":>12}  attention')
    for name, r in report['variants'].items():
        path = 'fused SDPA' if r['fused_attn'] else 'unfused (full maps)'
        print(f'{name:<16}{r["median_s"] * 1e3:>12.1f}{r["min_s"] * 1e3:>12.1f}'
              f'{r["peak_mem_bytes"] / 2**20:>12.1f}  {path}')
    ratios, check = report['ratios'], report['loss_check']
    print(f'step time   ours / full: {ratios["step_time_ours_over_full"]:.3f} '
          f'(of minima {ratios["step_min_time_ours_over_full"]:.3f})  goal <= 1')
    print(f'step memory ours / full: {ratios["step_mem_ours_over_full"]:.3f}')
    print(f'capture overhead on a student forward: {ratios["forward_capture_overhead"] * 100:+.1f}% '
          f'(of minima {ratios["forward_capture_min_overhead"] * 100:+.1f}%)  goal < 10%')
    print(f'loss check (float32, same weights and batch): ours {check["ours_loss"]:.6f} '
          f'(attn {check["ours_attn"]:.6f}), full {check["full_loss"]:.6f} (attn {check["full_attn"]:.6f}), '
          f'|diff| {check["abs_diff"]:.2e} -> {"OK" if check["ok"] else "MISMATCH"} (tol {LOSS_TOLERANCE:g}); '
          f'student gradient relative diff {check["grad_rel_diff"]:.2e}')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; batch size, repeats and warm-up default by device."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variant', choices=('all', *VARIANTS), default='all',
                        help='run one variant in this process (used by the subprocesses), or all')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--batch-size', type=int, help='default 8 on CPU, 64 on CUDA')
    parser.add_argument('--repeats', type=int, help='timed repeats; default 10 on CPU, 50 on CUDA')
    parser.add_argument('--warmup', type=int, help='untimed repeats first; default 2 on CPU, 10 on CUDA')
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--teacher', default='vit_base_patch16_224')
    parser.add_argument('--student', default='vit_small_patch16_224')
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=Path, help='write the results here')
    args = parser.parse_args(argv)
    on_cuda = resolve_device(args.device).type == 'cuda'
    args.device = 'cuda' if on_cuda else 'cpu'
    args.batch_size = args.batch_size or (64 if on_cuda else 8)
    args.repeats = args.repeats or (50 if on_cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 2)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_all(args) if args.variant == 'all' else run_variant(args)
    if args.variant == 'all':
        print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + '\n')


if __name__ == '__main__':
    main()
