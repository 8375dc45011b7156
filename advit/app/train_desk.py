"""The Train tab's logic: a form turned into a job, the job list, one job's live view, and access rules.

The app binds loopback (``127.0.0.1``, Gradio's default) unless ``GRADIO_SERVER_NAME`` says
otherwise. Bound beyond loopback, or on a Hugging Face Space (``SPACE_ID``), it is public: training
is off unless ``ADVIT_JOBS_TOKEN`` is set, the job limits are ``JobLimits.public()``'s, and a failed
job shows its error line, not its traceback. ``ADVIT_JOBS=off`` turns training off anywhere; with a
token set, starting, cancelling and resuming need it.
"""
from __future__ import annotations

import datetime
import hmac
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import plotly.graph_objects as go
import timm

from ..core import models
from ..core.checkpoint import read_metadata
from ..core.checks import shown_value
from ..core.data import OFFICIAL_CIFAR10
from ..core.io import REPO
from ..core.weights import CheckpointError
from ..results.report import (
    TABLE1_COLUMNS,
    ReportError,
    load_run,
    markdown_table,
    table1,
)
from ..training.jobs import JobError, JobLimits, JobManager
from ..training.train import SET_BY_TRAINING, TrainingError, check_setting
from .render import progress_html, students_curves, training_curves
from .scrubber import Scrubber

LIST_HEADERS = ['name', 'method', 'model', 'status', 'progress', 'best val top-1', 'started']
PAPER_STUDENTS = ('vit_tiny_patch16_224', 'vit_small_patch16_224')  # timm's own: the paper's students
LENGTHS = ('epochs', 'steps', 'seconds')
DEVICES = ('auto', 'cpu', 'cuda')


LOOPBACK = ('localhost', '::1')  # and 127.0.0.0/8


def server_name() -> str:
    """The address the app binds: ``GRADIO_SERVER_NAME``, else loopback."""
    return os.environ.get('GRADIO_SERVER_NAME') or '127.0.0.1'


def is_public() -> bool:
    """Whether others can reach the app: bound beyond loopback, or on a Hugging Face Space."""
    name = server_name()
    return 'SPACE_ID' in os.environ or not (name in LOOPBACK or name.startswith('127.'))


def jobs_off_reason() -> str | None:
    """Why training jobs are off here (Markdown for the Train tab), or None when they are on."""
    if os.environ.get('ADVIT_JOBS', '').lower() in ('off', '0', 'false', 'no'):
        return 'Training jobs are off on this deployment (`ADVIT_JOBS=off`).'
    if is_public() and not os.environ.get('ADVIT_JOBS_TOKEN'):
        return (f'Training jobs are off: this server is reachable from other machines (bound to '
                f'`{server_name()}`{", a Hugging Face Space" if "SPACE_ID" in os.environ else ""}) and has no '
                '`ADVIT_JOBS_TOKEN`. Set one to let those who know it start, cancel and resume jobs, or run the '
                'app on your own machine (`make app`, bound to 127.0.0.1).')
    return None


def student_architectures() -> list[str]:
    """The student architectures the form offers: the CIFAR-native models ``advit.core.models`` registers with timm,
    the conv-stem ViTs first (the bundle's: they learn in minutes on a CPU), then the paper's students."""
    cifar = timm.list_models(module=models.__name__.rsplit('.', 1)[-1])
    return sorted(cifar, key=lambda name: 'convstem' not in name) + list(PAPER_STUDENTS)


