"""A run's folder, as its training process keeps it: status, metrics, log, config, the ``last`` checkpoint.

Also the cancel the process obeys (``StopSignal``). Rank 0 writes; the others only read.

- ``status.json``: the run's own account (``RunStatus``), read by the job list;
- ``metrics.jsonl``: one JSON line per log step and evaluation, appended as the run goes;
- ``train.log``: the log, also on stderr around the progress bar;
- ``config.json``: the configuration, with the world size, the group, the versions and the machines that trained it;
- ``sessions.json``: each sitting that trained the run (machine, first and last step, wall time), kept over
  resumes, so that a run trained across several sessions says what each one did (``read_sessions``);
- ``last.safetensors``: weights, optimiser state, every random stream and the progress: a killed
  or cancelled run resumes from it exactly.

Written here, and read here too (``RunFolder``, ``read_metrics``; JSON files through ``io.read_json``) by the job list, the report,
the bundle, the seeds, the catalog and the training view, which all meet torn files the same way: this module
alone names the files, and ``config.json`` carries the folder's ``format`` (``FORMAT_VERSION``; a folder from
before it was stamped reads as version 1, whose files are the same).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from tqdm import tqdm

from ..core.augment import BatchTransform, Mixup
from ..core.checkpoint import (
    load_optimizer_tensors,
    load_weights,
    optimizer_tensors,
    read_metadata,
    save_checkpoint,
)
from ..core.io import atomic_path, read_json, write_json
from ..core.machine import machine
from ..core.weights import model_weights, read_tensors, train_state

CONFIG, STATUS, METRICS, LOG, SESSIONS = 'config.json', 'status.json', 'metrics.jsonl', 'train.log', 'sessions.json'
BEST, LAST = 'best.safetensors', 'last.safetensors'  # the checkpoint chosen on validation; the one to resume
FORMAT_VERSION = 2  # 2: config.json stamps it; 1: the same files, unstamped


@dataclass(frozen=True)
class RunFolder:
    """A run's folder: where each of its files is, and each read as ``read_json`` reads (a missing or torn file:
    empty, as if not written yet).

    Args:
        path: The run's folder (a student of a group: its own folder in the group's).
    """
    path: Path

    @property
    def config_file(self) -> Path:
        return Path(self.path) / CONFIG

    @property
    def status_file(self) -> Path:
        return Path(self.path) / STATUS

    @property
    def best(self) -> Path:
        return Path(self.path) / BEST

    @property
    def last(self) -> Path:
        return Path(self.path) / LAST

    def config(self) -> dict[str, Any]:
        """The run's settings and records (``write_config``), or {}."""
        return read_json(self.config_file) or {}

    def status(self) -> dict[str, Any]:
        """The run's account of itself (``RunStatus``), or {}."""
        return read_json(self.status_file) or {}

    def finished(self) -> bool:
        return self.status().get('state') == 'finished'

    def format_version(self) -> int:
        """The folder's format (``FORMAT_VERSION``): 1 for a folder from before it was stamped."""
        version = self.config().get('format', 1)
        return version if isinstance(version, int) else 1


class ResumeError(ValueError):
    """A checkpoint a run cannot resume from."""


class RunStatus:
    """The run's own account of itself in ``status.json`` (state, progress, best accuracy), written
    atomically by rank 0, so that a job list only reads files.

    States: ``running``, ``finished``, ``cancelled``, ``failed`` (with ``error``). Each write with a ``step``
    also brings this process's entry of ``sessions.json`` up to date.
    """

    def __init__(self, run: Path, enabled: bool) -> None:
        self.path, self.enabled = run / STATUS, enabled
        self.fields: dict[str, Any] = {}
        self.session: dict[str, Any] | None = None  # this process's sitting, the last of ``sessions``
        self.sessions: list[dict[str, Any]] = []

    def write(self, state: str, **fields: Any) -> None:
        if not self.enabled or not self.path.parent.is_dir():
            return  # a run refused before its folder exists leaves nothing behind
        self.fields.update(fields, state=state, pid=os.getpid(), updated=time.time())
        write_json(self.path, self.fields)
        if 'step' in fields:
            self._record_session(fields['step'])

    def _record_session(self, step: int) -> None:
        if self.session is None:  # this process's first write: the earlier sittings read once, a new one begun
            self.sessions = read_sessions(self.path.parent)
            self.session = dict(machine=machine(), started=time.time(), first_step=step)
            self.sessions.append(self.session)
        self.session.update(last_step=step, wall_s=round(time.time() - self.session['started'], 1))
        write_json(self.path.parent / SESSIONS, {'sessions': self.sessions})



def read_sessions(run: Path) -> list[dict[str, Any]]:
    """The sittings that trained a run (``sessions.json``), oldest first; [] for a run from before they were
    recorded. Steps a killed sitting trained after its last save are trained again by the next, so summed
    steps can exceed the run's length: the sum is the work done, the run's step its progress."""
    sessions = (read_json(Path(run) / SESSIONS) or {}).get('sessions')
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


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


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records in order; a line torn or corrupted by a kill is skipped."""
    path = Path(run) / METRICS
    records = []
    if path.is_file():
        for line in path.read_text(errors='replace').splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    """Add one line to the run's ``metrics.jsonl``."""
    with open(run / METRICS, 'a') as f:
        f.write(json.dumps(record) + '\n')


