"""timm's other class-token ViT families (DeiT III, EVA-02, BEiT): our [CLS] rows equal each family's own attention
written out by hand (rotary embeddings and relative position bias included), and rollout, gradient rollout,
faithfulness under every removal protocol and distillation from such a teacher run on them; an attention advit
cannot take exactly is refused in words. Small models with random weights, built here."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from advit.core.attention_path import set_attention_path, use_attention_path
from advit.core.capture import ClsAttentionCapture
from advit.core.families import attention_modules, family_of
from advit.core.losses import DistillationLoss, TeacherForward
from advit.core.models import model_normalization
from advit.measure.faithfulness import has_cls_attention, measure_faithfulness
from advit.measure.removal import PROTOCOLS, removed_logits
from advit.measure.rollout import explain, rollout
from attention_reference import _biased_qk, explicit_cls_attention, full_attention
from conftest import tiny_vit

SMALL = dict(pretrained=False, img_size=32, patch_size=4, depth=2, embed_dim=48, num_heads=3, num_classes=10)
FAMILIES = {
    'deit3': ('deit3_small_patch16_224', {}),  # timm's ViT attention; layer scale, no class position embedding
    'eva02': ('eva02_tiny_patch14_224', {}),  # rope, one qkv weight with q/v biases by F.linear, SwiGLU, mean pooling
    'eva02-separate-qkv': ('eva02_tiny_patch14_224', dict(qkv_fused=False)),  # q, k, v projections of their own
    'eva-rope-attention': ('eva02_tiny_patch14_224', dict(attn_type='rope')),  # timm's AttentionRope
    'beit': ('beit_base_patch16_224', {}),  # a relative position bias per layer, q/v biases, mean pooling
    'beit-shared-bias': ('beit_base_patch16_224', dict(use_rel_pos_bias=False, use_shared_rel_pos_bias=True)),
}
ROTATED_OR_BIASED = [key for key in FAMILIES if key != 'deit3']


def family_model(key: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A small model of the family (eval mode), every weight moved off timm's initialisation: BEiT's bias tables
    and both families' q/v biases start at zero, which would hide them (a trained BEiT's biases are units)."""
    torch.manual_seed(seed)
    name, args = FAMILIES[key]
    model = timm.create_model(name, **dict(SMALL, **args, **overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * (1.0 if 'relative_position' in name else 0.2))
    return model


@pytest.mark.parametrize('normalization', ['renormalized', 'raw'])
@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'explicit'])
@pytest.mark.parametrize('key', FAMILIES)
def test_cls_rows_equal_the_familys_own_attention_written_out(key, fused, normalization):
    model = family_model(key)
    for attn in attention_modules(model):
        attn.fused_attn = fused
    images = torch.randn(3, 3, 32, 32)
    expected = explicit_cls_attention(model, images, renormalize=normalization == 'renormalized')
    with ClsAttentionCapture(model, normalization) as capture, torch.no_grad():
        logits = model(images)
        maps = capture.pop()
    assert maps.shape == expected.shape == (3, 2, 3, 64) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
    if normalization == 'renormalized':
        torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 3))
    assert [attn.fused_attn for attn in attention_modules(model)] == [fused] * 2, 'the path is given back'
    torch.testing.assert_close(logits, model(images), atol=1e-5, rtol=1e-4)  # the capture only reads


@pytest.mark.parametrize('key', ROTATED_OR_BIASED)
def test_the_rope_and_the_relative_bias_change_the_rows(key):
    """Without them (q K^T of the projections alone, what a hook on qkv could compute) the rows differ: the
    reference above is not vacuous, and a qkv-only capture would be wrong for these families."""
    model = family_model(key)
    rows: list[torch.Tensor] = []

    def plain(attn, args):
        q, k = _biased_qk(attn, args[0])
        norm = getattr(attn, 'q_norm', torch.nn.Identity())
        rows.append(((norm(q) * attn.scale) @ norm(k).transpose(-2, -1)).softmax(-1)[:, :, 0, 1:])

    handles = [block.attn.register_forward_pre_hook(plain) for block in model.blocks]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    expected = explicit_cls_attention(model, images, renormalize=False)
    assert (torch.stack(rows, dim=1) - expected).abs().sum(-1).amax() > 0.1  # in L1 over the patches


def test_a_family_student_gets_gradients_through_its_maps():
    model = family_model('eva02').train()
    with ClsAttentionCapture(model) as capture:
        model(torch.randn(2, 3, 32, 32))
        maps = capture.pop()
    assert maps.requires_grad
    (maps ** 2).sum().backward()
    attn = model.blocks[0].attn
    assert attn.qkv.weight.grad.abs().sum() > 0 and attn.q_bias.grad.abs().sum() > 0


