"""The Train tab over HTTP: real jobs launched, watched, cancelled and resumed through gradio_client."""
from __future__ import annotations

import json
import re
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from gradio_client import Client, handle_file

from advit.core.checkpoint import load_checkpoint, read_metadata
from app_server import raw_call, running_app
from conftest import REPO, TINY, group_gone

pytestmark = pytest.mark.slow  # launches jobs through the real app server: `make test`, not `make check`

TINY_ARGS = ', '.join(f'{key}={value}' for key, value in TINY.items())


def start(client: Client, name: str, data: Path, steps: int, token: str = '', method: str = 'vit',
          teacher: str | None = None) -> dict:
    job, _, _ = client.predict(name, [method], 'vit_tiny_patch4_32', TINY_ARGS, teacher, str(data), 'steps', steps,
                               1e-3, 1.0, 0.5, 1.0, 0, 256, 64, 'cpu', 32, token, '', api_name='/start_job')
    return job


def status(client: Client, name: str) -> dict:
    return client.predict(name, api_name='/job_status')[3]


def wait_for(client: Client, name: str, states: tuple[str, ...], timeout: float = 120, min_step: int = 0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = status(client, name)
        if job['state'] in states and (job.get('step') or 0) >= min_step:
            return job
        time.sleep(0.5)
    raise AssertionError(f'{name} did not reach {states} (step >= {min_step}) in {timeout}s: {job}')


def launch_pid(runs: Path, name: str) -> int:
    return json.loads((runs / name / 'job.json').read_text())['launches'][-1]['pid']


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('runs')


@pytest.fixture(scope='module')
def app(runs, cifar, cifar_archive, tiny_bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp('log') / 'app.log'
    with running_app(log, ADVIT_RUNS=str(runs), ADVIT_CHECKPOINTS=str(tiny_bundle), ADVIT_DATA=str(cifar_archive),
                     ADVIT_MAX_JOBS='1', ADVIT_JOBS='on') as url:
        yield url


@pytest.fixture(scope='module')
def client(app) -> Client:
    return Client(app, verbose=False)


def test_a_table1_job_of_several_students_ends_with_its_table_and_its_distillation_view(client, runs, cifar_archive,
                                                                                        tiny_bundle):
    """vit and advit_l1 in one job: one process, every student's curves, Table 1 on the page at the end, and
    the run's attention probe drawn by the training view (the run is a source once it has evaluated)."""
    teacher = f'{tiny_bundle.name}/teacher.safetensors'
    job, _, _ = client.predict('table1', ['vit', 'advit_l1'], 'vit_tiny_patch4_32', TINY_ARGS, teacher,
                               str(cifar_archive), 'steps', 3, 1e-3, 1.0, 0.5, 1.0, 0, 256, 64, 'cpu', 32, '', '',
                               api_name='/start_job')
    assert job['methods'] == ['vit', 'advit_l1']
    done = wait_for(client, 'table1', ('finished', 'failed'), timeout=240)
    assert done['state'] == 'finished', done
    _, figure, _, _, table = client.predict('table1', api_name='/job_status')
    names = {trace['name'].split(' · ')[0] for trace in json.loads(figure['plot'])['data']}
    assert names == {'vit', 'advit_l1'}
    assert {'advit_l1', 'vit'} <= set(re.findall(r'\|\s*([a-z0-9_]+)\s*(?=\|)', table))  # a cell each
    summary, students, heatmap, curves, frame, data, faithful = client.predict(
        f'{runs.name}/table1', 'advit_l1', 'l1', 0, 0, 0.6, api_name='/training_view')
    assert summary.startswith('`advit_l1`: 1 evaluations') and data['steps'] == [3]
    assert {trace['name'] for trace in json.loads(students['plot'])['data']} == {'vit', 'advit_l1'}
    # Each student's maps' quarter drop at its evaluation, as its metrics recorded it: last layer and rollout.
    lines = [json.loads(line) for line in (runs / 'table1' / 'advit_l1' / 'metrics.jsonl').read_text().splitlines()]
    [recorded] = [line for line in lines if line['event'] == 'eval']
    assert data['faithfulness']['rollout'] == [pytest.approx(recorded['faithfulness']['rollout'], abs=1e-3)]
    traces = {trace['name'] for trace in json.loads(faithful['plot'])['data']}
    assert traces == {f'{name}: {source}' for name in ('vit', 'advit_l1')
                      for source in (f'layer {TINY["depth"]}', 'rollout', 'gradient rollout')}
    assert 'Quarter drop of its last layer' in summary
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    assert Image.open(frame).size == Layout.of(PANEL_SIZE).size(TINY['depth'])


def test_tiny_job_runs_to_the_end_and_its_checkpoint_is_offered(client, runs, cifar_archive, tiny_bundle):
    job = start(client, 'tiny', cifar_archive, 3)
    assert job['state'] in ('queued', 'running')
    done = wait_for(client, 'tiny', ('finished', 'failed'))
    assert done['state'] == 'finished', done
    assert done['step'] == done['total_steps'] == 3 and done['best_val_top1'] is not None
    progress, figure, log, _, _ = client.predict('tiny', api_name='/job_status')
    assert 'step 3 / 3' in progress and 'done at step 3' in log
    metrics = [json.loads(line) for line in (runs / 'tiny' / 'metrics.jsonl').read_text().splitlines()]
    assert [m['step'] for m in metrics if m['event'] == 'train'][-1] == 3
    assert [m['step'] for m in metrics if m['event'] == 'eval'] == [3]
    assert load_checkpoint(runs / 'tiny' / 'best.safetensors').meta['step'] == 3
    rows = client.predict(api_name='/list_jobs')['data']
    assert ['tiny', 'vit', 'vit_tiny_patch4_32', 'finished'] == rows[0][:4]
    # The finished run is offered to the Attention tab without a restart.
    example = handle_file(str(REPO / 'assets' / 'examples' / 'cat_3000.png'))
    data = client.predict(example, f'{tiny_bundle.name}/teacher.safetensors', f'{runs.name}/tiny/best.safetensors',
                          'mean', 0, 0.5, api_name='/attention')[5]
    assert len(data['layers']) == TINY['depth']


def test_queue_cancel_kill_resume_and_names(client, runs, cifar_archive):
    for name in ('../../long', 'a/b', ' long', '.long'):  # refused with the rule, never rewritten
        with pytest.raises(Exception, match='is not taken: a run name is 1 to 80 letters'):
            start(client, name, cifar_archive, 100_000)
    with pytest.raises(Exception, match='name must not hold a NUL character'):  # the gate's, before any rule
        start(client, 'x\x00y', cifar_archive, 100_000)
    assert not (runs.parent / 'long').exists() and not any(path.name.startswith(('a', 'x')) for path in runs.iterdir())
    long = start(client, 'long', cifar_archive, 100_000)
    assert long['name'] == 'long' and (runs / 'long').is_dir()
    with pytest.raises(Exception, match='a run named long exists'):
        start(client, 'long', cifar_archive, 10)
    running = wait_for(client, 'long', ('running',), min_step=5)
    # With one job at a time, a second one waits, visibly queued.
    start(client, 'second', cifar_archive, 100_000)
    time.sleep(2)
    assert status(client, 'second')['state'] == 'queued'

    pid = launch_pid(runs, 'long')
    cancelled_at = time.time()
    assert client.predict('long', '', api_name='/cancel_job')['name'] == 'long'
    wait_for(client, 'long', ('cancelled',), timeout=15)
    assert time.time() - cancelled_at < 10
    deadline = time.time() + 10
    while not group_gone(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert group_gone(pid), 'the whole process group must be gone'
    saved_step = read_metadata(runs / 'long' / 'last.safetensors')['progress']['step']
    assert saved_step >= running['step']

    # The queued job starts once the slot is free; kill it outright: it is reported failed.
    wait_for(client, 'second', ('running',), min_step=1)
    os.killpg(launch_pid(runs, 'second'), signal.SIGKILL)
    failed = wait_for(client, 'second', ('failed',), timeout=30)
    assert 'ended without reporting' in failed['error']

    # Resume continues from the saved step.
    client.predict('long', '', api_name='/resume_job')
    wait_for(client, 'long', ('running',), min_step=saved_step + 1)
    assert f'resumed from {runs / "long" / "last.safetensors"} at step {saved_step}' in \
        (runs / 'long' / 'train.log').read_text()
    client.predict('long', '', api_name='/cancel_job')
    wait_for(client, 'long', ('cancelled',), timeout=15)


def test_the_list_survives_an_app_restart(client, runs, cifar_archive, tiny_bundle, tmp_path):
    before = client.predict(api_name='/list_jobs')['data']
    assert {row[0] for row in before} >= {'tiny', 'long', 'second'}
    with running_app(tmp_path / 'again.log', ADVIT_RUNS=str(runs), ADVIT_CHECKPOINTS=str(tiny_bundle),
                     ADVIT_DATA=str(cifar_archive), ADVIT_JOBS='on') as url:
        after = Client(url, verbose=False).predict(api_name='/list_jobs')['data']
    assert [row[:6] for row in after] == [row[:6] for row in before]


def test_any_client_lists_watches_cancels_and_resumes_a_job_by_name(app, client, runs, cifar_archive):
    """The job API is not tied to the page session that started a job: a client that connects later
    (a reconnecting script, another browser) finds the job by name and acts on it."""
    start(client, 'shared', cifar_archive, 100_000)
    other = Client(app, verbose=False)  # a fresh session: its job dropdown has never listed 'shared'
    assert 'shared' in [row[0] for row in other.predict(api_name='/list_jobs')['data']]
    assert wait_for(other, 'shared', ('running',), min_step=2)['name'] == 'shared'
    progress, _, log, job, _ = other.predict('shared', api_name='/job_status')
    assert job['name'] == 'shared' and 'step' in progress
    assert other.predict('shared', '', api_name='/cancel_job')['name'] == 'shared'
    assert wait_for(client, 'shared', ('cancelled',), timeout=20)['state'] == 'cancelled'
    assert other.predict('shared', '', api_name='/resume_job')['state'] in ('queued', 'running')
    assert wait_for(client, 'shared', ('running',))['state'] == 'running'
    client.predict('shared', '', api_name='/cancel_job')
    wait_for(other, 'shared', ('cancelled',), timeout=20)
    with pytest.raises(Exception, match='not a job'):
        other.predict('no-such-job', api_name='/job_status')
    with pytest.raises(Exception, match='is not a run in'):
        other.predict('../../etc', '', api_name='/cancel_job')


def test_the_page_names_no_server_path(app, runs, tiny_bundle, cifar_archive, tmp_path_factory):
    config = urllib.request.urlopen(f'{app}/config', timeout=30).read().decode()
    for path in (REPO, runs, tiny_bundle, cifar_archive, tmp_path_factory.getbasetemp()):
        assert str(path) not in config, f'{path} is in the public config'
    assert f'{tiny_bundle.name}/teacher.safetensors' in config


@pytest.mark.parametrize('environment', [dict(GRADIO_SERVER_NAME='0.0.0.0'),
                                         dict(GRADIO_SERVER_NAME='0.0.0.0', ADVIT_JOBS='on'),
                                         dict(SPACE_ID='someone/advit', ADVIT_JOBS='on')])
def test_a_public_bind_has_no_train_endpoints_without_a_token(tmp_path, cifar_archive, environment):
    with running_app(tmp_path / 'public.log', ADVIT_RUNS=str(tmp_path / 'runs'), ADVIT_CHECKPOINTS=str(tmp_path / 'none'),
                     ADVIT_DATA=str(cifar_archive), **environment) as url:
        endpoints = Client(url, verbose=False).view_api(print_info=False, return_format='dict')['named_endpoints']
        config = urllib.request.urlopen(f'{url}/config', timeout=30).read().decode()
    assert '/attention' in endpoints and not {'/start_job', '/cancel_job', '/resume_job'} & set(endpoints)
    assert 'ADVIT_JOBS_TOKEN' in config, 'the Train tab says why it is read-only'
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir())


def test_a_public_bind_with_a_token_refuses_abuse_before_any_process(tmp_path, cifar_archive, tiny_bundle):
    runs = tmp_path / 'runs'
    with running_app(tmp_path / 'public.log', GRADIO_SERVER_NAME='0.0.0.0', ADVIT_JOBS_TOKEN='s3cret',
                     ADVIT_RUNS=str(runs), ADVIT_CHECKPOINTS=str(tiny_bundle), ADVIT_DATA=str(cifar_archive)) as url:
        client = Client(url, verbose=False)

        def refused(message: str, **form) -> None:
            values = dict(name='abuse', method='vit', model='vit_tiny_patch4_32', model_args=TINY_ARGS, teacher=None,
                          data=str(cifar_archive), length='steps', amount=3, lr=1e-3, attn_weight=1.0, alpha=0.5,
                          tau=1.0, seed=0, subset=256, batch_size=64, device='cpu', image_size=32,
                          token='s3cret', start='')
            values.update(form)
            with pytest.raises(Exception, match=message):
                client.predict(*values.values(), api_name='/start_job')
            assert not runs.exists() or not any(runs.iterdir()), f'{form} left a run folder'

        refused('valid token', token='')
        refused('the limit here is 20000', amount=10**9)
        refused('the limit here is 3600s', length='seconds', amount=3.5e8)
        refused('batch size 65536: the limit here is 1 to 256', batch_size=65536)
        refused('not an architecture argument: checkpoint_path', model_args='checkpoint_path=/etc/passwd')
        refused('not an architecture argument: pretrained_cfg', model_args='pretrained_cfg={"file": "/etc/passwd"}')
        refused('cannot build', model_args='depth=2, embed_dim=50, num_heads=3')
        refused('outside the folders this server allows', data='/etc')
        refused('not one of the checkpoints on offer', method='advit_l1', teacher='/etc/passwd')
        refused('the teacher reads 32px images and the student would read 224px: set the image size to 32',
                method='advit_l1', teacher=f'{tiny_bundle.name}/teacher.safetensors', image_size=224)
        refused('image size must be between 8 and 1024, got 4096', image_size=4096)
        # Numbers are finite, whole where they count and in range, names clean, or refused in words.
        # NaN and infinity as a raw request carries them (gradio_client will not send them).
        form = ['abuse', ['vit'], 'vit_tiny_patch4_32', TINY_ARGS, None, str(cifar_archive), 'steps', 3, 1e-3, 1.0, 0.5,
                1.0, 0, 256, 64, 'cpu', 32, 's3cret', '']
        for index, value, message in ((8, 'NaN', 'lr must be a finite number, got nan'),
                                      (7, 'Infinity', 'amount must be a finite number, got inf')):
            body = json.dumps(form[:index] + ['VALUE'] + form[index + 1:]).replace('"VALUE"', value)
            answer = raw_call(url, 'start_job', body)
            assert 'event: error' in answer and message in answer, answer[-500:]
            assert not runs.exists() or not any(runs.iterdir())
        refused('the number of steps must be a whole number, got 2.5', amount=2.5)
        refused('seed must be a whole number, got 1.5', seed=1.5)
        refused('tau must be a number', tau='warm')
        refused('epochs of 256 images in batches of 64 are 400,000 steps: the limit here is 20,000', length='epochs',
                amount=1e5)
        refused(r'the number of epochs must be between 1e-06 and 1e\+06, got 1e\+07', length='epochs', amount=1e7)
        refused('depth must be between 1 and 64, got 10000', model_args='depth=10000')  # before building anything
        refused(r"model is 100,000 characters long: the limit is 1,000 .'aaaa.*\(100002 characters\)",
                model='a' * 100_000)
        refused(r"unknown model .aaaa.*\(1000 characters\): not a timm model name", model='a' * 998)
        refused('is not taken: a run name is', name='../x')
        # A job that fails inside its process (16 images do not fill a batch of 64): its error line, no traceback.
        job, _, _ = client.predict('fails', 'vit', 'vit_tiny_patch4_32', TINY_ARGS, None, str(cifar_archive), 'steps',
                                   3, 1e-3, 1.0, 0.5, 1.0, 0, 16, 64, 'cpu', 32, 's3cret', '', api_name='/start_job')
        failed = wait_for(client, job['name'], ('failed',))
        _, _, log, _, _ = client.predict(job['name'], api_name='/job_status')
    assert 'do not fill one batch' in failed['error'] and '\n' not in failed['error']
    assert 'Traceback' not in log and 'File "' not in log and str(REPO) not in log and str(runs) not in log
    # The command line names the interpreter, not the folder it lives in.
    assert re.search(r'^\$ python[\w.]* -m advit train --config runs/fails/request.json', log, re.M), log
    assert sys.executable not in log and str(Path(sys.executable).parent) not in log


def test_token_is_needed_when_set(tmp_path, cifar_archive):
    runs = tmp_path / 'runs'
    with running_app(tmp_path / 'token.log', ADVIT_JOBS='on', ADVIT_JOBS_TOKEN='s3cret', ADVIT_RUNS=str(runs),
                     ADVIT_CHECKPOINTS=str(tmp_path / 'none'), ADVIT_DATA=str(cifar_archive)) as url:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match='valid token'):
            start(client, 'nope', cifar_archive, 2)
        assert not runs.exists() or not any(runs.iterdir())
        job = start(client, 'yes', cifar_archive, 2, token='s3cret')
        assert wait_for(client, job['name'], ('finished', 'failed'))['state'] == 'finished'


def test_the_shipped_vit_student_fine_tuned_from_the_forms_proposal_starts_where_it_is(tmp_path, cifar, cifar_archive):
    """Choosing the shipped ViT student as the start proposes its architecture, image size and a fine-tuning rate
    and length; launched with ADViT-L1 for a few steps, its first evaluation is near its own accuracy (64% on the
    test set), not at chance, and the job's first line says its head was kept. A start of another architecture
    than the form's is refused in words."""
    with running_app(tmp_path / 'app.log', ADVIT_RUNS=str(tmp_path / 'runs'), ADVIT_CHECKPOINTS=str(REPO / 'checkpoints'),
                     ADVIT_DATA=str(cifar_archive), ADVIT_JOBS='on') as url:
        client = Client(url, verbose=False)
        model, model_args, image_size, lr, length, amount = client.predict('checkpoints/vit.safetensors',
                                                                           api_name='/start_proposal')
        shipped = read_metadata(REPO / 'checkpoints' / 'vit.safetensors')
        assert (model, image_size, lr, length, amount) == (shipped['model'], 32, 1e-4, 'steps', 100)
        form = dict(name='finetune', method=['advit_l1'], model=model, model_args=model_args,
                    teacher='checkpoints/teacher.safetensors', data=str(cifar_archive), length=length, amount=4, lr=lr,
                    attn_weight=1.0, alpha=0.5, tau=1.0, seed=0, subset=256, batch_size=64, device='cpu',
                    image_size=image_size, token='', start='checkpoints/vit.safetensors')
        with pytest.raises(Exception, match='starts from .*whose model is'):
            client.predict(**dict(form, name='mismatch', model='vit_tiny_patch4_32'), api_name='/start_job')
        client.predict(**form, api_name='/start_job')
        done = wait_for(client, 'finetune', ('finished', 'failed'), timeout=400)
        assert done['state'] == 'finished', done
    run = tmp_path / 'runs' / 'finetune'
    assert 'it starts from vit.safetensors, its head kept' in (run / 'train.log').read_text()
    first = next(json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()
                 if json.loads(line)['event'] == 'eval')
    assert first['val_top1'] > 40, 'the fine-tuned student starts from the checkpoint, not at chance (10%)'