@dataclass
class JobForm:
    """The Train form: one job's settings as the client sent them (``TrainDesk.start`` checks each), the
    defaults being the page's.

    Args:
        name: The run's folder name (empty: the method's name, numbered when taken).
        method: One method, or several: a group job, one student per method on the same batches with one
            teacher (for the methods that need it) and one run length (a list of one is a one-student job).
        model: The student architecture (a timm name).
        model_args: Architecture arguments, ``depth=6, embed_dim=192``.
        teacher: A teacher checkpoint on offer, by the name listed.
        data: The dataset (the page opens on the app's own, ``TrainDesk.default_data``).
        length: ``epochs``, ``steps`` or ``seconds``; ``amount`` says how many.
        subset: Train on this many images (0 or None: all).
        image_size: The input size in pixels; a teacher's own (224 for the paper's) when there is one.
        start: The student's starting weights, a checkpoint on offer by its listed name (then the architecture and
            image size are its own, and the head is kept when it was trained on the dataset's classes); empty:
            random weights. ``TrainDesk.start_proposal`` gives the form's values for a start.
    """
    name: str = ''
    method: str | list[str] = field(default_factory=lambda: ['advit_l1'])
    model: str = field(default_factory=lambda: student_architectures()[0])
    model_args: str = ''
    teacher: str | None = None
    data: str = ''
    length: str = 'steps'
    amount: float = 200
    lr: float = 1e-3
    attn_weight: float = 1.0
    alpha: float = 0.5
    tau: float = 1.0
    seed: int = 0
    subset: int | None = 0
    batch_size: int = 128
    device: str = 'auto'
    image_size: int = 32
    start: str | None = None


# What the form proposes for a student that starts from a checkpoint: a tenth of the from-scratch learning rate, and
# a short run (the weights already know the task; ``JobForm`` opens on 200 steps of 1e-3 from random weights).
FINE_TUNE = dict(lr=1e-4, length='steps', amount=100)


def teacher_image_size(path: str | None) -> int | None:
    """The input size a teacher checkpoint was trained at (None: no teacher, or a file that does not say)."""
    if not path:
        return None
    try:
        size = read_metadata(path).get('image_size')
    except CheckpointError:
        return None
    return int(size) if isinstance(size, int) else None


