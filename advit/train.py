"""Training: configuration as plain data, and one loop that reads top to bottom.

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON line per log step and per
evaluation, written as it goes), ``train.log``, ``last.safetensors`` (weights, optimiser state
and progress: a killed run resumes from it), ``best.safetensors`` and the best checkpoint's
evaluation (``best.eval.json``, ``best.predictions.npz``). Only rank 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .augment import RECIPES, BatchTransform, Mixup
from .checkpoint import (CheckpointError, load_checkpoint, load_weights, model_weights, read_metadata,
                         read_tensors, save_checkpoint, train_state)
from .data import OFFICIAL_CIFAR10, ImageSet, batches, load_dataset, steps_per_epoch
from .evaluate import autocast, predict, save_evaluation, summarize
from .io import atomic_path, write_json
from .losses import DistillationLoss, parse_method
from .models import create_model, is_distilled, model_image_size, model_normalization


class TrainingError(Exception):
    """A run that cannot start or cannot go on (bad configuration, non-finite loss)."""


_CONFIG_RECORD_KEYS = ('world_size', 'versions')  # written beside the fields in config.json


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the run folder."""
    out: str = 'runs/run'
    data: str = '../shared/data/cifar10/cifar10-jpeg.tar.xz'
    method: str = 'vit'
    model: str = 'vit_tiny_patch4_32'
    model_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"depth": 6}
    pretrained: bool = False  # student weights from the hub (needs a network)
    pretrained_file: str | None = None  # student weights from a local file
    teacher: str | None = None  # an advit checkpoint, a state-dict file, or a timm name
    teacher_model: str | None = None  # architecture of a teacher state dict without advit metadata
    teacher_pretrained_file: str | None = None  # local weights for a teacher given by timm name
    image_size: int = 32
    recipe: str = 'cifar32'
    subset: int | None = None  # train on a fixed subset of this many images
    test_subset: int | None = None
    epochs: float | None = None  # run length: epochs, steps and/or seconds; the first reached ends it
    steps: int | None = None
    time_budget: float | None = None
    batch_size: int = 128  # global, split over ranks
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    drop_path: float = 0.1
    label_smoothing: float = 0.0  # with mixup / CutMix, folded into their soft targets
    mixup: float = 0.0  # Beta alpha of mixup (timm's 0.8); 0: off
    cutmix: float = 0.0  # Beta alpha of CutMix (timm's 1.0); 0: off; with mixup on too, each mixes half
    mix_prob: float = 1.0  # share of batches mixed when mixup or CutMix is on
    attn_weight: float = 1.0
    alpha: float = 0.5
    tau: float = 1.0
    head_fusion: str = 'mean'
    layer_map: list[int] | None = None
    seed: int = 0
    device: str = 'auto'
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the student's and the teacher's forwards (pays on long GPU runs)
    log_every: int = 50
    eval_every: int = 0  # steps between evaluations; 0: at each epoch's end
    save_every: int = 0  # steps between `last` checkpoints; 0: at each evaluation
    eval_batch_size: int = 512
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> 'TrainConfig':
        """From a dict of fields, such as a saved ``config.json`` (its bookkeeping keys ignored)."""
        values = {k: v for k, v in values.items() if k not in _CONFIG_RECORD_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f'unknown config fields: {", ".join(unknown)}')
        return cls(**values)


