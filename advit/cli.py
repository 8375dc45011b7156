"""Command line: ``advit train``, ``eval``, ``import``, ``faithfulness``, ``report``, ``bundle``, ``seeds`` (or ``-m advit``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, Sequence

from .core.data import CIFAR10_CLASSES, DatasetError, default_dataset
from .core.losses import METHODS
from .core.weights import CheckpointError
from .measure.evaluate import TEST_IMAGES
from .measure.removal import PROTOCOLS
from .measure.verdicts import HEADLINE_PROTOCOL
from .results.bundle import EARLIER, MAX_MB, RECIPE, BundleError, bundle_recipes
from .results.report import ReportError
from .results.seeds import SeedError
from .training.presets import PRESETS, preset
from .training.run_folder import RunFolder
from .training.train import TrainConfig, TrainingError, group_configs


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


# Argument types by a field's annotation (``from __future__`` annotations are strings).
_TYPES = {'int': int, 'float': float, 'str': str}


def _add_setting(parser: argparse.ArgumentParser, setting: Field) -> None:
    """One ``TrainConfig`` field as a flag: its help and default from the field, its type from its annotation.
    Unset flags stay None, so that presets and --config files are overridden only by what is given."""
    cli = dict(setting.metadata['cli'])
    flag = cli.pop('flag', '--' + setting.name.replace('_', '-'))
    default = setting.default_factory() if setting.default is MISSING else setting.default
    kind = setting.type.split(' | ')[0]
    described = 'default' in setting.metadata['help'] or kind == 'bool' or default in (None, {})  # nothing to add
    options = dict(dest=setting.name, default=None, help=setting.metadata['help'] + ('' if described else
                                                                                    f' (default {default})'), **cli)
    if kind == 'bool':  # --pretrained and --no-pretrained: a preset's choice can be turned off (--no-amp: its own flag)
        options['action'] = argparse.BooleanOptionalAction if 'flag' not in setting.metadata['cli'] else \
            'store_false' if default else 'store_true'
    elif kind.startswith('dict'):
        options.update(action='append', type=_model_arg)
    elif kind.startswith('list'):
        options['type'] = _layer_map
    else:
        options['type'] = _TYPES[kind]
    parser.add_argument(flag, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='advit', description='Attention distillation for Vision Transformers.')
    commands = parser.add_subparsers(dest='command', required=True)

    t = commands.add_parser('train', help='train a student (or a teacher) by any method')
    t.add_argument('--preset', choices=sorted(PRESETS), help='start from these settings; flags override them')
    t.add_argument('--resume', metavar='RUN', nargs='+', help='continue the run in this folder from its last '
                   'checkpoint (several folders: the students of one --methods run, together)')
    t.add_argument('--config', metavar='JSON', help='a JSON file of run settings (config.json fields); '
                   'flags override it')
    t.add_argument('--methods', type=_methods, metavar='M1,M2,...',
                   help='train one student per method at once, on the same batches, with one teacher forward '
                   'per batch for all of them (e.g. vit,deit_hard,advit_l1)')
    for setting in fields(TrainConfig):
        _add_setting(t, setting)

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
    i = commands.add_parser('import', help='make a plain state dict (timm\'s .pth, DeiT\'s checkpoint, safetensors '
                            'without metadata), or a transformers ViT/DeiT classifier (a folder or Hub id, checked '
                            'against transformers\' own forward), a checkpoint the app lists: architecture, classes '
                            'and input size written into it')
    i.add_argument('weights', help='the state dict\'s file, or a transformers checkpoint\'s folder or Hub id')
    i.add_argument('--model', help='a state dict\'s architecture, a timm name (e.g. vit_base_patch16_224); a '
                   'transformers checkpoint names its own')
    i.add_argument('--out', required=True, help='the checkpoint to write (.safetensors), e.g. in checkpoints/')
    i.add_argument('--classes', help='class names in the head\'s order, comma-separated (default: a transformers '
                   'checkpoint\'s labels; for a state dict, CIFAR-10\'s)')
    i.add_argument('--image-size', type=int, help='input size it was trained at (default: the architecture\'s)')
    i.add_argument('--method', choices=METHODS, help='how it was trained, shown by the app')
    i.add_argument('--teacher', help='its teacher, shown by the app')
    f = commands.add_parser('faithfulness', help='measure how faithful checkpoints\' attention maps are (deletion and '
                            'insertion curves of every layer and rollout) and add it to their evaluation files',
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument('checkpoints', nargs='+', help='advit checkpoints of ViTs (or a state dict with --model)')
    f.add_argument('--data', default=default_dataset(), help='dataset (its test split is used; default: ADVIT_DATA, '
                   'else the shared CIFAR-10 archive)')
    f.add_argument('--images', type=int, default=TEST_IMAGES, help='test images measured (a fixed random subset)')
    f.add_argument('--model', help='architecture of a state dict without advit metadata')
    f.add_argument('--batch-size', type=int, default=256)
    f.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    f.add_argument('--cache-dir', help='decoded-dataset cache')
    f.add_argument('--protocol', choices=PROTOCOLS, default=HEADLINE_PROTOCOL, help='how a patch is removed: its '
                   'pixels set to the mean, its token dropped from the sequence, or its pixels blurred')
    f.add_argument('--card', metavar='BUNDLE', help='then bring the faithfulness of this bundle\'s model card up to '
                   'date (its Table 1 columns and section)')
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
    b.add_argument('--earlier', metavar='BUNDLE', help=f'a bundle this one replaces, kept whole in OUT/{EARLIER}/ '
                   '(its seeds the evidence over seeds, its card the history, its models on offer)')
    b.add_argument('--recipe', default=RECIPE, choices=bundle_recipes(), help='the presets\' family that trained '
                   'the runs (NAME-teacher, NAME-student): the card states its goals')
    s = commands.add_parser('seeds', help='add the evaluations of further seeds of the bundle\'s students (no '
                            'weights) to the bundle, and its card\'s Tables 1 and 2 over seeds; students of its own seed '
                            'that it lacks (a new method) are shipped in it, weights too (scripts/train_seeds.sh calls it)',
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument('runs', nargs='+', help='group run folders of one seed each (one subfolder per method)')
    s.add_argument('--card', default='checkpoints', metavar='BUNDLE', help='the bundle folder')
    s.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto', help='for evaluating the weights of '
                   'students of the bundle\'s own seed (0), which are shipped in it')
    return parser


def train_configs(args: argparse.Namespace) -> tuple[list[TrainConfig], bool]:
    """The runs' configurations from flags: resumed runs' saved configs, or defaults < preset < flags;
    one per method with ``--methods``."""
    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.model_args:
        flags['model_args'] = dict(args.model_args)  # (key, value) pairs of the repeated --model-arg
    if args.resume:
        if flags or args.preset or args.config or args.methods:
            raise TrainingError('--resume continues runs with their saved config.json: give no other flags')
        configs = []
        for run in args.resume:
            saved = RunFolder(Path(run)).config_file
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
    return group_configs(values, args.methods), False


def run_train(args: argparse.Namespace) -> None:
    """``advit train``: train one run or a group of students, or resume them."""
    from .training.train import train_group
    configs, resume = train_configs(args)
    runs = train_group(configs, resume=resume)
    if os.environ.get('RANK', '0') == '0':
        print('\n'.join(f'run folder: {run}' for run in runs))


def run_report(args: argparse.Namespace) -> None:
    """``advit report``: tables 1 and 2 of finished runs."""
    from .results.report import write_report
    try:
        from .app.render import per_class_chart
    except ImportError:  # the app's extra (matplotlib) is not installed: the tables alone
        per_class_chart = None
    out = write_report(args.runs, args.out, tuple(args.compare) if args.compare else None, args.paper,
                       chart=per_class_chart)
    print((out / 'table1.md').read_text(), end='')
    print(f'written to {out}')


def run_bundle(args: argparse.Namespace) -> None:
    """``advit bundle``: export the bundle's finished runs."""
    from .results.bundle import export_bundle
    size = export_bundle(args.runs, args.out, max_mb=args.max_mb, device=args.device, sweep=args.sweep,
                         earlier=args.earlier, recipe=args.recipe)
    print(f'bundle {args.out}: {size / 1e6:.1f} MB, within its {args.max_mb:g} MB limit; '
          f'model card {Path(args.out) / "README.md"}')


