"""Background training jobs: ``advit train`` runs launched as their own processes, queued, watched and cancelled.

Everything a job is lives in its run folder, so the list survives an app restart:

- ``request.json``: the run's settings (``TrainConfig`` fields), written when the job is submitted;
- ``job.json``: the app's record: when it was queued, each launch (pid, process group, process
  start time), a cancel request; for a group job, its ``methods``;
- ``status.json``: the job's own account (running, finished, cancelled, failed; step, progress,
  best accuracy), written atomically by the training process itself;
- ``output.log``: the process's stdout and stderr; plus the run's ``metrics.jsonl`` and checkpoints.

A group job (``methods``: several students on the same batches and one teacher forward, ``advit train
--methods``) is one process too; ``request.json`` holds the settings its students share, and each
student keeps its own run folder ``<job>/<method>/`` with its ``status.json``, metrics and checkpoints.

A job whose process is gone without a final status (killed, machine restarted) is reported
failed with the end of its output, never as running forever.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..core.checks import shown_value
from ..core.data import DatasetError, load_dataset, steps_per_epoch
from ..core.io import REPO, read_json, write_json
from ..core.models import create_model
from ..measure.evaluate import read_evaluation, recorded_test_top1
from .run_folder import RunFolder, read_metrics
from .train import TrainConfig, TrainingError, group_configs, validate, validate_group

ACTIVE = ('queued', 'running')  # the states in which a job can still be cancelled
FINAL = ('failed', 'cancelled', 'finished')  # a group's state is the first of these any student reports
# A cancel sends SIGTERM: the run stops at its next step, saves `last` and exits. Only a process still
# there after this grace (ADVIT_CANCEL_GRACE_S) is killed: long enough for a CPU evaluation or a first
# dataset decode to end, so that the steps since the last save are not lost.
CANCEL_GRACE_S = 120.0
NAME_PATTERN = re.compile(r'[^A-Za-z0-9._-]|\.{2,}')  # no separators, no '..'


class JobError(ValueError):
    """A job request or action that cannot be done; the message is for the user."""


@dataclass(frozen=True)
class JobLimits:
    """What jobs may ask for: how many run at once and wait, and at most how many steps, seconds,
    images per batch and model parameters each. The defaults suit one's own machine; ``public()``
    those of a server others reach.
    """
    max_concurrent: int = 1
    max_queued: int = 16
    max_steps: int | None = 1_000_000
    max_seconds: float | None = 7 * 24 * 3600.0
    max_batch_size: int = 4096
    max_params: int = 1_000_000_000

    @classmethod
    def public(cls) -> 'JobLimits':
        """A server others reach: a short queue, runs of an hour at most, small models."""
        return cls(max_concurrent=1, max_queued=4, max_steps=20_000, max_seconds=3600.0, max_batch_size=256,
                   max_params=30_000_000)

    @classmethod
    def from_env(cls, public: bool = False) -> 'JobLimits':
        """The defaults (``public()`` ones when ``public``), each replaced by its variable when set:
        ``ADVIT_MAX_JOBS``, ``ADVIT_MAX_QUEUED``, ``ADVIT_JOB_MAX_STEPS``, ``ADVIT_JOB_MAX_SECONDS``,
        ``ADVIT_JOB_MAX_BATCH``, ``ADVIT_JOB_MAX_PARAMS``."""
        base = cls.public() if public else cls()
        changes = {}
        for field_name, variable, kind in (
                ('max_concurrent', 'ADVIT_MAX_JOBS', int), ('max_queued', 'ADVIT_MAX_QUEUED', int),
                ('max_steps', 'ADVIT_JOB_MAX_STEPS', int), ('max_seconds', 'ADVIT_JOB_MAX_SECONDS', float),
                ('max_batch_size', 'ADVIT_JOB_MAX_BATCH', int), ('max_params', 'ADVIT_JOB_MAX_PARAMS', int)):
            value = os.environ.get(variable)
            if value:
                try:
                    changes[field_name] = kind(float(value)) if kind is int else kind(value)
                except ValueError:
                    raise JobError(f'{variable}={shown_value(value)} is not a number') from None
        return replace(base, **changes)


NAME_RULE = 'a run name is 1 to 80 letters, digits, ".", "_" or "-", not starting with "." or "-"'


def check_name(name: Any) -> str:
    """A run name as given, when it is one safe folder name (``NAME_RULE``); refused with the rule
    otherwise, never rewritten: the job is cancelled and found later by the very name typed."""
    if not isinstance(name, str) or not 1 <= len(name) <= 80 or NAME_PATTERN.search(name) or \
            name.startswith(('.', '-')):
        raise JobError(f'run name {shown_value(name)} is not taken: {NAME_RULE}')
    return name


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a live process (to tell it from a later process with the same pid)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    return None if fields[0] == 'Z' else fields[19]  # a zombie has ended


def _group_methods(settings: dict[str, Any]) -> list[str] | None:
    """A group request's methods, taken out of ``settings``; None for a one-student request."""
    if 'methods' not in settings:
        return None
    methods = settings.pop('methods')
    if 'method' in settings:
        raise JobError('give method or methods, not both')
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise JobError(f'methods is a list of one or more method names, got {shown_value(methods)}')
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise JobError(f'method {shown_value(", ".join(twice), quoted=False)} is named twice: each student of a group '
                       'has its own method')
    return methods  # unknown ones are refused with the rest of each student's settings (train.validate)