def validate(cfg: TrainConfig) -> None:
    """Refuse a configuration that cannot run, before anything is loaded or written."""
    try:
        method = parse_method(cfg.method)
    except ValueError as err:
        raise TrainingError(str(err)) from err
    if method.needs_teacher and not cfg.teacher:
        raise TrainingError(f'method {cfg.method} needs a teacher (--teacher)')
    if cfg.recipe not in RECIPES:
        raise TrainingError(f'unknown recipe {cfg.recipe!r}: choose one of {RECIPES}')
    if not timm.is_model(cfg.model.split('.', 1)[0]):
        raise TrainingError(f'unknown model {cfg.model!r}: not a timm model name')
    if cfg.epochs is None and cfg.steps is None and cfg.time_budget is None:
        raise TrainingError('give a run length: epochs, steps or a time budget')
    for name in ('epochs', 'steps', 'time_budget', 'batch_size', 'lr', 'log_every', 'image_size'):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise TrainingError(f'{name} must be positive, got {value}')
    if cfg.mixup < 0 or cfg.cutmix < 0 or not 0 <= cfg.mix_prob <= 1:
        raise TrainingError(f'mixup and cutmix must be >= 0 and mix_prob in [0, 1], got {cfg.mixup}, '
                            f'{cfg.cutmix}, {cfg.mix_prob}')
    if not Path(cfg.data).exists() and cfg.data != OFFICIAL_CIFAR10:
        raise TrainingError(f'dataset not found: {cfg.data}')


def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr``, over run progress in [0, 1]."""
    if progress < cfg.warmup_fraction:
        return cfg.lr * progress / cfg.warmup_fraction
    span = max(1e-8, 1 - cfg.warmup_fraction)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - cfg.warmup_fraction) / span)))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * cosine


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train a student as ``cfg`` says; return the run folder.

    Args:
        cfg: The run's configuration.
        resume: Continue from ``last.safetensors`` in ``cfg.out`` if it exists.
    """
    validate(cfg)
    ctx = distributed.setup(cfg.device)
    status = RunStatus(Path(cfg.out), ctx.is_main)
    try:
        with StopSignal() as stop:
            return _train(cfg, ctx, resume, status, stop)
    except BaseException as err:
        status.write('failed', error=str(err) or type(err).__name__)
        raise
    finally:
        distributed.cleanup()


class RunStatus:
    """The run's own account of itself in ``status.json`` (state, progress, best accuracy), written
    atomically by rank 0, so that a job list only reads files.

    States: ``running``, ``finished``, ``cancelled``, ``failed`` (with ``error``).
    """

    def __init__(self, run: Path, enabled: bool) -> None:
        self.path, self.enabled = run / 'status.json', enabled
        self.fields: dict[str, Any] = {}

    def write(self, state: str, **fields: Any) -> None:
        if not self.enabled or not self.path.parent.is_dir():
            return  # a run refused before its folder exists leaves nothing behind
        self.fields.update(fields, state=state, pid=os.getpid(), updated=time.time())
        write_json(self.path, self.fields)