def run_seeds(args: argparse.Namespace) -> None:
    """``advit seeds``: add seed runs to the bundle (its own seed's students shipped in it)."""
    from .results.bundle import STUDENTS, refresh_seeds, ship_students
    from .results.seeds import BUNDLE_SEED, add_seeds, run_seed
    runs = [Path(run) for run in args.runs]
    own = [run for run in runs if run_seed(run, list(STUDENTS)) == BUNDLE_SEED]
    shipped = [name for run in own for name in ship_students(run, Path(args.card), device=args.device)]
    written = add_seeds([run for run in runs if run not in own], Path(args.card), list(STUDENTS))
    refresh_seeds(args.card)
    print(f'{len(written)} evaluations added' + (f', {", ".join(shipped)} shipped in the bundle' if shipped
                                                  else '') + f'; model card {Path(args.card) / "README.md"} '
          'brought up to date')


def run_import(args: argparse.Namespace) -> None:
    """``advit import``: a state dict or a transformers checkpoint made an advit checkpoint."""
    from .core.checkpoint import import_state_dict
    from .core.hf_import import is_transformers_source
    classes = [name.strip() for name in args.classes.split(',') if name.strip()] if args.classes else None
    if classes is None and not is_transformers_source(args.weights):
        classes = list(CIFAR10_CLASSES)
    meta = import_state_dict(args.weights, args.model, args.out, classes, image_size=args.image_size,
                             method=args.method, teacher=args.teacher)
    checked = (f'; same logits and [CLS] attention as transformers\' {meta["imported_architecture"]}'
               if 'import_check' in meta else '')
    print(f'{args.out}: {meta["model"]} at {meta["image_size"]}px, {len(meta["classes"])} classes, '
          f'{meta["params"] / 1e6:.1f}M parameters{checked}')


