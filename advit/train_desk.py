"""The Train tab's logic: a form turned into a job, the job list, one job's live view, and access rules.

On a public deployment (a Hugging Face Space sets ``SPACE_ID``) training is off unless
``ADVIT_JOBS=on``; with ``ADVIT_JOBS_TOKEN`` set, starting, cancelling and resuming need it.
"""
from __future__ import annotations

import datetime
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import plotly.graph_objects as go

from .data import OFFICIAL_CIFAR10
from .jobs import JobError, JobLimits, JobManager
from .render import progress_html, training_curves

LIST_HEADERS = ['name', 'method', 'model', 'status', 'progress', 'best val top-1', 'started']


def jobs_enabled() -> bool:
    """``ADVIT_JOBS`` on/off; by default on, except on a Hugging Face Space."""
    setting = os.environ.get('ADVIT_JOBS', '').lower()
    if setting in ('on', '1', 'true', 'yes'):
        return True
    if setting in ('off', '0', 'false', 'no'):
        return False
    return 'SPACE_ID' not in os.environ


def parse_model_args(text: str) -> dict[str, Any]:
    """``depth=6, embed_dim=192`` to a dict (values as JSON where they parse, else strings)."""
    args = {}
    for item in filter(None, (part.strip() for part in (text or '').split(','))):
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise JobError(f'architecture arguments are KEY=VALUE pairs, got {item!r}')
        try:
            args[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            args[key.strip()] = value.strip()
    return args


@dataclass
class JobView:
    progress: str
    figure: go.Figure
    log: str
    job: dict[str, Any]


class TrainDesk:
    """Jobs as the Train tab offers them.

    Args:
        manager: The job manager over the runs folder.
        token: When set, the token that starting, cancelling and resuming need.
        teachers: When set, gives the teacher checkpoints a job may use (the models on offer);
            a typed path outside them is refused.
        data_roots: When set, the folders a job's dataset must lie in (or ``cifar10``).
    """

    def __init__(self, manager: JobManager, token: str | None = None,
                 teachers: Callable[[], set[str]] | None = None, data_roots: list[Path] | None = None) -> None:
        self.manager, self.token = manager, token or None
        self.teachers, self.data_roots = teachers, data_roots

    @classmethod
    def from_env(cls, runs_dir: Path, teachers: Callable[[], set[str]], data: Path) -> 'TrainDesk':
        """Limits and token from the environment; datasets confined to ``data``'s folder and
        ``ADVIT_DATA_ROOTS`` (folders, ``:``-separated)."""
        roots = [Path(data).resolve().parent] + [Path(p) for p in os.environ.get('ADVIT_DATA_ROOTS', '').split(
            os.pathsep) if p]
        return cls(JobManager(runs_dir, JobLimits.from_env()), os.environ.get('ADVIT_JOBS_TOKEN'), teachers, roots)

    def _confine(self, teacher: str | None, data: str) -> None:
        """Refuse server paths a user typed that lie outside what this server offers."""
        if teacher and self.teachers is not None and teacher not in self.teachers():
            raise JobError(f'teacher {teacher} is not one of the checkpoints on offer (the bundle and finished runs)')
        if self.data_roots is not None and data != OFFICIAL_CIFAR10:
            resolved = Path(data).resolve()
            if not any(resolved.is_relative_to(root.resolve()) for root in self.data_roots):
                allowed = ', '.join(str(root) for root in self.data_roots)
                raise JobError(f'dataset {data} is outside the folders this server allows ({allowed})')

    def _authorise(self, token: str | None) -> None:
        if self.token is not None and not hmac.compare_digest(str(token or '').encode(), self.token.encode()):
            raise JobError('this server needs a valid token to start, cancel or resume jobs')

    def start(self, name: str, method: str, model: str, model_args: str, teacher: str | None, data: str,
              length: str, amount: float, lr: float, attn_weight: float, alpha: float, tau: float, seed: int,
              subset: int | None, batch_size: int, device: str, token: str | None = None) -> dict[str, Any]:
        """Queue a training job from the form's values; return its status.

        Args:
            length: ``epochs``, ``steps`` or ``seconds``; ``amount`` says how many.
            subset: Train on this many images (0 or None: all).
        """
        self._authorise(token)
        if length not in ('epochs', 'steps', 'seconds'):
            raise JobError(f'run length is epochs, steps or seconds, not {length!r}')
        if amount is None or amount <= 0:
            raise JobError(f'the run length must be positive, got {amount}')
        for label, value, low, high in (('learning rate', lr, 1e-8, 1.0), ('attention weight', attn_weight, 0, 1e4),
                                        ('alpha', alpha, 0, 1), ('tau', tau, 1e-3, 100),
                                        ('batch size', batch_size, 1, 65536)):
            if value is None or not low <= value <= high:
                raise JobError(f'{label} must be between {low} and {high}, got {value}')
        settings = dict(method=method, model=model, model_args=parse_model_args(model_args), data=data,
                        teacher=teacher or None, lr=float(lr), attn_weight=float(attn_weight), alpha=float(alpha),
                        tau=float(tau), seed=int(seed), subset=int(subset) if subset else None,
                        batch_size=int(batch_size), device=device, log_every=10,
                        **{dict(epochs='epochs', steps='steps', seconds='time_budget')[length]:
                           int(amount) if length == 'steps' else float(amount)})
        self._confine(settings['teacher'], data)
        if settings['teacher'] is not None and not Path(settings['teacher']).is_file():
            raise JobError(f'teacher checkpoint not found: {settings["teacher"]}')
        return self.manager.status(self.manager.submit(name or method, settings))

    def cancel(self, name: str, token: str | None = None) -> dict[str, Any]:
        self._authorise(token)
        return self.manager.cancel(name)

    def resume(self, name: str, token: str | None = None) -> dict[str, Any]:
        self._authorise(token)
        return self.manager.resume(name)

    def rows(self) -> list[list]:
        """The job list as table rows, newest first."""
        rows = []
        for job in self.manager.list():
            started = job.get('started')
            rows.append([job['name'], job['method'], job['model'], job['state'],
                         f"{100 * (job['progress'] or 0):.0f}%",
                         f"{job['best_val_top1']:.2f}" if job['best_val_top1'] is not None else '',
                         datetime.datetime.fromtimestamp(started).strftime('%Y-%m-%d %H:%M:%S') if started else ''])
        return rows

    def view(self, name: str | None) -> JobView:
        """One job, live: progress with step, total and ETA; curves; the end of its output; its error."""
        if not name:
            return JobView('', training_curves([]), '', {})
        job = self.manager.status(name)
        log = self.manager.log_tail(name)
        if job['state'] == 'failed' and job['error']:
            log = f'FAILED: {job["error"]}\n\n--- output ---\n{log}'
        return JobView(progress=progress_html(job['step'], job['total_steps'], job['progress'], job['eta_s'],
                                              job['state']),
                       figure=training_curves(self.manager.metrics(name)), log=log, job=job)