def _group_status(folders: list[Path]) -> dict[str, Any]:
    """A group's account from its students' ``status.json``: the first student's progress, the best
    validation top-1 of all, and final (the first of ``FINAL`` any reports) only once every one is; its
    ``updated`` is the oldest, so that it is fresh only when every student wrote it in this launch."""
    accounts = [RunFolder(folder).status() for folder in folders]
    states = [account.get('state') for account in accounts]
    best = [account['best_val_top1'] for account in accounts if account.get('best_val_top1') is not None]
    return dict(accounts[0], updated=min(account.get('updated', 0) for account in accounts),
                state=next(s for s in FINAL if s in states) if all(s in FINAL for s in states) else 'running',
                best_val_top1=max(best, default=None),
                error=next((account['error'] for account in accounts if account.get('error')), None))


class Admission:
    """Whether a job may be queued: its settings as ``advit train`` checks them, its model built on the meta device,
    and this server's limits, each refused in words (``JobError``) before any folder or process exists.

    Args:
        limits: The server's per-job limits.
    """

    def __init__(self, limits: JobLimits) -> None:
        self.limits = limits
        self._train_counts: dict[str, int] = {}  # training images per dataset path, for the epochs limit

    def admit(self, settings: dict[str, Any], methods: list[str] | None) -> TrainConfig:
        """Check a job's settings as asked, hold them to the limits (in place: a run length is set where the server
        caps it), check them again and build the model; return the (first student's) configuration."""
        self.validate(settings, methods)
        self.apply_limits(settings)
        cfg = self.validate(settings, methods)
        self.check_model(cfg, len(methods or [cfg.method]))
        return cfg

    @staticmethod
    def validate(settings: dict[str, Any], methods: list[str] | None) -> TrainConfig:
        """The run's configuration, refused as ``advit train`` would refuse it; a group's is checked for
        each student (its method with the shared settings), and the first student's is returned."""
        try:
            # A group's students as the process will build them (`advit train --methods`: the same expansion).
            cfgs = group_configs(settings, methods) if methods else [TrainConfig.from_dict(settings)]
            for cfg in cfgs:
                validate(cfg)
            validate_group(cfgs)
        except (TrainingError, TypeError) as err:
            raise JobError(str(err)) from err
        return cfgs[0]

    def check_model(self, cfg: TrainConfig, students: int) -> None:
        """Build the student on the meta device (no memory, no weights): arguments that do not fit
        the architecture, or models over the size limit, are refused before any process starts. The
        students of a group count together: one process holds them all, with their optimiser states."""
        try:
            with torch.device('meta'):
                model = create_model(cfg.model, img_size=cfg.image_size, **cfg.model_args)
        except (ValueError, TypeError, RuntimeError, AssertionError) as err:
            raise JobError(f'cannot build {cfg.model} with {shown_value(cfg.model_args)}: {err}') from err
        params = sum(p.numel() for p in model.parameters())
        if params * students > self.limits.max_params:
            group = f', {params * students / 1e6:.1f}M for its {students} students' if students > 1 else ''
            raise JobError(f'{cfg.model} with {shown_value(cfg.model_args)} has {params / 1e6:.1f}M parameters{group}: '
                           f'the limit here is {self.limits.max_params / 1e6:.1f}M')

    def apply_limits(self, settings: dict[str, Any]) -> None:
        """Hold valid settings to this server's limits: batch size, run length (set to the step limit where none
        is asked), time budget."""
        limits = self.limits
        batch = settings.get('batch_size', TrainConfig.batch_size)  # a whole number >= 1: validated before
        if batch > limits.max_batch_size:
            raise JobError(f'batch size {batch}: the limit here is 1 to {limits.max_batch_size}')
        if limits.max_steps is not None:
            epochs = settings.get('epochs')
            if epochs is not None:  # refused here as steps are, not cut short by the steps set below
                count = self.training_images(settings)
                needed = math.ceil(epochs * steps_per_epoch(count, batch))
                if needed > limits.max_steps:
                    raise JobError(f'{epochs:g} epochs of {count} images in batches of {batch} are {needed:,} steps: '
                                   f'the limit here is {limits.max_steps:,}')
            steps = settings.get('steps')
            if steps is not None and steps > limits.max_steps:
                raise JobError(f'{steps} steps asked for: the limit here is {limits.max_steps}')
            settings['steps'] = steps or limits.max_steps  # epochs or a time budget may end it sooner
        if limits.max_seconds is not None:
            budget = settings.get('time_budget')
            if budget is not None and budget > limits.max_seconds:
                raise JobError(f'a {budget:.0f}s time budget asked for: the limit here is {limits.max_seconds:.0f}s')
            settings['time_budget'] = limits.max_seconds if budget is None else budget  # it ends itself in time

    def training_images(self, settings: dict[str, Any]) -> int:
        """How many images a run trains on: its subset, else its dataset's training split less the
        held-out images (the dataset read once per path; a run reads the same decoded cache)."""
        if settings.get('subset'):
            return int(settings['subset'])
        data = settings['data']
        if data not in self._train_counts:
            try:
                self._train_counts[data] = len(load_dataset(data, settings.get('cache_dir'))['train'])
            except (DatasetError, OSError, ValueError) as err:
                raise JobError(f'cannot read the dataset: {err}') from None
        return max(self._train_counts[data] - settings.get('val_size', TrainConfig.val_size), 1)


