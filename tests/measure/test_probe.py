"""The attention probe: gaps to the teacher's attention at each evaluation, and, for a student of
``advit_relevance``, to the relevance it was trained towards, by the rule the loss uses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from advit.core.alignment import GAP_KINDS, compare_maps
from advit.core.augment import BatchTransform
from advit.core.capture import ClsAttentionCapture
from advit.core.losses import TeacherForward
from advit.core.models import model_normalization, patch_grid
from advit.measure.probe import AttentionProbe
from advit.measure.probe_file import PROBE_FILE, TO_RELEVANCE, load_probe, read_probe
from conftest import tiny_vit


@pytest.fixture
def setup():
    student, teacher = tiny_vit(seed=0), tiny_vit(seed=1, depth=4, num_heads=4, embed_dim=64)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    mean, std = model_normalization(student)
    transform = BatchTransform('cifar32', 32, mean, std, seed=0, device=torch.device('cpu'))
    return student.eval(), teacher.eval(), images, labels, transform


@pytest.mark.parametrize('target', ['layers', 'rollout_last'])
def test_a_relevance_students_gap_is_measured_to_the_target_the_loss_gives_it(setup, target, tmp_path):
    student, teacher, images, labels, transform = setup
    probe = AttentionProbe(teacher, images, transform, amp=False, labels=labels, relevance_target=target)
    for step in (10, 20):
        recorded = probe.record(student, step, tmp_path, target='relevance')
    arrays = read_probe(tmp_path / PROBE_FILE)
    assert arrays['relevance_gaps'].shape == arrays['gaps'].shape == (2, len(GAP_KINDS), 2)
    # The loss's target on the same images, compared by the loss's rule.
    inputs = transform.eval(images)
    relevance = TeacherForward(teacher, model_normalization(student), capture=True, relevance=target)(inputs, labels)
    with ClsAttentionCapture(student) as capture, torch.no_grad():
        student(inputs)
        maps = capture.pop()
    expected = compare_maps(maps, relevance.relevance, patch_grid(student), patch_grid(teacher))
    np.testing.assert_allclose(arrays['relevance_gaps'][-1, 0], expected.gap('l1').mean(dim=(0, 2)).numpy(), rtol=1e-4)
    assert recorded['l1_to_relevance'] == pytest.approx(arrays['relevance_gaps'][-1, 0].tolist())
    assert not np.allclose(arrays['relevance_gaps'], arrays['gaps']), 'the relevance is not the raw attention'
    shown = load_probe(tmp_path / PROBE_FILE)
    assert f'l1{TO_RELEVANCE}' in shown.kinds
    np.testing.assert_array_equal(shown.gap(f'l1{TO_RELEVANCE}'), arrays['relevance_gaps'][:, 0])


def test_other_students_record_no_relevance_and_pay_no_teacher_backward(setup, tmp_path):
    student, teacher, images, labels, transform = setup
    probe = AttentionProbe(teacher, images, transform, amp=False, labels=labels)
    recorded = probe.record(student, 10, tmp_path)
    assert set(recorded) == set(GAP_KINDS) and 'relevance_gaps' not in read_probe(tmp_path / PROBE_FILE)
    assert probe._teacher_relevance is None
    assert f'l1{TO_RELEVANCE}' not in load_probe(tmp_path / PROBE_FILE).kinds