class StopSignal:
    """SIGTERM (a cancel) asks the loop to stop at the next step, save ``last`` and end as cancelled."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> 'StopSignal':
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _train(cfg: TrainConfig, ctx: distributed.Context, resume: bool, status: RunStatus, stop: StopSignal) -> Path:
    run, device = Path(cfg.out), ctx.device
    method = parse_method(cfg.method)

    # Data: rank 0 decodes and caches first, so the others read the cache instead of racing it.
    if not ctx.is_main:
        distributed.barrier(ctx)
    data = load_dataset(cfg.data, cfg.cache_dir)
    if ctx.is_main:
        distributed.barrier(ctx)
    train_set = data['train'].subset(cfg.subset).to(device)
    test_set = data['test'].subset(cfg.test_subset).to(device)
    classes = train_set.classes
    batch_size = cfg.batch_size // ctx.world_size
    epoch_steps = steps_per_epoch(len(train_set), batch_size, ctx.world_size)
    if batch_size == 0 or epoch_steps == 0:
        raise TrainingError(f'{len(train_set)} training images on {ctx.world_size} process(es) do not fill '
                            f'one batch of {cfg.batch_size}: lower --batch-size or raise --subset')
    step_limits = [cfg.steps] if cfg.steps else []
    if cfg.epochs:
        step_limits.append(math.ceil(cfg.epochs * epoch_steps))
    total_steps = min(step_limits, default=None)  # None: the time budget alone ends the run

    # Models, loss, optimiser. Seeded: runs of one seed start from the same weights (so students that
    # differ only in their method start alike).
    torch.manual_seed(cfg.seed)
    student = create_model(
        cfg.model, num_classes=len(classes), pretrained=cfg.pretrained and cfg.pretrained_file is None,
        pretrained_file=cfg.pretrained_file, img_size=cfg.image_size, drop_path_rate=cfg.drop_path,
        **cfg.model_args).to(device)
    teacher = load_teacher(cfg, classes, device) if method.needs_teacher else None
    if method.logit is not None and is_distilled(student):
        student.set_distilled_training(True)
    criterion = DistillationLoss(
        cfg.method, student, teacher, attn_weight=cfg.attn_weight, alpha=cfg.alpha, tau=cfg.tau,
        label_smoothing=cfg.label_smoothing, head_fusion=cfg.head_fusion, layer_map=cfg.layer_map)
    mean, std = model_normalization(student)
    transform = BatchTransform(cfg.recipe, cfg.image_size, mean, std, seed=cfg.seed, device=device)
    no_decay = student.no_weight_decay() if hasattr(student, 'no_weight_decay') else ()  # ViTs: pos/cls tokens
    groups = param_groups_weight_decay(student, cfg.weight_decay, no_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == 'cuda')
    model = DistributedDataParallel(student, device_ids=[device] if device.type == 'cuda' else None) \
        if ctx.distributed else student
    if cfg.compile:  # the capture hooks compile with the forwards; checkpoints and evaluation use `student`
        model = torch.compile(model)
        if teacher is not None:
            criterion.teacher = torch.compile(teacher)

    # Resume, or start a fresh run folder: nothing is written before data and models have loaded.
    log = _logger(run, ctx.is_main)
    step, elapsed_before, best_top1 = 0, 0.0, -1.0
    last_path, best_path = run / 'last.safetensors', run / 'best.safetensors'
    metrics_path = run / 'metrics.jsonl'
    if resume and last_path.is_file():
        step, elapsed_before, best_top1 = restore(last_path, student, optimizer)
        log.info('resumed from %s at step %d', last_path, step)
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / 'config.json', dict(asdict(cfg), world_size=ctx.world_size,
                                             versions={'torch': torch.__version__, 'timm': timm.__version__}))
        _truncate_metrics(metrics_path, step)
    # Each rank and each resume point gets its own augmentation and dropout stream.
    stream_seed = cfg.seed * 1_000_003 + ctx.rank * 10_007 + step
    torch.manual_seed(stream_seed)
    transform.generator.manual_seed(stream_seed)
    mixer = Mixup(cfg.mixup, cfg.cutmix, len(classes), cfg.label_smoothing, cfg.mix_prob, seed=stream_seed) \
        if cfg.mixup or cfg.cutmix else None
    params = sum(p.numel() for p in student.parameters())
    log.info('%s: %s (%.1fM params) on %s x%d, %d train / %d test images, %s steps of %d',
             cfg.method, cfg.model, params / 1e6, device, ctx.world_size, len(train_set), len(test_set),
             total_steps or f'{cfg.time_budget:.0f}s of', cfg.batch_size)

    def meta(top1: float) -> dict[str, Any]:
        return dict(
            model=cfg.model, model_args=dict(cfg.model_args, num_classes=len(classes), img_size=cfg.image_size),
            classes=classes, image_size=cfg.image_size, mean=list(mean), std=list(std), method=cfg.method,
            teacher=cfg.teacher, recipe=cfg.recipe, data=cfg.data, step=step, epoch=step / epoch_steps,
            test_top1=top1, params=params)

    # The loop.
    bar = tqdm(total=total_steps, initial=step, disable=not (ctx.is_main and sys.stderr.isatty()),
               dynamic_ncols=True, leave=False)
    sums: dict[str, torch.Tensor] = {}
    window_start, window_steps = time.time(), 0
    start = time.time() - elapsed_before
    student.train()
    criterion.train()

    def run_progress() -> float:
        """How far the run is, in [0, 1]: by steps, by time, whichever is further."""
        by_steps = step / total_steps if total_steps else 0.0
        if not cfg.time_budget:
            return by_steps
        return max(by_steps, distributed.broadcast_float((time.time() - start) / cfg.time_budget, ctx))

    def report(state: str) -> None:
        elapsed = time.time() - start
        eta = elapsed / progress * (1 - progress) if 0 < progress < 1 else None
        status.write(state, step=step, total_steps=total_steps, progress=min(progress, 1.0), elapsed=elapsed,
                     eta_s=eta, best_top1=best_top1 if best_top1 >= 0 else None, started=status.fields.get(
                         'started', time.time()))

    progress = run_progress()
    report('running')
    cancelled = False
    for images, labels in _batch_stream(train_set, batch_size, cfg.seed, step, epoch_steps, ctx):
        if progress >= 1.0:
            break
        lr = lr_at(progress, cfg)
        for group in optimizer.param_groups:
            group['lr'] = lr

        inputs = transform.train(images)
        if mixer is not None:
            inputs, labels = mixer(inputs, labels)  # (batch, classes) soft targets from here
        with autocast(device, cfg.amp):
            outputs = model(inputs)
            loss, terms = criterion(inputs, outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        window_steps += 1
        bar.update(1)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + value.float()

        progress = run_progress()
        # Ranks agree on a cancel at log steps only, to spare a collective on every step.
        if not ctx.distributed or step % cfg.log_every == 0:
            cancelled = distributed.any_rank(stop.requested, ctx)
        finished = progress >= 1.0
        end_of_epoch = step % epoch_steps == 0
        evaluate_now = not cancelled and (
            finished or (step % cfg.eval_every == 0 if cfg.eval_every else end_of_epoch))
        save_now = evaluate_now or cancelled or (cfg.save_every and step % cfg.save_every == 0)
        if step % cfg.log_every == 0 or save_now:
            # Checked before anything is written, so a diverged run never overwrites a good checkpoint.
            values = {name: (total / window_steps).item() for name, total in sums.items()}
            if distributed.any_rank(not all(math.isfinite(v) for v in values.values()), ctx):
                kept = f'{last_path} holds the last good state' if last_path.is_file() else 'no checkpoint was saved'
                raise TrainingError(f'loss is not finite at step {step} ({values}): the run stopped; '
                                    f'lower --lr or check the data; {kept}')
            seconds = time.time() - window_start
            record = dict(event='train', step=step, epoch=round(step / epoch_steps, 4), lr=lr, **values,
                          images_per_s=window_steps * cfg.batch_size / max(seconds, 1e-9),
                          elapsed=time.time() - start)
            _append_metrics(metrics_path, record, ctx)
            bar.set_postfix(loss=f'{values["loss"]:.3f}', lr=f'{lr:.2e}')
            log.info('step %d: %s, %.0f images/s', step,
                     ', '.join(f'{name} {value:.4f}' for name, value in values.items()), record['images_per_s'])
            sums, window_start, window_steps = {}, time.time(), 0
            report('running')
        if evaluate_now:
            if ctx.is_main:
                probs = predict(student, test_set, transform, cfg.eval_batch_size, device, cfg.amp)
                top1 = summarize(probs, test_set.labels, classes)['top1']
                if top1 > best_top1:
                    best_top1 = top1
                    save_checkpoint(best_path, student, meta(top1))
                    save_evaluation(best_path, probs, test_set.labels, classes,
                                    {'checkpoint': str(best_path), 'data': cfg.data, 'model': cfg.model,
                                     'method': cfg.method, 'step': step})
                _append_metrics(metrics_path, dict(event='eval', step=step, epoch=round(step / epoch_steps, 4),
                                                   test_top1=top1, best_top1=best_top1), ctx)
                log.info('step %d: test top-1 %.2f%% (best %.2f%%)', step, top1, best_top1)
        if save_now and ctx.is_main:
            save_checkpoint(last_path, student, dict(meta(best_top1), progress=dict(
                step=step, elapsed=time.time() - start, best_top1=best_top1)),
                train_state=optimizer_tensors(optimizer))
        if evaluate_now or save_now:
            distributed.barrier(ctx)  # the other ranks wait while rank 0 evaluates and writes
            window_start = time.time()  # images/s counts training, not evaluation and saving
        if cancelled:
            break
    bar.close()
    if cancelled:
        log.info('cancelled at step %d; %s holds it', step, last_path)
    else:
        log.info('done at step %d in %.0fs: best test top-1 %.2f%%', step, time.time() - start, best_top1)
    report('cancelled' if cancelled else 'finished')
    return run


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
            teacher = create_model(cfg.teacher, num_classes=len(classes), img_size=cfg.image_size,
                                   pretrained=cfg.teacher_pretrained_file is None,
                                   pretrained_file=cfg.teacher_pretrained_file).to(device)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        raise TrainingError(f'cannot load teacher {cfg.teacher}: {err}') from err
    if hasattr(teacher, 'patch_embed') and model_image_size(teacher) != cfg.image_size:
        raise TrainingError(f'teacher takes {model_image_size(teacher)}px images, the student {cfg.image_size}px')
    return teacher


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's state as flat tensors (param groups as JSON in a byte tensor)."""
    state = optimizer.state_dict()
    tensors = {f'optimizer/{index}/{name}': value if torch.is_tensor(value) else torch.tensor(value)
               for index, slots in state['state'].items() for name, value in slots.items()}
    groups = json.dumps(state['param_groups']).encode()
    tensors['optimizer/param_groups'] = torch.frombuffer(bytearray(groups), dtype=torch.uint8)
    return tensors


