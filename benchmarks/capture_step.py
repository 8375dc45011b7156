"""Benchmark: what attention distillation costs in one training step, against DeiT and full maps.

For a teacher/student pair of timm ViTs (``--pair vit224``: ViT-B/16 -> ViT-S/16 at 224x224;
``--pair cifar32``: the bundle's ViT-S/4 -> ViT-Ti/4 at 32x32; 10 classes, random weights and
images), one training step of each variant: teacher forward (no grad), student forward, loss,
backward and an AdamW step:

- ``deit``: DeiT hard distillation (``deit_hard``), the baseline attention distillation should match.
- ``ours`` / ``ours_kl``: ADViT (``advit_l1`` / ``advit_kl``): every layer's head-averaged [CLS]
  map from ``advit.core.capture.ClsAttentionCapture``, which hooks each block's ``attn.qkv`` and computes
  only the [CLS] row's logits (one batched matmul on the keys in place); the blocks keep fused
  SDPA attention, and one softmax covers all layers.
- ``full``: ``advit_l1`` with the same ``DistillationLoss``, its two captures swapped for ones
  that turn off fused attention (``attn.fused_attn = False``) and record every block's full N x N
  softmax map with a forward hook on ``attn.attn_drop`` -- the module-hook method of
  ``timm.utils.AttentionExtract``, which cannot be used as is here because its forward returns
  the maps and drops the logits that the training step needs. Row 0 is then taken.
- ``forward`` / ``forward_capture``: a student forward alone (train mode, grad enabled, no
  backward), and the same with ``ClsAttentionCapture`` installed and its maps popped.

How: every variant runs in a fresh subprocess (``--variant NAME --json PATH``) that builds the
models from the same seed, runs ``--warmup`` untimed repeats, then ``--repeats`` timed ones, and
reports the median time. On CUDA, times come from CUDA events and the step runs under bf16
autocast (as ``advit.training.train`` does); peak memory is ``torch.cuda.max_memory_allocated`` minus the
memory allocated right after the models were built. On CPU, times come from
``time.perf_counter`` and peak memory is ``ru_maxrss`` minus the resident set size right after the
models were built. Both include the AdamW state created during warm-up.

Model FLOPs utilisation (MFU): a step's FLOPs are batch x (teacher forward + 3 x student forward),
each forward counted from the model's shapes by ``measure.vit_forward_flops`` (matmuls only,
2 per multiply-add; a backward is twice a forward), divided by the step time and by the device's
dense matmul ceiling measured here (bf16 on CUDA, float32 on CPU: the fastest square matmul, before and
after the variants, ``measure.matmul_ceiling``); an MFU over 100% is not reported (``measure.utilisation``).

The parent process then checks, in float32 on one set of weights and inputs, that ``ours`` and
``full`` give the same loss and gradient, and prints a table and the ratios.

    python benchmarks/capture_step.py                            # CPU or CUDA, whichever is there
    python benchmarks/capture_step.py --pair cifar32 --variants deit,ours,ours_kl
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
from functools import partial
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's advit, as the other benchmarks take it
from advit.core.distributed import resolve_device  # noqa: E402
from advit.core.capture import ClsAttentionCapture  # noqa: E402
from advit.core.losses import DistillationLoss, TeacherForward  # noqa: E402
from advit.core.models import create_model, model_normalization  # noqa: E402
from advit.core.precision import autocast  # noqa: E402
from measure import matmul_ceiling, rss_mib, time_repeats, utilisation, vit_forward_flops  # benchmarks/, this script's folder

# The loss each training-step variant runs; 'full' is advit_l1 on full attention maps.
STEP_METHODS = {'deit': 'deit_hard', 'ours': 'advit_l1', 'ours_kl': 'advit_kl', 'full': 'advit_l1'}
FORWARD_VARIANTS = ('forward', 'forward_capture')
VARIANTS = (*STEP_METHODS, *FORWARD_VARIANTS)
# Teacher, student, image size; batch size on CUDA and on CPU.
PAIRS = {
    'vit224': dict(teacher='vit_base_patch16_224', student='vit_small_patch16_224', image_size=224,
                   cuda_batch=128, cpu_batch=8),
    'cifar32': dict(teacher='vit_small_patch4_32', student='vit_tiny_patch4_32', image_size=32,
                    cuda_batch=512, cpu_batch=64),
}
LOSS_TOLERANCE = 1e-4
CHECKED_VARIANTS = ('ours', 'full')  # same loss by two routes


class FullMapCapture:
    """Records every block's full softmax attention map (unfused attention) through ``attn.attn_drop``.

    A drop-in for ``ClsAttentionCapture`` in the training step: ``pop()`` returns the same
    (batch, layers, heads, patches) renormalised [CLS] maps, taken from row 0 of the full maps,
    which stay alive as AttentionExtract keeps them.

    Args:
        model: A timm ViT; its blocks are switched to the unfused attention path.
    """

    def __init__(self, model: nn.Module) -> None:
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self._maps: list[torch.Tensor | None] = [None] * len(model.blocks)
        self._handles = []
        for index, block in enumerate(model.blocks):
            block.attn.fused_attn = False  # the unfused path builds softmax(q k^T) and passes it to attn_drop
            self._handles.append(block.attn.attn_drop.register_forward_hook(partial(self._record, index)))

    def _record(self, index: int, _module: nn.Module, _inputs, attn_map: torch.Tensor) -> None:
        self._maps[index] = attn_map

    def pop(self) -> torch.Tensor:
        rows = torch.stack([attn_map[:, :, 0] for attn_map in self._maps], dim=1).float()[..., self.num_prefix_tokens:]
        self._maps = [None] * len(self._maps)
        return rows / rows.sum(dim=-1, keepdim=True)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class Setup:
    """Teacher, student, loss, optimiser and one fixed batch, built from a seed."""

    def __init__(self, args: argparse.Namespace, device: torch.device, method: str = 'advit_l1') -> None:
        torch.manual_seed(args.seed)
        self.device = device
        self.amp = device.type == 'cuda'
        self.teacher = create_model(args.teacher, num_classes=args.num_classes, img_size=args.image_size).to(device)
        self.student = create_model(args.student, num_classes=args.num_classes, img_size=args.image_size).to(device)
        self.criterion = DistillationLoss(method, self.student, self.teacher)
        attention = self.criterion.method.attention is not None
        # The step as advit.training.train takes it: the teacher called once, the student's maps of its forward.
        self.teacher_forward = TeacherForward(self.teacher, model_normalization(self.student), capture=attention)
        self.student_capture = ClsAttentionCapture(self.student) if attention else None
        # With --compile, both forwards are compiled; the capture hooks are traced into the graphs.
        self.forward = torch.compile(self.student) if args.compile else self.student
        if args.compile:
            self.teacher_forward.model = torch.compile(self.teacher)
        self.student.train()
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-4, fused=device.type == 'cuda')
        generator = torch.Generator().manual_seed(args.seed)
        self.images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
        self.labels = torch.randint(args.num_classes, (args.batch_size,), generator=generator).to(device)

    def use_full_maps(self) -> None:
        """Swap the step's [CLS] captures for full-map captures on unfused attention."""
        self.student_capture.remove()
        self.teacher_forward.capture.remove()
        self.student_capture = FullMapCapture(self.student)
        self.teacher_forward.capture = FullMapCapture(self.teacher)

    def loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher and student forwards and the distillation loss on the fixed batch."""
        with autocast(self.device, self.amp):
            teacher = self.teacher_forward(self.images)
            outputs = self.forward(self.images)
            maps = self.student_capture.pop() if self.student_capture is not None else None
            return self.criterion(outputs, self.labels, teacher, maps)

    def train_step(self) -> None:
        """One training step: forwards, loss, backward, AdamW."""
        loss, _ = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def student_forward(self, capture: bool) -> None:
        """A training-mode student forward; with ``capture``, also pop the student's maps."""
        with autocast(self.device, self.amp):
            self.forward(self.images)
        if capture:
            self.student_capture.pop()

    def prepare(self, variant: str) -> Callable[[], None]:
        """Configure the models for ``variant`` and return the function to time."""
        if variant == 'full':
            self.use_full_maps()
        if variant in STEP_METHODS:
            return self.train_step
        self.teacher_forward.capture.remove()
        if variant == 'forward':
            self.student_capture.remove()  # a plain student: no hooks at all
        return partial(self.student_forward, capture=variant == 'forward_capture')


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Time one variant in this process and measure its peak memory over the models' own."""
    device = resolve_device(args.device)
    setup = Setup(args, device, STEP_METHODS.get(args.variant, 'advit_l1'))
    if device.type == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = int(rss_mib() * 2**20)
    fn = setup.prepare(args.variant)
    times = time_repeats(fn, args.warmup, args.repeats, device)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    flops = args.batch_size * (vit_forward_flops(setup.teacher) + 3 * vit_forward_flops(setup.student)) \
        if args.variant in STEP_METHODS else None
    return dict(variant=args.variant, median_s=statistics.median(times), min_s=min(times), times_s=times,
                peak_mem_bytes=peak, fused_attn=setup.student.blocks[0].attn.fused_attn, step_flops=flops)


