"""Readable names (names.py): a model as its role, method, architecture and accuracy, never a file path."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize('key, meta, label', [
    ('checkpoints/teacher.safetensors', dict(model='vit_tiny6_convstem_32', method='vit', test_top1=71.25),
     'Teacher · conv-stem ViT 6x192 · 71.2%'),
    ('checkpoints/advit_kl_paper.safetensors', dict(model='vit_mini4_convstem_32', method='advit_kl_paper'),
     "ADViT-KL (paper's) student · conv-stem ViT 4x128"),
    ('checkpoints/quick/advit_l1.safetensors', dict(model='vit_mini4_convstem_32', method='advit_l1', test_top1=72.61),
     'ADViT-L1 student · conv-stem ViT 4x128 · 72.6% · quick bundle'),
    ('checkpoints/vit.safetensors', dict(model='vit_mini4_convstem_32', model_args=dict(embed_dim=96, num_classes=10),
                                         method='vit', test_top1=50.0), 'ViT (no distillation) · conv-stem ViT 4x96 · 50.0%'),
    ('runs/l1/best.safetensors', dict(model='deit_tiny_distilled_patch4_32', method='deit_hard+advit_l1',
                                      model_args=dict(depth=2)), 'DeiT-hard + ADViT-L1 student · DeiT-Ti/4 distilled (2 layers) · l1'),
    ('runs/cnn/best.safetensors', dict(model='resnet10t', method='vit'), 'CNN (cross-entropy) · resnet10t · cnn'),
    ('paper/teacher.safetensors', dict(model='vit_base_patch16_224', method='vit', image_size=224, test_top1=99.0),
     'Teacher · ViT-B/16 · 224px · 99.0%'),
    ('paper/deit.safetensors', dict(model='deit_tiny_distilled_patch16_224', method='deit_hard', image_size=224),
     'DeiT-hard student · DeiT-Ti/16 distilled · 224px'),
    ('paper/small.safetensors', dict(model='vit_small_patch16_224', image_size=224, imported_from='small.pth'),
     'Imported · ViT-S/16 · 224px'),
], ids=['teacher', 'paper-kl', 'earlier-bundle', 'narrowed', 'run-folder', 'cnn', 'paper-teacher', 'paper-distilled', 'imported'])
def test_models_have_readable_names(key, meta, label):
    from advit.app.names import model_label
    meta = dict(meta)
    test_top1 = meta.pop('test_top1', None)  # read from the model's evaluation (evaluate.recorded_test_top1)
    assert model_label(key, meta, test_top1) == label
