"""Background jobs: real ``python -m advit train`` processes launched, queued, cancelled, resumed, killed and
found again by a new manager, on tiny models and the real CIFAR-10 archive."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from advit.core.checkpoint import load_checkpoint
from advit.training.jobs import ACTIVE, JobError, JobLimits, JobManager, check_name
from conftest import TINY, group_gone, kill_jobs, wait_until

pytestmark = pytest.mark.slow  # launches training jobs as processes: `make test`, not `make check`

LONG = 100_000  # steps: a job that runs until it is cancelled or killed


def job_settings(archive: Path, **overrides) -> dict:
    """TrainConfig fields for a tiny run of 256 images on the real archive."""
    return dict(dict(method='vit', model='vit_tiny_patch4_32', model_args=dict(TINY), data=str(archive),
                     subset=256, test_subset=64, batch_size=64, log_every=1, device='cpu', steps=3), **overrides)


def group_settings(archive: Path, teacher: Path | str, methods=('vit', 'advit_l1'), **overrides) -> dict:
    """A tiny group job: one student per method (``methods`` as given), 128 validation images."""
    settings = job_settings(archive, val_size=128, teacher=str(teacher), **overrides)
    del settings['method']
    return dict(settings, methods=list(methods) if isinstance(methods, tuple) else methods)


def record(manager: JobManager, name: str) -> dict:
    return json.loads((manager.runs_dir / name / 'job.json').read_text())


def last_pid(manager: JobManager, name: str) -> int:
    return record(manager, name)['launches'][-1]['pid']


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def running_at(manager: JobManager, name: str, step: int = 1) -> dict | None:
    """The job's status once its latest launch runs and has itself reported at least ``step`` steps (a
    group job: every student)."""
    job = manager.status(name)
    launches = record(manager, name)['launches']
    reports = [read_json(folder / 'status.json') for folder in manager.students(name).values()]
    if job['state'] == 'running' and launches and all(
            reported.get('updated', 0) >= launches[-1]['started'] and (reported.get('step') or 0) >= step
            for reported in reports):
        return job
    return None


@pytest.fixture
def jobs(tmp_path, cifar):
    """A maker of JobManagers over ``tmp_path/runs``; every process any of them launched is killed afterwards.

    ``cifar`` warms the decode cache that the job processes share through ADVIT_CACHE.
    """
    made: list[JobManager] = []
    extra: list[tuple[int, str | None]] = []  # (pid, process start) of launches a job.json no longer lists

    def make(limits: JobLimits | None = None) -> JobManager:
        manager = JobManager(tmp_path / 'runs', limits or JobLimits())
        made.append(manager)
        return manager

    def remember(manager: JobManager, name: str) -> None:
        launch = record(manager, name)['launches'][-1]
        extra.append((launch['pid'], launch['process_start']))

    make.remember = remember
    yield make
    for manager in made:
        manager.stop_scheduler()
    kill_jobs(tmp_path / 'runs', made, extra)


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['v1.2_ok-3', 'a', 'run-1', 'x' * 80])
def test_a_clean_name_is_taken_as_it_is(name):
    assert check_name(name) == name


@pytest.mark.parametrize('name', ['../../x', 'a/b', 'a\\b', '  my run  ', '.hidden', '-x', 'a..b', 'héllo', '學習',
                                  '..', '', '/', 'x\x00y', 'x' * 81, None, 3])
def test_any_other_name_is_refused_with_the_rule_not_rewritten(name):
    with pytest.raises(JobError, match='is not taken: a run name is 1 to 80 letters, digits'):
        check_name(name)


def test_submitted_folders_stay_inside_the_runs_folder_and_get_unique_names(tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=0))  # nothing launches: only the folders are looked at
    runs = (tmp_path / 'runs').resolve()
    names = [manager.submit(name, job_settings(cifar_archive)) for name in ('ok', None, None, 'vit-9')]
    assert names == ['ok', 'vit', 'vit-2', 'vit-9']  # without a name, the method's, numbered when taken
    for name in ('../../escape', 'a/b', 'ünïcode run'):
        with pytest.raises(JobError, match='is not taken'):
            manager.submit(name, job_settings(cifar_archive))
    with pytest.raises(JobError, match='a run named ok exists: choose another name'):
        manager.submit('ok', job_settings(cifar_archive))
    for name in names:
        folder = (runs / name).resolve()
        assert folder.parent == runs and (folder / 'request.json').is_file() and (folder / 'job.json').is_file()
        assert json.loads((folder / 'request.json').read_text())['out'] == str(folder)
    assert sorted(path.name for path in runs.iterdir()) == sorted(names)
    assert sorted(path.name for path in tmp_path.iterdir()) == ['runs'], 'nothing written beside the runs folder'
    assert {job['name']: job['state'] for job in manager.list()} == dict.fromkeys(names, 'queued')
    with pytest.raises(JobError, match='is not taken'):
        manager.submit('../..', job_settings(cifar_archive))
    for trick in ('../ok', '..', '', 'ok/../../x'):
        with pytest.raises(JobError):
            manager.status(trick)


# --- submitting ---------------------------------------------------------------------------------


@pytest.mark.parametrize('overrides, message', [
    (dict(method='advit_l3'), "unknown method 'advit_l3'"),
    (dict(method='advit_l1'), 'needs a teacher'),
    (dict(data='/nowhere/cifar.tar.xz'), 'dataset not found: /nowhere/cifar.tar.xz'),
    (dict(steps=0), r'steps must be between 1 and 1e\+12, got 0'),
    (dict(steps=-5), r'steps must be between 1 and 1e\+12, got -5'),
    (dict(steps=2.0), 'steps must be a whole number, got 2.0'),
    (dict(lr='0.001'), "lr must be a number, got the text '0.001'"),
    (dict(steps=None), 'give a run length'),
    (dict(model='vit_nonexistent_patch4_32'), 'unknown model'),
    (dict(bogus=1), 'unknown config fields: bogus'),
])
def test_submit_refuses_a_bad_request_and_leaves_nothing(overrides, message, tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=0))
    with pytest.raises(JobError, match=message):
        manager.submit('bad', job_settings(cifar_archive, **overrides))
    runs = tmp_path / 'runs'
    assert not runs.exists() or list(runs.iterdir()) == []
    assert manager.list() == []


# --- limits -------------------------------------------------------------------------------------


def test_max_steps_caps_every_job_and_refuses_more(tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=0, max_steps=5))

    def steps(name: str) -> int:
        return json.loads((tmp_path / 'runs' / name / 'request.json').read_text())['steps']

    with pytest.raises(JobError, match='6 steps asked for: the limit here is 5'):
        manager.submit('many', job_settings(cifar_archive, steps=6))
    assert not (tmp_path / 'runs').exists() or list((tmp_path / 'runs').iterdir()) == []
    assert steps(manager.submit('five', job_settings(cifar_archive, steps=5))) == 5
    assert steps(manager.submit('epochs', job_settings(cifar_archive, steps=None, epochs=1.0))) == 5
    assert steps(manager.submit('budget', job_settings(cifar_archive, steps=None, time_budget=3600.0))) == 5
    # Epochs are held to the same limit in steps (256 images in batches of 64: 4 a epoch), not cut short.
    with pytest.raises(JobError, match='2 epochs of 256 images in batches of 64 are 8 steps: the limit here is 5'):
        manager.submit('two-epochs', job_settings(cifar_archive, steps=None, epochs=2.0))
    with pytest.raises(JobError, match='1 epochs of 45000 images in batches of 64 are 703 steps'):  # all, less 5000 held out
        manager.submit('all', job_settings(cifar_archive, steps=None, epochs=1.0, subset=None))


def test_max_seconds_sets_or_clamps_the_time_budget(tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=0, max_seconds=30))

    def budget(name: str) -> float:
        return json.loads((tmp_path / 'runs' / name / 'request.json').read_text())['time_budget']

    assert budget(manager.submit('steps-only', job_settings(cifar_archive))) == 30
    assert budget(manager.submit('shorter', job_settings(cifar_archive, time_budget=10.0))) == 10
    assert budget(manager.submit('equal', job_settings(cifar_archive, steps=None, time_budget=30.0))) == 30
    with pytest.raises(JobError, match='a 31s time budget asked for: the limit here is 30s'):
        manager.submit('longer', job_settings(cifar_archive, time_budget=31.0))
    assert sorted(path.name for path in (tmp_path / 'runs').iterdir()) == ['equal', 'shorter', 'steps-only']


def test_limits_from_env(monkeypatch):
    variables = ('ADVIT_MAX_JOBS', 'ADVIT_MAX_QUEUED', 'ADVIT_JOB_MAX_STEPS', 'ADVIT_JOB_MAX_SECONDS',
                 'ADVIT_JOB_MAX_BATCH', 'ADVIT_JOB_MAX_PARAMS')
    for variable in variables:
        monkeypatch.delenv(variable, raising=False)
    assert JobLimits.from_env() == JobLimits() and JobLimits.from_env(public=True) == JobLimits.public()
    # The README's limits table.
    assert JobLimits() == JobLimits(1, 16, 1_000_000, 604_800.0, 4096, 1_000_000_000)
    assert JobLimits.public() == JobLimits(1, 4, 20_000, 3600.0, 256, 30_000_000)
    public, local = JobLimits.public(), JobLimits()
    assert all(getattr(public, name) < getattr(local, name) for name in
               ('max_queued', 'max_steps', 'max_seconds', 'max_batch_size', 'max_params')), 'tighter when public'
    for variable, value in zip(variables, ('3', '5', '500', '90.5', '64', '2e6')):
        monkeypatch.setenv(variable, value)
    limits = JobLimits.from_env(public=True)
    assert limits == JobLimits(max_concurrent=3, max_queued=5, max_steps=500, max_seconds=90.5, max_batch_size=64,
                               max_params=2_000_000)
    assert isinstance(limits.max_steps, int) and isinstance(limits.max_seconds, float)
    monkeypatch.setenv('ADVIT_MAX_JOBS', '')
    monkeypatch.setenv('ADVIT_JOB_MAX_STEPS', '')
    assert JobLimits.from_env().max_concurrent == 1 and JobLimits.from_env().max_steps == local.max_steps
    monkeypatch.setenv('ADVIT_JOB_MAX_BATCH', 'lots')
    with pytest.raises(JobError, match="ADVIT_JOB_MAX_BATCH='lots' is not a number"):
        JobLimits.from_env()


def test_the_queue_is_bounded(tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=0, max_queued=2))
    manager.submit('one', job_settings(cifar_archive))
    manager.submit('two', job_settings(cifar_archive))
    with pytest.raises(JobError, match='2 jobs are queued or running, the most this server takes'):
        manager.submit('three', job_settings(cifar_archive))
    manager.cancel('one')
    assert manager.submit('three', job_settings(cifar_archive)) == 'three', 'a cancelled job frees its place'


@pytest.mark.parametrize('overrides, message', [
    (dict(batch_size=65_536), 'batch size 65536: the limit here is 1 to 256'),
    (dict(steps=10**9), '1000000000 steps asked for: the limit here is 20000'),
    (dict(steps=None, time_budget=3.5e8), 'a 350000000s time budget asked for: the limit here is 3600s'),
    (dict(model='vit_base_patch4_32', model_args={}), '85.2M parameters: the limit here is 30.0M'),
    (dict(model_args={'checkpoint_path': '/etc/passwd'}), 'not an architecture argument: checkpoint_path'),
    (dict(model_args={'img_size': 64}), 'img_size is set by the run itself: use --image-size'),
    (dict(model_args={'drop_path_rate': 0.2}), 'drop_path_rate is set by the run itself: use --drop-path'),
    (dict(model_args={'depth': 2, 'embed_dim': 50, 'num_heads': 3}), 'cannot build vit_tiny_patch4_32'),
])
def test_public_limits_refuse_before_anything_is_written(overrides, message, tmp_path, cifar_archive, jobs):
    manager = jobs(replace(JobLimits.public(), max_concurrent=0))
    with pytest.raises(JobError, match=re.escape(message)):
        manager.submit('big', job_settings(cifar_archive, **overrides))
    assert not (tmp_path / 'runs').exists() or list((tmp_path / 'runs').iterdir()) == []


# --- lifecycle with real processes ---------------------------------------------------------------


def test_queue_runs_jobs_one_at_a_time_to_the_end(tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=1))
    first = manager.submit('first', job_settings(cifar_archive))
    second = manager.submit('second', job_settings(cifar_archive, seed=1))
    third = manager.submit('third', job_settings(cifar_archive))
    assert manager.status(first)['state'] == 'running', 'submit starts a job when a slot is free'
    assert [manager.status(name)['state'] for name in (second, third)] == ['queued', 'queued']
    cancelled = manager.cancel(third)
    assert cancelled['state'] == 'cancelled'
    with pytest.raises(JobError, match='only queued or running jobs can be cancelled'):
        manager.cancel(third)
    manager.start_scheduler(interval=0.1)  # from here on the scheduler thread alone moves the queue

    def second_and_third_while_first_runs():
        middle, after = manager.status(second), manager.status(third)
        # The first is still running after the others were read, so no poll had yet seen it end.
        return manager.status(first)['state'] == 'running' and (middle, after)
    middle, after = wait_until('the first job is seen running', second_and_third_while_first_runs, 60)
    assert middle['state'] == 'queued' and after['state'] == 'cancelled'

    wait_until('both jobs finish', lambda: all(manager.status(name)['state'] == 'finished'
                                               for name in (first, second)), 120)
    for name in (first, second):
        job = manager.status(name)
        assert job['step'] == job['total_steps'] == 3 and job['progress'] == 1.0 and job['error'] is None
        assert job['method'] == 'vit' and job['model'] == 'vit_tiny_patch4_32'
        assert isinstance(job['best_val_top1'], float) and 0 <= job['best_val_top1'] <= 100
        reported = json.loads((tmp_path / 'runs' / name / 'status.json').read_text())
        assert reported['state'] == 'finished' and reported['step'] == 3
        metrics = manager.metrics(name)
        assert [line['step'] for line in metrics if line['event'] == 'train'] == [1, 2, 3]
        assert [line['best_val_top1'] for line in metrics if line['event'] == 'eval'] == [job['best_val_top1']]
        assert len(record(manager, name)['launches']) == 1
        assert f'--config {tmp_path / "runs" / name / "request.json"}' in manager.log_tail(name)
    # One at a time: the second was launched only after the first had reported its end.
    first_end = json.loads((tmp_path / 'runs' / first / 'status.json').read_text())['updated']
    assert record(manager, second)['launches'][0]['started'] >= first_end
    # The queued job that was cancelled never ran, however often the queue moved.
    manager.poll()
    assert manager.status(third)['state'] == 'cancelled'
    assert record(manager, third)['launches'] == [] and not (tmp_path / 'runs' / third / 'output.log').exists()
    with pytest.raises(JobError, match='first is finished: only queued or running jobs can be cancelled'):
        manager.cancel(first)
    with pytest.raises(JobError, match='first is finished: only cancelled or failed jobs can be resumed'):
        manager.resume(first)
    assert [job['name'] for job in manager.list()] == [third, second, first], 'newest first'


def test_cancel_saves_the_last_checkpoint_and_resume_continues_from_it(tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=1))
    name = manager.submit('long', job_settings(cifar_archive, steps=LONG))
    run = tmp_path / 'runs' / name
    wait_until('the job runs its first steps', lambda: running_at(manager, name, 2), 60, manager)
    pid = last_pid(manager, name)
    with pytest.raises(JobError, match='only cancelled or failed jobs can be resumed'):
        manager.resume(name)
    asked = time.monotonic()
    manager.cancel(name)
    assert record(manager, name)['cancel_requested'] is not None
    job = wait_until('the job is cancelled', lambda: (job := manager.status(name))['state'] == 'cancelled' and job,
                     10, manager)
    wait_until('the process group is gone', lambda: group_gone(pid), 10 - (time.monotonic() - asked), manager)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    stopped_at = job['step']
    assert 2 <= stopped_at < LONG and job['error'] is None
    assert json.loads((run / 'status.json').read_text())['state'] == 'cancelled'
    last = load_checkpoint(run / 'last.safetensors')
    assert last.meta['progress']['step'] == stopped_at
    assert sum(p.numel() for p in last.model.parameters()) == last.meta['params']
    with pytest.raises(JobError, match='only queued or running jobs can be cancelled'):
        manager.cancel(name)

    resumed = manager.resume(name)
    assert resumed['state'] in ACTIVE and resumed['cancel_requested'] is None
    assert record(manager, name)['resumed_launches'] == 1 and len(record(manager, name)['launches']) == 1
    job = wait_until('the resumed job goes past its saved step',
                     lambda: running_at(manager, name, stopped_at + 1), 60, manager)
    assert job['step'] > stopped_at
    assert f'resumed from {run / "last.safetensors"} at step {stopped_at}' in (run / 'train.log').read_text()
    assert f'--resume {run}' in (run / 'output.log').read_text()
    new_pid = last_pid(manager, name)
    assert new_pid != pid

    manager.cancel(name)
    job = wait_until('the resumed job is cancelled', lambda: (job := manager.status(name))['state'] == 'cancelled'
                     and job, 10, manager)
    wait_until('the resumed process group is gone', lambda: group_gone(new_pid), 10, manager)
    steps = [line['step'] for line in manager.metrics(name) if line['event'] == 'train']
    assert steps == list(range(1, job['step'] + 1)), 'each step logged once across the two launches'


def test_a_cancelled_job_that_cannot_stop_is_killed_only_after_the_grace(tmp_path, cifar_archive, jobs):
    """A job busy where it cannot see the request (here: stopped, as a long CPU evaluation would be
    between steps) keeps its process until the grace has passed; only then is its group killed."""
    assert JobManager(tmp_path / 'default').cancel_grace_s == 120.0, 'the stated default'
    manager = jobs(JobLimits(max_concurrent=1))
    manager.cancel_grace_s = 4.0
    name = manager.submit('busy', job_settings(cifar_archive, steps=LONG))
    wait_until('the job runs its first steps', lambda: running_at(manager, name, 2), 60, manager)
    pid = last_pid(manager, name)
    os.killpg(pid, signal.SIGSTOP)  # SIGTERM now waits, unhandled
    asked = time.monotonic()
    manager.cancel(name)
    while time.monotonic() - asked < 3.0:
        manager.poll()
        assert not group_gone(pid), f'killed {time.monotonic() - asked:.1f}s into a 4s grace'
        time.sleep(0.2)
    wait_until('the group is killed after the grace', lambda: group_gone(pid), 10, manager)
    assert time.monotonic() - asked >= 4.0
    assert manager.status(name)['state'] == 'cancelled'


def test_resume_right_after_a_cancel_reports_the_new_launch(cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=1))
    name = manager.submit('quick', job_settings(cifar_archive, steps=LONG))
    wait_until('the job runs', lambda: running_at(manager, name, 1), 60, manager)
    manager.cancel(name)
    deadline = time.monotonic() + 10
    while manager.status(name)['state'] != 'cancelled':
        assert time.monotonic() < deadline, 'not cancelled within 10 s'
        time.sleep(0.01)
    state = manager.resume(name)['state']
    jobs.remember(manager, name)
    try:
        manager.resume(name)
        second_resume = 'allowed'
        jobs.remember(manager, name)
    except JobError:
        second_resume = 'refused'
    assert (state, second_resume) in (('queued', 'refused'), ('running', 'refused'))


def test_a_killed_job_is_failed_and_a_new_manager_sees_and_cancels_running_jobs(tmp_path, cifar_archive, jobs):
    old = jobs(JobLimits(max_concurrent=1))
    name = old.submit('survivor', job_settings(cifar_archive, steps=LONG))
    waiting = old.submit('waiting', job_settings(cifar_archive))
    dropped = old.submit('dropped', job_settings(cifar_archive))
    old.cancel(dropped)
    wait_until('the job runs', lambda: running_at(old, name, 1), 60, old)
    pid = last_pid(old, name)

    new = jobs(JobLimits(max_concurrent=1))  # as after an app restart: only the files are shared
    states = [(job['name'], job['state']) for job in new.list()]
    assert states == [(job['name'], job['state']) for job in old.list()]
    assert states == [(dropped, 'cancelled'), (waiting, 'queued'), (name, 'running')]
    new.poll()
    assert new.status(waiting)['state'] == 'queued', 'the running job holds the one slot for the new manager too'
    assert new.cancel(waiting)['state'] == 'cancelled'

    new.cancel(name)
    wait_until('cancelled through the new manager', lambda: new.status(name)['state'] == 'cancelled', 10, new)
    assert old.status(name)['state'] == 'cancelled'
    wait_until('the process group is gone', lambda: group_gone(pid), 10, new, old)  # old reaps its child
    stopped_at = new.status(name)['step']

    assert new.resume(name)['state'] in ACTIVE
    wait_until('the resumed job runs', lambda: running_at(new, name, stopped_at + 1), 60, new)
    pid = last_pid(new, name)
    os.killpg(pid, signal.SIGKILL)
    job = wait_until('the killed job is failed', lambda: (job := new.status(name))['state'] == 'failed' and job,
                     10, new)
    assert 'ended without reporting' in job['error']
    assert json.loads((tmp_path / 'runs' / name / 'status.json').read_text())['state'] == 'running', \
        'the process never wrote its end: the manager alone knows it failed'
    wait_until('the killed process is reaped', lambda: group_gone(pid), 10, new)
    assert JobManager(tmp_path / 'runs').status(name)['state'] == 'failed'
    with pytest.raises(JobError, match='only queued or running jobs can be cancelled'):
        new.cancel(name)


# --- reading a job -------------------------------------------------------------------------------


def test_metrics_skip_corrupt_and_torn_lines_and_log_tail_gives_the_last_lines(tmp_path, cifar_archive, jobs):
    manager = jobs(JobLimits(max_concurrent=0))
    name = manager.submit('read', job_settings(cifar_archive))
    run = tmp_path / 'runs' / name
    assert manager.metrics(name) == [] and manager.log_tail(name) == ''
    (run / 'metrics.jsonl').write_text(
        '{"event": "train", "step": 1, "loss": 2.3}\n'
        'not json at all\n'
        '[1, 2, 3]\n'
        '\n'
        '{"event": "train", "step": 2, "loss": 2.2}\n'
        '{"event": "eval", "step": 2, "test_top1": 12.5}\n'
        '{"event": "train", "step": 3, "lo')
    assert manager.metrics(name) == [{'event': 'train', 'step': 1, 'loss': 2.3},
                                     {'event': 'train', 'step': 2, 'loss': 2.2},
                                     {'event': 'eval', 'step': 2, 'test_top1': 12.5}]
    (run / 'output.log').write_text(''.join(f'line {i}\n' for i in range(100)))
    assert manager.log_tail(name, 3) == 'line 97\nline 98\nline 99'
    assert manager.log_tail(name).splitlines() == [f'line {i}' for i in range(60, 100)]
    with pytest.raises(JobError, match='not a job'):
        manager.status('missing')
    # What a client may send as a job's name (issue #41): each refused in one short sentence, never echoed
    # whole, never Python's own message ("embedded null byte", "unsupported operand type").
    for sent in ('x' * 100_000, 'a\x00b', 7, ['table1'], None, '', '../outside'):
        for call in (manager.status, manager.cancel, manager.resume, manager.log_tail):
            with pytest.raises(JobError) as refused:
                call(sent)
            message = str(refused.value)
            assert len(message) < 300 and 'null byte' not in message and 'operand' not in message, message


# --- group jobs: several students in one process ---------------------------------------------------


@pytest.mark.parametrize('methods, overrides, message', [
    (['vit', 'vit'], {}, 'method vit is named twice'),
    (['vit', 'advit_l3'], {}, "unknown method 'advit_l3'"),
    (['vit', 'advit_l1'], dict(teacher=None), 'method advit_l1 needs a teacher'),
    ([], {}, 'methods is a list of one or more method names, got []'),
    ('vit,advit_l1', {}, "methods is a list of one or more method names, got 'vit,advit_l1'"),
    (['vit', 'advit_l1'], dict(method='vit'), 'give method or methods, not both'),
    (['vit', 'advit_l1'], dict(steps=0), 'steps must be between 1 and 1e+12, got 0'),
    (['vit', 'advit_l1'], dict(steps=10**9), '1000000000 steps asked for: the limit here is 20000'),
    (['vit', 'advit_l1'], dict(model_args={'checkpoint_path': '/etc/passwd'}), 'not an architecture argument'),
    # 21.3M parameters each are within the public 30M; two students are not: one process holds them all.
    (['vit', 'advit_l1'], dict(model='vit_small_patch4_32', model_args={}),
     'has 21.3M parameters, 42.7M for its 2 students: the limit here is 30.0M'),
])
def test_a_bad_group_request_is_refused_before_anything_is_written(methods, overrides, message, tmp_path,
                                                                   cifar_archive, jobs):
    manager = jobs(replace(JobLimits.public(), max_concurrent=0))
    with pytest.raises(JobError, match=re.escape(message)):
        manager.submit('group', dict(group_settings(cifar_archive, 'teacher.safetensors', methods), **overrides))
    assert not (tmp_path / 'runs').exists() or list((tmp_path / 'runs').iterdir()) == []


def test_a_group_job_is_final_only_once_every_student_is(tmp_path, cifar_archive, jobs):
    """The students' own status files (written here as the group's process would) make one account."""
    manager = jobs(JobLimits(max_concurrent=0))
    name = manager.submit('group', group_settings(cifar_archive, 'teacher.safetensors'))
    run = tmp_path / 'runs' / name
    assert record(manager, name)['methods'] == ['vit', 'advit_l1']
    assert manager.students(name) == {'vit': run / 'vit', 'advit_l1': run / 'advit_l1'}
    assert sorted(path.name for path in run.iterdir()) == ['advit_l1', 'job.json', 'request.json', 'vit']
    assert 'method' not in read_json(run / 'request.json') and 'methods' not in read_json(run / 'request.json')
    job = manager.status(name)
    assert (job['state'], job['method'], job['methods']) == ('queued', 'vit,advit_l1', ['vit', 'advit_l1'])
    launch = {'pid': 1, 'started': time.time() - 5, 'process_start': 'gone'}  # a launch whose process has ended
    (run / 'job.json').write_text(json.dumps(dict(record(manager, name), launches=[launch])))

    def student(method: str, state: str, best: float, **fields) -> None:
        (run / method / 'status.json').write_text(json.dumps(dict(
            state=state, step=3, total_steps=3, progress=1.0, best_val_top1=best, updated=time.time(), **fields)))
    student('vit', 'finished', 20.0)
    student('advit_l1', 'running', 30.0)
    job = manager.status(name)
    assert job['state'] == 'failed' and 'ended without reporting' in job['error'], 'one student never ended'
    student('advit_l1', 'finished', 30.0)
    job = manager.status(name)
    assert (job['state'], job['error'], job['step'], job['best_val_top1']) == ('finished', None, 3, 30.0)
    student('advit_l1', 'failed', 30.0, error='loss is not finite')
    assert (manager.status(name)['state'], manager.status(name)['error']) == ('failed', 'loss is not finite')
    (run / 'vit' / 'metrics.jsonl').write_text('{"event": "train", "step": 1, "loss": 2.3}\n')
    assert manager.metrics(name, 'vit') == [{'event': 'train', 'step': 1, 'loss': 2.3}]
    assert manager.metrics(name, 'advit_l1') == [] and manager.metrics(name) == []
    with pytest.raises(JobError, match="group has no 'deit_hard' student: it has vit, advit_l1"):
        manager.metrics(name, 'deit_hard')


def test_a_group_job_trains_its_students_in_one_process_that_cancels_and_resumes(tmp_path, cifar_archive,
                                                                                teacher_checkpoint, jobs):
    manager = jobs(JobLimits(max_concurrent=1))
    name = manager.submit('group', group_settings(cifar_archive, teacher_checkpoint, steps=LONG))
    run = tmp_path / 'runs' / name
    folders = {method: run / method for method in ('vit', 'advit_l1')}
    wait_until('the group runs its first steps', lambda: running_at(manager, name, 2), 90, manager)
    pid = last_pid(manager, name)
    assert [read_json(folder / 'status.json')['pid'] for folder in folders.values()] == [pid, pid], \
        'one process trains every student'
    assert f'--config {run / "request.json"} --methods vit,advit_l1\n' in (run / 'output.log').read_text()
    asked = time.monotonic()
    manager.cancel(name)
    job = wait_until('the group is cancelled', lambda: (job := manager.status(name))['state'] == 'cancelled' and job,
                     15, manager)
    wait_until('the process group is gone', lambda: group_gone(pid), 15 - (time.monotonic() - asked), manager)
    stopped_at = job['step']
    assert 2 <= stopped_at < LONG and job['error'] is None
    for method, folder in folders.items():
        assert read_json(folder / 'status.json')['state'] == 'cancelled'
        last = load_checkpoint(folder / 'last.safetensors')
        assert last.meta['progress']['step'] == stopped_at and last.meta['method'] == method
        assert read_json(folder / 'config.json')['group'] == ['vit', 'advit_l1']
    assert read_json(folders['vit'] / 'config.json')['teacher'] is None
    assert read_json(folders['advit_l1'] / 'config.json')['teacher'] == str(teacher_checkpoint)

    assert manager.resume(name)['state'] in ACTIVE
    wait_until('the resumed group goes past its saved step', lambda: running_at(manager, name, stopped_at + 1), 90,
               manager)
    assert f'--resume {folders["vit"]} {folders["advit_l1"]}\n' in (run / 'output.log').read_text()
    for folder in folders.values():
        assert f'resumed from {folder / "last.safetensors"} at step {stopped_at}' in (folder / 'train.log').read_text()
    new_pid = last_pid(manager, name)
    assert new_pid != pid
    manager.cancel(name)
    job = wait_until('the resumed group is cancelled', lambda: (job := manager.status(name))['state'] == 'cancelled'
                     and job, 15, manager)
    wait_until('the resumed process group is gone', lambda: group_gone(new_pid), 15, manager)
    for method in folders:
        steps = [line['step'] for line in manager.metrics(name, method) if line['event'] == 'train']
        assert steps == list(range(1, job['step'] + 1)), f'{method}: each step logged once across the two launches'
