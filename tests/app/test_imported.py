"""Checkpoints published as transformers models, once imported (``advit import``), answer every view of the app and
teach a student: built here with random weights and saved with ``save_pretrained`` (no download)."""
from __future__ import annotations

import json

import pytest
import torch

from advit.app.forms import AttentionRequest, RolloutRequest
from advit.app.studio import Studio
from advit.cli import main
from advit.core.checkpoint import import_state_dict, load_checkpoint
from advit.core.data import CIFAR10_CLASSES
from conftest import REPO

transformers = pytest.importorskip('transformers')
pytestmark = pytest.mark.slow  # runs the views' models and a training step

EXAMPLE = str(REPO / 'assets' / 'examples' / 'dog_5000.png')


def saved(architecture: str, folder, seed: int, **config):
    """A transformers classifier of CIFAR-10's classes with random weights, saved as people publish one."""
    config_class = transformers.ViTConfig if architecture.startswith('ViT') else transformers.DeiTConfig
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config_class(
        num_labels=10, id2label=dict(enumerate(CIFAR10_CLASSES)), attn_implementation='eager', **config)).eval()
    model.save_pretrained(folder)
    size = config['image_size']
    transformers.ViTImageProcessor(size={'height': size, 'width': size}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    """A folder with an imported transformers ViT and DeiT (with its teacher head), 32x32, patch 8."""
    root = tmp_path_factory.mktemp('imported')
    small = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32,
                 patch_size=8)
    checkpoints = root / 'checkpoints'
    for name, architecture, seed in (('hf_vit', 'ViTForImageClassification', 0),
                                     ('hf_deit', 'DeiTForImageClassificationWithTeacher', 1)):
        import_state_dict(saved(architecture, root / name, seed, **small), None, checkpoints / f'{name}.safetensors',
                          None)
    return checkpoints


def test_an_imported_model_answers_attention_more_views_faithfulness_and_compare(imported, cifar_archive, tmp_path):
    studio = Studio([imported], tmp_path / 'runs', cifar_archive)
    labels = {key: label for label, key in studio.offer.choices(checkpoints_only=True)}
    teacher, student = (next(key for key in labels if key.endswith(f'{name}.safetensors'))
                        for name in ('hf_vit', 'hf_deit'))
    assert labels[teacher].startswith('Imported · ') and labels[student].startswith('Imported · ')
    assert '- **architecture**: vit_' in studio.offer.describe(teacher)
    request = AttentionRequest(EXAMPLE, teacher, student)
    view = studio.attention.view(request)
    assert len(view.table) == 2 and len(view.panels) >= 2, 'a row and maps for each of the two layers'
    assert set(view.teacher_top5) <= set(CIFAR10_CLASSES) and abs(sum(view.student_top5.values())) > 0
    more = studio.attention.more(request, RolloutRequest())
    assert len(more.panels) >= 2 and more.data
    faithful = studio.attention.faithfulness(request)
    assert set(faithful.data) >= {'teacher', 'student'} and 'dropped from the tokens' in faithful.summary
    compared = studio.compare.view(teacher, student, 'all')
    assert [row[0] for row in compared.table[:10]] == list(CIFAR10_CLASSES), 'Table 2: a row per class, then all'


def test_a_transformers_vit_base_teaches_a_vit_tiny_at_224_for_one_step(tmp_path, cifar_archive, cifar):
    """The paper's setting in miniature: a ViT-B/16 teacher published with transformers, imported, teaching a timm
    ViT-Ti/16 student at 224x224 by ADViT-L1 and by the teacher's relevance, one step each through the CLI."""
    folder = saved('ViTForImageClassification', tmp_path / 'vit_base', 0, image_size=224, patch_size=16)
    teacher = tmp_path / 'teacher.safetensors'
    assert main(['import', str(folder), '--out', str(teacher)]) == 0
    meta = load_checkpoint(teacher).meta
    assert meta['model'] == 'vit_base_patch16_224' and meta['image_size'] == 224
    for method in ('advit_l1', 'advit_relevance'):
        out = tmp_path / method
        assert main(['train', '--method', method, '--teacher', str(teacher), '--model', 'vit_tiny_patch16_224',
                     '--image-size', '224', '--recipe', 'rrc224', '--steps', '1', '--batch-size', '4',
                     '--subset', '8', '--val-size', '4', '--test-subset', '4', '--eval-batch-size', '4',
                     '--faithfulness-images', '0', '--data', str(cifar_archive), '--out', str(out),
                     '--device', 'cpu']) == 0
        lines = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
        train = next(line for line in lines if line['event'] == 'train')
        assert train['step'] == 1 and train['attn'] > 0


