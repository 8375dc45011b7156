"""The Train tab's logic: access rules, form validation, the job list and one job's live view, over real jobs."""
from __future__ import annotations

import datetime
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from advit.core.checkpoint import read_metadata
from advit.cli import main
from advit.training.jobs import JobError, JobLimits, JobManager
from advit.results.report import load_run, table1
from advit.app.train_desk import (LIST_HEADERS, JobForm, TrainDesk, jobs_off_reason, parse_model_args,
                              student_architectures)
from conftest import REPO, TINY, kill_jobs, wait_until


def form(archive: Path, **overrides) -> JobForm:
    """The Train form's values for a tiny 3-step run of 256 images."""
    return replace(JobForm(name='tiny-run', method='vit', model='vit_tiny_patch4_32',
                           model_args='depth=2, embed_dim=48, num_heads=3', teacher=None, data=str(archive),
                           length='steps', amount=3, lr=1e-3, attn_weight=1.0, alpha=0.5, tau=1.0, seed=0, subset=256,
                           batch_size=64, device='cpu'), **overrides)


@pytest.fixture
def desks(tmp_path, cifar):
    """A maker of TrainDesks over ``tmp_path/runs``; every job process is killed afterwards."""
    made: list[JobManager] = []

    def make(token: str | None = None, limits: JobLimits | None = None) -> TrainDesk:
        manager = JobManager(tmp_path / 'runs', limits or JobLimits(max_concurrent=0))  # 0: nothing launches
        made.append(manager)
        return TrainDesk(manager, token)

    yield make
    kill_jobs(tmp_path / 'runs', made)


def run_folders(tmp_path: Path) -> list[str]:
    runs = tmp_path / 'runs'
    return sorted(path.name for path in runs.iterdir()) if runs.is_dir() else []


# --- access --------------------------------------------------------------------------------------


