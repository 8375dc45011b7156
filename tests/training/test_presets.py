"""Training presets (presets.py): the paper's CNN baselines, and the bundle's recipes shared and valid."""
from __future__ import annotations

from advit.core.models import create_model
from advit.training.presets import preset
from advit.training.train import TrainConfig, validate


def test_cnn_presets_train_the_papers_baselines_by_cross_entropy():
    from advit.training.presets import CNN_BASELINES, preset
    for cnn in CNN_BASELINES:
        assert preset(f'cifar32-{cnn}')['model'] == cnn and preset(f'cifar32-{cnn}')['image_size'] == 32
        assert preset(f'paper-{cnn}')['pretrained'] and preset(f'paper-{cnn}')['method'] == 'vit'


def test_the_bundle_presets_share_one_recipe_and_are_valid(cifar_archive):
    teacher, student = preset('bundle-teacher'), preset('bundle-student')
    validate(TrainConfig.from_dict(dict(teacher, data=str(cifar_archive))))
    validate(TrainConfig.from_dict(dict(student, method='advit_l1', teacher='t.safetensors', data=str(cifar_archive))))
    assert (teacher['model'], student['model']) == ('vit_mini6_convstem_32', 'vit_mini4_convstem_32')
    shared = ('recipe', 'mixup', 'cutmix', 'mix_prob', 'label_smoothing', 'batch_size', 'lr', 'weight_decay')
    assert all(teacher.get(key) == student.get(key) for key in shared)
    assert 'method' not in student  # the script gives each student its method
    big, small = create_model(teacher['model']), create_model(student['model'])
    assert sum(p.numel() for p in big.parameters()) > 1.3 * sum(p.numel() for p in small.parameters())
    assert len(big.blocks) > len(small.blocks), 'the teacher is the bigger model, as in the paper'
    gpu_teacher, gpu_student = preset('gpu-bundle-teacher'), preset('gpu-bundle-student')
    assert gpu_student['recipe'] == 'cifar32_strong' and gpu_student['mixup'] > 0 and gpu_teacher['cutmix'] > 0
