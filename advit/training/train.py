"""Training: configuration as plain data, and one loop that reads top to bottom.

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON line per log step and per
evaluation, written as it goes), ``train.log``, ``last.safetensors`` (weights, optimiser state
and progress: a killed run resumes from it), ``best.safetensors`` and the best checkpoint's
evaluation (``best.eval.json``, ``best.predictions.npz``). Only rank 0 writes.

Model selection never looks at the test set: ``val_size`` training images are held out (the same
ones for every run), each evaluation scores the student on them, and ``best`` is the checkpoint with
the highest validation top-1. The test split is evaluated once, on that checkpoint, when the run ends.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import timm
import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..core import distributed
from ..core.alignment import HEAD_FUSIONS
from ..core.attention_path import (
    ATTENTION_PATHS,
    attention_path_of,
    set_attention_path,
    use_attention_path,
)
from ..core.augment import RECIPES, BatchTransform, Mixup
from ..core.capture import DEFAULT_NORMALIZATION, NORMALIZATIONS, ClsAttentionCapture
from ..core.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from ..core.checks import RequestError, number, shown_value
from ..core.data import (
    OFFICIAL_CIFAR10,
    ImageSet,
    batches,
    default_dataset,
    load_dataset,
    steps_per_epoch,
)
from ..core.losses import (
    METHODS,
    DistillationLoss,
    TeacherForward,
    TeacherOutput,
    parse_method,
)
from ..core.models import (
    check_architecture_args,
    create_model,
    is_distilled,
    is_vit_name,
    model_image_size,
    model_normalization,
    patch_grid,
    pretrained_classes,
)
from ..core.precision import autocast, compute_dtype, native_bf16
from ..core.relevance import RELEVANCE_TARGETS
from ..core.weights import CheckpointError
from ..measure.evaluate import TEST_IMAGES, evaluate_split, predict, summarize
from ..measure.faithfulness import (
    GRADIENT_ROLLOUT,
    ROLLOUT,
    has_cls_attention,
    quarter_drops,
)
from ..measure.probe import PROBE_IMAGES, AttentionProbe
from ..measure.verdicts import HEADLINE_PROTOCOL, last_layer
from .run_folder import (
    RECORD_KEYS,
    RunFolder,
    RunStatus,
    StopSignal,
    append_metrics,
    close_log,
    open_log,
    restore_last,
    restore_rngs,
    save_last,
    truncate_metrics,
    write_config,
)

LR_DECAYS = ('cosine', 'linear')  # how the learning rate falls from its peak to min_lr (lr_at)


class TrainingError(Exception):
    """A run that cannot start or cannot go on (bad configuration, non-finite loss)."""


# What a field is to a run, declared once with the field (``setting(role=...)``): the group check, the report, the
# seeds' recipe and the bundle all ask ``fields_with_role`` instead of keeping lists of their own.
ROLES = (
    'recipe',   # what the run learns and how (the default): equal recipes train alike
    'output',   # where it writes
    'student',  # what each student of a group sets for itself: its loss and its teacher
    'data',     # where its images are read from (the same data may lie elsewhere on another machine)
    'length',   # how long it trains, where a script gives the length apart from the recipe
    'seed',     # the seed: the repeats of one setting differ only there
    'runtime',  # where and how fast it runs, never what it learns
)


def setting(default: Any = None, help: str = '', *, factory: Any = None, role: str = 'recipe',
            bounds: tuple[float, float] | None = None, **cli: Any) -> Any:
    """A ``TrainConfig`` field with its help, its ``role`` (``ROLES``) and, for a number, its ``bounds`` (the
    smallest and largest value taken, both included; ``check_setting`` holds every caller to them): the command
    line builds its flag from these (``cli``: argparse's ``choices``, ``metavar``, or ``flag`` for another flag
    name)."""
    if role not in ROLES:
        raise ValueError(f'unknown role {role!r}: one of {ROLES}')
    metadata = dict(help=help, cli=cli, role=role, bounds=bounds)
    return field(default_factory=factory, metadata=metadata) if factory else field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the run folder. Each field's help is
    its ``advit train`` flag's help (``cli.build_parser``)."""
    out: str = setting('runs/run', 'run folder (the command line\'s default: runs/<method>); with --methods, the '
                       'folder of the students\' folders, each named by its method', role='output')
    data: str = setting(help='CIFAR-10 archive or folder, an ImageFolder root, or "cifar10" to download the official '
                        'release (default: ADVIT_DATA, else the shared CIFAR-10 archive)', factory=default_dataset,
                        role='data')
    method: str = setting('vit', 'loss: vit, DeiT, ADViT, or DeiT+ADViT', choices=METHODS, role='student')
    model: str = setting('vit_tiny_patch4_32', 'student architecture, a timm name')
    model_args: dict[str, Any] = setting(help='architecture argument for the student, e.g. depth=6 (repeatable)',
                                         factory=dict, flag='--model-arg', metavar='KEY=VALUE')
    pretrained: bool = setting(False, 'student weights from the hub (needs a network)')
    pretrained_file: str | None = setting(None, 'student pretrained weights from a local file')
    teacher: str | None = setting(None, 'teacher: an advit checkpoint, a state-dict file, or a timm name whose '
                                  'weights\' head was trained on the run\'s classes', role='student')
    teacher_model: str | None = setting(None, 'architecture of a teacher state dict that lacks advit metadata')
    teacher_pretrained_file: str | None = setting(None, 'local weights for a teacher given by timm name')
    image_size: int = setting(32, 'input size', bounds=(8, 1024))
    recipe: str = setting('cifar32', 'augmentation', choices=RECIPES)
    subset: int | None = setting(None, 'train on a fixed subset of N images (after the validation holdout)',
                                 bounds=(1, 10**7))
    val_size: int = setting(5000, 'training images held out to select the best checkpoint on; 0: none, the last '
                            'evaluation is kept', bounds=(0, 10**7))
    test_subset: int | None = setting(None, 'evaluate on a fixed subset of N test images', bounds=(1, 10**7))
    epochs: float | None = setting(None, 'run length in epochs (with steps and a time budget: the first reached '
                                   'ends the run)', bounds=(1e-6, 1e6))
    steps: int | None = setting(None, 'run length in optimiser steps', role='length', bounds=(1, 10**12))
    time_budget: float | None = setting(None, 'run length in seconds of training', metavar='SECONDS',
                                        role='length', bounds=(1e-3, 1e9))
    batch_size: int = setting(128, 'global batch size, split over processes', bounds=(1, 10**6))
    lr: float = setting(1e-3, 'peak learning rate', bounds=(1e-8, 1.0))
    min_lr: float = setting(1e-5, 'final learning rate of the decay', bounds=(0, 1.0))
    lr_decay: str = setting('cosine', 'shape of the decay from lr to min_lr after the warmup: cosine, or linear '
                            '(straight down, as linear-to-zero schedules with min_lr 0)', choices=LR_DECAYS)
    weight_decay: float = setting(0.05, 'AdamW weight decay', bounds=(0, 10))
    warmup_fraction: float = setting(0.05, 'share of the run spent warming up', bounds=(0, 0.99))
    grad_clip: float = setting(1.0, 'gradient norm clip, 0 for none', bounds=(0, 1e6))
    ema_decay: float = setting(0.0, 'weight EMA: evaluate, select and save an exponential moving average of the '
                               'weights, whose decay grows with the step (timm ModelEmaV3 warmup) up to this; 0: off',
                               bounds=(0, 0.99999))
    drop_path: float = setting(0.1, 'stochastic depth rate', bounds=(0, 0.99))
    label_smoothing: float = setting(0.0, 'label smoothing (with mixup / CutMix, folded into their soft targets)',
                                     bounds=(0, 0.99))
    mixup: float = setting(0.0, 'Beta alpha of mixup, e.g. 0.8; 0: off', bounds=(0, 100))
    cutmix: float = setting(0.0, 'Beta alpha of CutMix, e.g. 1.0; 0: off; with mixup on too, each mixes half',
                            bounds=(0, 100))
    mix_prob: float = setting(1.0, 'share of batches mixed by mixup or CutMix', bounds=(0, 1))
    hide_patches: float = setting(0.0, 'Hide-and-Seek: each training image hides up to this share of its '
                                  'patches (set to the mean, as the faithfulness measure masks them); 0: off',
                                  bounds=(0, 1))
    attn_weight: float = setting(1.0, 'weight of the attention loss', bounds=(0, 1e4))
    alpha: float = setting(0.5, 'weight of the DeiT term; lambda for deit_soft', bounds=(0, 1))
    tau: float = setting(1.0, 'temperature of deit_soft and advit_kl_paper', bounds=(1e-3, 100))
    head_fusion: str = setting('mean', 'fusion of attention heads before they are compared', choices=HEAD_FUSIONS)
    layer_map: list[int] | None = setting(None, 'teacher layer per student layer, counted from 0, e.g. '
                                          '1,3,5,7,9,11 (default uniform)', metavar='L1,L2,...')
    attn_norm: str = setting(DEFAULT_NORMALIZATION, 'how each head\'s [CLS] row becomes a map: renormalized (its patch '
                             'part sums to one) or raw (the softmax row\'s patch entries, heads fused, then '
                             'normalised once)', choices=NORMALIZATIONS)
    # rollout_last was chosen on validation (benchmarks/results/relevance-target-cpu.json, README).
    relevance_target: str = setting('rollout_last', 'advit_relevance\'s target: each mapped teacher layer\'s '
                                    'gradient-weighted [CLS] attention (layers), or the same with the gradient '
                                    'rollout through every layer as the last layer\'s (rollout_last)',
                                    choices=RELEVANCE_TARGETS)
    seed: int = setting(0, 'random seed', role='seed', bounds=(0, 2**31 - 1))
    device: str = setting('auto', 'where to train', choices=('auto', 'cpu', 'cuda'), role='runtime')
    amp: bool = setting(True, 'bf16 autocast where the device runs it natively (CUDA, CPUs with AVX512-BF16 / '
                        'AMX); --no-amp turns it off', flag='--no-amp')
    attn_path: str = setting('auto', 'attention of the blocks: fused (scaled_dot_product_attention), explicit '
                             '(softmax(q k^T) v as matmuls), or auto: the faster of the two, timed at the start on the '
                             'run\'s own shapes and device (kept on resume); maps and losses are the same on both',
                             choices=ATTENTION_PATHS, role='runtime')
    compile: bool = setting(False, 'torch.compile the forwards (minutes of compiling first; pays on long GPU runs)',
                            role='runtime')
    log_every: int = setting(50, 'steps between metrics lines', role='runtime', bounds=(1, 10**9))
    eval_every: int = setting(0, 'steps between evaluations; 0: at each epoch\'s end', bounds=(0, 10**9))
    save_every: int = setting(0, 'steps between last checkpoints; 0: at each evaluation', role='runtime',
                              bounds=(0, 10**9))
    eval_batch_size: int = setting(512, 'images per evaluation forward', role='runtime', bounds=(1, 10**6))
    faithfulness_images: int = setting(TEST_IMAGES, 'test images the selected checkpoint\'s maps are measured on at '
                                       'the end (deletion and insertion curves of every layer and rollout); 0: none',
                                       bounds=(0, 10**7))
    cache_dir: str | None = setting(None, 'decoded-dataset cache (default $ADVIT_CACHE or ~/.cache/advit)',
                                    role='runtime')

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> 'TrainConfig':
        """From a dict of fields, such as a saved ``config.json`` (its bookkeeping keys ignored)."""
        values = {k: v for k, v in values.items() if k not in RECORD_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f'unknown config fields: {", ".join(unknown)}')
        return cls(**values)


