"""Losses against values computed by hand, and DistillationLoss against its formulas on real tiny models,
given what a training step gives it (the teacher's output, the student's maps of its forward)."""
from __future__ import annotations

import contextlib
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import advit  # noqa: F401
from advit.core.alignment import compare_maps
from advit.core.capture import ClsAttentionCapture
from advit.core.losses import METHODS, DistillationLoss, Method, TeacherForward, parse_method, renormalize
from advit.core.models import model_normalization
from advit.core.relevance import RELEVANCE_TARGETS
from attention_reference import (
    explicit_cls_attention,
    gradient_weighted_attention_matrices,
    gradient_weighted_cls_attention,
)
from conftest import TINY

def test_parse_method():
    assert parse_method('vit').needs_teacher is False
    assert parse_method('deit_hard') == Method(logit='deit_hard', attention=None) != parse_method('deit_soft')
    assert (parse_method('deit_hard').logit, parse_method('deit_hard').attention) == ('deit_hard', None)
    assert (parse_method('advit_kl_paper').logit, parse_method('advit_kl_paper').attention) == (None, 'kl_paper')
    both = parse_method('deit_hard+advit_l1')
    assert (both.logit, both.attention) == ('deit_hard', 'l1')
    relevance = parse_method('deit_hard+advit_relevance')
    assert (relevance.logit, relevance.attention, relevance.target) == ('deit_hard', 'l1', 'relevance')
    assert parse_method('advit_l1').target == 'attention'
    with pytest.raises(ValueError, match='unknown method'):
        parse_method('advit_l3')


def test_renormalize_round_trip():
    images = torch.rand(2, 3, 4, 4)
    a, b = ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    normed_a = (images - torch.tensor(a[0]).view(1, 3, 1, 1)) / torch.tensor(a[1]).view(1, 3, 1, 1)
    normed_b = (images - torch.tensor(b[0]).view(1, 3, 1, 1)) / torch.tensor(b[1]).view(1, 3, 1, 1)
    torch.testing.assert_close(renormalize(normed_a, a, b), normed_b)
    assert renormalize(normed_a, a, a) is normed_a


@pytest.fixture
def pair():
    torch.manual_seed(0)
    student = timm.create_model('vit_tiny_patch4_32', **TINY)
    teacher = timm.create_model('vit_tiny_patch4_32', **dict(TINY, depth=4, num_heads=4))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    return student, teacher, images, labels


def step_loss(criterion: DistillationLoss, student, teacher, images, labels, model=None):
    """(loss, terms, outputs) as a training step takes them: the teacher called once on the batch, the
    student (or ``model``, a wrapper of it) called once, its maps of that forward taken at once."""
    method = criterion.method
    relevance = 'layers' if method.target == 'relevance' else None
    teacher_output = TeacherForward(teacher, model_normalization(student), method.attention is not None,
                                    relevance=relevance)(images, labels) if method.needs_teacher else None
    with ClsAttentionCapture(student) if method.attention else contextlib.nullcontext() as capture:
        outputs = (model or student)(images)
        maps = capture.pop() if capture is not None else None
    return *criterion(outputs, labels, teacher_output, maps), outputs


def _expected(method: str, student, teacher, images, labels, logits, alpha=0.5, tau=1.0, weight=1.0):
    """The loss written out from the paper's equations, with maps from the explicit attention."""
    parsed = parse_method(method)
    ce = F.cross_entropy(logits, labels)
    with torch.no_grad():
        teacher_logits = teacher(images)
    loss = ce
    if parsed.logit == 'deit_hard':
        loss = (1 - alpha) * ce + alpha * F.cross_entropy(logits, teacher_logits.argmax(-1))
    elif parsed.logit == 'deit_soft':
        p_t = torch.softmax(teacher_logits / tau, -1)
        kl = (p_t * (p_t.log() - torch.log_softmax(logits / tau, -1))).sum(-1).mean()
        loss = (1 - alpha) * ce + alpha * tau * tau * kl
    if parsed.attention:
        a_s = explicit_cls_attention(student, images).mean(2)
        if parsed.target == 'relevance':
            a_t = gradient_weighted_cls_attention(teacher, images, labels)[:, [1, 3]]
        else:
            with torch.no_grad():
                a_t = explicit_cls_attention(teacher, images).mean(2)[:, [1, 3]]  # uniform map: 2 of 4 layers
        if parsed.attention == 'l1':
            gap = (a_s - a_t).abs().sum(-1)
        elif parsed.attention == 'l2':
            gap = ((a_s - a_t) ** 2).sum(-1)
        elif parsed.attention == 'kl':
            gap = (a_t * (a_t.log() - a_s.log())).sum(-1)
        else:
            p_t, log_p_s = torch.softmax(a_t / tau, -1), torch.log_softmax(a_s / tau, -1)
            gap = tau * tau * (p_t * (p_t.log() - log_p_s)).sum(-1)
        loss = loss + weight * gap.mean()
    return loss