def test_overlapping_captures_and_path_settings_keep_the_explicit_path_until_the_last_lets_go():
    model = family_model('beit')
    images = torch.randn(1, 3, 32, 32)
    first, second = ClsAttentionCapture(model), ClsAttentionCapture(model)
    set_attention_path(model, 'fused')  # as a resumed run sets it: taken up when the captures let go
    first.remove()
    with torch.no_grad():
        model(images)
    torch.testing.assert_close(second.pop(), explicit_cls_attention(model, images), atol=1e-5, rtol=0)
    second.remove()
    assert all(attn.fused_attn for attn in attention_modules(model))
    assert use_attention_path(model, 'auto', torch.device('cpu'), batch=1, training=False) in ('fused', 'explicit')


@pytest.mark.parametrize('key', FAMILIES)
def test_rollout_and_gradient_rollout_read_the_familys_attention(key):
    model = family_model(key)
    images = torch.randn(2, 3, 32, 32)
    explained = explain(model, images)
    torch.testing.assert_close(explained.attention, full_attention(model, images), atol=1e-5, rtol=0)
    for rows in (explained.relevance, rollout(explained.attention, 1)):
        assert rows.shape == (2, 64) and torch.isfinite(rows).all() and (rows >= 0).all()
        torch.testing.assert_close(rows.sum(-1), torch.ones(2))
    assert not explained.relevance.allclose(torch.full_like(explained.relevance, 1 / 64))