def matmul_rate(device: torch.device) -> float:
    """The device's dense matmul ceiling in FLOP/s (``measure.matmul_ceiling``): bf16 on CUDA, float32 on CPU."""
    size = 8192 if device.type == 'cuda' else 1024
    return matmul_ceiling(size, size, size, torch.bfloat16 if device.type == 'cuda' else torch.float32, device)


def loss_check(args: argparse.Namespace) -> dict[str, Any]:
    """Loss and student gradient of both variants on the same weights and batch, in float32."""
    setup = Setup(args, resolve_device(args.device))
    setup.amp = False
    terms, grads = {}, {}
    for name in CHECKED_VARIANTS:
        if name == 'full':
            setup.use_full_maps()
        loss, terms[name] = setup.loss()
        setup.student.zero_grad(set_to_none=True)
        loss.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in setup.student.parameters()])
    result = {f'{name}_{term}': float(terms[name][term]) for name in CHECKED_VARIANTS for term in ('loss', 'attn')}
    result['abs_diff'] = abs(result['ours_loss'] - result['full_loss'])
    result['grad_rel_diff'] = float((grads['ours'] - grads['full']).norm() / grads['full'].norm())
    result['ok'] = result['abs_diff'] <= LOSS_TOLERANCE
    return result


def child_command(args: argparse.Namespace, variant: str, json_path: Path) -> list[str]:
    """The command line that runs ``variant`` in a fresh interpreter."""
    return [sys.executable, str(Path(__file__).resolve()), '--variant', variant, '--json', str(json_path),
            '--device', args.device, '--batch-size', str(args.batch_size), '--repeats', str(args.repeats),
            '--warmup', str(args.warmup), '--image-size', str(args.image_size), '--teacher', args.teacher,
            '--student', args.student, '--num-classes', str(args.num_classes), '--seed', str(args.seed),
            *(['--compile'] if args.compile else [])]


