"""Command line: ``advit train``, ``advit eval``, ``advit report``, ``advit bundle`` (also ``python -m advit``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from .augment import RECIPES
from .bundle import MAX_MB, BundleError
from .capture import HEAD_FUSIONS, NORMALIZATIONS
from .checkpoint import CheckpointError
from .data import SHARED_CIFAR10, DatasetError, default_dataset
from .losses import METHODS, parse_method
from .report import ReportError
from .presets import PRESETS, preset
from .train import TrainConfig, TrainingError



def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _layer_map(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated layer indices, got {text!r}') from None


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(',') if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f'unknown method(s) {", ".join(unknown) or text!r}: choose from {", ".join(METHODS)}')
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f'a method is named twice in {text!r}')
    return methods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='advit', description='Attention distillation for Vision Transformers.')
    commands = parser.add_subparsers(dest='command', required=True)

    t = commands.add_parser('train', help='train a student (or a teacher) by any method',
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument('--preset', choices=sorted(PRESETS), help='start from these settings; flags override them')
    t.add_argument('--resume', metavar='RUN', nargs='+', help='continue the run in this folder from its last '
                   'checkpoint (several folders: the students of one --methods run, together)')
    t.add_argument('--config', metavar='JSON', help='a JSON file of run settings (config.json fields); '
                   'flags override it')
    t.add_argument('--out', help='run folder (default runs/<method>); with --methods, the folder of the students\' '
                   'folders (default runs), each named by its method')
    t.add_argument('--data', help=f'CIFAR-10 archive or folder, an ImageFolder root, or "cifar10" to download the '
                   f'official release (default: ADVIT_DATA, else {SHARED_CIFAR10})')
    t.add_argument('--method', choices=METHODS, help='loss: vit, DeiT, ADViT, or DeiT+ADViT (default vit)')
    t.add_argument('--methods', type=_methods, metavar='M1,M2,...',
                   help='train one student per method at once, on the same batches, with one teacher forward '
                   'per batch for all of them (e.g. vit,deit_hard,advit_l1)')
    t.add_argument('--model', help='student architecture, a timm name (default vit_tiny_patch4_32)')
    t.add_argument('--model-arg', action='append', type=_model_arg, metavar='KEY=VALUE',
                   help='architecture argument for the student, e.g. depth=6 (repeatable)')
    t.add_argument('--pretrained', action='store_true', default=None, help='student weights from the hub')
    t.add_argument('--pretrained-file', help='student pretrained weights from a local file')
    t.add_argument('--teacher', help='teacher: an advit checkpoint, a state-dict file, or a timm name')
    t.add_argument('--teacher-model', help='architecture of a teacher state dict that lacks advit metadata')
    t.add_argument('--teacher-pretrained-file', help='local weights for a teacher given by timm name')
    t.add_argument('--image-size', type=int, help='input size (default 32)')
    t.add_argument('--recipe', choices=RECIPES, help='augmentation (default cifar32)')
    t.add_argument('--subset', type=int, help='train on a fixed subset of N images')
    t.add_argument('--val-size', type=int, help='training images held out to select the best checkpoint on; '
                   '0: none, the last evaluation is kept (default 5000)')
    t.add_argument('--test-subset', type=int, help='evaluate on a fixed subset of N test images')
    t.add_argument('--epochs', type=float, help='run length in epochs')
    t.add_argument('--steps', type=int, help='run length in optimiser steps')
    t.add_argument('--time-budget', type=float, metavar='SECONDS', help='run length in seconds of training')
    t.add_argument('--batch-size', type=int, help='global batch size, split over processes (default 128)')
    t.add_argument('--lr', type=float, help='peak learning rate (default 1e-3)')
    t.add_argument('--min-lr', type=float, help='final learning rate of the cosine (default 1e-5)')
    t.add_argument('--weight-decay', type=float, help='AdamW weight decay (default 0.05)')
    t.add_argument('--warmup-fraction', type=float, help='share of the run spent warming up (default 0.05)')
    t.add_argument('--grad-clip', type=float, help='gradient norm clip, 0 for none (default 1.0)')
    t.add_argument('--drop-path', type=float, help='stochastic depth rate (default 0.1)')
    t.add_argument('--label-smoothing', type=float, help='label smoothing (default 0)')
    t.add_argument('--mixup', type=float, help='Beta alpha of mixup, e.g. 0.8; 0: off (default 0)')
    t.add_argument('--cutmix', type=float, help='Beta alpha of CutMix, e.g. 1.0; 0: off (default 0)')
    t.add_argument('--mix-prob', type=float, help='share of batches mixed by mixup or CutMix (default 1.0)')
    t.add_argument('--attn-weight', type=float, help='weight of the attention loss (default 1.0)')
    t.add_argument('--alpha', type=float, help='weight of the DeiT term; lambda for deit_soft (default 0.5)')
    t.add_argument('--tau', type=float, help='temperature of deit_soft and advit_kl_paper (default 1.0)')
    t.add_argument('--head-fusion', choices=HEAD_FUSIONS, help='fusion of heads (default mean)')
    t.add_argument('--attn-norm', choices=NORMALIZATIONS,
                   help='how each head\'s [CLS] row becomes a map: renormalized (its patch part sums to one; the '
                        'default) or raw (the softmax row\'s patch entries, heads fused, then normalised once)')
    t.add_argument('--layer-map', type=_layer_map, help='teacher layer per student layer, e.g. 1,3,5,7,9,11')
    t.add_argument('--seed', type=int, help='random seed (default 0)')
    t.add_argument('--device', choices=('auto', 'cpu', 'cuda'), help='default auto')
    t.add_argument('--no-amp', dest='amp', action='store_false', default=None, help='no bf16 autocast (on by default where the device runs bf16 natively)')
    t.add_argument('--compile', action='store_true', default=None,
                   help='torch.compile the forwards (minutes of compiling first; pays on long GPU runs)')
    t.add_argument('--log-every', type=int, help='steps between metrics lines (default 50)')
    t.add_argument('--eval-every', type=int, help='steps between evaluations; 0: each epoch (default 0)')
    t.add_argument('--save-every', type=int, help='steps between last checkpoints; 0: at evaluations')
    t.add_argument('--eval-batch-size', type=int, help='default 512')
    t.add_argument('--cache-dir', help='decoded-dataset cache (default $ADVIT_CACHE or ~/.cache/advit)')

    e = commands.add_parser('eval', help='evaluate a checkpoint; save metrics and predictions beside it',
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument('checkpoint', help='an advit checkpoint, or a state dict with --model')
    e.add_argument('--data', default=default_dataset(), help='dataset (its test split is used; default: ADVIT_DATA, '
                   'else the shared CIFAR-10 archive)')
    e.add_argument('--model', help='architecture of a state dict without advit metadata')
    e.add_argument('--subset', type=int, help='evaluate on a fixed subset of N test images')
    e.add_argument('--batch-size', type=int, default=256)
    e.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    e.add_argument('--cache-dir', help='decoded-dataset cache')
    r = commands.add_parser('report', help='results tables (paper Tables 1 and 2) from run folders')
    r.add_argument('runs', nargs='+', help='run folders (each with best.safetensors and best.eval.json)')
    r.add_argument('--out', default='report', help='folder for table1.md/.csv, table2.md/.csv, per_class.png')
    r.add_argument('--compare', nargs=2, metavar=('RUN_A', 'RUN_B'), help='two runs for Table 2 (per class)')
    r.add_argument('--paper', action='store_true', help="add the paper's Table 1, labelled with its setting")
    b = commands.add_parser('bundle', help='export the checkpoint bundle from its run folders: fp16 weights, '
                            'evaluations and the model card (scripts/train_bundle.sh calls it)',
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument('runs', help='folder of the runs teacher/, vit/, deit_hard/, advit_*/ (and commands.tsv)')
    b.add_argument('--out', default='checkpoints', help='the bundle folder')
    b.add_argument('--max-mb', type=float, default=MAX_MB, help='size limit of the bundle folder (MB of 10^6 bytes)')
    b.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto', help='for evaluating the exports')
    b.add_argument('--sweep', help='a sweep.jsonl of scripts/cpu_sweep.py to record in the model card')
    return parser


def train_configs(args: argparse.Namespace) -> tuple[list[TrainConfig], bool]:
    """The runs' configurations from flags: resumed runs' saved configs, or defaults < preset < flags;
    one per method with ``--methods``."""
    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.model_arg:
        flags['model_args'] = dict(args.model_arg)
    if args.resume:
        if flags or args.preset or args.config or args.methods:
            raise TrainingError('--resume continues runs with their saved config.json: give no other flags')
        configs = []
        for run in args.resume:
            saved = Path(run) / 'config.json'
            if not saved.is_file():
                raise TrainingError(f'cannot resume: {saved} not found')
            configs.append(TrainConfig.from_dict(dict(json.loads(saved.read_text()), out=str(Path(run)))))
        return configs, True
    values = preset(args.preset) if args.preset else {}
    if args.config:
        try:
            values.update(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise TrainingError(f'cannot read --config {args.config}: {err}') from err
    values.update(flags)
    if not args.methods:
        values.setdefault('out', f'runs/{values.get("method", "vit")}')
        return [TrainConfig.from_dict(values)], False
    if args.method:
        raise TrainingError('give --method or --methods, not both')
    parent = Path(values.get('out', 'runs'))
    return [TrainConfig.from_dict(dict(values, method=method, out=str(parent / method),
                                       teacher=values.get('teacher') if parse_method(method).needs_teacher else None))
            for method in args.methods], False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'train':
            from .train import train_group
            configs, resume = train_configs(args)
            runs = train_group(configs, resume=resume)
            if os.environ.get('RANK', '0') == '0':
                print('\n'.join(f'run folder: {run}' for run in runs))
        elif args.command == 'report':
            from .report import write_report
            out = write_report(args.runs, args.out, tuple(args.compare) if args.compare else None, args.paper)
            print((out / 'table1.md').read_text(), end='')
            print(f'written to {out}')
        elif args.command == 'bundle':
            from .bundle import export_bundle
            size = export_bundle(args.runs, args.out, max_mb=args.max_mb, device=args.device, sweep=args.sweep)
            print(f'bundle {args.out}: {size / 1e6:.1f} MB, within its {args.max_mb:g} MB limit; '
                  f'model card {Path(args.out) / "README.md"}')
        else:
            from .evaluate import evaluate_checkpoint
            metrics = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                          device=args.device, subset=args.subset, cache_dir=args.cache_dir,
                                          model_name=args.model)
            print(json.dumps({k: metrics[k] for k in ('checkpoint', 'top1', 'count', 'per_class')}, indent=2))
    except (TrainingError, CheckpointError, DatasetError, ReportError, BundleError, ValueError, RuntimeError,
            OSError) as err:
        print(f'advit {args.command}: error: {err}', file=sys.stderr)
        return 2
    return 0
