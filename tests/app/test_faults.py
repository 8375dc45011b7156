"""Faults from outside: a writer killed mid-checkpoint, a full disk during a run, hostile uploads, a model
that produces NaN. Everything real: child processes, SIGKILL, RLIMIT_FSIZE, and the launched app.

(A corrupt line in ``metrics.jsonl`` is covered by tests/training/test_jobs.py::test_metrics_skip_corrupt_and_torn_lines...)
"""
from __future__ import annotations

import io
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from advit.core.checkpoint import load_checkpoint, save_checkpoint
from advit.app.images import ImageError, load_image
from app_server import running_app
from conftest import REPO, png_chunk, save_tiny_checkpoint

pytestmark = pytest.mark.slow  # kills writers and starts a server: `make test`, not `make check`

EXAMPLE = REPO / 'assets' / 'examples' / 'ship_8000.png'


# --- 1. a checkpoint writer killed with SIGKILL ------------------------------------------------------

# One helper process imports torch once (3 s) and forks a writer per trial; the test SIGKILLs the writer.
# The writer loops forever saving weight set 'a' or 'b' (alternating) to the same path, recording which in
# the metadata, so a file that loads must equal exactly the set its metadata names.
_ZYGOTE = r'''
import os, sys, torch
torch.set_num_threads(1)
import timm, advit
from advit.core.checkpoint import save_checkpoint
target = sys.argv[1]
models = {}
for name, seed in (('a', 1), ('b', 2)):
    torch.manual_seed(seed)
    models[name] = timm.create_model('vit_tiny_patch4_32', depth=2, embed_dim=48, num_heads=3).eval()
def meta(name):
    return dict(model='vit_tiny_patch4_32', model_args=dict(depth=2, embed_dim=48, num_heads=3), set=name)
for name, model in models.items():  # the references
    save_checkpoint(os.path.join(os.path.dirname(target), 'ref', name + '.safetensors'), model, meta(name))
save_checkpoint(target, models['a'], meta('a'))
print('ready', flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        count = 0
        while True:
            name = 'ab'[count % 2]
            save_checkpoint(target, models[name], meta(name))
            count += 1
            if count == 2:
                os.write(1, b'writing\n')  # the parent starts its random delay from here
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print('reaped', flush=True)
'''