def restore(path: Path, student: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float, float]:
    """Load weights and optimiser state from a ``last`` checkpoint; return (step, elapsed, best top-1)."""
    tensors = read_tensors(path)
    progress = read_metadata(path).get('progress')
    if progress is None:
        raise TrainingError(f'{path} has no training progress: it is not a resumable checkpoint')
    load_weights(student, model_weights(tensors), source=str(path))
    saved = train_state(tensors)
    groups = json.loads(bytes(saved.pop('optimizer/param_groups').tolist()))
    for group in groups:
        group['betas'] = tuple(group['betas'])
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in saved.items():
        _, index, name = key.split('/')
        slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({'state': slots, 'param_groups': groups})
    return int(progress['step']), float(progress['elapsed']), float(progress['best_top1'])


def _batch_stream(data: ImageSet, batch_size: int, seed: int, step: int, epoch_steps: int,
                  ctx: distributed.Context) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches forever, starting where ``step`` left off."""
    epoch, skip = divmod(step, epoch_steps)
    while True:
        yield from batches(data, batch_size, shuffle=True, seed=seed, epoch=epoch, rank=ctx.rank,
                           world_size=ctx.world_size, skip=skip)
        epoch, skip = epoch + 1, 0


def _append_metrics(path: Path, record: dict[str, Any], ctx: distributed.Context) -> None:
    if ctx.is_main:
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a resumed run will write again (those after the resumed step)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get('step', 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill is dropped
    with atomic_path(path) as tmp:
        tmp.write_text(''.join(line + '\n' for line in kept))


def _logger(run: Path, is_main: bool) -> logging.Logger:
    """Log to the run's ``train.log`` and, around the progress bar, to stderr (rank 0 only)."""
    log = logging.getLogger('advit.train')
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO)
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        formatter = logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S')
        for handler in (logging.FileHandler(run / 'train.log'), _TqdmHandler()):
            handler.setFormatter(formatter)
            log.addHandler(handler)
    return log


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)
