"""Benchmark: how step time and peak memory grow with batch size and token count, ours vs full maps.

One ``advit_l1`` training step (see ``capture_step.py``) with our [CLS] capture (``ours``) and with
full attention maps on unfused attention (``full``), for a ViT-Base teacher and a ViT-Small
student at three token counts: 32x32 images in patches of 4 (65 tokens), 224x224 in patches of
16 (197) and 384x384 in patches of 16 (577), each at several batch sizes. Every point runs in a
fresh subprocess through ``capture_step.py --variant``; "x" columns are ours / full.
Full maps grow as batch x tokens^2 per layer; our rows as batch x tokens.

    python benchmarks/capture_scaling.py                                  # CPU: batches 1, 2, 4
    python benchmarks/capture_scaling.py --batch-sizes 16,32,64,128 --json out.json   # CUDA
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from advit.core.distributed import resolve_device  # noqa: E402
from capture_step import parse_args as step_args, run_child  # noqa: E402

# (image size, patch size, teacher, student): token counts 65, 197 and 577.
SHAPES = (
    (32, 4, 'vit_base_patch4_32', 'vit_small_patch4_32'),
    (224, 16, 'vit_base_patch16_224', 'vit_small_patch16_224'),
    (384, 16, 'vit_base_patch16_224', 'vit_small_patch16_224'),
)


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time ``ours`` and ``full`` at every shape and batch size."""
    rows = []
    for image_size, patch, teacher, student in SHAPES:
        for batch in args.batch_sizes:
            point = step_args(['--device', args.device, '--batch-size', str(batch), '--repeats', str(args.repeats),
                               '--warmup', str(args.warmup), '--image-size', str(image_size),
                               '--teacher', teacher, '--student', student])
            print(f'{image_size}px batch {batch} ...', file=sys.stderr, flush=True)
            ours, full = (run_child(point, variant) for variant in ('ours', 'full'))
            rows.append(dict(image_size=image_size, patch=patch, tokens=(image_size // patch) ** 2 + 1,
                             batch=batch, ours_ms=ours['median_s'] * 1e3, full_ms=full['median_s'] * 1e3,
                             ours_mib=ours['peak_mem_bytes'] / 2**20, full_mib=full['peak_mem_bytes'] / 2**20,
                             device=point.device))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Markdown table of the sweep."""
    print('| tokens (image/patch) | batch | ours ms | full ms | time x | ours MiB | full MiB | memory x |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    for r in rows:
        print(f'| {r["tokens"]} ({r["image_size"]}/{r["patch"]}) | {r["batch"]} '
              f'| {r["ours_ms"]:.1f} | {r["full_ms"]:.1f} | {r["ours_ms"] / r["full_ms"]:.3f} '
              f'| {r["ours_mib"]:.0f} | {r["full_mib"]:.0f} | {r["ours_mib"] / r["full_mib"]:.3f} |')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--batch-sizes', help='comma-separated; default 1,2,4 on CPU, 16,32,64,128 on CUDA')
    parser.add_argument('--repeats', type=int, default=None, help='default 3 on CPU, 20 on CUDA')
    parser.add_argument('--warmup', type=int, default=None, help='default 1 on CPU, 5 on CUDA')
    parser.add_argument('--json', type=Path)
    args = parser.parse_args(argv)
    on_cuda = resolve_device(args.device).type == 'cuda'
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ('16,32,64,128' if on_cuda else '1,2,4')).split(',')]
    args.repeats = args.repeats or (20 if on_cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    rows = sweep(args)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + '\n')


if __name__ == '__main__':
    main()