def truncate_metrics(run: Path, step: int) -> None:
    """Drop the lines a resumed run will write again (those after the resumed step)."""
    path = run / METRICS
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


# The keys write_config puts beside a config's fields: bookkeeping, never a setting to read back.
RECORD_KEYS = frozenset({'format', 'world_size', 'group', 'machines', 'versions'})


def write_config(run: Path, config: dict[str, Any], world_size: int, group: list[str]) -> None:
    """The run's ``config.json``: its settings, and where they ran (world size, the group, versions, and
    ``machines``: each machine that trained it, in order, kept over resumes)."""
    run.mkdir(parents=True, exist_ok=True)
    machines = list(RunFolder(run).config().get('machines', []))
    if machine() not in machines[-1:]:
        machines.append(machine())
    write_json(run / CONFIG, dict(config, format=FORMAT_VERSION, world_size=world_size, group=group, machines=machines,
                                         versions={'torch': torch.__version__, 'timm': timm.__version__}))


def open_log(run: Path, is_main: bool, tag: str | None = None) -> logging.Logger:
    """Log to the run's ``train.log`` and, around the progress bar, to stderr (rank 0 only).

    Args:
        tag: Prefix of the stderr lines (the method, when several students train at once).
    """
    log = logging.getLogger(_log_name(run))
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO)
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        file_handler, console = logging.FileHandler(run / LOG), _TqdmHandler()
        file_handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
        console.setFormatter(logging.Formatter(f'%(asctime)s {tag + ": " if tag else ""}%(message)s', '%H:%M:%S'))
        log.addHandler(file_handler)
        log.addHandler(console)
    return log


def _log_name(run: Path) -> str:
    return f'advit.training.train.{run.resolve()}'


def close_log(run: Path) -> None:
    """Release the run's ``train.log``."""
    log = logging.getLogger(_log_name(run))
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


AVERAGE_PREFIX = 'average/'  # the weights' moving average, among last's train-state tensors


def save_last(run: Path, model: nn.Module, meta: dict[str, Any], progress: dict[str, Any],
              optimizer: torch.optim.Optimizer, transform: BatchTransform, mixer: Mixup | None,
              average: nn.Module | None = None) -> None:
    """Write ``last.safetensors``: all a resumed run needs to go on exactly where this one stands (with the
    weights' moving average, ``average``, where the run keeps one)."""
    averaged = {f'{AVERAGE_PREFIX}{name}': value for name, value in average.state_dict().items()} if average else {}
    save_checkpoint(run / LAST, model, dict(meta, progress=progress),
                    train_state=dict(optimizer_tensors(optimizer), **rng_tensors(transform, mixer), **averaged))


def restore_last(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 average: nn.Module | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load weights, optimiser state and the weights' moving average (``average``, if the run keeps one) from
    ``last.safetensors``; return (its progress record: step, elapsed, best validation top-1, attention paths;
    its saved random streams, for ``restore_rngs`` once the streams exist): the file is read once."""
    path = run / LAST
    tensors = read_tensors(path)
    progress = read_metadata(path).get('progress')
    if progress is None:
        raise ResumeError(f'{path} has no training progress: it is not a resumable checkpoint')
    load_weights(model, model_weights(tensors), source=str(path))
    state = train_state(tensors)
    load_optimizer_tensors(optimizer, state)
    if average is not None:
        averaged = {key[len(AVERAGE_PREFIX):]: value for key, value in state.items() if key.startswith(AVERAGE_PREFIX)}
        if not averaged:
            raise ResumeError(f'{path} holds no moving average of the weights: it was saved by a run without '
                              '--ema-decay')
        load_weights(average, averaged, source=f'{path} (moving average)')
    rngs = {key: value for key, value in state.items() if key.startswith('rng/')}
    return progress, rngs


def rng_tensors(transform: BatchTransform, mixer: Mixup | None) -> dict[str, torch.Tensor]:
    """Every random stream a run draws from, as tensors: torch's (dropout, drop-path), CUDA's, the
    augmentation's and mixup's."""
    tensors = {'rng/torch': torch.get_rng_state(), 'rng/transform': transform.generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors['rng/cuda'] = torch.cuda.get_rng_state()
    if mixer is not None:
        state = json.dumps(mixer.rng.bit_generator.state).encode()
        tensors['rng/mixup'] = torch.frombuffer(bytearray(state), dtype=torch.uint8)
    return tensors


def restore_rngs(saved: dict[str, torch.Tensor], transform: BatchTransform, mixer: Mixup | None) -> None:
    """Set the random streams as ``rng_tensors`` saved them (``restore_last`` returns them; a checkpoint
    from before they were saved keeps the reseeded streams)."""
    if 'rng/torch' in saved:
        torch.set_rng_state(saved['rng/torch'])
    if 'rng/transform' in saved:
        transform.generator.set_state(saved['rng/transform'])
    if 'rng/cuda' in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved['rng/cuda'])
    if 'rng/mixup' in saved and mixer is not None:
        mixer.rng.bit_generator.state = json.loads(bytes(saved['rng/mixup'].tolist()))