def test_a_fine_tuning_job_starts_from_an_imported_checkpoint(imported, tmp_path, cifar_archive, cifar):
    """The Train form's start set to an imported transformers ViT: the proposal carries its architecture (LayerNorm
    epsilon included), the queued request starts from its file, and the run it describes trains from it, its head
    kept (the import's classes are CIFAR-10's)."""
    from advit.app.train_desk import JobForm, TrainDesk
    from advit.training.jobs import JobLimits, JobManager
    desk = TrainDesk(JobManager(tmp_path / 'runs', JobLimits(max_concurrent=0)),  # queued, run below by hand
                     teachers=lambda: {'hf_vit': str(imported / 'hf_vit.safetensors')})
    proposal = desk.start_proposal('hf_vit')
    assert 'norm_eps=1e-12' in proposal['model_args'] and proposal['image_size'] == 32
    form = JobForm(name='ft', method=['vit'], model=proposal['model'], model_args=proposal['model_args'],
                   data=str(cifar_archive), length='steps', amount=2, lr=proposal['lr'], subset=256, batch_size=64,
                   device='cpu', image_size=proposal['image_size'], start='hf_vit')
    desk.start(form)
    request = tmp_path / 'runs' / 'ft' / 'request.json'
    assert json.loads(request.read_text())['pretrained_file'] == str(imported / 'hf_vit.safetensors')
    assert main(['train', '--config', str(request), '--val-size', '128', '--test-subset', '64',
                 '--faithfulness-images', '0']) == 0
    log = (tmp_path / 'runs' / 'ft' / 'train.log').read_text()
    assert 'it starts from hf_vit.safetensors, its head kept (trained on the run\'s 10 classes)' in log


def test_timm_family_checkpoints_answer_the_attention_views(tmp_path, cifar_archive):
    """State dicts of EVA-02 and DeiT III, imported, are offered and answer Attention, More views, the deletion
    curves and Compare as a teacher-student pair (each at its own input size)."""
    from advit.core.models import create_model
    checkpoints = tmp_path / 'checkpoints'
    for name, size in (('eva02_tiny_patch14_224', 28), ('deit3_small_patch16_224', 32)):
        torch.manual_seed(0)
        torch.save(create_model(name, num_classes=10, img_size=size).state_dict(), tmp_path / f'{name}.pth')
        import_state_dict(tmp_path / f'{name}.pth', name, checkpoints / f'{name}.safetensors', list(CIFAR10_CLASSES),
                          size)
    studio = Studio([checkpoints], tmp_path / 'runs', cifar_archive)
    keys = {key.split('/')[-1].split('_')[0]: key for _, key in studio.offer.choices(vit_only=True, checkpoints_only=True)}
    request = AttentionRequest(EXAMPLE, keys['deit3'], keys['eva02'])
    view = studio.attention.view(request)
    assert len(view.table) == 12 and set(view.student_top5) <= set(CIFAR10_CLASSES)
    assert len(studio.attention.more(request, RolloutRequest()).panels) >= 2
    assert set(studio.attention.faithfulness(request).data) >= {'teacher', 'student'}
    compared = studio.compare.view(keys['deit3'], keys['eva02'], 'all')
    assert [row[0] for row in compared.table[:10]] == list(CIFAR10_CLASSES)