def run_faithfulness(args: argparse.Namespace) -> None:
    """``advit faithfulness``: measure checkpoints' maps under a removal protocol."""
    from .core.data import load_dataset
    from .measure.evaluate import measure_checkpoint_faithfulness
    from .measure.faithfulness import WHOLE_MODEL_MAPS, FaithfulnessCurves
    from .measure.verdicts import HEADLINE_MAPS, last_layer, verdict
    from .results.bundle import refresh_faithfulness
    if args.images <= 0:
        raise ValueError(f'--images must be positive, got {args.images}')
    test = load_dataset(args.data, args.cache_dir)['test']
    for checkpoint in args.checkpoints:
        curves = FaithfulnessCurves.from_dict(measure_checkpoint_faithfulness(
            checkpoint, test, count=args.images, batch_size=args.batch_size, device=args.device, model_name=args.model,
            protocol=args.protocol))
        drops = ', '.join(f'{source} {curves.quarter_drop(source):+.1f} (relevance gain '
                          f'{curves.relevance_gain(source):+.3f})' for source in curves.sources)
        verdicts = ', '.join(f'{name} {verdict(curves.quarter_drop(source), curves.quarter_drop_error(source))}'
                             for name, source in zip(HEADLINE_MAPS, [last_layer(curves.sources),
                                                                     *WHOLE_MODEL_MAPS]))
        print(f'{checkpoint}, {args.protocol} removal: quarter drop (points) {drops}; {verdicts}')
    if args.card:
        refresh_faithfulness(args.card)
        print(f'model card {Path(args.card) / "README.md"} brought up to date')


def run_eval(args: argparse.Namespace) -> None:
    """``advit eval``: evaluate a checkpoint on the test split."""
    from .measure.evaluate import evaluate_checkpoint
    metrics = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                  device=args.device, subset=args.subset, cache_dir=args.cache_dir,
                                  model_name=args.model)
    print(json.dumps({k: metrics[k] for k in ('checkpoint', 'top1', 'count', 'per_class')}, indent=2))


COMMANDS = {'train': run_train, 'eval': run_eval, 'import': run_import, 'faithfulness': run_faithfulness,
            'report': run_report, 'bundle': run_bundle, 'seeds': run_seeds}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (TrainingError, CheckpointError, DatasetError, ReportError, BundleError, SeedError, ValueError, RuntimeError,
            OSError) as err:
        print(f'advit {args.command}: error: {err}', file=sys.stderr)
        return 2
    return 0
