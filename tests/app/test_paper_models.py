"""The paper's model sizes through the real app (``python app.py``, driven by gradio_client).

A ViT-B/16 teacher at 224x224 (a 14x14 grid, 12 layers, 12 heads), ViT-Ti/16 and ViT-S/16 students (3 and 6
heads), a DeiT-Ti/16 student with a distillation token, a ResNet-10t, a timm state dict brought in by
``advit import``, trained one step each by the CLI (``tests/paper_models.py``: random weights, so accuracy means
nothing), beside the 32x32 tiny bundle: every pair the app takes, and the pairs it refuses, with the reason.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app_server import running_app
from conftest import REPO

pytestmark = pytest.mark.slow  # trains paper-size models and starts the app: `make test`, not `make check`

EXAMPLE = REPO / 'assets' / 'examples' / 'horse_7000.png'
TEACHER = 'paper/teacher.safetensors'
TINY_L1 = 'paper/vit_tiny_advit_l1.safetensors'
TINY_DEIT = 'paper/vit_tiny_deit_hard.safetensors'
SMALL = 'paper/vit_small_imported.safetensors'
DISTILLED = 'paper/deit_tiny_distilled.safetensors'
CNN = 'paper/resnet10t.safetensors'


@pytest.fixture(scope='module')
def app(paper_models, tiny_bundle, tmp_path_factory):
    """The app on the paper folder and the tiny 32x32 bundle, the paper runs in its runs folder; jobs queue
    but never start (``ADVIT_MAX_JOBS=0``: a queued request is all the Train form's tests need)."""
    runs, folder, data = paper_models
    with running_app(tmp_path_factory.mktemp('log') / 'app.log', ADVIT_CHECKPOINTS=f'{folder}{os.pathsep}{tiny_bundle}',
                     ADVIT_RUNS=str(runs), ADVIT_DATA=str(data), ADVIT_MAX_JOBS='0') as url:
        yield url, Client(url, verbose=False)


@pytest.fixture(scope='module')
def studio(paper_models, tiny_bundle):
    """The same offer in this process, to read what the server should show."""
    from advit.app.studio import Studio
    runs, folder, data = paper_models
    return Studio([folder, tiny_bundle], runs, data)


def attention(client: Client, teacher: str, student: str, **form):
    return client.predict(image=handle_file(str(EXAMPLE)), teacher=teacher, student=student,
                          **dict(dict(fusion='trained', head=0, opacity=0.6), **form), api_name='/attention')


def test_paper_checkpoints_are_listed_by_readable_names_and_a_state_dict_says_how_to_import_it(studio, paper_models):
    labels = {name: label for label, name in studio.offer.choices()}
    assert labels[TEACHER].startswith('Teacher · ViT-B/16 · 224px')
    assert labels[TINY_L1].startswith('ADViT-L1 student · ViT-Ti/16 · 224px')
    assert labels[DISTILLED].startswith('DeiT-hard student · DeiT-Ti/16 distilled · 224px')
    assert labels[SMALL].startswith('ADViT-L2 student · ViT-S/16 · 224px')
    assert labels[CNN].startswith('CNN (cross-entropy) · resnet10t')
    assert CNN not in dict((name, label) for label, name in studio.offer.choices(vit_only=True))
    problems = studio.offer.problems()
    assert '`paper/timm_state_dict.pth`: a plain state dict' in problems
    assert 'advit import timm_state_dict.pth --model ARCHITECTURE' in problems
    imported = studio.offer.find(SMALL).meta
    assert imported['imported_from'] == 'timm_state_dict.pth' and imported['image_size'] == 224
    assert imported['model_args'] == dict(num_classes=10)


@pytest.mark.parametrize('student, heads', [(TINY_L1, 3), (SMALL, 6), (DISTILLED, 3)])
def test_attention_of_a_paper_pair_at_14x14(app, student, heads):
    """Every layer at 14x14 over the image, head counts differing (12 against 3 or 6), the Fig. 2 figure,
    a layer large, rollout and every last-layer head of both."""
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    _, client = app
    panels, _, table, _, _, data, paper_figure, _, seen, seen_note = attention(client, TEACHER, student)
    assert data['grid'] == [14, 14] and len(data['layers']) == 12 and len(panels) == 24
    assert all(len(layer['teacher_map']) == len(layer['student_map']) == 196 for layer in data['layers'])
    assert [layer['teacher_layer'] for layer in data['layers']] == list(range(1, 13))
    assert all(math.isfinite(layer[kind]) for layer in data['layers'] for kind in ('l1', 'l2', 'kl'))
    assert all(sum(layer['student_map']) == pytest.approx(1.0, abs=1e-4) for layer in data['layers'])
    assert Image.open(paper_figure).size == Layout.of(PANEL_SIZE).size(12)
    assert Image.open(seen).size == (224, 224) and '224x224' in seen_note
    assert len(table['data']) == 12
    large = client.predict(image=handle_file(str(EXAMPLE)), teacher=TEACHER, student=student, fusion='trained',
                           head=0, opacity=0.6, layer=12, api_name='/attention_layer')
    assert Image.open(large).size[0] > Image.open(paper_figure).size[0]
    head = attention(client, TEACHER, student, fusion='head', head=heads - 1)[5]
    assert head['layers'][0]['student_map'] != data['layers'][0]['student_map']
    with pytest.raises(Exception, match=f'head {heads} does not exist: this model has {heads} heads'):
        attention(client, TEACHER, student, fusion='head', head=heads)
    more, _, _ = client.predict(image=handle_file(str(EXAMPLE)), teacher=TEACHER, student=student, fusion='mean',
                                discard=0.0, keep=0.6, opacity=0.6, api_name='/more_views')
    assert len(more) == 6 + 12 + heads  # rollout, mask, gradient rollout of each; every last-layer head


@pytest.mark.parametrize('teacher, student, grid', [
    (TEACHER, 'BUNDLE/advit_l1.safetensors', [8, 8]),  # the 14x14 teacher resampled onto the student's 8x8
    ('BUNDLE/teacher.safetensors', TINY_L1, [14, 14]),  # and an 8x8 teacher onto a 14x14 student
], ids=['224-teacher-32-student', '32-teacher-224-student'])
def test_mixed_pairs_are_resampled_onto_the_students_grid(app, studio, tiny_bundle, teacher, student, grid):
    import torch
    from advit.core.alignment import resample_to_grid
    from advit.app.images import load_image
    from advit.measure.inspection import inspect_model
    teacher, student = (name.replace('BUNDLE', tiny_bundle.name) for name in (teacher, student))
    _, client = app
    data = attention(client, teacher, student, fusion='mean')[5]
    assert data['grid'] == grid
    cells = grid[0] * grid[1]
    assert all(len(layer['teacher_map']) == len(layer['student_map']) == cells for layer in data['layers'])
    # The teacher's map as training compares it: its own grid resampled (alignment.resample_to_grid).
    model, meta = studio.offer.load(teacher, 'teacher')
    own = inspect_model(model, meta, load_image(EXAMPLE), 'mean')
    last = data['layers'][-1]
    resampled = resample_to_grid(torch.tensor(own.maps), own.grid, tuple(grid))
    np.testing.assert_allclose(last['teacher_map'], resampled[last['teacher_layer'] - 1].numpy(), atol=1e-5)


@pytest.mark.parametrize('teacher, student', [(TEACHER, CNN), (CNN, TINY_L1)], ids=['cnn-student', 'cnn-teacher'])
def test_a_cnn_in_attention_is_refused_with_the_reason(app, teacher, student):
    _, client = app
    with pytest.raises(Exception, match=f'{CNN} is not a ViT: attention views need ViT models'):
        attention(client, teacher, student)


def test_compare_uses_the_predictions_saved_at_evaluation_and_computes_the_rest(app, paper_models):
    """The paper students' runs evaluated on this test set: read, nothing computed. The imported ViT-S/16 has no
    evaluation: predicted once on the CPU (at 224, as it was trained) and kept in the comparison cache. A CNN is
    listed in Compare and compared; its selected image shows no maps, and says why."""
    _, client = app
    cache = Path(os.environ['ADVIT_CACHE']) / 'predictions'
    before = set(cache.glob('*.npz')) if cache.is_dir() else set()
    summary, *_ = client.predict(model_a=TINY_L1, model_b=TINY_DEIT, class_name='all', api_name='/compare')
    assert 'on 30 test images' in summary
    assert (set(cache.glob('*.npz')) if cache.is_dir() else set()) == before, 'saved predictions were recomputed'
    summary, *_ = client.predict(model_a=SMALL, model_b=TINY_L1, class_name='all', api_name='/compare')
    made = set(cache.glob('vit_small_imported-*.npz')) - before
    assert len(made) == 1
    with np.load(next(iter(made))) as saved:
        assert len(saved['preds']) == 30
    summary, *_ = client.predict(model_a=CNN, model_b=TINY_L1, class_name='all', api_name='/compare')
    assert 'on 30 test images' in summary
    panels, top5_a, top5_b, summary = client.predict(model_a=CNN, model_b=TINY_L1, index=0,
                                                     api_name='/compare_image')
    assert len(panels) == 1 and top5_a['confidences'] and top5_b['confidences']
    assert 'attention maps need two ViTs' in summary
    panels, *_ = client.predict(model_a=TINY_L1, model_b=DISTILLED, index=0, api_name='/compare_image')
    assert len(panels) == 1 + 2 * 12  # the image, then each model's map of every layer


def test_the_distillation_view_of_a_paper_run(app, studio):
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    _, client = app
    source = next(source for source in studio.probes.probed() if source.endswith('paper-tiny'))
    summary, _, _, _, frame, data, _ = client.predict(source=source, student='', kind='l1', evaluation=0, image=0,
                                                      opacity=0.6, api_name='/training_view')
    assert summary.startswith('`advit_l1`')
    assert len(data['teacher_layers']) == 12 and all(len(gaps) == 12 for gaps in data['gaps']['l1'])
    assert Image.open(frame).size == Layout.of(PANEL_SIZE).size(12)  # a row per layer, as in Attention


def test_a_paper_teacher_in_the_train_form_trains_students_at_its_size(app, paper_models):
    _, client = app
    runs, _, data = paper_models
    form = dict(name='paper-job', method=['advit_l1'], model='vit_tiny_patch16_224', model_args='', teacher=TEACHER,
                data=str(data), length='steps', amount=1, lr=1e-3, attn_weight=1.0, alpha=0.5, tau=1.0, seed=0,
                subset=0, batch_size=4, device='cpu', token='')
    with pytest.raises(Exception, match='the teacher reads 224px images and the student would read 32px: set the '
                                        'image size to 224'):
        client.predict(**form, image_size=32, api_name='/start_job')
    assert not (runs / 'paper-job').exists()
    job, _, _ = client.predict(**form, image_size=224, api_name='/start_job')
    assert job['state'] == 'queued'
    request = json.loads((runs / 'paper-job' / 'request.json').read_text())
    assert request['image_size'] == 224 and request['teacher'].endswith('teacher.safetensors')
    assert client.predict('paper-job', '', api_name='/cancel_job')['state'] == 'cancelled'