@pytest.mark.parametrize('bind, space, token, setting, on', [
    (None, False, None, None, True),  # loopback, Gradio's default: one's own machine
    ('127.0.0.1', False, None, None, True), ('localhost', False, None, None, True), ('::1', False, None, 'on', True),
    ('127.0.0.1', False, None, 'off', False),
    ('0.0.0.0', False, None, None, False), ('0.0.0.0', False, None, 'on', False),  # public: a token or nothing
    ('192.168.1.5', False, None, 'on', False),
    ('0.0.0.0', False, 's3cret', None, True), ('0.0.0.0', False, 's3cret', 'off', False),
    ('127.0.0.1', True, None, 'on', False), ('0.0.0.0', True, 's3cret', None, True),  # a Space is public
])
def test_jobs_are_on_on_loopback_and_need_a_token_beyond_it(monkeypatch, bind, space, token, setting, on):
    for name, value in (('GRADIO_SERVER_NAME', bind), ('SPACE_ID', 'someone/advit' if space else None),
                        ('ADVIT_JOBS_TOKEN', token), ('ADVIT_JOBS', setting)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    reason = jobs_off_reason()
    assert (reason is None) is on
    if not on:
        assert ('ADVIT_JOBS=off' in reason) if setting == 'off' else ('ADVIT_JOBS_TOKEN' in reason)


def test_from_env_reads_limits_and_token(monkeypatch, tmp_path):
    monkeypatch.setenv('ADVIT_MAX_JOBS', '2')
    monkeypatch.setenv('ADVIT_JOB_MAX_STEPS', '10')
    monkeypatch.delenv('ADVIT_JOB_MAX_SECONDS', raising=False)
    monkeypatch.delenv('GRADIO_SERVER_NAME', raising=False)
    monkeypatch.delenv('SPACE_ID', raising=False)
    monkeypatch.setenv('ADVIT_JOBS_TOKEN', 's3cret')
    monkeypatch.setenv('ADVIT_DATA_ROOTS', str(tmp_path / 'more'))
    data = tmp_path / 'data' / 'cifar.tar.xz'
    desk = TrainDesk.from_env(tmp_path / 'runs', set, data)
    assert desk.token == 's3cret' and desk.manager.runs_dir == tmp_path / 'runs'
    assert desk.manager.limits == JobLimits(max_concurrent=2, max_steps=10) and not desk.public
    monkeypatch.setenv('GRADIO_SERVER_NAME', '0.0.0.0')
    public = TrainDesk.from_env(tmp_path / 'runs', set, data)
    assert public.public and public.manager.limits == replace(JobLimits.public(), max_concurrent=2, max_steps=10)
    assert desk.data_roots == [data.parent.resolve(), tmp_path / 'more']
    monkeypatch.setenv('ADVIT_JOBS_TOKEN', '')
    assert TrainDesk.from_env(tmp_path / 'runs', set, data).token is None, 'an empty token means no token'


def test_the_form_offers_the_registered_students_and_opens_on_its_defaults():
    """The architectures are the ones advit.core.models registers (the bundle's conv-stem ViTs first) and the
    paper's; the form's request opens on the first, every one of them buildable."""
    import timm
    import torch
    from advit.core.models import create_model
    names = student_architectures()
    assert names[:3] == ['vit_mini4_convstem_32', 'vit_mini6_convstem_32', 'vit_tiny6_convstem_32']
    assert names[-2:] == ['vit_tiny_patch16_224', 'vit_small_patch16_224'] and len(set(names)) == len(names)
    assert {'vit_tiny_patch4_32', 'deit_tiny_distilled_patch4_32', 'deit_base_distilled_patch4_32'} <= set(names)
    assert all(timm.is_model(name) for name in names)
    with torch.device('meta'):
        create_model(names[0])
    defaults = JobForm()
    assert (defaults.model, defaults.method, defaults.length, defaults.device) == (names[0], ['advit_l1'], 'steps', 'auto')


def test_the_desk_names_folders_as_the_app_does(tmp_path):
    """One scrubber for the app and the desk: the runs folder by its name, the app's folder relative, any
    other absolute path by its file."""
    from advit.app.scrubber import Scrubber
    manager = JobManager(tmp_path / 'runs', JobLimits(max_concurrent=0))
    scrub = Scrubber([tmp_path / 'bundle', tmp_path / 'runs'])
    assert TrainDesk(manager, scrub=scrub).scrub is scrub
    default = TrainDesk(manager).scrub
    text = f'{tmp_path}/runs/x/best.safetensors, {REPO}/advit/training/train.py, {REPO}, /usr/lib/python3/os.py'
    assert default(text) == 'runs/x/best.safetensors, advit/training/train.py, ., .../os.py'
    assert scrub(f'{tmp_path}/bundle/teacher.safetensors') == 'bundle/teacher.safetensors'


def test_parse_model_args():
    assert parse_model_args('depth=2, embed_dim=48') == {'depth': 2, 'embed_dim': 48}
    assert parse_model_args(' depth = 2 ,, qkv_bias=false, act_layer=gelu ') == \
        {'depth': 2, 'qkv_bias': False, 'act_layer': 'gelu'}
    assert parse_model_args('') == {} and parse_model_args(None) == {}
    for bad in ('depth', 'depth=2, 48', '=3'):
        with pytest.raises(JobError, match='KEY=VALUE'):
            parse_model_args(bad)


# --- starting ------------------------------------------------------------------------------------


@pytest.mark.parametrize('overrides, message', [
    (dict(length='minutes'), "run length is epochs, steps or seconds, not 'minutes'"),
    (dict(amount=0), 'the number of steps must be between 1 and 1e\\+12, got 0'),
    (dict(amount=-2.5), 'the number of steps must be a whole number, got -2.5'),
    (dict(length='epochs', amount=-2.5), 'the number of epochs must be between 1e-06 and 1e\\+06, got -2.5'),
    (dict(length='seconds', amount=float('inf')), 'the number of seconds must be a finite number, got inf'),
    (dict(amount=None), 'the number of steps must be a number, got None'),
    (dict(lr=0.0), 'learning rate must be between'),
    (dict(lr=2.0), 'learning rate must be between'),
    (dict(lr=None), 'learning rate must be a number, got None'),
    (dict(lr=float('nan')), 'learning rate must be a finite number, got nan'),
    (dict(attn_weight=-1.0), 'attention weight must be between'),
    (dict(alpha=1.5), 'alpha must be between 0 and 1, got 1.5'),
    (dict(tau=0.0), 'tau must be between'),
    (dict(batch_size=0), 'batch size must be between 1 and 1e\\+06, got 0'),
    (dict(batch_size=100_000), 'batch size 100000: the limit here is 1 to 4096'),
    (dict(batch_size=float('nan')), 'batch size must be a finite number, got nan'),
    (dict(seed=0.5), 'seed must be a whole number, got 0.5'),
    (dict(seed=-1), 'seed must be between'),
    (dict(device='tpu'), 'device is auto, cpu or cuda'),
    (dict(model_args='checkpoint_path="/etc/passwd"'), 'not an architecture argument: checkpoint_path'),
    (dict(model_args='pretrained_cfg={"file": "/etc/passwd"}'), 'not an architecture argument: pretrained_cfg'),
    (dict(model_args='embed_dim=50'), 'cannot build vit_tiny_patch4_32'),  # 50 is not a multiple of 3 heads
    (dict(model_args='depth=48, embed_dim=4096, num_heads=8'), 'the limit here is 1000.0M'),
    (dict(model_args='depth=10000'), 'depth must be between 1 and 64, got 10000'),
    (dict(model='vit_nonexistent'), 'unknown model'),
    (dict(model_args='depth'), 'KEY=VALUE'),
    (dict(method='advit_l1', teacher='/nowhere/teacher.safetensors'),
     "teacher checkpoint not found: '/nowhere/teacher.safetensors'"),
    (dict(method='advit_l1'), 'needs a teacher'),
    (dict(data='/nowhere/cifar'), 'dataset not found'),
    (dict(length='steps', amount=0.5), 'the number of steps must be a whole number, got 0.5'),
    (dict(image_size=4), 'image size must be between 8 and 1024, got 4'),
    (dict(image_size=32.5), 'image size must be a whole number, got 32.5'),
])
def test_start_refuses_bad_form_values(overrides, message, tmp_path, cifar_archive, desks):
    desk = desks()
    with pytest.raises(JobError, match=message):
        desk.start(form(cifar_archive, **overrides))
    assert run_folders(tmp_path) == [] and desk.rows() == []


@pytest.mark.parametrize('length, amount, field, value', [
    ('steps', 3, 'steps', 3), ('epochs', 0.5, 'epochs', 0.5), ('seconds', 20, 'time_budget', 20.0)])
def test_start_queues_the_form_as_a_request(length, amount, field, value, tmp_path, cifar_archive, desks):
    desk = desks()
    job = desk.start(form(cifar_archive, length=length, amount=amount, name=''))
    assert job['state'] == 'queued' and job['name'] == 'vit', 'no name: the method names the run'
    request = json.loads((tmp_path / 'runs' / 'vit' / 'request.json').read_text())
    assert request[field] == value and type(request[field]) is type(value)
    limits = JobLimits()  # the run is also capped by the default limits: the first one reached ends it
    assert request['steps'] == (value if field == 'steps' else limits.max_steps)
    assert request['time_budget'] == (value if field == 'time_budget' else limits.max_seconds)
    assert request.get('epochs') == (value if field == 'epochs' else None)
    assert request['model_args'] == TINY and request['subset'] == 256 and request['teacher'] is None
    assert request['batch_size'] == 64 and request['device'] == 'cpu' and request['lr'] == 1e-3


def test_a_token_guards_start_cancel_and_resume(tmp_path, cifar_archive, desks):
    desk = desks(token='s3cret')
    for token in (None, '', 'wrong', 's3cret '):
        with pytest.raises(JobError, match='needs a valid token'):
            desk.start(form(cifar_archive), token)
    assert run_folders(tmp_path) == []
    name = desk.start(form(cifar_archive), 's3cret')['name']
    assert name == 'tiny-run' and run_folders(tmp_path) == ['tiny-run']
    for token in (None, 'wrong'):
        with pytest.raises(JobError, match='needs a valid token'):
            desk.cancel(name, token=token)
    assert desk.manager.status(name)['state'] == 'queued', 'a refused cancel changes nothing'
    assert desk.cancel(name, token='s3cret')['state'] == 'cancelled'
    for token in (None, 'wrong'):
        with pytest.raises(JobError, match='needs a valid token'):
            desk.resume(name, token=token)
    assert desk.manager.status(name)['state'] == 'cancelled', 'a refused resume changes nothing'
    assert desk.resume(name, token='s3cret')['state'] == 'queued'
    open_desk = TrainDesk(desk.manager)  # no token set: none needed
    assert open_desk.cancel(name)['state'] == 'cancelled'
    assert open_desk.resume(name, token='anything')['state'] == 'queued'


def test_a_non_ascii_token_is_refused_as_a_job_error(tmp_path, cifar_archive, desks):
    desk = desks(token='s3cret')
    with pytest.raises(JobError, match='needs a valid token'):
        desk.start(form(cifar_archive), 'sécret')


# --- the list and the live view --------------------------------------------------------------------


def test_rows_and_view_of_a_finished_and_a_failed_job(tmp_path, cifar_archive, desks):
    desk = desks(limits=JobLimits(max_concurrent=2))
    assert desk.view(None).progress == '' and desk.view('').log == '' and desk.view(None).job == {}
    # The finished job goes through the manager to evaluate on 64 test images (the form has no test subset).
    done = desk.manager.submit('done-run', dict(
        method='vit', model='vit_tiny_patch4_32', model_args=dict(TINY), data=str(cifar_archive), subset=256,
        test_subset=64, batch_size=64, log_every=1, device='cpu', steps=3))
    # 16 images do not fill one batch of 64: the process itself fails, after loading the data.
    broken = desk.start(form(cifar_archive, name='broken', subset=16))['name']
    assert broken == 'broken' and desk.manager.status(broken)['state'] == 'running'
    wait_until('both jobs end', lambda: {desk.manager.status(name)['state'] for name in (done, broken)}
               == {'finished', 'failed'}, 90, desk.manager)
    assert desk.manager.status(done)['state'] == 'finished'

    rows = {row[0]: row for row in desk.rows()}
    assert [row[0] for row in desk.rows()] == [broken, done], 'newest first'
    assert all(len(row) == len(LIST_HEADERS) for row in rows.values())
    job = desk.manager.status(done)
    name, method, model, state, progress, best, started = rows[done]
    assert (name, method, model, state, progress) == ('done-run', 'vit', 'vit_tiny_patch4_32', 'finished', '100%')
    assert best == f'{job["best_val_top1"]:.2f}' and 0 <= float(best) <= 100
    assert datetime.datetime.strptime(started, '%Y-%m-%d %H:%M:%S').timestamp() == pytest.approx(job['started'], abs=1)
    assert rows[broken][3] == 'failed' and rows[broken][5] == ''

    view = desk.view(done)
    assert view.job['state'] == 'finished'
    assert 'step 3 / 3' in view.progress and '100%' in view.progress and '<b>finished</b>' in view.progress
    assert 'ETA' not in view.progress
    traces = {trace.name: trace for trace in view.figure.data}
    assert {'loss', 'ce', 'validation top-1', 'test top-1 (selected)'} <= set(traces)
    assert list(traces['loss'].x) == [1, 2, 3] and list(traces['validation top-1'].y) == [job['best_val_top1']]
    assert 'done at step 3' in view.log and not view.log.startswith('FAILED:')
    assert [row['method'] for row in view.table] == ['vit'] and view.table_md.startswith('| family |')

    failed = desk.view(broken)
    assert failed.log.startswith('FAILED: ')
    assert 'do not fill one batch of 64' in failed.log.split('--- output ---')[0]
    assert '--- output ---' in failed.log and '<b>failed</b>' in failed.progress
    assert len(failed.figure.data) == 0, 'no metrics: an empty figure'
    assert failed.table == [] and failed.table_md == '', 'no Table 1 of a job that did not finish'


def test_the_image_size_follows_the_teacher(tmp_path, cifar_archive, tiny_bundle):
    offered = {'bundle/teacher.safetensors': str(tiny_bundle / 'teacher.safetensors')}
    desk = TrainDesk(JobManager(tmp_path / 'runs', JobLimits(max_concurrent=0)), teachers=lambda: offered)
    assert desk.teacher_size('bundle/teacher.safetensors') == 32
    assert desk.teacher_size(None) is None and desk.teacher_size(str(tiny_bundle / 'teacher.safetensors')) is None
    with pytest.raises(JobError, match='the teacher reads 32px images and the student would read 224px: set the '
                                       'image size to 32'):
        desk.start(form(cifar_archive, method='advit_l1', teacher='bundle/teacher.safetensors', image_size=224))
    assert run_folders(tmp_path) == []
    job = desk.start(form(cifar_archive, image_size=48.0))
    assert json.loads((tmp_path / 'runs' / job['name'] / 'request.json').read_text())['image_size'] == 48


def test_typed_paths_are_confined_to_what_the_server_offers(tmp_path, cifar_archive, tiny_bundle):
    offered = {'bundle/teacher.safetensors': str(tiny_bundle / 'teacher.safetensors')}
    desk = TrainDesk(JobManager(tmp_path / 'runs', JobLimits(max_concurrent=0)),
                     teachers=lambda: offered, data_roots=[cifar_archive.parent])
    outside = tmp_path / 'elsewhere.safetensors'
    outside.write_bytes((tiny_bundle / 'teacher.safetensors').read_bytes())
    with pytest.raises(JobError, match='not one of the checkpoints on offer'):
        desk.start(form(cifar_archive, method='advit_l1', teacher=str(outside)))
    for data in ('/etc', str(cifar_archive.parent / '..' / '..' / 'etc')):
        with pytest.raises(JobError, match='outside the folders this server allows'):
            desk.start(form(cifar_archive, data=data))
    assert not (tmp_path / 'runs').exists() or list((tmp_path / 'runs').iterdir()) == []
    with pytest.raises(JobError, match='not one of the checkpoints on offer'):  # its file, not its name
        desk.start(form(cifar_archive, method='advit_l1', teacher=str(tiny_bundle / 'teacher.safetensors')))
    job = desk.start(form(cifar_archive, method='advit_l1', teacher='bundle/teacher.safetensors'))
    assert job['state'] == 'queued'
    request = json.loads((tmp_path / 'runs' / job['name'] / 'request.json').read_text())
    assert request['teacher'] == offered['bundle/teacher.safetensors']


def test_a_public_desk_shows_a_failed_jobs_error_line_not_its_traceback(tmp_path, cifar_archive):
    """A job that crashed with a traceback (written as the job's own files would be): a public server
    shows its last error line, and neither traceback nor server paths; one's own machine shows all."""
    manager = JobManager(tmp_path / 'runs', JobLimits(max_concurrent=0))
    name = manager.submit('crashed', dict(method='vit', model='vit_tiny_patch4_32', model_args=dict(TINY),
                                          data=str(cifar_archive), steps=3))
    run = tmp_path / 'runs' / name
    record = json.loads((run / 'job.json').read_text())
    record['launches'] = [{'pid': 1, 'started': time.time() - 5, 'process_start': 'gone'}]
    (run / 'job.json').write_text(json.dumps(record))
    traceback = (f'step 1 loss 2.30\nTraceback (most recent call last):\n  File "{REPO}/advit/training/train.py", line 9, in '
                 f'train\n    boom()\nRuntimeError: CUDA out of memory in {run}\n')
    (run / 'output.log').write_text(traceback)
    (run / 'status.json').write_text(json.dumps({'state': 'failed', 'updated': time.time(), 'error': traceback}))
    public = TrainDesk(manager, public=True).view(name)
    assert public.job['error'] == 'RuntimeError: CUDA out of memory in runs/crashed'
    assert 'Traceback' not in public.log and 'File "' not in public.log and str(tmp_path) not in public.log
    assert 'step 1 loss 2.30' in public.log and 'traceback not shown' in public.log
    private = TrainDesk(manager).view(name)
    assert 'Traceback' in private.log and 'advit/training/train.py' in private.log and str(REPO) not in private.log


# --- group jobs: several students, one teacher, one run length -------------------------------------------

GROUP = ['vit', 'deit_hard', 'advit_l1']


def test_start_queues_several_methods_as_one_group_job(tmp_path, cifar_archive, teacher_checkpoint, desks):
    desk = desks()
    job = desk.start(form(cifar_archive, name='', method=GROUP, teacher=str(teacher_checkpoint)))
    assert (job['name'], job['state'], job['method'], job['methods']) == \
        ('vit-deit_hard-advit_l1', 'queued', 'vit,deit_hard,advit_l1', GROUP), 'no name: the methods name the run'
    run = tmp_path / 'runs' / job['name']
    request = json.loads((run / 'request.json').read_text())
    assert 'method' not in request and request['teacher'] == str(teacher_checkpoint) and request['steps'] == 3
    assert json.loads((run / 'job.json').read_text())['methods'] == GROUP
    assert desk.manager.students(job['name']) == {method: run / method for method in GROUP}
    assert desk.rows()[0][:4] == ['vit-deit_hard-advit_l1', 'vit,deit_hard,advit_l1', 'vit_tiny_patch4_32', 'queued']
    one = desk.start(form(cifar_archive, name='', method=['vit']))
    assert one['name'] == 'vit' and one['methods'] is None, 'a list of one method is a one-student job'
    assert json.loads((tmp_path / 'runs' / 'vit' / 'request.json').read_text())['method'] == 'vit'


@pytest.mark.parametrize('methods, teacher, message', [
    (['vit', 'vit'], 'fixture', 'method vit is named twice'),
    (['vit', 'advit_l3'], 'fixture', "unknown method 'advit_l3'"),
    (['vit', 'advit_l1'], None, 'method advit_l1 needs a teacher'),
    ([], 'fixture', 'methods is a list of one or more method names'),
    (None, 'fixture', 'methods is a list of one or more method names'),
    (['vit', 'deit_hard'], '/nowhere/teacher.safetensors', "teacher checkpoint not found: '/nowhere/teacher.safetensors'"),
])
def test_start_refuses_a_bad_group_before_any_process_starts(methods, teacher, message, tmp_path, cifar_archive,
                                                              teacher_checkpoint, desks):
    desk = desks(limits=JobLimits(max_concurrent=1))  # a job that got through would launch
    with pytest.raises(JobError, match=re.escape(message)):
        desk.start(form(cifar_archive, method=methods, teacher=str(teacher_checkpoint) if teacher == 'fixture'
                          else teacher))
    assert run_folders(tmp_path) == [] and desk.rows() == [] and desk.manager._children == {}


def test_view_of_a_group_job_has_every_students_curves_and_once_finished_its_table_1(tmp_path, cifar_archive,
                                                                                     teacher_checkpoint, desks):
    desk = desks(limits=JobLimits(max_concurrent=1))
    # Through the manager, to evaluate on 128 validation and 64 test images (the form has neither).
    name = desk.manager.submit('table-one', dict(
        methods=GROUP, teacher=str(teacher_checkpoint), model='vit_tiny_patch4_32', model_args=dict(TINY),
        data=str(cifar_archive), subset=256, val_size=128, test_subset=64, batch_size=64, log_every=1, device='cpu',
        steps=3))
    running = desk.view(name)  # the process has just been launched: it takes seconds to import torch
    assert running.job['state'] == 'running' and running.table == [] and running.table_md == ''
    wait_until('the group finishes', lambda: desk.manager.status(name)['state'] in ('finished', 'failed'), 120,
               desk.manager)
    view = desk.view(name)
    assert view.job['state'] == 'finished' and view.job['error'] is None, view.log
    run = tmp_path / 'runs' / name
    assert sorted(path.name for path in run.iterdir()) == sorted([*GROUP, 'job.json', 'output.log', 'request.json'])
    best = {}
    for method in GROUP:
        folder = run / method
        assert [line['step'] for line in desk.manager.metrics(name, method) if line['event'] == 'train'] == [1, 2, 3]
        assert read_metadata(folder / 'best.safetensors')['method'] == method and (folder / 'best.eval.json').is_file()
        best[method] = json.loads((folder / 'status.json').read_text())['best_val_top1']
    assert view.job['best_val_top1'] == max(best.values())
    assert 'step 3 / 3' in view.progress and '<b>finished</b>' in view.progress
    assert all(f'{method}: done at step 3' in view.log for method in GROUP)
    assert desk.rows()[0][1:5] == ['vit,deit_hard,advit_l1', 'vit_tiny_patch4_32', 'finished', '100%']

    # One trace set per student, in one colour: its loss, validation top-1 and test top-1.
    traces: dict[str, list] = {}
    for trace in view.figure.data:
        traces.setdefault(trace.legendgroup, []).append(trace)
    assert list(traces) == GROUP
    for method, student in traces.items():
        assert [trace.name for trace in student] == [f'{method} · loss', f'{method} · validation top-1',
                                                      f'{method} · test top-1 (selected)']
        assert list(student[0].x) == [1, 2, 3] and list(student[1].y) == [best[method]]
        evaluation = json.loads((run / method / 'best.eval.json').read_text())  # the star: the one record's figure
        assert (list(student[2].x), list(student[2].y)) == ([evaluation['step']], [evaluation['top1']])
        assert len({trace.line.color for trace in student}) == 1
    assert len({student[0].line.color for student in traces.values()}) == len(GROUP)

    # Its Table 1 is advit report's on the students' folders.
    folders = [str(run / method) for method in GROUP]
    assert main(['report', *folders, '--out', str(tmp_path / 'report')]) == 0
    assert view.table_md == (tmp_path / 'report' / 'table1.md').read_text()
    assert view.table == table1([load_run(folder) for folder in folders])
    assert [row['method'] for row in view.table] == sorted(GROUP)
    for row in view.table:
        assert row['top1_mean'] == json.loads((run / row['method'] / 'best.eval.json').read_text())['top1']
    assert str(tmp_path) not in view.log + view.table_md + json.dumps(view.job), 'no server paths'


def test_a_jobs_status_reads_as_a_sentence_and_a_small_table():
    from advit.app.train_desk import job_summary
    assert job_summary(None).startswith('No job yet') and job_summary({}).startswith('No job yet')
    running = dict(name='tiny-run', method='vit', model='vit_tiny_patch4_32', state='running', step=50,
                   total_steps=200, progress=0.25, eta_s=120.0, best_val_top1=None, error=None)
    text = job_summary(running)
    assert text.startswith('Job **tiny-run** is running, about 2 min left.')
    assert '| tiny-run | vit | vit_tiny_patch4_32 | running | 50 of 200 | 25% | – |' in text
    failed = dict(running, state='failed', best_val_top1=41.5, error='Traceback ...\nTrainingError: no | data')
    text = job_summary(failed)
    assert text.startswith('Job **tiny-run** has failed.') and '| 41.50% |' in text
    assert text.endswith('Error: TrainingError: no | data')  # its last line, as the public error shows it
    # The page sends the status back to be worded: whatever a client sends instead reads as no job, not an error.
    for sent in ([running], {'state': 'running'}, dict(running, name=5), dict(running, step='50'),
                 dict(running, progress=float('nan')), dict(running, eta_s=True), dict(running, error=['x'])):
        assert job_summary(sent).startswith('No job yet'), sent