def _without_tokens(model: torch.nn.Module, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The reference drop: the sequence cut to the ``keep`` tokens before the blocks, with each kept token's rotary
    embedding (EVA) or the rows and columns of the relative position biases (BEiT) it had in the whole grid."""
    if hasattr(model, 'rope'):
        tokens, rope = model._pos_embed(model.patch_embed(images))
        x = model.norm_pre(tokens[:, keep])
        for block in model.blocks:
            x = block(x, rope=rope[keep[1:] - 1])
        return model.forward_head(model.norm(x))
    x = model.patch_embed(images)
    x = torch.cat((model.cls_token.expand(len(x), -1, -1), x), dim=1)[:, keep]
    shared = model.rel_pos_bias()[:, keep][:, :, keep] if model.rel_pos_bias is not None else None
    for block in model.blocks:
        if block.attn.relative_position_bias_table is not None:
            whole = block.attn._get_rel_pos_bias
            block.attn._get_rel_pos_bias = lambda whole=whole: whole()[:, :, keep][:, :, :, keep]
        x = block(x, shared_rel_pos_bias=shared)
        block.attn.__dict__.pop('_get_rel_pos_bias', None)
    return model.forward_head(model.norm(x))


@pytest.mark.parametrize('key', ROTATED_OR_BIASED)
def test_dropping_tokens_equals_cutting_them_from_the_sequence(key):
    model = family_model(key)
    images = torch.randn(3, 3, 32, 32)
    masked = torch.zeros(3, 64, dtype=torch.bool)
    masked[:, [0, 5, 9, 33, 63]] = True
    keep = torch.cat([torch.tensor([0]), 1 + (~masked[0]).nonzero()[:, 0]])
    with torch.no_grad():
        dropped = removed_logits(model, images, masked, (8, 8), 'drop')
        torch.testing.assert_close(dropped, _without_tokens(model, images, keep), atol=1e-5, rtol=1e-4)
        assert (dropped - model(images)).abs().amax() > 1e-2, 'the dropped patches counted'


@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('key', ['deit3', 'eva02', 'beit'])
def test_faithfulness_curves_under_every_protocol(key, protocol):
    model = family_model(key)
    assert has_cls_attention(model)
    curves = measure_faithfulness(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]),
                                  batch_size=16, protocol=protocol)
    assert curves.protocol == protocol and curves.sources[-2:] == ['rollout', 'gradient rollout']
    # Every patch dropped leaves a mean-pooling head (EVA's, BEiT's) the [CLS] token to average, not nothing.
    assert curves.accuracy.shape == (2, 4, 3, 5) and np.isfinite(curves.probability).all()
    assert all(curves.quarter_drop(source) is not None for source in curves.sources)


@pytest.mark.parametrize('relevance', [None, 'rollout_last'], ids=['advit_l1', 'advit_relevance'])
@pytest.mark.parametrize('key,overrides', [('deit3', {}), ('eva02', {}), ('beit', dict(patch_size=8))],
                         ids=['deit3', 'eva02', 'beit-4x4-grid'])
def test_a_family_teacher_distils_into_a_plain_vit(key, overrides, relevance):
    teacher, student = family_model(key, **overrides), tiny_vit(1).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    method = 'advit_relevance' if relevance else 'advit_l1'
    criterion = DistillationLoss(method, student, teacher)
    taught = TeacherForward(teacher, model_normalization(student), capture=True, relevance=relevance)(images, labels)
    if relevance:
        torch.testing.assert_close(taught.relevance.sum(-1), torch.ones(4, 2, 1))
    with ClsAttentionCapture(student) as capture:
        outputs = student(images)
        loss, terms = criterion(outputs, labels, taught, capture.pop())
    loss.backward()
    assert torch.isfinite(loss) and terms['attn'] > 0
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_attention_advit_cannot_take_exactly_is_refused_in_words():
    """timm's relative-position ViT also has a qkv Linear, but its softmax adds a bias the projection lacks: a
    qkv capture would be wrong, so it is refused, not read."""
    model = timm.create_model('vit_relpos_small_patch16_224', **dict(SMALL, patch_size=4)).eval()
    for call in (ClsAttentionCapture, family_of, lambda m: explain(m, torch.randn(1, 3, 32, 32))):
        with pytest.raises(TypeError, match='RelPosAttention .* not one whose \\[CLS\\] row advit can take exactly: '
                                            'the families it can are ViT / DeiT / DeiT III, EVA / EVA-02, .*BEiT'):
            call(model)
    assert not has_cls_attention(model)
    with pytest.raises(ValueError, match='no token sequence to drop patches from that advit knows'):
        removed_logits(model, torch.randn(1, 3, 32, 32), torch.zeros(1, 64, dtype=torch.bool), (8, 8), 'drop')


@pytest.mark.parametrize('name, size', [('deit3_small_patch16_224', 32), ('eva02_tiny_patch14_224', 28),
                                        ('beit_base_patch16_224', 32)])
def test_a_familys_state_dict_imports_and_is_offered_as_a_vit_whose_maps_the_views_take(name, size, tmp_path):
    """A timm checkpoint of each family, as people save one (a .pth state dict), made an advit checkpoint by
    ``advit import``: rebuilt at its image size, listed by the app as a ViT, its [CLS] maps captured."""
    from advit.app.catalog import check_checkpoint
    from advit.core.checkpoint import import_state_dict, load_checkpoint
    from advit.core.data import CIFAR10_CLASSES
    from advit.core.models import create_model
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=size).eval()
    torch.save(model.state_dict(), tmp_path / 'weights.pth')
    import_state_dict(tmp_path / 'weights.pth', name, tmp_path / 'imported.safetensors', list(CIFAR10_CLASSES), size)
    loaded = load_checkpoint(tmp_path / 'imported.safetensors').model
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    entry = check_checkpoint(tmp_path / 'imported.safetensors')
    assert entry.usable and entry.is_vit, entry.problem
    with ClsAttentionCapture(loaded) as capture, torch.no_grad():
        loaded(images)
        maps = capture.pop()
    assert maps.shape[:2] == (2, len(loaded.blocks)) and torch.allclose(maps.sum(-1), torch.ones(()))


@pytest.mark.slow  # trains through the CLI
@pytest.mark.parametrize('name, size', [('eva02_tiny_patch14_224', 28), ('beit_base_patch16_224', 32)])
def test_a_fine_tuning_run_starts_from_a_familys_imported_checkpoint(name, size, tmp_path, data_flags):
    """An imported EVA-02 or BEiT checkpoint as a student's start: the run builds the family at its size, loads the
    file, keeps its head (trained on the run's classes) and says so in its first line."""
    from advit.cli import main
    from advit.core.checkpoint import import_state_dict
    from advit.core.data import CIFAR10_CLASSES
    from advit.core.models import create_model
    torch.manual_seed(0)
    torch.save(create_model(name, num_classes=10, img_size=size).state_dict(), tmp_path / 'weights.pth')
    start = tmp_path / 'start.safetensors'
    import_state_dict(tmp_path / 'weights.pth', name, start, list(CIFAR10_CLASSES), size)
    out = tmp_path / 'run'
    assert main(['train', '--method', 'vit', '--model', name, '--image-size', str(size), '--pretrained-file',
                 str(start), '--steps', '1', '--drop-path', '0', '--faithfulness-images', '0', '--out', str(out),
                 *data_flags]) == 0
    assert 'it starts from start.safetensors, its head kept' in (out / 'train.log').read_text()
