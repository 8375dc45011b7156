"""[CLS]-attention capture: equal to the explicit attention row on fused and unfused paths."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import advit  # noqa: F401  (registers the CIFAR models)
from advit.core.alignment import align_teacher_maps, fuse_heads, layer_mapping, resample_to_grid
from advit.core.capture import ClsAttentionCapture
from attention_reference import explicit_cls_attention
from conftest import TINY, tiny_vit

MODELS = [
    ('vit_tiny_patch4_32', TINY, 32),
    ('vit_small_patch4_32', dict(depth=3), 32),
    ('deit_tiny_distilled_patch4_32', TINY, 32),  # CLS + distillation token
    ('vit_tiny_patch4_32', dict(TINY, qk_norm=True), 32),  # q/k norms applied before the row
    ('vit_small_patch16_224', dict(depth=2), 224),  # 196 patches, as in the paper
]


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'unfused'])
@pytest.mark.parametrize('name,args,size', MODELS, ids=[f'{m[0]}-{i}' for i, m in enumerate(MODELS)])
def test_capture_equals_explicit_attention_row(name, args, size, fused):
    torch.manual_seed(0)
    model = timm.create_model(name, **args).eval()
    for block in model.blocks:
        block.attn.fused_attn = fused
    images = torch.randn(3, 3, size, size)
    expected = explicit_cls_attention(model, images)
    with ClsAttentionCapture(model) as capture, torch.no_grad():
        logits = model(images)
        maps = capture.pop()
    assert maps.shape == expected.shape == (3, len(model.blocks), model.blocks[0].attn.num_heads,
                                            model.patch_embed.num_patches)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    # The hooks only read: the model's output is what it is without them.
    torch.testing.assert_close(logits, model(images))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (run on the lent GPU machine)')
def test_capture_on_cuda_fp32_and_bf16():
    torch.manual_seed(0)
    model = timm.create_model('vit_small_patch16_224', depth=3).cuda().eval()
    images = torch.randn(4, 3, 224, 224, device='cuda')
    torch.backends.cuda.matmul.allow_tf32 = False
    expected = explicit_cls_attention(model, images)
    with ClsAttentionCapture(model) as capture, torch.no_grad():
        model(images)
        torch.testing.assert_close(capture.pop(), expected, atol=1e-5, rtol=0)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            model(images)
        bf16 = capture.pop()
    assert bf16.dtype == torch.float32  # softmax in float32 even under autocast
    assert (bf16 - expected).abs().sum(-1).max() < 0.05  # bf16 logits: close in L1 over the patches


def test_gradient_reaches_student_qkv_and_teacher_stays_detached():
    student = timm.create_model('vit_tiny_patch4_32', **TINY)
    capture = ClsAttentionCapture(student)
    student(torch.randn(2, 3, 32, 32))
    maps = capture.pop()
    assert maps.requires_grad
    (maps ** 2).sum().backward()
    for block in student.blocks:
        assert block.attn.qkv.weight.grad is not None and block.attn.qkv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        student(torch.randn(2, 3, 32, 32))
    assert not capture.pop().requires_grad


def test_pop_clears_and_remove_detaches():
    model = timm.create_model('vit_tiny_patch4_32', **TINY).eval()
    capture = ClsAttentionCapture(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    capture.pop()
    with pytest.raises(RuntimeError, match='no attention recorded'):
        capture.pop()
    capture.remove()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError):
        capture.pop()


def test_non_vit_model_is_refused():
    with pytest.raises(TypeError, match='not a ViT'):
        ClsAttentionCapture(timm.create_model('resnet10t', num_classes=10))


def test_raw_maps_are_the_rows_patch_entries_and_heads_weigh_by_them():
    """'raw': each head's map is its softmax row's patch entries (summing to what it gives the
    patches); fused by the mean, then normalised once. Checked against the explicit N x N attention."""
    model = tiny_vit(0, 'deit_tiny_distilled_patch4_32')  # two prefix tokens
    images = torch.randn(2, 3, 32, 32)
    rows = explicit_cls_attention(model, images, renormalize=False)
    with ClsAttentionCapture(model, 'raw') as capture, torch.no_grad():
        model(images)
        raw = capture.pop()
    torch.testing.assert_close(raw, rows, atol=1e-5, rtol=0)
    shares = raw.sum(-1)
    assert (shares < 1).all() and (shares > 0).all(), 'the prefix tokens take some of each head\'s attention'
    by_hand = rows.mean(dim=2, keepdim=True) / rows.mean(dim=2, keepdim=True).sum(-1, keepdim=True)
    torch.testing.assert_close(fuse_heads(raw, 'mean'), by_hand, atol=1e-5, rtol=0)
    # By hand: head 0 gives 90% to [CLS] and 10% to patch 0; head 1 all to patch 1.
    row = torch.tensor([[[[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]]])  # (batch, layer, heads, CLS + 2 patches)
    renormalized_mean = fuse_heads(row[..., 1:] / row[..., 1:].sum(-1, keepdim=True), 'mean')
    torch.testing.assert_close(renormalized_mean, torch.tensor([[[[0.5, 0.5]]]]))  # head 0's 10% blown up
    torch.testing.assert_close(fuse_heads(row[..., 1:], 'mean'), torch.tensor([[[[0.05 / 0.55, 0.5 / 0.55]]]]))
    with pytest.raises(ValueError, match='unknown attention normalization'):
        ClsAttentionCapture(model, 'softmax')


def test_a_vit_without_a_class_token_is_refused():
    model = tiny_vit(0, class_token=False, global_pool='avg')
    with pytest.raises(ValueError, match='no class token'):
        ClsAttentionCapture(model)


def test_fuse_heads():
    maps = torch.softmax(torch.randn(2, 3, 4, 16), dim=-1)
    torch.testing.assert_close(fuse_heads(maps, 'mean'), maps.mean(2, keepdim=True))
    top = fuse_heads(maps, 'max')
    torch.testing.assert_close(top, maps.amax(2, keepdim=True) / maps.amax(2, keepdim=True).sum(-1, keepdim=True))
    torch.testing.assert_close(top.sum(-1), torch.ones(2, 3, 1))
    torch.testing.assert_close(fuse_heads(maps, 'none'), maps)
    torch.testing.assert_close(fuse_heads(maps, 2), maps[:, :, 2:3])
    with pytest.raises(ValueError, match=r'head 4 does not exist: this model has 4 heads \(0-3\)'):
        fuse_heads(maps, 4)
    with pytest.raises(ValueError, match='unknown head fusion'):
        fuse_heads(maps, 'median')


def test_layer_mapping():
    assert layer_mapping(12, 12) == list(range(12))
    assert layer_mapping(2, 4) == [1, 3]
    assert layer_mapping(6, 12) == [1, 3, 5, 7, 9, 11]
    assert layer_mapping(4, 2) == [0, 0, 1, 1]
    assert layer_mapping(3, 12, [0, 5, 11]) == [0, 5, 11]
    with pytest.raises(ValueError, match='3 layers'):
        layer_mapping(3, 12, [0, 1])
    with pytest.raises(ValueError, match='outside'):
        layer_mapping(2, 4, [0, 4])


def test_resample_to_grid_keeps_distributions():
    maps = torch.softmax(torch.randn(2, 5, 1, 14 * 14), dim=-1)
    assert resample_to_grid(maps, (14, 14), (14, 14)) is maps
    small = resample_to_grid(maps, (14, 14), (7, 7))
    assert small.shape == (2, 5, 1, 49)
    torch.testing.assert_close(small.sum(-1), torch.ones(2, 5, 1))
    assert (small >= 0).all()
    uniform = torch.full((1, 1, 1, 64), 1 / 64)
    torch.testing.assert_close(resample_to_grid(uniform, (8, 8), (14, 14)), torch.full((1, 1, 1, 196), 1 / 196))
    # A peak in the top-left corner stays in the top-left corner.
    peak = torch.zeros(1, 1, 1, 196)
    peak[..., 0] = 1
    assert resample_to_grid(peak, (14, 14), (7, 7)).argmax() == 0


def test_resampling_values_on_small_grids_by_hand():
    """Antialiased bilinear, per axis: 4 -> 2 takes the triangle filter of width 2 (weights 3/7, 3/7,
    1/7 around each output centre); 2 -> 4 interpolates (0.75, 0.25) with the edges held; then the
    map is renormalised."""
    grid = torch.arange(1.0, 17.0).reshape(4, 4)
    down = torch.tensor([[3, 3, 1, 0], [0, 1, 3, 3]]) / 7
    expected = down @ grid @ down.T
    torch.testing.assert_close(resample_to_grid((grid / grid.sum()).reshape(1, 16), (4, 4), (2, 2)),
                               (expected / expected.sum()).reshape(1, 4))
    small = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    up = torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    expected = up @ small @ up.T
    torch.testing.assert_close(resample_to_grid((small / small.sum()).reshape(1, 4), (2, 2), (4, 4)),
                               (expected / expected.sum()).reshape(1, 16))


def test_align_teacher_maps_selects_layers_then_resamples():
    teacher = torch.softmax(torch.randn(2, 4, 1, 196), dim=-1)
    aligned = align_teacher_maps(teacher, student_layers=2, teacher_grid=(14, 14), student_grid=(14, 14))
    torch.testing.assert_close(aligned, teacher[:, [1, 3]])
    aligned = align_teacher_maps(teacher, 2, (14, 14), (7, 7), layer_map=[0, 2])
    torch.testing.assert_close(aligned, resample_to_grid(teacher[:, [0, 2]], (14, 14), (7, 7)))


def test_capture_on_the_gpu_machines_timm():
    """The same capture tests under timm 1.0.29, the version on the lent GPU machine (installed by `make`)."""
    import os
    import subprocess
    import sys
    from conftest import REPO
    timm_dir = REPO / '.cache' / 'timm-1.0.29'
    if not (timm_dir / 'timm').is_dir():
        pytest.skip(f'{timm_dir} not installed: `make install` puts timm 1.0.29 there')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(timm_dir), str(REPO)]))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(Path(__file__).resolve()),
         '-k', 'not gpu_machines_timm', '-o', 'addopts='], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    probe = subprocess.run([sys.executable, '-c', 'import timm; print(timm.__version__)'], env=env,
                           capture_output=True, text=True)
    assert probe.stdout.strip() == '1.0.29'


def test_concurrent_captures_on_one_model_keep_their_own_maps():
    """The app shares one model between requests: each thread's capture must see only its own forwards."""
    import threading
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch4_32', **TINY).eval()
    inputs = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    expected = [explicit_cls_attention(model, x) for x in inputs]
    errors, barrier = [], threading.Barrier(len(inputs))

    def request(index: int) -> None:
        with ClsAttentionCapture(model) as capture:
            barrier.wait()  # all captures attached before any forward runs
            for _ in range(20):
                with torch.inference_mode():
                    model(inputs[index])
                maps = capture.pop()
                if not torch.allclose(maps, expected[index], atol=1e-5):
                    errors.append(index)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize('args', [TINY, dict(TINY, qk_norm=True)], ids=['fast path', 'qk norms'])
def test_capture_compiles_into_one_graph_with_the_eager_maps(args):
    """torch.compile traces the hooks into the model's graph (no break per layer), and the maps
    and their gradient are the eager ones. Dynamo's eager backend: inductor's code generation
    would only add minutes here."""
    import torch._dynamo
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch4_32', **args).train()
    images = torch.randn(2, 3, 32, 32)
    with ClsAttentionCapture(model) as capture:
        torch._dynamo.reset()
        assert torch._dynamo.explain(model)(images).graph_break_count == 0
        capture.pop()
        maps = {}
        for name, forward in (('eager', model), ('compiled', torch.compile(model, backend='eager'))):
            torch.manual_seed(1)  # the same drop-path draws
            forward(images)
            maps[name] = capture.pop()
            maps[name][:, :, :, 0].sum().backward()
            maps[name + ' grad'] = model.blocks[0].attn.qkv.weight.grad.clone()
            model.zero_grad()
    torch.testing.assert_close(maps['compiled'], maps['eager'])
    torch.testing.assert_close(maps['compiled grad'], maps['eager grad'])