def run_child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """Run ``variant`` in a fresh interpreter and return its result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f'{variant}.json'
        subprocess.run(child_command(args, variant, path), check=True)
        return json.loads(path.read_text())


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen variants, each in its own subprocess; then the device's matmul rate and the loss check."""
    device = resolve_device(args.device)
    before = matmul_rate(device)  # the ceiling before and after the variants: the higher is kept
    results = {}
    for variant in args.variants:
        print(f'running {variant} ...', file=sys.stderr, flush=True)
        results[variant] = run_child(args, variant)
    rate = max(before, matmul_rate(device))
    for result in results.values():
        if result['step_flops']:
            result['mfu'] = utilisation(result['step_flops'] / result['median_s'], rate)
    ratios = {}
    for top, bottom in (('ours', 'deit'), ('ours_kl', 'deit'), ('ours', 'full')):
        if top in results and bottom in results:
            a, b = results[top], results[bottom]
            ratios[f'{top}/{bottom}'] = dict(time=a['median_s'] / b['median_s'], min_time=a['min_s'] / b['min_s'],
                                             memory=a['peak_mem_bytes'] / b['peak_mem_bytes'])
    if {'forward', 'forward_capture'} <= results.keys():
        ratios['forward_capture/forward'] = dict(
            time=results['forward_capture']['median_s'] / results['forward']['median_s'],
            min_time=results['forward_capture']['min_s'] / results['forward']['min_s'])
    check = None
    if set(CHECKED_VARIANTS) <= results.keys():
        print('running loss check ...', file=sys.stderr, flush=True)
        check = loss_check(args)
    return dict(config=describe(args), matmul_tflops=rate / 1e12, variants=results, ratios=ratios, loss_check=check)


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """The settings and versions a result was produced with."""
    device = resolve_device(args.device)
    return dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                amp='bf16' if device.type == 'cuda' else 'off', threads=torch.get_num_threads(),
                teacher=args.teacher, student=args.student, image_size=args.image_size,
                batch_size=args.batch_size, num_classes=args.num_classes, repeats=args.repeats,
                warmup=args.warmup, compile=args.compile, torch=torch.__version__, timm=timm.__version__)