class JobManager:
    """Submits, starts (in queue order, up to ``limits.max_concurrent``), reconciles and cancels jobs.

    Args:
        runs_dir: The folder of run folders.
        limits: Concurrency and per-job limits.
        python: The interpreter that runs ``-m advit train``.
        cancel_grace_s: Seconds a cancelled job has to stop by itself before it is killed (default
            ``ADVIT_CANCEL_GRACE_S``, else ``CANCEL_GRACE_S``).
    """

    def __init__(self, runs_dir: Path, limits: JobLimits | None = None, python: str = sys.executable,
                 cancel_grace_s: float | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.limits = limits or JobLimits()
        self.python = python
        self.cancel_grace_s = cancel_grace_s if cancel_grace_s is not None else \
            float(os.environ.get('ADVIT_CANCEL_GRACE_S') or CANCEL_GRACE_S)
        self._children: dict[str, subprocess.Popen] = {}
        self.admission = Admission(self.limits)
        self._lock = threading.RLock()
        self._stop = threading.Event()

    # --- submitting ------------------------------------------------------------------------------

    def submit(self, name: str | None, settings: dict[str, Any]) -> str:
        """Queue a run; return its name.

        Args:
            name: The run's name (``check_name``), not yet taken; None: its method(s) joined by '-',
                with '-2', '-3'... when taken.
            settings: ``TrainConfig`` fields (``out`` is set from the name); or, for a group job,
                ``methods`` (a list of method names) in place of ``method``: one student per method,
                in one process.
        """
        settings = dict(settings)
        methods = _group_methods(settings)
        if name is not None:
            check_name(name)
        cfg = self.admission.admit(settings, methods)
        with self._lock:
            waiting = sum(job['state'] in ACTIVE for job in self.list())
            if waiting >= self.limits.max_queued:
                raise JobError(f'{waiting} jobs are queued or running, the most this server takes: '
                               'wait for one to end, or cancel one')
            run = self._new_run_folder(name, cfg if methods is None else methods)
            settings['out'] = str(run)
            run.mkdir(parents=True)
            for method in methods or []:  # made now, so that a student's status.json records even an early failure
                (run / method).mkdir()
            write_json(run / 'request.json', settings)
            write_json(run / 'job.json', {'name': run.name, 'queued': time.time(), 'launches': [],
                                          **({'methods': methods} if methods else {})})
        self.poll()
        return run.name

    def _new_run_folder(self, name: str | None, what: TrainConfig | list[str]) -> Path:
        """The folder of a new run: ``name``'s, refused when taken; without a name, the method(s)'
        (``what``: the one student's configuration, or a group's methods), numbered when taken."""
        root = self.runs_dir.resolve()
        if name is not None:
            candidate = root / name
            if candidate.exists():
                raise JobError(f'a run named {name} exists: choose another name, or leave the name empty')
        else:
            base = '-'.join(what) if isinstance(what, list) else what.method
            candidate, suffix = root / base, 2
            while candidate.exists():
                candidate, suffix = root / f'{base}-{suffix}', suffix + 1
        if candidate.parent != root:  # check_name allows no separators; this is the last guard
            raise JobError(f'run name {shown_value(name)} would leave the runs folder')
        return candidate

    # --- the queue -------------------------------------------------------------------------------

    def poll(self) -> None:
        """Reap finished children, finish overdue cancels, and start queued jobs while slots are free."""
        with self._lock:
            for name, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[name]
            jobs = self.list()
            for job in jobs:
                if job['state'] == 'running' and job.get('cancel_requested'):
                    if time.time() - job['cancel_requested'] > self.cancel_grace_s:
                        self._signal(job['name'], signal.SIGKILL)
            running = sum(job['state'] == 'running' for job in jobs)
            queued = sorted((job for job in jobs if job['state'] == 'queued'), key=lambda job: job['queued'])
            for job in queued[:max(0, self.limits.max_concurrent - running)]:
                self._launch(job['name'])

    def _launch(self, name: str) -> None:
        run = self.runs_dir / name
        record = read_json(run / 'job.json') or {}
        methods = record.get('methods')
        folders = [run / method for method in methods] if methods else [run]
        if all(RunFolder(folder).config_file.is_file() for folder in folders):
            # A run that got going before: continue from its last checkpoint (a group's students together).
            command = [self.python, '-m', 'advit', 'train', '--resume', *map(str, folders)]
        else:
            command = [self.python, '-m', 'advit', 'train', '--config', str(run / 'request.json'),
                       *(['--methods', ','.join(methods)] if methods else [])]
        with open(run / 'output.log', 'ab') as output:
            # The interpreter by name: its folder is the server's business, and the output is shown to clients.
            output.write(f'\n$ {" ".join([Path(self.python).name, *command[1:]])}\n'.encode())
            output.flush()
            child = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED='1'))
        self._children[name] = child
        record.setdefault('launches', []).append(
            {'pid': child.pid, 'started': time.time(), 'process_start': _process_start(child.pid)})
        record.pop('cancel_requested', None)
        write_json(run / 'job.json', record)

    def start_scheduler(self, interval: float = 1.0) -> threading.Thread:
        """Poll in a daemon thread, so the queue moves with no browser open."""
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.poll()
                except Exception:  # a bad run folder must not stop the queue
                    pass
        thread = threading.Thread(target=loop, name='advit-jobs', daemon=True)
        thread.start()
        return thread

    def stop_scheduler(self) -> None:
        self._stop.set()

    # --- state -----------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every job in the runs folder, newest first."""
        records = self.runs_dir.glob('*/job.json') if self.runs_dir.is_dir() else []
        jobs = [self.status(record.parent.name) for record in records]
        return sorted(jobs, key=lambda job: job['queued'], reverse=True)

    def status(self, name: str) -> dict[str, Any]:
        """A job's state from its files and its process: job.json, status.json, and whether it lives."""
        run = self._run(name)
        record = read_json(run / 'job.json')
        if record is None:
            raise JobError(f'{shown_value(name)} is not a job (no job.json)')
        request = read_json(run / 'request.json') or {}
        methods = record.get('methods')
        reported = _group_status([run / method for method in methods]) if methods else \
            RunFolder(run).status()
        job = {'name': run.name, 'queued': record.get('queued', 0.0),
               'method': ','.join(methods) if methods else request.get('method'), 'methods': methods,
               'model': request.get('model'), 'cancel_requested': record.get('cancel_requested'),
               'step': reported.get('step'), 'total_steps': reported.get('total_steps'),
               'progress': reported.get('progress'), 'eta_s': reported.get('eta_s'),
               'best_val_top1': reported.get('best_val_top1'), 'error': None}
        launches = record.get('launches', [])
        if record.get('state') == 'cancelled':
            job['state'] = 'cancelled'
        elif not launches:
            job['state'] = 'queued'
        else:
            launch = launches[-1]
            job['started'] = launch['started']
            alive = launch.get('process_start') is not None and _process_start(launch['pid']) == launch['process_start']
            fresh = reported.get('updated', 0) >= launch['started']  # written by this launch, not an earlier one
            final = fresh and reported.get('state') in FINAL
            if alive and not final:
                job['state'] = 'running'
            elif final:
                job['state'] = reported['state']
                job['error'] = reported.get('error')
            elif job['cancel_requested']:
                job['state'] = 'cancelled'
            else:
                job['state'] = 'failed'
                job['error'] = 'the process ended without reporting (killed, or the machine restarted):\n' + \
                    self.log_tail(name, 15)
        if job['state'] == 'failed' and not job['error']:
            job['error'] = self.log_tail(name, 15)
        return job

    def students(self, name: str) -> dict[str, Path]:
        """Each student's run folder by method: a group job's subfolders in its order, or a one-student
        job's own folder."""
        run = self._run(name)
        record = read_json(run / 'job.json') or {}
        if record.get('methods'):
            return {method: run / method for method in record['methods']}
        return {(read_json(run / 'request.json') or {}).get('method', TrainConfig.method): run}

    def metrics(self, name: str, method: str | None = None) -> list[dict[str, Any]]:
        """The run's metrics lines (of a group job, its ``method`` student's); a torn or corrupt line is skipped."""
        folder = self._run(name)
        if method is not None:  # the job's records say which students it has
            folders = self.students(name)
            if method not in folders:
                raise JobError(f'{name} has no {shown_value(method)} student: it has {", ".join(folders)}')
            folder = folders[method]
        return read_metrics(folder)

    def test_result(self, name: str, method: str | None = None) -> tuple[int, float] | None:
        """(step, test top-1) of the run's (of a group job, its ``method`` student's) checkpoint selected on
        validation, from its evaluation file once the run has finished; None before."""
        folder = self.students(name).get(method) if method is not None else self._run(name)
        evaluation = read_evaluation(RunFolder(folder).best) if folder is not None else None
        top1 = recorded_test_top1(evaluation, {})
        step = evaluation.get('step') if evaluation is not None else None
        return (step, top1) if isinstance(step, int) and top1 is not None else None

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines of the job's output."""
        path = self._run(name) / 'output.log'
        if not path.is_file():
            return ''
        with open(path, 'rb') as f:
            f.seek(max(0, path.stat().st_size - 64 * 1024))
            return '\n'.join(f.read().decode(errors='replace').splitlines()[-lines:])

    # --- actions ---------------------------------------------------------------------------------

    def cancel(self, name: str) -> dict[str, Any]:
        """Cancel a queued job, or stop a running one: SIGTERM to its process group (the run saves ``last``
        at its next step and exits), SIGKILL only after ``cancel_grace_s``."""
        with self._lock:
            job = self.status(name)
            run = self._run(name)
            record = read_json(run / 'job.json') or {}
            if job['state'] == 'queued':
                record['state'] = 'cancelled'
            elif job['state'] == 'running':
                record['cancel_requested'] = time.time()
                self._signal(name, signal.SIGTERM)
            else:
                raise JobError(f'{name} is {job["state"]}: only queued or running jobs can be cancelled')
            write_json(run / 'job.json', record)
        return self.status(name)

    def resume(self, name: str) -> dict[str, Any]:
        """Queue a cancelled or failed job again; it continues from its last checkpoint."""
        with self._lock:
            job = self.status(name)
            if job['state'] not in ('cancelled', 'failed'):
                raise JobError(f'{name} is {job["state"]}: only cancelled or failed jobs can be resumed')
            run = self._run(name)
            record = read_json(run / 'job.json') or {}
            record.pop('state', None)
            record.pop('cancel_requested', None)
            record['queued'] = time.time()
            record['resumed_launches'] = len(record.get('launches', []))
            record['launches'] = []  # queued again: the next launch is its only one
            write_json(run / 'job.json', record)
        self.poll()
        return self.status(name)

    def _signal(self, name: str, signum: int) -> None:
        record = read_json(self._run(name) / 'job.json') or {}
        launch = (record.get('launches') or [None])[-1]
        if launch and _process_start(launch['pid']) == launch.get('process_start'):
            try:
                os.killpg(launch['pid'], signum)  # the job leads its own process group
            except ProcessLookupError:
                pass

    def _run(self, name: Any) -> Path:
        if not isinstance(name, str) or not name or '\x00' in name or len(name) > 255:  # before any path is built
            raise JobError(f'{shown_value(name)} is not a job\'s name: {NAME_RULE}')
        root = self.runs_dir.resolve()
        run = (root / name).resolve()
        if run.parent != root:
            raise JobError(f'{shown_value(name)} is not a run in {root}')
        return run