@pytest.mark.parametrize('method', METHODS)
def test_distillation_loss_matches_the_equations(method, pair):
    student, teacher, images, labels = pair
    criterion = DistillationLoss(method, student, None if method == 'vit' else teacher,
                                 alpha=0.3, tau=2.0, attn_weight=0.7)
    loss, terms, logits = step_loss(criterion, student, teacher, images, labels)
    expected = _expected(method, student, teacher, images, labels, logits, alpha=0.3, tau=2.0, weight=0.7)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    parsed = parse_method(method)
    expected_terms = {'ce', 'loss'} | ({'kd'} if parsed.logit else set()) | ({'attn'} if parsed.attention else set())
    assert set(terms) == expected_terms
    loss.backward()
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    if parsed.needs_teacher:
        assert not teacher.training, 'the teacher must stay in eval mode while the student trains'


def test_a_wrapper_that_clones_inputs_and_micro_batches_change_nothing(pair):
    """Nothing rests on the batch tensor's identity or on the order of calls: a student wrapped in a module
    that clones its inputs gets the same loss, and each micro-batch's loss (gradient accumulation) is that
    batch's own."""
    student, teacher, images, labels = pair

    class Cloning(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.clone())

    for method in ('advit_l1', 'deit_hard+advit_kl'):
        criterion = DistillationLoss(method, student, teacher)
        plain, _, _ = step_loss(criterion, student, teacher, images, labels)
        wrapped, _, _ = step_loss(criterion, student, teacher, images, labels, model=Cloning(student))
        torch.testing.assert_close(wrapped, plain)
        halves = [step_loss(criterion, student, teacher, images[part], labels[part])[0]
                  for part in (slice(0, 2), slice(2, 4))]
        alone = [step_loss(criterion, student, teacher, images[part], labels[part])[0]
                 for part in (slice(2, 4), slice(0, 2))][::-1]  # the other order
        torch.testing.assert_close(torch.stack(halves), torch.stack(alone))
        assert not torch.allclose(halves[0], halves[1])


def test_missing_inputs_are_refused_in_words(pair):
    student, teacher, images, labels = pair
    criterion = DistillationLoss('advit_l1', student, teacher)
    teacher_output = TeacherForward(teacher, model_normalization(student), capture=True)(images)
    with pytest.raises(ValueError, match="teacher's output"):
        criterion(student(images), labels)
    with pytest.raises(ValueError, match="student's maps and the teacher's attention maps"):
        criterion(student(images), labels, teacher_output)



def test_distillation_token_heads(pair):
    _, teacher, images, labels = pair
    student = timm.create_model('deit_tiny_distilled_patch4_32', **TINY)
    student.set_distilled_training(True)
    criterion = DistillationLoss('deit_hard+advit_l1', student, teacher)
    loss, terms, (class_logits, distill_logits) = step_loss(criterion, student, teacher, images, labels)
    with torch.no_grad():
        hard = teacher(images).argmax(-1)
    expected_logit_part = 0.5 * F.cross_entropy(class_logits, labels) + 0.5 * F.cross_entropy(distill_logits, hard)
    torch.testing.assert_close(loss - terms['attn'], expected_logit_part)


def test_teacher_with_other_normalisation_sees_its_own_inputs(pair):
    student, _, images, labels = pair
    teacher = timm.create_model('vit_tiny_patch16_224', depth=2, img_size=32, patch_size=4, num_classes=10)
    assert teacher.pretrained_cfg['mean'] != student.pretrained_cfg['mean']
    seen = []
    teacher.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    step_loss(DistillationLoss('deit_hard', student, teacher), student, teacher, images, labels)
    mean_s, std_s = (torch.tensor(v).view(1, 3, 1, 1) for v in (student.pretrained_cfg['mean'], student.pretrained_cfg['std']))
    mean_t, std_t = (torch.tensor(v).view(1, 3, 1, 1) for v in (teacher.pretrained_cfg['mean'], teacher.pretrained_cfg['std']))
    torch.testing.assert_close(seen[0], (images * std_s + mean_s - mean_t) / std_t)


def test_grids_that_differ_are_resampled(pair):
    student, _, images, labels = pair
    teacher = timm.create_model('vit_tiny_patch4_32', depth=2, embed_dim=48, num_heads=3, patch_size=8)
    criterion = DistillationLoss('advit_l1', student, teacher)
    with ClsAttentionCapture(student) as student_capture, ClsAttentionCapture(teacher) as teacher_capture:
        student(images)
        teacher(images)
        compared = compare_maps(student_capture.pop(), teacher_capture.pop(), criterion.student_grid,
                                criterion.teacher_grid)
    assert compared.student.shape == compared.teacher.shape == (4, 2, 1, 64)  # teacher's 4x4 grid resampled to 8x8
    torch.testing.assert_close(compared.teacher.sum(-1), torch.ones(4, 2, 1))
    loss, terms, _ = step_loss(criterion, student, teacher, images, labels)
    torch.testing.assert_close(terms['attn'], compared.gap('l1').mean().detach())
    assert torch.isfinite(loss) and terms['attn'] > 0