@pytest.fixture(scope='module')
def killed_writes(tmp_path_factory):
    """Ten writers killed at random moments; per trial the loaded set name, plus leftovers at the end."""
    folder = tmp_path_factory.mktemp('killed')
    target = folder / 'last.safetensors'
    zygote = subprocess.Popen([sys.executable, '-c', _ZYGOTE, str(target)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    rng = random.Random(1234)
    loaded = []
    try:
        assert zygote.stdout.readline().strip() == 'ready'
        references = {name: load_checkpoint(folder / 'ref' / f'{name}.safetensors').model.state_dict()
                      for name in 'ab'}
        for _ in range(10):
            zygote.stdin.write('go\n')
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            assert zygote.stdout.readline().strip() == 'writing'
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            assert zygote.stdout.readline().strip() == 'reaped'  # dead: the file no longer changes
            checkpoint = load_checkpoint(target)  # must never be torn
            name = checkpoint.meta['set']
            state = checkpoint.model.state_dict()
            assert state.keys() == references[name].keys()
            assert all(torch.equal(state[k], references[name][k]) for k in state), f'weights differ from set {name}'
            loaded.append(name)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    leftovers = sorted(p.name for p in folder.iterdir() if p.name not in ('last.safetensors', 'ref'))
    return dict(folder=folder, loaded=loaded, leftovers=leftovers)


def test_a_killed_checkpoint_write_never_leaves_a_torn_file(killed_writes):
    assert len(killed_writes['loaded']) == 10
    # Anything else in the folder is the temp file of the last killed writer, never a partial target; the
    # temp files of earlier killed writers were removed by the next write (see tests/core/test_io.py).
    assert len(killed_writes['leftovers']) <= 1
    assert all(name.startswith('.last.safetensors.') and name.endswith('.tmp') for name in killed_writes['leftovers'])


# --- 2. a full disk during a run ---------------------------------------------------------------------

# The file-size limit applies to every file the run writes. A depth-1, 12-wide model makes `last` about
# 50 kB (weights + AdamW moments), and with no --test-subset the one evaluation (--eval-every beyond the
# run, so only at the end) writes predictions for all 10000 test images: float16 probabilities alone are
# 200 kB. 128 KiB lets the `last` saves at steps 5, 10, ... fit and makes the final evaluation's write fail
# with EFBIG (SIGXFSZ ignored), as a disk that fills up late in a run.
FSIZE_LIMIT = 128 * 1024


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


@pytest.fixture(scope='module')
def full_disk_run(tmp_path_factory, cifar_archive, cifar):  # `cifar` warms the decode cache: no big write here
    out = tmp_path_factory.mktemp('fulldisk') / 'run'
    result = subprocess.run(
        [sys.executable, '-m', 'advit', 'train', '--method', 'vit', '--model-arg', 'depth=1', '--model-arg',
         'embed_dim=12', '--model-arg', 'num_heads=1', '--subset', '256', '--batch-size', '64', '--log-every', '1',
         '--steps', '12', '--save-every', '5', '--eval-every', '1000', '--device', 'cpu',
         '--data', str(cifar_archive), '--out', str(out)],
        capture_output=True, text=True, cwd=REPO, preexec_fn=_limit_file_size, timeout=120)
    return out, result


def test_a_full_disk_fails_the_run_and_keeps_the_last_checkpoint(full_disk_run):
    out, result = full_disk_run
    assert result.returncode != 0, result.stderr[-2000:]
    last = out / 'last.safetensors'
    assert last.stat().st_size < FSIZE_LIMIT
    checkpoint = load_checkpoint(last)
    assert checkpoint.meta['progress']['step'] == 12  # the save at the end, before the test evaluation failed
    assert all(torch.isfinite(p).all() for p in checkpoint.model.parameters())
    status = json.loads((out / 'status.json').read_text())
    assert status['state'] == 'failed' and 'too large' in status['error'].lower()
    assert not (out / 'best.predictions.npz').exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith('.tmp')], 'the failed write left its temp file'


def test_a_full_disk_gives_a_clear_error_not_a_traceback(full_disk_run):
    _, result = full_disk_run
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert 'advit train: error:' in result.stderr and 'too large' in result.stderr.lower()
    assert result.returncode == 2


# --- the app, on the tiny bundle plus a bundle holding a NaN model -----------------------------------

@pytest.fixture(scope='module')
def nan_bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('nan-bundle')
    path = save_tiny_checkpoint(folder / 'nan_student.safetensors', 'advit_l1', 5)
    loaded = load_checkpoint(path)
    with torch.no_grad():
        loaded.model.blocks[0].attn.qkv.weight.fill_(float('nan'))
    save_checkpoint(path, loaded.model, loaded.meta)
    return folder


@pytest.fixture(scope='module')
def app_url(tiny_bundle, nan_bundle, cifar_archive, tmp_path_factory):
    runs = tmp_path_factory.mktemp('runs')
    with running_app(tmp_path_factory.mktemp('log') / 'app.log',
                     ADVIT_CHECKPOINTS=os.pathsep.join([str(tiny_bundle), str(nan_bundle)]),
                     ADVIT_RUNS=str(runs), ADVIT_DATA=str(cifar_archive)) as url:
        yield url


@pytest.fixture(scope='module')
def client(app_url) -> Client:
    return Client(app_url, verbose=False)


def attention(client, image, teacher, student):
    return client.predict(handle_file(str(image)), teacher, student, 'mean', 0, 0.6, api_name='/attention')


# --- 3. fuzzed uploads -------------------------------------------------------------------------------

def _encode(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {fmt: _encode(fmt) for fmt in ('PNG', 'JPEG', 'WEBP', 'GIF')}


def _png_header(width: int, height: int, body: bytes) -> bytes:
    """A PNG with a valid IHDR (8-bit RGB) declaring width x height, then a tiny IDAT and IEND."""
    return (b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + png_chunk(b'IDAT', body) + png_chunk(b'IEND', b''))


SUFFIX = {'PNG': '.png', 'JPEG': '.jpg', 'WEBP': '.webp', 'GIF': '.gif'}
dimensions = st.one_of(st.integers(1, 2**31 - 1), st.sampled_from([1, 6000, 6400, 2**16, 2**31 - 1]))
# (file name, bytes): the app's File component accepts image extensions only, so each payload is named as
# the image it claims to be (random bytes as every one of them).
uploads = st.one_of(
    st.tuples(st.sampled_from(sorted(SUFFIX.values())), st.binary(max_size=2048)),
    st.sampled_from(sorted(VALID)).flatmap(
        lambda fmt: st.integers(0, len(VALID[fmt]) - 1).map(lambda cut: (SUFFIX[fmt], VALID[fmt][:cut]))),
    st.tuples(st.just('.png'), st.builds(_png_header, dimensions, dimensions,
                                         st.one_of(st.just(zlib.compress(b'\0' * 16)), st.binary(max_size=64)))),
)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(upload=uploads)
def test_fuzzed_uploads_get_advit_image_messages_and_the_server_keeps_serving(client, tiny_bundle, upload):
    suffix, payload = upload
    teacher, student = f'{tiny_bundle.name}/teacher.safetensors', f'{tiny_bundle.name}/advit_l1.safetensors'
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f'upload{suffix}'
        path.write_bytes(payload)
        try:  # the oracle: advit.app.images on the same bytes
            load_image(path)
            expected = None
        except ImageError as err:
            expected = str(err)
        if expected is None:  # e.g. a GIF cut only in its trailer still decodes: then it must work
            assert len(attention(client, path, teacher, student)[5]['layers']) == 2
        else:
            with pytest.raises(Exception) as raised:
                attention(client, path, teacher, student)
            message = str(raised.value)
            assert expected in message, f'expected {expected!r}, got {message!r}'
    assert len(attention(client, EXAMPLE, teacher, student)[5]['layers']) == 2, 'the server keeps serving'


# --- 5. a model producing NaN attention ---------------------------------------------------------------

def test_a_nan_model_gives_a_non_finite_error_not_a_blank_picture(client, tiny_bundle, nan_bundle):
    teacher = f'{tiny_bundle.name}/teacher.safetensors'
    with pytest.raises(Exception) as raised:
        attention(client, EXAMPLE, teacher, f'{nan_bundle.name}/nan_student.safetensors')
    assert 'non-finite' in str(raised.value)
    assert len(attention(client, EXAMPLE, teacher, f'{tiny_bundle.name}/advit_l1.safetensors')[5]['layers']) == 2