# What each ratio is held against (the performance issue's goals).
GOALS = {'ours/deit': 'time <= 1.10', 'ours_kl/deit': 'time <= 1.10',
         'ours/full': 'throughput >= 1.25x (time <= 0.80), memory <= 0.6 (on the GPU)',
         'forward_capture/forward': 'overhead < 10%'}


def print_report(report: dict[str, Any]) -> None:
    """A table of the variants, the ratios and the loss check."""
    print(' '.join(f'{key}={value}' for key, value in report['config'].items()))
    dtype = 'bf16' if report['config']['amp'] == 'bf16' else 'fp32'
    print(f'dense {dtype} matmul rate measured here: {report["matmul_tflops"]:.2f} TFLOP/s')
    print(f'{"variant":<16}{"median ms":>12}{"min ms":>12}{"peak MiB":>12}{"MFU":>8}  attention')
    for name, r in report['variants'].items():
        path = 'fused SDPA' if r['fused_attn'] else 'unfused (full maps)'
        mfu = f'{r["mfu"] * 100:.1f}%' if r.get('mfu') else '-'
        print(f'{name:<16}{r["median_s"] * 1e3:>12.1f}{r["min_s"] * 1e3:>12.1f}'
              f'{r["peak_mem_bytes"] / 2**20:>12.1f}{mfu:>8}  {path}')
    for name, ratio in report['ratios'].items():
        memory = f', memory {ratio["memory"]:.3f}' if 'memory' in ratio else ''
        print(f'{name:<24} time {ratio["time"]:.3f} (of minima {ratio["min_time"]:.3f}){memory}   '
              f'goal: {GOALS[name]}')
    check = report['loss_check']
    if check:
        print(f'loss check (float32, same weights and batch): ours {check["ours_loss"]:.6f} '
              f'(attn {check["ours_attn"]:.6f}), full {check["full_loss"]:.6f} (attn {check["full_attn"]:.6f}), '
              f'|diff| {check["abs_diff"]:.2e} -> {"OK" if check["ok"] else "MISMATCH"} (tol {LOSS_TOLERANCE:g}); '
              f'student gradient relative diff {check["grad_rel_diff"]:.2e}')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the pair sets models and batch size, repeats and warm-up default by device."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variant', choices=('all', *VARIANTS), default='all',
                        help='run one variant in this process (used by the subprocesses), or all')
    parser.add_argument('--variants', default=','.join(VARIANTS), help='comma-separated variants to run')
    parser.add_argument('--pair', choices=PAIRS, default='vit224', help='teacher, student and image size')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--batch-size', type=int, help='default by pair: 128 / 512 on CUDA, 8 / 64 on CPU')
    parser.add_argument('--repeats', type=int, help='timed repeats; default 10 on CPU, 50 on CUDA')
    parser.add_argument('--warmup', type=int, help='untimed repeats first; default 2 on CPU, 10 on CUDA')
    parser.add_argument('--image-size', type=int, help="default: the pair's")
    parser.add_argument('--teacher', help="default: the pair's")
    parser.add_argument('--student', help="default: the pair's")
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--compile', action='store_true', help='torch.compile the teacher and student forwards')
    parser.add_argument('--json', type=Path, help='write the results here')
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(',') if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f'unknown variants {sorted(unknown)}: choose from {", ".join(VARIANTS)}')
    pair = PAIRS[args.pair]
    on_cuda = resolve_device(args.device).type == 'cuda'
    args.device = 'cuda' if on_cuda else 'cpu'
    args.teacher = args.teacher or pair['teacher']
    args.student = args.student or pair['student']
    args.image_size = args.image_size or pair['image_size']
    args.batch_size = args.batch_size or pair['cuda_batch' if on_cuda else 'cpu_batch']
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