def test_bad_setups_are_refused(pair):
    student, teacher, _, _ = pair
    with pytest.raises(ValueError, match='needs a teacher'):
        DistillationLoss('advit_l1', student, None)
    with pytest.raises(ValueError, match='ViT teacher'):
        DistillationLoss('advit_l1', student, timm.create_model('resnet10t', num_classes=10))
    with pytest.raises(ValueError, match='same head count'):
        DistillationLoss('advit_l1', student, teacher, head_fusion='none')
    with pytest.raises(ValueError, match='outside'):
        DistillationLoss('advit_l1', student, teacher, layer_map=[0, 7])


def test_soft_targets_cross_entropy_by_hand_and_no_second_smoothing(pair):
    student, _, images, labels = pair
    logits = student(images)
    targets = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), -1)
    log_p = [[z - math.log(sum(math.exp(v) for v in row)) for z in row] for row in logits.tolist()]
    by_hand = -sum(t * lp for t_row, lp_row in zip(targets.tolist(), log_p) for t, lp in zip(t_row, lp_row)) / 4
    for smoothing in (0.0, 0.1):  # soft targets carry their own smoothing: the loss's is not applied again
        loss, terms = DistillationLoss('vit', student, label_smoothing=smoothing)(logits, targets)
        assert loss.item() == pytest.approx(by_hand, rel=1e-5)
        assert terms['ce'].item() == pytest.approx(by_hand, rel=1e-5)
    # Class indices still get the configured smoothing.
    smoothed, _ = DistillationLoss('vit', student, label_smoothing=0.1)(logits, labels)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert not torch.allclose(smoothed, F.cross_entropy(logits, labels))


def test_deit_hard_with_soft_targets_keeps_the_teachers_hard_label(pair):
    student, teacher, images, labels = pair
    mixed = 0.7 * images + 0.3 * images.flip(0)  # what the student sees after mixup
    targets = 0.7 * F.one_hot(labels, 10).float() + 0.3 * F.one_hot(labels.flip(0), 10).float()
    seen = []
    teacher.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    criterion = DistillationLoss('deit_hard', student, teacher, label_smoothing=0.1)
    loss, terms, logits = step_loss(criterion, student, teacher, mixed, targets)
    assert torch.equal(seen[0], mixed)  # the teacher sees the same mixed images
    with torch.no_grad():
        hard = teacher(mixed).argmax(-1)
    soft_ce = -(targets * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(terms['kd'], F.cross_entropy(logits, hard).detach())
    torch.testing.assert_close(loss, 0.5 * soft_ce + 0.5 * F.cross_entropy(logits, hard))


@pytest.mark.parametrize('target', RELEVANCE_TARGETS)
def test_the_teachers_relevance_is_the_gradient_weighted_attention_written_out_by_hand(target, pair):
    """``advit_relevance``'s target, from the one teacher forward a group shares, equals Chefer et al.'s
    gradient-weighted [CLS] attention computed by hand with autograd, each layer's (and, for ``rollout_last``,
    the rollout of them in the last layer); the raw maps other students read come from that same forward."""
    _, teacher, images, labels = pair
    forward = TeacherForward(teacher, model_normalization(teacher), capture=True, relevance=target)
    output = forward(images, labels)
    expected = gradient_weighted_cls_attention(teacher, images, labels)
    if target == 'rollout_last':
        expected[:, -1] = reference_gradient_rollout(teacher, images, labels)
    torch.testing.assert_close(output.relevance[:, :, 0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.maps, explicit_cls_attention(teacher, images), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(output.logits, teacher(images))
    assert all(p.grad is None for p in teacher.parameters()), 'the teacher\'s weights get no gradient'
    with pytest.raises(ValueError, match='labels'):
        forward(images)


def reference_gradient_rollout(model, images, labels):
    """Gradient rollout by hand from the same explicit forward: R = I, R <- R + weighted R, [CLS] row."""
    weighted = gradient_weighted_attention_matrices(model, images, labels)
    relevance = torch.eye(weighted[0].shape[-1]).expand_as(weighted[0])
    for layer in weighted:
        relevance = relevance + layer @ relevance
    row = relevance[:, 0, model.num_prefix_tokens:]
    return row / row.sum(dim=-1, keepdim=True)


def test_relevance_follows_the_mixed_target_and_students_without_it_pay_nothing(pair):
    """With mixup's soft targets the score is the target-weighted logits (a one-hot target gives the class's
    logit); a group with no relevance student runs its teacher without gradients."""
    _, teacher, images, labels = pair
    forward = TeacherForward(teacher, model_normalization(teacher), capture=True, relevance='layers')
    one_hot = F.one_hot(labels, 10).float()
    torch.testing.assert_close(forward(images, one_hot).relevance, forward(images, labels).relevance)
    mixed = forward(images, 0.5 * one_hot + 0.5 * F.one_hot(labels.roll(1), 10).float()).relevance
    assert not torch.allclose(mixed, forward(images, labels).relevance)
    plain = TeacherForward(teacher, model_normalization(teacher), capture=True)(images)
    assert plain.relevance is None and plain.logits.grad_fn is None and plain.maps.grad_fn is None