def fields_with_role(*roles: str) -> frozenset[str]:
    """The names of the ``TrainConfig`` fields whose declared role is one of ``roles`` (``ROLES``)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f'unknown roles {sorted(unknown)}: choose from {ROLES}')
    return frozenset(f.name for f in fields(TrainConfig) if f.metadata['role'] in roles)


CHOICES = {f.name: f.metadata['cli']['choices'] for f in fields(TrainConfig) if 'choices' in f.metadata['cli']}
BOUNDS = {f.name: f.metadata['bounds'] for f in fields(TrainConfig) if f.metadata['bounds'] is not None}
_WHOLE = frozenset(f.name for f in fields(TrainConfig) if str(f.type).startswith('int'))  # int and int | None
_OPTIONAL = frozenset(f.name for f in fields(TrainConfig) if f.default is None)  # None: left out


def check_setting(name: str, value: Any, label: str | None = None, typed: bool = False) -> int | float:
    """A number for the setting ``name`` checked against its declaration (``BOUNDS``; whole for an int field);
    the number, or ``TrainingError`` in words.

    Args:
        name: A ``TrainConfig`` field with bounds.
        value: The value sent.
        label: How the asker names the setting in the message (default: the field's name).
        typed: As ``checks.number``: the value comes from a file (a config), not a client's form.
    """
    try:
        return number(value, label or name, *BOUNDS[name], whole=name in _WHOLE, typed=typed)
    except RequestError as err:
        raise TrainingError(str(err)) from None

# Model arguments the run passes itself, and the setting that gives each.
SET_BY_TRAINING = {'img_size': '--image-size (image_size)', 'drop_path_rate': '--drop-path (drop_path)',
                    'num_classes': 'nothing: the dataset\'s classes give it'}


def validate(cfg: TrainConfig) -> None:
    """Refuse a configuration that cannot run, before anything is loaded or written."""
    try:
        method = parse_method(cfg.method)
    except ValueError as err:
        raise TrainingError(str(err)) from err
    if method.needs_teacher and not cfg.teacher:
        raise TrainingError(f'method {cfg.method} needs a teacher (--teacher)')
    for name, choices in CHOICES.items():  # each choice field checked by its declaration, here only
        if getattr(cfg, name) not in choices:
            raise TrainingError(f'unknown {name} {shown_value(getattr(cfg, name))}: choose one of '
                                f'{", ".join(map(str, choices))}')
    if method.target == 'relevance' and cfg.head_fusion == 'none':
        raise TrainingError(f'{cfg.method} compares fused maps (the teacher\'s relevance fuses its heads): '
                            'choose head fusion mean or max')
    if not timm.is_model(cfg.model.split('.', 1)[0]):
        raise TrainingError(f'unknown model {shown_value(cfg.model)}: not a timm model name')
    for key, instead in SET_BY_TRAINING.items():
        if key in cfg.model_args:
            raise TrainingError(f'model argument {key} is set by the run itself: use {instead}')
    try:
        check_architecture_args(cfg.model_args)
    except ValueError as err:
        raise TrainingError(f'model arguments: {err}') from err
    if cfg.epochs is None and cfg.steps is None and cfg.time_budget is None:
        raise TrainingError('give a run length: epochs, steps or a time budget')
    for name in BOUNDS:  # each number held to its declaration, here only (the Train tab's form asks check_setting)
        value = getattr(cfg, name)
        if value is None and name in _OPTIONAL:
            continue
        check_setting(name, value, typed=True)
    if cfg.hide_patches and not is_vit_name(cfg.model):
        raise TrainingError(f'hide_patches hides patches of a ViT\'s grid; {cfg.model} has none')
    if not Path(cfg.data).exists() and cfg.data != OFFICIAL_CIFAR10:
        given = '' if cfg.data != default_dataset() else ' (the default: ADVIT_DATA, else the shared CIFAR-10 archive)'
        raise TrainingError(f'dataset not found: {cfg.data}{given}; give --data: a CIFAR-10 archive, an ImageFolder '
                            'or CIFAR-10 python batches, or cifar10 to download the official release')


def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then decay to ``min_lr`` (``cfg.lr_decay``: cosine or linear), over run
    progress in [0, 1]."""
    if progress < cfg.warmup_fraction:
        return cfg.lr * progress / cfg.warmup_fraction
    span = max(1e-8, 1 - cfg.warmup_fraction)
    done = min(1.0, (progress - cfg.warmup_fraction) / span)
    left = 0.5 * (1 + math.cos(math.pi * done)) if cfg.lr_decay == 'cosine' else 1 - done
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * left


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train a student as ``cfg`` says; return the run folder.

    Args:
        cfg: The run's configuration.
        resume: Continue from ``last.safetensors`` in ``cfg.out`` if it exists.
    """
    return train_group([cfg], resume)[0]


def train_group(cfgs: list[TrainConfig], resume: bool = False) -> list[Path]:
    """Train several students on the same batches, with one teacher forward per batch; return their folders.

    The students see identical data (order, augmentation, mixing) and differ only in their method:
    the fairest comparison of methods, and the teacher's forward is paid once for all of them. Each
    keeps its own run folder, exactly as a single run writes it.

    Args:
        cfgs: One configuration per student, equal but for ``method``, ``out`` and ``teacher`` (which
            the methods that need one share).
        resume: Continue each from ``last.safetensors`` in its folder (all at the same step).
    """
    for cfg in cfgs:
        validate(cfg)
    validate_group(cfgs)
    ctx = distributed.setup(cfgs[0].device)
    statuses = [RunStatus(Path(cfg.out), ctx.is_main) for cfg in cfgs]
    try:
        with StopSignal() as stop:
            return _train(cfgs, ctx, resume, statuses, stop)
    except BaseException as err:
        for status in statuses:
            status.write('failed', error=str(err) or type(err).__name__)
        raise
    finally:
        for cfg in cfgs:  # release each run's train.log
            close_log(Path(cfg.out))
        distributed.cleanup()




def group_configs(values: dict[str, Any], methods: Sequence[str]) -> list[TrainConfig]:
    """The students of one several-method run (``advit train --methods``, the app's group jobs): the shared
    settings ``values``, and for each method its own folder (``out``/method) and the teacher only where the
    method needs one.

    Args:
        values: ``TrainConfig`` fields the students share (``out``: the folder of their folders, default runs).
        methods: One method name per student.
    """
    parent = Path(values.get('out', 'runs'))
    cfgs = []
    for method in methods:
        try:
            needs_teacher = parse_method(method).needs_teacher
        except ValueError as err:
            raise TrainingError(str(err)) from err
        cfgs.append(TrainConfig.from_dict(dict(values, method=method, out=str(parent / method),
                                               teacher=values.get('teacher') if needs_teacher else None)))
    return cfgs


def validate_group(cfgs: list[TrainConfig]) -> None:
    """Refuse students that cannot share batches: settings other than method, folder and teacher differ."""
    if not cfgs:
        raise TrainingError('no student to train')
    first, free = asdict(cfgs[0]), fields_with_role('output', 'student')  # what may differ between students
    for cfg in cfgs[1:]:
        differing = sorted(k for k, v in asdict(cfg).items() if k not in free and first[k] != v)
        if differing:
            raise TrainingError(f'students trained together differ only in method: {cfg.out} and {cfgs[0].out} '
                                f'differ in {", ".join(differing)}')
    outs = [str(Path(cfg.out).resolve()) for cfg in cfgs]
    if len(set(outs)) != len(outs):
        raise TrainingError('each student of a group needs its own run folder')
    teachers = {cfg.teacher for cfg in cfgs if parse_method(cfg.method).needs_teacher}
    if len(teachers) > 1:
        raise TrainingError(f'students trained together share one teacher, got {sorted(teachers)}')


@dataclass
class Splits:
    """The run's images on its device: training, held-out validation (or None) and test."""
    train: ImageSet
    val: ImageSet | None
    test: ImageSet

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def probe(self) -> ImageSet | None:
        """The held-out images each evaluation measures attention on (the gap to the teacher, the maps'
        faithfulness): a fixed random ``PROBE_IMAGES`` of the validation split, every class in it."""
        return self.val.subset(PROBE_IMAGES) if self.val is not None else None


def load_splits(cfg: TrainConfig, ctx: distributed.Context) -> Splits:
    """The dataset's splits, the validation images held out of training, subsets taken, on the device.
    Rank 0 decodes and caches first, so the other ranks read the cache instead of racing it."""
    if not ctx.is_main:
        distributed.barrier(ctx)
    data = load_dataset(cfg.data, cfg.cache_dir)
    if ctx.is_main:
        distributed.barrier(ctx)
    try:
        train_set, val_set = data['train'].holdout(cfg.val_size) if cfg.val_size else (data['train'], None)
    except ValueError as err:
        raise TrainingError(f'{err}: lower --val-size') from err
    return Splits(train=train_set.subset(cfg.subset).to(ctx.device),
                  val=val_set.to(ctx.device) if val_set is not None else None,
                  test=data['test'].subset(cfg.test_subset).to(ctx.device))


@dataclass
class Student:
    """One student of a run: its configuration, model, capture, loss, optimiser, files and running record."""
    cfg: TrainConfig
    model: nn.Module  # unwrapped: checkpoints and evaluation use it
    wrapped: nn.Module  # what the step calls: `model`, DDP- and/or compile-wrapped
    # The student's [CLS] maps, for an attention method. Attached once for the run, not per step: a
    # compiled forward keeps the hooks it was traced with. The step takes each forward's maps at once.
    capture: ClsAttentionCapture | None
    criterion: DistillationLoss
    optimizer: torch.optim.Optimizer
    status: RunStatus
    log: logging.Logger
    attention_path: str = 'none'  # 'fused' or 'explicit' ('none': not a ViT), as use_attention_path chose
    start: str | None = None  # where its weights start, in words, when not from random ones (start_from_file)
    ema: ModelEmaV3 | None = None  # the weights' moving average (--ema-decay), which is evaluated in their stead
    best_val_top1: float = -1.0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # loss terms since the last log line

    @property
    def run(self) -> Path:
        return Path(self.cfg.out)

    @property
    def average(self) -> nn.Module | None:
        """The weights' moving average (``--ema-decay``), if the run keeps one."""
        return self.ema.module if self.ema is not None else None

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are evaluated, selected and saved as ``best``: the moving average, if kept."""
        return self.average if self.average is not None else self.model

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, lr: float, teacher: TeacherOutput | None,
             step: int) -> None:
        """Optimiser step ``step`` (counted from 1) on a batch, given the teacher's output on it (computed once
        for every student)."""
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        with autocast(inputs.device, self.cfg.amp):
            outputs = self.wrapped(inputs)
            maps = self.capture.pop() if self.capture is not None else None  # this forward's maps
            loss, terms = self.criterion(outputs, labels, teacher, maps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, step=step)
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()

    def mean_terms(self, steps: int, step: int, ctx: distributed.Context) -> dict[str, float]:
        """The loss terms averaged over the last ``steps`` steps (up to ``step``) and the ranks; cleared. A loss that is not
        finite stops the run before anything is written, so a diverged run never overwrites a good checkpoint."""
        values = distributed.mean_over_ranks({name: (total / steps).item() for name, total in self.sums.items()}, ctx)
        self.sums = {}
        if distributed.any_rank(not all(math.isfinite(v) for v in values.values()), ctx):
            last = RunFolder(self.run).last
            kept = f'{last} holds the last good state' if last.is_file() else 'no checkpoint was saved'
            raise TrainingError(f'{self.cfg.method}: loss is not finite at step {step} ({values}): the run stopped; '
                                f'lower --lr or check the data; {kept}')
        return values


def build_student(member: TrainConfig, cfg: TrainConfig, classes: list[str], teacher: nn.Module | None,
                  status: RunStatus, ctx: distributed.Context, tag: str | None) -> Student:
    """A student, its capture and loss (with the group's teacher when its method needs one) and its optimiser.
    Seeded: students of one seed start from the same weights, so students that differ in their method start alike."""
    method = parse_method(member.method)
    torch.manual_seed(cfg.seed)
    student = create_model(
        cfg.model, num_classes=len(classes), pretrained=cfg.pretrained and cfg.pretrained_file is None,
        pretrained_file=cfg.pretrained_file, img_size=cfg.image_size, drop_path_rate=cfg.drop_path,
        **cfg.model_args).to(ctx.device)
    start = start_from_file(student, cfg, classes) if cfg.pretrained_file else None
    if method.logit is not None and is_distilled(student):
        student.set_distilled_training(True)
    path = use_attention_path(student, cfg.attn_path, ctx.device, max(1, cfg.batch_size // ctx.world_size),
                              training=True, dtype=compute_dtype(ctx.device, cfg.amp))
    # The average copies the model with its attention path, before the capture hooks it (the copy only infers).
    ema = ModelEmaV3(student, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay else None
    criterion = DistillationLoss(
        member.method, student, teacher if method.needs_teacher else None,
        attn_weight=cfg.attn_weight, alpha=cfg.alpha, tau=cfg.tau, label_smoothing=cfg.label_smoothing,
        head_fusion=cfg.head_fusion, layer_map=cfg.layer_map)
    capture = ClsAttentionCapture(student, cfg.attn_norm) if method.attention else None
    no_decay = student.no_weight_decay() if hasattr(student, 'no_weight_decay') else ()  # ViTs: pos/cls tokens
    groups = param_groups_weight_decay(student, cfg.weight_decay, no_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=ctx.device.type == 'cuda')
    wrapped = DistributedDataParallel(student, device_ids=[ctx.device] if ctx.device.type == 'cuda' else None) \
        if ctx.distributed else student
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return Student(cfg=member, model=student, wrapped=wrapped, capture=capture, criterion=criterion,
                   optimizer=optimizer, status=status, log=open_log(Path(member.out), ctx.is_main, tag),
                   attention_path=path, ema=ema, start=start)


def start_from_file(student: nn.Module, cfg: TrainConfig, classes: list[str]) -> str:
    """The student's start from ``cfg.pretrained_file``, in words for the run's first line. Its head is kept only
    when it was trained on the run's classes: timm keeps a head of the right size, so one of as many other classes
    (another dataset's ten) is re-initialised here, from the run's seed.

    Args:
        student: The student, its weights loaded from the file.
        cfg: The run's settings.
        classes: The run's classes, in the head's order.
    """
    path = Path(cfg.pretrained_file)
    trained_on = None
    if path.suffix == '.safetensors':
        try:
            trained_on = read_metadata(path).get('classes')
        except CheckpointError:
            trained_on = None
    head_size = pretrained_classes(cfg.model, path)
    same = head_size == len(classes) and (trained_on is None or list(trained_on) == list(classes))
    if same:
        return f'starts from {path.name}, its head kept (trained on the run\'s {len(classes)} classes)'
    if head_size == len(classes):  # as many outputs, other classes: timm kept it
        student.reset_classifier(len(classes))
    other = f'{len(trained_on)} other classes' if trained_on is not None else f'{head_size or "no"} outputs'
    return f'starts from {path.name}, its head re-initialised (the file\'s was trained on {other})'


def group_teacher(cfgs: list[TrainConfig], classes: list[str],
                  ctx: distributed.Context) -> tuple[nn.Module | None, TeacherForward | None]:
    """The group's teacher (None if no method needs one) and its forward, which the loop calls once per batch
    for every student; its attention path set (it only infers, on the students' batches)."""
    cfg, methods = cfgs[0], [parse_method(c.method) for c in cfgs]
    teacher_cfg = next((c for c, m in zip(cfgs, methods) if m.needs_teacher), None)
    if teacher_cfg is None:
        return None, None
    teacher = load_teacher(teacher_cfg, classes, ctx.device)
    use_attention_path(teacher, cfg.attn_path, ctx.device, max(1, cfg.batch_size // ctx.world_size), training=False,
                       dtype=compute_dtype(ctx.device, cfg.amp))
    with torch.device('meta'):  # the students' input normalisation (one architecture for all), no weights
        student_norm = model_normalization(create_model(cfg.model, img_size=cfg.image_size, **cfg.model_args))
    # One teacher backward per batch when a student learns its relevance; the others read the same forward.
    relevance = cfg.relevance_target if any(m.target == 'relevance' for m in methods) else None
    forward = TeacherForward(teacher, student_norm, capture=any(m.attention for m in methods), attn_norm=cfg.attn_norm,
                             relevance=relevance)
    if cfg.compile and relevance is None:  # the capture hooks compile with the forward; the relevance's
        # backward switches attention paths and hooks the attention for one call, which a compiled graph would not see
        forward.model = torch.compile(teacher)
    return teacher, forward


def restore_students(students: list[Student], teacher: nn.Module | None) -> tuple[int, float, dict[str, torch.Tensor]]:
    """Each student from its ``last`` checkpoint, all at one step; (step, seconds trained, the first
    student's saved random streams, which the run takes up). None saved yet: (0, 0, {}). An ``auto``
    attention path takes up the paths the run measured when it started, so it ends bitwise as the
    uninterrupted run would."""
    saved = [RunFolder(s.run).last.is_file() for s in students]
    if not any(saved):
        return 0, 0.0, {}
    if not all(saved):
        raise TrainingError('some students of the group have a last checkpoint and some not: cannot resume together')
    steps, elapsed, first = [], 0.0, None
    for s in students:
        progress, rngs = restore_last(s.run, s.model, s.optimizer, s.average)
        at, elapsed, s.best_val_top1 = int(progress['step']), float(progress['elapsed']), progress['best_val_top1']
        chosen = progress.get('attention_paths', {}) if s.cfg.attn_path == 'auto' else {}
        if chosen.get('student', 'none') != 'none':
            for model in (s.model, s.evaluated):
                set_attention_path(model, chosen['student'])
            s.attention_path = chosen['student']
        if teacher is not None and chosen.get('teacher', 'none') != 'none':
            set_attention_path(teacher, chosen['teacher'])
        first = rngs if first is None else first
        steps.append(at)
        s.log.info('resumed from %s at step %d', RunFolder(s.run).last, at)
    if len(set(steps)) > 1:
        raise TrainingError(f'the students stopped at different steps {steps}: resume them one by one')
    return steps[0], elapsed, first


def checkpoint_meta(cfg: TrainConfig, s: Student, classes: list[str], step: int, epoch_steps: int,
                    val_top1: float | None) -> dict[str, Any]:
    """What a checkpoint says of itself: how to rebuild the model, how it was trained and how well it does."""
    mean, std = model_normalization(s.model)
    return dict(
        model=cfg.model, model_args=dict(cfg.model_args, num_classes=len(classes), img_size=cfg.image_size),
        classes=classes, image_size=cfg.image_size, mean=list(mean), std=list(std), method=s.cfg.method,
        teacher=s.cfg.teacher, recipe=cfg.recipe, data=cfg.data, step=step, epoch=step / epoch_steps,
        val_size=cfg.val_size, val_top1=val_top1, params=sum(p.numel() for p in s.model.parameters()),
        # How the attention was compared: the app shows the maps and gaps the same way.
        head_fusion=cfg.head_fusion, layer_map=cfg.layer_map, attn_norm=cfg.attn_norm, tau=cfg.tau,
        attn_weight=cfg.attn_weight, alpha=cfg.alpha,
        **({'relevance_target': cfg.relevance_target} if parse_method(s.cfg.method).target == 'relevance' else {}))


@dataclass
class RunSetup:
    """What the loop reads, all built before it starts: nothing is written before data and models have loaded."""
    cfg: TrainConfig  # the settings the students share (validate_group)
    splits: Splits
    batch_size: int  # per process
    epoch_steps: int
    total_steps: int | None  # None: the time budget alone ends the run
    teacher: TeacherForward | None  # called once per batch, for every student that needs it
    students: list[Student]
    transform: BatchTransform
    mixer: Mixup | None
    probe: AttentionProbe | None  # each evaluation's attention gaps to a ViT teacher on held-out images
    step: int  # where the loop starts: 0, or where a resumed run stopped
    elapsed: float  # seconds trained before (resumed)
    teacher_path: str  # the teacher's attention path, saved with the students' progress


def set_up(cfgs: list[TrainConfig], ctx: distributed.Context, resume: bool, statuses: list[RunStatus]) -> RunSetup:
    """Data, schedule, teacher, students, augmentation and probe of a run; resumed from ``last`` when asked; the
    run folders' configs written and the random streams seeded."""
    cfg, device = cfgs[0], ctx.device
    splits = load_splits(cfg, ctx)
    classes = splits.classes
    batch_size = cfg.batch_size // ctx.world_size
    epoch_steps = steps_per_epoch(len(splits.train), batch_size, ctx.world_size)
    if batch_size == 0 or epoch_steps == 0:
        raise TrainingError(f'{len(splits.train)} training images on {ctx.world_size} process(es) do not fill '
                            f'one batch of {cfg.batch_size}: lower --batch-size or raise --subset')
    step_limits = [cfg.steps] if cfg.steps else []
    if cfg.epochs:
        step_limits.append(math.ceil(cfg.epochs * epoch_steps))

    teacher, teacher_forward = group_teacher(cfgs, classes, ctx)
    grouped = len(cfgs) > 1  # then each student's console lines are tagged with its method
    students = [build_student(member, cfg, classes=classes, teacher=teacher, status=status, ctx=ctx,
                              tag=member.method if grouped else None)
                for member, status in zip(cfgs, statuses)]
    first = students[0].model
    mean, std = model_normalization(first)
    transform = BatchTransform(cfg.recipe, cfg.image_size, mean, std, seed=cfg.seed, device=device,
                               hide=cfg.hide_patches, grid=patch_grid(first) if cfg.hide_patches else None)
    teacher_attends = hasattr(teacher, 'blocks')  # a ViT teacher; a CNN teaches by its logits only
    probe = None
    if teacher_attends and splits.val is not None and hasattr(first, 'blocks'):
        same_heads = teacher.blocks[0].attn.num_heads == first.blocks[0].attn.num_heads
        fusion = cfg.head_fusion if cfg.head_fusion != 'none' or same_heads else 'mean'
        probe = AttentionProbe(teacher, splits.probe.images, transform, head_fusion=fusion, layer_map=cfg.layer_map,
                               amp=cfg.amp, attn_norm=cfg.attn_norm, labels=splits.probe.labels,
                               relevance_target=cfg.relevance_target)

    step, elapsed, saved = restore_students(students, teacher) if resume else (0, 0.0, {})
    if ctx.is_main:
        for s in students:
            write_config(s.run, asdict(s.cfg), ctx.world_size, [c.method for c in cfgs])
            truncate_metrics(s.run, step)
    # Each rank gets its own augmentation and dropout stream; the students of the group share it (the
    # same crops, flips and mixing). A resumed run takes up the streams where its `last` left them, so
    # it ends as the uninterrupted run would (rank 0's: other ranks, whose states are not saved, reseed).
    stream_seed = cfg.seed * 1_000_003 + ctx.rank * 10_007 + step
    torch.manual_seed(stream_seed)
    transform.generator.manual_seed(stream_seed)
    mixer = Mixup(cfg.mixup, cfg.cutmix, len(classes), cfg.label_smoothing, cfg.mix_prob, seed=stream_seed) \
        if cfg.mixup or cfg.cutmix else None
    if step and ctx.rank == 0:
        restore_rngs(saved, transform, mixer)
    run = RunSetup(cfg=cfg, splits=splits, batch_size=batch_size, epoch_steps=epoch_steps,
                   total_steps=min(step_limits, default=None), teacher=teacher_forward, students=students,
                   transform=transform, mixer=mixer, probe=probe, step=step, elapsed=elapsed,
                   teacher_path=attention_path_of(teacher) if teacher_attends else 'none')
    if teacher is None:
        teacher_text = 'no teacher'
    elif teacher_attends:
        teacher_text = f'teacher {run.teacher_path}'
    else:
        teacher_text = f'teacher {type(teacher).__name__}, no attention'
    for s in students:
        s.log.info(first_line(s, run, ctx, teacher_text))
        s.model.train()
    return run


def first_line(s: Student, run: RunSetup, ctx: distributed.Context, teacher_text: str) -> str:
    """A student's first log line: what trains, on which images, for how long, with which attention and teacher.

    Args:
        s: The student.
        run: Its run, set up.
        ctx: The processes.
        teacher_text: The teacher in words (its attention path, or that it has none).
    """
    cfg, splits, grouped = run.cfg, run.splits, len(run.students) > 1
    lead = '' if grouped else f'{s.cfg.method}: '  # the method leads the line where no console tag shows it
    params = sum(p.numel() for p in s.model.parameters()) / 1e6
    images = (f'{len(splits.train)} train / {len(splits.val) if splits.val is not None else 0} validation / '
              f'{len(splits.test)} test images')
    steps = run.total_steps or f'{cfg.time_budget:.0f}s of'
    bf16 = ', bf16' if cfg.amp and native_bf16(ctx.device) else ''
    others = f', with {len(run.students) - 1} other students on the same batches' if grouped else ''
    start = f'; it {s.start}' if s.start else ''
    return (f'{lead}{cfg.model} ({params:.1f}M params) on {ctx.device} x{ctx.world_size}, {images}, {steps} steps '
            f'of {cfg.batch_size}{bf16}, attention {s.attention_path} ({teacher_text}){others}{start}')


def run_progress(run: RunSetup, step: int, elapsed: float, ctx: distributed.Context) -> float:
    """How far the run is after ``step`` steps and ``elapsed`` seconds, in [0, 1]: by steps or by time,
    whichever is further (rank 0's clock, so that every rank stops at the same step)."""
    by_steps = step / run.total_steps if run.total_steps else 0.0
    if not run.cfg.time_budget:
        return by_steps
    return max(by_steps, distributed.broadcast_float(elapsed / run.cfg.time_budget, ctx))


def write_status(run: RunSetup, state: str, step: int, progress: float, elapsed: float) -> None:
    """Each student's ``status.json``: state, step, progress and the time left at this pace."""
    eta = elapsed / progress * (1 - progress) if 0 < progress < 1 else None
    for s in run.students:
        s.status.write(state, step=step, total_steps=run.total_steps, progress=min(progress, 1.0), elapsed=elapsed,
                       eta_s=eta, best_val_top1=s.best_val_top1 if s.best_val_top1 >= 0 else None,
                       started=s.status.fields.get('started', time.time()))


def _train(cfgs: list[TrainConfig], ctx: distributed.Context, resume: bool, statuses: list[RunStatus],
           stop: StopSignal) -> list[Path]:
    run = set_up(cfgs, ctx, resume, statuses)
    cfg, step = run.cfg, run.step
    start = time.time() - run.elapsed
    progress = run_progress(run, step, time.time() - start, ctx)
    write_status(run, 'running', step, progress, time.time() - start)
    bar = tqdm(total=run.total_steps, initial=step, disable=not (ctx.is_main and sys.stderr.isatty()),
               dynamic_ncols=True, leave=False)
    window_start, window_steps, cancelled = time.time(), 0, False
    # The loop: batch, teacher, steps, log, evaluate, save.
    for images, labels in _batch_stream(run.splits.train, run.batch_size, seed=cfg.seed, step=step,
                                        epoch_steps=run.epoch_steps, ctx=ctx):
        if progress >= 1.0:
            break
        lr = lr_at(progress, cfg)
        inputs = run.transform.train(images)
        if run.mixer is not None:
            inputs, labels = run.mixer(inputs, labels)  # (batch, classes) soft targets from here
        with autocast(ctx.device, cfg.amp):
            teacher = run.teacher(inputs, labels) if run.teacher is not None else None  # once, for every student
        for s in run.students:
            s.step(inputs, labels, lr, teacher, step + 1)
        step += 1
        window_steps += 1
        bar.update(1)

        progress = run_progress(run, step, time.time() - start, ctx)
        # Ranks agree on a cancel at log steps only, to spare a collective on every step.
        if not ctx.distributed or step % cfg.log_every == 0:
            cancelled = distributed.any_rank(stop.requested, ctx)
        evaluate_now = not cancelled and (progress >= 1.0 or (
            step % cfg.eval_every == 0 if cfg.eval_every else step % run.epoch_steps == 0))
        save_now = evaluate_now or cancelled or (cfg.save_every and step % cfg.save_every == 0)
        if step % cfg.log_every == 0 or save_now:
            images_per_s = window_steps * cfg.batch_size / max(time.time() - window_start, 1e-9)
            log_terms(run, step, steps=window_steps, lr=lr, images_per_s=images_per_s, elapsed=time.time() - start,
                      ctx=ctx, bar=bar)
            window_start, window_steps = time.time(), 0
            write_status(run, 'running', step, progress, time.time() - start)
        if evaluate_now or save_now:
            checkpoint_students(run, step, evaluate_now=evaluate_now, save_now=save_now,
                                elapsed=time.time() - start, ctx=ctx)
            window_start = time.time()  # images/s counts training, not evaluation and saving
        if cancelled:
            break
    bar.close()
    finish(run, step, cancelled, time.time() - start, ctx)
    write_status(run, 'cancelled' if cancelled else 'finished', step, progress, time.time() - start)
    return [s.run for s in run.students]


def log_terms(run: RunSetup, step: int, steps: int, lr: float, images_per_s: float, elapsed: float,
              ctx: distributed.Context, bar: tqdm) -> None:
    """Each student's loss terms over the last ``steps`` steps: a metrics line, a log line, the bar's postfix."""
    for s in run.students:
        values = s.mean_terms(steps, step, ctx)
        if ctx.is_main:
            append_metrics(s.run, dict(event='train', step=step, epoch=round(step / run.epoch_steps, 4), lr=lr,
                                       **values, images_per_s=images_per_s, elapsed=elapsed))
        s.log.info('step %d: %s, %.0f images/s', step, ', '.join(f'{name} {value:.4f}' for name, value in values.items()),
                   images_per_s)
    bar.set_postfix(loss=f'{values["loss"]:.3f}', lr=f'{lr:.2e}')


def checkpoint_students(run: RunSetup, step: int, evaluate_now: bool, save_now: bool, elapsed: float,
                        ctx: distributed.Context) -> None:
    """Rank 0 evaluates each student (keeping its best) and/or saves its ``last``; the other ranks wait."""
    if ctx.is_main:
        classes = run.splits.classes
        for s in run.students:
            if evaluate_now:
                meta = checkpoint_meta(run.cfg, s, classes, step=step, epoch_steps=run.epoch_steps, val_top1=None)
                evaluate_student(s, run.splits, transform=run.transform, probe=run.probe, meta=meta, step=step,
                                 epoch_steps=run.epoch_steps)
            if save_now:
                meta = checkpoint_meta(run.cfg, s, classes, step=step, epoch_steps=run.epoch_steps,
                                       val_top1=s.best_val_top1)
                save_last(s.run, s.model, meta=meta,
                          progress=dict(step=step, elapsed=elapsed, best_val_top1=s.best_val_top1,
                                        attention_paths=dict(student=s.attention_path, teacher=run.teacher_path)),
                          optimizer=s.optimizer, transform=run.transform, mixer=run.mixer, average=s.average)
    distributed.barrier(ctx)


def finish(run: RunSetup, step: int, cancelled: bool, elapsed: float, ctx: distributed.Context) -> None:
    """The end: the checkpoint selected on validation is evaluated on the test set, once (not when cancelled)."""
    for s in run.students:
        if cancelled:
            s.log.info('cancelled at step %d; %s holds it', step, RunFolder(s.run).last)
        elif ctx.is_main:
            # Its evaluation file is the one record of its test figures (evaluate.read_evaluation).
            test_top1 = evaluate_split(
                RunFolder(s.run).best, run.splits.test, s.cfg.data, batch_size=s.cfg.eval_batch_size,
                device=ctx.device, amp=s.cfg.amp, faithfulness_images=s.cfg.faithfulness_images,
                extra={'split': 'test', 'selected_on': 'validation' if s.cfg.val_size else 'last evaluation'})['top1']
            s.log.info('done at step %d in %.0fs: the checkpoint selected on validation has test top-1 %.2f%%',
                       step, elapsed, test_top1)
    distributed.barrier(ctx)


def evaluate_student(s: Student, splits: Splits, transform: BatchTransform, probe: AttentionProbe | None,
                     meta: dict[str, Any], step: int, epoch_steps: int) -> None:
    """Score a student (its weights' average, if kept) on the held-out images, keep it as ``best`` when it beats
    its best so far (the latest evaluation, without held-out images), record its attention gaps and its maps'
    faithfulness (the quarter drop of each layer and rollout on the probe images), and log it."""
    val_top1, faithful, model = None, None, s.evaluated
    if splits.val is not None:
        probs = predict(model, splits.val, transform, batch_size=s.cfg.eval_batch_size, device=splits.val.images.device,
                        amp=s.cfg.amp)
        val_top1 = summarize(probs, splits.val.labels, splits.classes)['top1']
        if has_cls_attention(model):
            faithful = quarter_drops(model, transform.eval(splits.probe.images), splits.probe.labels,
                                     protocol=HEADLINE_PROTOCOL, attn_norm=s.cfg.attn_norm,
                                     head_fusion=s.cfg.head_fusion, batch_size=s.cfg.eval_batch_size, amp=s.cfg.amp)
    if val_top1 is None or val_top1 > s.best_val_top1:
        s.best_val_top1 = val_top1 if val_top1 is not None else s.best_val_top1
        save_checkpoint(RunFolder(s.run).best, model, dict(meta, val_top1=val_top1, val_faithfulness=faithful,
                                                                     val_faithfulness_protocol=HEADLINE_PROTOCOL))
    gaps = probe.record(model, step, s.run, faithful, target=s.criterion.method.target) if probe is not None else None
    append_metrics(s.run, dict(event='eval', step=step, epoch=round(step / epoch_steps, 4), val_top1=val_top1,
                               best_val_top1=s.best_val_top1, **({'attention_gap': gaps} if gaps else {}),
                               **({'faithfulness': faithful, 'faithfulness_protocol': HEADLINE_PROTOCOL}
                                  if faithful else {})))
    s.log.info('step %d: validation top-1 %s (best %.2f%%)%s', step,
               f'{val_top1:.2f}%' if val_top1 is not None else 'not held out', s.best_val_top1,
               f'; the maps\' quarter drop ({HEADLINE_PROTOCOL}): last layer {faithful[last_layer(list(faithful))]:+.1f} points, '
               f'rollout {faithful[ROLLOUT]:+.1f}, gradient rollout {faithful[GRADIENT_ROLLOUT]:+.1f}' if faithful else '')


def load_teacher(cfg: TrainConfig, classes: list[str], device: torch.device) -> nn.Module:
    """The teacher from an advit checkpoint, a state-dict file (with ``teacher_model``), or a timm name."""
    spec = Path(cfg.teacher)
    try:
        if spec.is_file():
            args = dict(num_classes=len(classes), img_size=cfg.image_size) if cfg.teacher_model else None
            loaded = load_checkpoint(spec, model_name=cfg.teacher_model, model_args=args, device=device)
            teacher_classes = loaded.meta.get('classes', classes)
            if list(teacher_classes) != list(classes):
                raise TrainingError(f'teacher {spec} was trained on classes {teacher_classes}, '
                                    f'the dataset has {classes}')
            teacher = loaded.model
        elif spec.suffix in ('.safetensors', '.pth', '.pt'):
            raise TrainingError(f'teacher checkpoint not found: {spec}')
        else:
            # A timm name: the head of its weights must have been trained on this dataset's classes,
            # or distilling its argmax distils noise (timm replaces a head of another size by a random one).
            trained_on = pretrained_classes(cfg.teacher, cfg.teacher_pretrained_file)
            if trained_on != len(classes):
                source = cfg.teacher_pretrained_file or "timm's pretrained weights"
                raise TrainingError(
                    f'teacher {cfg.teacher}: the classifier of {source} was trained on '
                    f'{trained_on if trained_on is not None else "no"} classes, the dataset has {len(classes)}, so '
                    'its head would be random. Fine-tune the teacher on these classes first (advit train --method vit '
                    f'--model {cfg.teacher} --pretrained-file WEIGHTS ...) and give that run\'s best.safetensors '
                    'as --teacher')
            teacher = create_model(cfg.teacher, num_classes=len(classes), img_size=cfg.image_size,
                                   pretrained=cfg.teacher_pretrained_file is None,
                                   pretrained_file=cfg.teacher_pretrained_file).to(device)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        raise TrainingError(f'cannot load teacher {cfg.teacher}: {err}') from err
    if hasattr(teacher, 'patch_embed') and model_image_size(teacher) != cfg.image_size:
        raise TrainingError(f'teacher takes {model_image_size(teacher)}px images, the student {cfg.image_size}px')
    return teacher


def _batch_stream(data: ImageSet, batch_size: int, seed: int, step: int, epoch_steps: int,
                  ctx: distributed.Context) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches forever, starting where ``step`` left off."""
    epoch, skip = divmod(step, epoch_steps)
    while True:
        yield from batches(data, batch_size, shuffle=True, seed=seed, epoch=epoch, rank=ctx.rank,
                           world_size=ctx.world_size, skip=skip)
        epoch, skip = epoch + 1, 0