def parse_model_args(text: str) -> dict[str, Any]:
    """``depth=6, embed_dim=192`` to a dict (values as JSON where they parse, else strings)."""
    args = {}
    for item in filter(None, (part.strip() for part in (text or '').split(','))):
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise JobError(f'architecture arguments are KEY=VALUE pairs, got {shown_value(item)}')
        try:
            args[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            args[key.strip()] = value.strip()
    return args


@dataclass
class JobView:
    """One job as the Train tab shows it.

    ``table`` and ``table_md``: once the job has finished, its Table 1 (``advit report`` on its
    students' folders: ``report.table1``'s rows, and their Markdown); empty before.
    """
    progress: str
    figure: go.Figure
    log: str
    job: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    table_md: str = ''


class TrainDesk:
    """Jobs as the Train tab offers them.

    Args:
        manager: The job manager over the runs folder.
        token: When set, the token that starting, cancelling and resuming need.
        teachers: When set, gives the teacher checkpoints a job may use (the models on offer);
            a typed path outside them is refused.
        data_roots: When set, the folders a job's dataset must lie in (or the official ``cifar10``
            release, when it is ``default_data``).
        default_data: The app's own dataset (always allowed).
        public: Others reach this server: failed jobs show their error line only.
        scrub: The app's scrubber of server paths (default: one that knows the runs folder).
    """

    def __init__(self, manager: JobManager, token: str | None = None,
                 teachers: Callable[[], dict[str, str]] | None = None, data_roots: list[Path] | None = None,
                 default_data: str | None = None, public: bool = False, scrub: Scrubber | None = None) -> None:
        self.manager, self.token = manager, token or None
        self.teachers, self.data_roots, self.default_data, self.public = teachers, data_roots, default_data, public
        self.scrub = scrub or Scrubber([manager.runs_dir])
        # A finished job's test figures and Table 1 by (name, launch time): the page asks for the job every 2 s, and
        # its files are final, so they are read once.
        self._finished: dict[tuple[str, float | None], FinishedJob] = {}

    @classmethod
    def from_env(cls, runs_dir: Path, teachers: Callable[[], dict[str, str]], data: Path,
                 scrub: Scrubber | None = None) -> 'TrainDesk':
        """Limits and token from the environment (``JobLimits.public()``'s defaults on a public bind);
        datasets confined to ``data``'s folder and ``ADVIT_DATA_ROOTS`` (folders, ``:``-separated)."""
        official = str(data) == OFFICIAL_CIFAR10  # a download: no folder of the app's own to allow
        roots = ([] if official else [(REPO / data).resolve().parent]) + \
            [Path(p) for p in os.environ.get('ADVIT_DATA_ROOTS', '').split(os.pathsep) if p]
        public = is_public()
        shown = str(data) if official else os.path.relpath(REPO / data, REPO)
        return cls(JobManager(runs_dir, JobLimits.from_env(public)), token=os.environ.get('ADVIT_JOBS_TOKEN'),
                   teachers=teachers, data_roots=roots, default_data=shown, public=public, scrub=scrub)

    def _offered(self, name: str | None, role: str = 'teacher') -> str | None:
        """The file of a checkpoint on offer (a teacher, or a student's start), named as the app lists it; anything
        else is refused."""
        if not name:
            return None
        if self.teachers is None:
            path = REPO / name
        else:
            offered = self.teachers()
            if name not in offered:
                raise JobError(f'{role} {shown_value(name)} is not one of the checkpoints on offer (the bundle and '
                               'finished runs)')
            path = Path(offered[name])
        if not path.is_file():
            raise JobError(f'{role} checkpoint not found: {shown_value(name)}')
        return str(path)

    def _start_architecture(self, start: str | None) -> tuple[str, dict[str, Any]] | None:
        """(file, its architecture: model, model arguments and image size) of a student's start on offer, the
        arguments a run sets itself left out (``train.SET_BY_TRAINING``); None for random weights."""
        path = self._offered(start, 'start')
        if path is None:
            return None
        try:
            meta = read_metadata(path)
        except CheckpointError as err:
            raise JobError(f'start {shown_value(start)} cannot be read: {err}') from None
        args = {key: value for key, value in (meta.get('model_args') or {}).items() if key not in SET_BY_TRAINING}
        return path, dict(model=meta.get('model'), model_args=args, image_size=meta.get('image_size'))

    def start_proposal(self, start: str | None) -> dict[str, Any]:
        """The form's values for a student that starts from a checkpoint on offer: its architecture, arguments and
        image size, and a fine-tuning learning rate and length (``FINE_TUNE``); {} for random weights."""
        found = self._start_architecture(start)
        if found is None:
            return {}
        own = found[1]
        return dict(own, model_args=', '.join(f'{key}={json.dumps(value)}' for key, value in own['model_args'].items()),
                    **FINE_TUNE)

    def _start(self, form: JobForm, image_size: int) -> str | None:
        """The checkpoint a student starts from, refused in words unless the form's architecture and image size
        are its own (the form proposes them when a start is chosen): its weights fit no other."""
        found = self._start_architecture(form.start)
        if found is None:
            return None
        path, own = found
        asked = dict(model=form.model, model_args=parse_model_args(form.model_args), image_size=image_size)
        differing = [key for key in own if own[key] != asked[key]]
        if differing:
            raise JobError(f'the student starts from {shown_value(form.start)}, whose ' + ', '.join(
                f'{key.replace("_", " ")} is {shown_value(own[key])}' for key in differing) + ': set the form\'s '
                'to it (choosing the start proposes it)')
        return path

    def _dataset(self, data: str) -> str:
        """The dataset a job may read: the app's own, or an existing, readable path inside the allowed folders
        (relative paths are from the app's folder)."""
        data = (data or '').strip()
        if not data:
            raise JobError('give a dataset')
        if data == self.default_data:
            return data if data == OFFICIAL_CIFAR10 else str(REPO / data)
        if data == OFFICIAL_CIFAR10:
            raise JobError('downloading CIFAR-10 is not offered here: give a dataset on this server')
        resolved = (REPO / data).resolve()
        if self.data_roots is not None and \
                not any(resolved.is_relative_to(root.resolve()) for root in self.data_roots):
            allowed = ', '.join(self.scrub(str(root)) for root in self.data_roots)
            raise JobError(f'dataset {shown_value(data)} is outside the folders this server allows ({allowed})')
        if not resolved.exists():
            raise JobError(f'dataset not found: {shown_value(data)}')
        if not os.access(resolved, os.R_OK | (os.X_OK if resolved.is_dir() else 0)):
            raise JobError(f'dataset {shown_value(data)} cannot be read by this server')
        return str(resolved)

    def teacher_size(self, teacher: str | None) -> int | None:
        """The input size of a teacher on offer, which the form's image size follows (None: none chosen or unknown)."""
        try:
            return teacher_image_size(self._offered(teacher))
        except JobError:
            return None

    def _authorise(self, token: str | None) -> None:
        if self.token is not None and not hmac.compare_digest(str(token or '').encode(), self.token.encode()):
            raise JobError('this server needs a valid token to start, cancel or resume jobs')

    def start(self, form: JobForm, token: str | None = None) -> dict[str, Any]:
        """Queue a training job from the form's values, each checked as it enters; return its status."""
        self._authorise(token)
        if form.length not in LENGTHS:
            raise JobError(f'run length is epochs, steps or seconds, not {shown_value(form.length)}')
        if form.device not in DEVICES:
            raise JobError(f'device is auto, cpu or cuda, not {shown_value(form.device)}')
        length = dict(epochs='epochs', steps='steps', seconds='time_budget')[form.length]
        try:  # every number checked as it enters, against the run's declaration of it (train.BOUNDS)
            numbers = {name: check_setting(name, value, label) for name, value, label in (
                (length, form.amount, f'the number of {form.length}'), ('lr', form.lr, 'learning rate'),
                ('attn_weight', form.attn_weight, 'attention weight'), ('alpha', form.alpha, 'alpha'),
                ('tau', form.tau, 'tau'), ('seed', form.seed, 'seed'), ('batch_size', form.batch_size, 'batch size'),
                ('image_size', form.image_size, 'image size'))}  # the batch size is then held to this server's limit
            if form.subset not in (None, 0, ''):  # 0 or empty: every image
                numbers['subset'] = check_setting('subset', form.subset, 'subset')
        except TrainingError as err:
            raise JobError(str(err)) from None
        teacher = self._offered(form.teacher)
        teacher_size = teacher_image_size(teacher)
        if teacher_size is not None and teacher_size != numbers['image_size']:  # refused here, not minutes later in the job
            raise JobError(f'the teacher reads {teacher_size}px images and the student would read {numbers["image_size"]}px: '
                           f'set the image size to {teacher_size}')
        methods = [form.method] if isinstance(form.method, str) else list(form.method or [])
        # Architecture keys are checked with the rest of the run's settings (train.validate, in submit).
        settings = dict(**({'method': methods[0]} if len(methods) == 1 else {'methods': methods}),
                        model=form.model, model_args=parse_model_args(form.model_args), data=self._dataset(form.data),
                        teacher=teacher, device=form.device, log_every=10,
                        pretrained_file=self._start(form, numbers['image_size']), **numbers)
        return self._shown_job(self.manager.status(self.manager.submit(form.name or None, settings)))

    def cancel(self, name: str, token: str | None = None) -> dict[str, Any]:
        self._authorise(token)
        return self._shown_job(self.manager.cancel(self._known(name)))

    def resume(self, name: str, token: str | None = None) -> dict[str, Any]:
        self._authorise(token)
        return self._shown_job(self.manager.resume(self._known(name)))

    def _known(self, name: str | None) -> str:
        """A job named by any client (not only the one that started it), or a clear error."""
        if not name or not isinstance(name, str):
            raise JobError('choose a job (by its name in the job list)')
        return name

    def _shown_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job's status for a client: no server paths; on a public server, the error's last line only."""
        job = dict(job)
        if job.get('error'):
            error = self.scrub(job['error'])
            job['error'] = _last_line(error) if self.public else error
        return job

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
        """One job, live: progress with step, total and ETA; curves (a group job's: every student's on one
        figure); the end of its output; its error; once it has finished, its Table 1."""
        if not name:
            return JobView('', training_curves([]), '', {})
        job = self._shown_job(self.manager.status(name))
        log = self.scrub(self.manager.log_tail(name))
        if self.public and 'Traceback (most recent call last)' in log:
            log = log[:log.index('Traceback (most recent call last)')] + '(traceback not shown on a public server)'
        if job['state'] == 'failed' and job['error']:
            log = f'FAILED: {job["error"]}\n\n--- output ---\n{log}'
        done = self._finished_job(name, job) if job['state'] == 'finished' else FinishedJob({}, [], '')
        figure = students_curves({method: self.manager.metrics(name, method) for method in job['methods']},
                                 done.tests) if job['methods'] else \
            training_curves(self.manager.metrics(name), done.tests.get(None))
        return JobView(progress=progress_html(job['step'], job['total_steps'], job['progress'], job['eta_s'],
                                              job['state']),
                       figure=figure, log=log, job=job, table=done.table, table_md=done.table_md)

    def _finished_job(self, name: str, job: dict[str, Any]) -> 'FinishedJob':
        """A finished job's test figures (each student's, by method; a one-student job's under None) and Table 1,
        read once per launch."""
        key = (job['name'], job.get('started'))
        if key not in self._finished:
            tests = {method: self.manager.test_result(name, method) for method in job['methods'] or [None]}
            self._finished[key] = FinishedJob(tests, *self._table1(name))
        return self._finished[key]

    def _table1(self, name: str) -> tuple[list[dict[str, Any]], str]:
        """A finished job's Table 1 as ``advit report`` makes it from the job's students' folders: rows
        and Markdown, without server paths (a folder that cannot be reported on: no rows, and why)."""
        try:
            rows = table1([load_run(folder) for folder in self.manager.students(name).values()])
        except ReportError as err:
            return [], self.scrub(f'No Table 1: {err}')
        rows = [{key: self.scrub(value) if isinstance(value, str) else value for key, value in row.items()}
                for row in rows]
        return rows, markdown_table(rows, TABLE1_COLUMNS)


@dataclass
class FinishedJob:
    """What a finished job adds to its view, read once: each student's (step, test top-1) and Table 1."""
    tests: dict[str | None, tuple[int, float] | None]
    table: list[dict[str, Any]]
    table_md: str


def job_summary(job: dict[str, Any] | None) -> str:
    """A job's status in words and a small table (the Train tab's, beside its JSON): what it is, where it
    stands, its best validation top-1, and its error's last line."""
    if not _is_job_status(job):  # the page sends back what it shows: a client may send anything
        return 'No job yet: fill in the form and press Launch, or choose one in the job list.'
    step, total = job.get('step'), job.get('total_steps')
    where = {'queued': 'waits for a free slot', 'running': 'is running', 'finished': 'has finished',
             'cancelled': 'was cancelled', 'failed': 'has failed'}.get(job['state'], job['state'])
    row = dict(job=job['name'], method=job.get('method') or '', model=job.get('model') or '', state=job['state'],
               step=f"{step:,}" + (f" of {total:,}" if total else '') if step is not None else None,
               progress=f"{100 * job['progress']:.0f}%" if job.get('progress') is not None else None,
               best=f"{job['best_val_top1']:.2f}%" if job.get('best_val_top1') is not None else None)
    table = markdown_table([row], [('job', 'job'), ('method', 'method'), ('model', 'model'), ('state', 'state'),
                                   ('step', 'step'), ('progress', 'progress'), ('best', 'best val top-1')]).rstrip()
    error = f"\n\nError: {_last_line(job['error'])}" if job.get('error') else ''
    eta = f", about {job['eta_s'] / 60:.0f} min left" if job['state'] == 'running' and job.get('eta_s') else ''
    return f"Job **{job['name']}** {where}{eta}.\n\n{table}{error}"


# A job status's fields as JobManager.status writes them: (types, required).
_STATUS_FIELDS = {'name': (str, True), 'state': (str, True), 'method': ((str, type(None)), False),
                  'model': ((str, type(None)), False), 'error': ((str, type(None)), False),
                  'step': ((int, type(None)), False), 'total_steps': ((int, type(None)), False),
                  **{key: ((int, float, type(None)), False) for key in ('progress', 'best_val_top1', 'eta_s')}}


def _is_job_status(job: Any) -> bool:
    """Whether ``job`` has a job status's fields, each of its type (a number is not a bool, nor infinite)."""
    if not isinstance(job, dict):
        return False
    for key, (kinds, required) in _STATUS_FIELDS.items():
        if key not in job:
            if required:
                return False
            continue
        value = job[key]
        if not isinstance(value, kinds) or isinstance(value, bool) or \
                (isinstance(value, float) and not math.isfinite(value)):
            return False
    return True


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else text
