"""Importing transformers ViT / DeiT classifiers: tiny random models saved as transformers saves them, imported through
the CLI and the function, rebuilt by load_checkpoint, and compared with transformers' own forward; foreign, lying and
broken folders refused in words, with nothing written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file, save_file

from advit.core.capture import ClsAttentionCapture
from advit.core.checkpoint import import_state_dict, load_checkpoint
from advit.core.hf_import import check_equivalent, convert, timm_weights
from advit.core.weights import CheckpointError

transformers = pytest.importorskip('transformers')

CLASSES = ['plane', 'car', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, num_labels=10, id2label=dict(enumerate(CLASSES)))
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]
ARCHITECTURES = ('ViTForImageClassification', 'DeiTForImageClassification', 'DeiTForImageClassificationWithTeacher')


def random_model(architecture: str, seed: int = 0, **config):
    """A transformers classifier with every weight drawn at random (tokens, norms and biases too, so that a weight
    mapped to the wrong place changes the output), eval mode."""
    config_class = transformers.ViTConfig if architecture.startswith('ViT') else transformers.DeiTConfig
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config_class(**dict(TINY, attn_implementation='eager', **config)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def save_folder(model, folder: Path, processor: bool = True) -> Path:
    model.save_pretrained(folder)
    if processor:
        transformers.ViTImageProcessor(size={'height': 32, 'width': 32}, image_mean=MEAN,
                                       image_std=STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def folders(tmp_path_factory) -> dict[str, tuple[object, Path]]:
    root = tmp_path_factory.mktemp('transformers')
    return {name: (model, save_folder(model, root / name)) for name in ARCHITECTURES
            for model in [random_model(name)]}


@pytest.fixture(scope='module')
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference(model, images: torch.Tensor):
    with torch.no_grad():
        output = model(pixel_values=images, output_attentions=True)
    return output.logits, torch.stack([layer[:, :, 0] for layer in output.attentions], dim=1)


def assert_same_function(path: Path, model, images: torch.Tensor, prefix: int) -> None:
    """The checkpoint at ``path``, as load_checkpoint rebuilds it, gives the transformers model's logits, and the
    capture its [CLS] rows' patch entries (every layer, every head)."""
    loaded = load_checkpoint(path)
    logits, rows = reference(model, images)
    with ClsAttentionCapture(loaded.model, 'raw') as capture, torch.no_grad():
        ours = loaded.model(images)
        maps = capture.pop()
    torch.testing.assert_close(ours, logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps, rows[..., prefix:], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(rows[..., prefix:], rows[..., prefix:].mean(-1, keepdim=True))  # maps that say something


# --- imports that check out -----------------------------------------------------------------------

@pytest.mark.slow  # starts a process
def test_the_cli_imports_a_vit_folder_that_then_computes_what_transformers_does(folders, images, tmp_path):
    model, folder = folders['ViTForImageClassification']
    out = tmp_path / 'vit.safetensors'
    result = subprocess.run([sys.executable, '-m', 'advit', 'import', str(folder), '--out', str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'same logits and [CLS] attention as transformers\' ViTForImageClassification' in result.stdout
    assert_same_function(out, model, images, prefix=1)
    meta = load_checkpoint(out).meta
    assert meta['classes'] == CLASSES and meta['image_size'] == 32 and meta['mean'] == MEAN and meta['std'] == STD
    assert meta['model_args']['norm_eps'] == 1e-12 and meta['imported_from'] == folder.name
    assert meta['import_check']['logit_gap'] < 1e-4


@pytest.mark.parametrize('architecture, prefix, kind', [
    ('ViTForImageClassification', 1, 'VisionTransformer'),
    ('DeiTForImageClassification', 2, 'VisionTransformer'),  # the distillation token is a register token
    ('DeiTForImageClassificationWithTeacher', 2, 'VisionTransformerDistilled'),
])
def test_each_architecture_imports_as_the_timm_model_that_computes_the_same(folders, images, tmp_path, architecture,
                                                                           prefix, kind):
    model, folder = folders[architecture]
    out = tmp_path / 'imported.safetensors'
    meta = import_state_dict(folder, None, out, None, method='deit_hard', teacher='regnety')
    loaded = load_checkpoint(out)
    assert type(loaded.model).__name__ == kind and loaded.model.num_prefix_tokens == prefix
    assert meta['method'] == 'deit_hard' and meta['imported_architecture'] == architecture
    assert_same_function(out, model, images, prefix)
    assert loaded.model.pretrained_cfg['mean'] == tuple(MEAN)  # the file's normalisation, not the family's default


def test_the_layer_norm_epsilon_is_transformers_own(images, tmp_path):
    """transformers' ViTs normalise with their config's epsilon (1e-12 by default), timm's with 1e-6: the checkpoint
    records it, and with a large one (where timm's default would visibly differ) the function is still the same."""
    model = random_model('ViTForImageClassification', layer_norm_eps=0.05)
    meta = import_state_dict(save_folder(model, tmp_path / 'eps'), None, tmp_path / 'eps.safetensors', None)
    assert meta['model_args']['norm_eps'] == 0.05
    assert_same_function(tmp_path / 'eps.safetensors', model, images, prefix=1)


def test_with_teacher_averages_its_two_heads_as_timm_does_in_eval(folders, images, tmp_path):
    model, folder = folders['DeiTForImageClassificationWithTeacher']
    with torch.no_grad():
        output = model(pixel_values=images)
    torch.testing.assert_close(output.logits, (output.cls_logits + output.distillation_logits) / 2)
    assert not torch.allclose(output.cls_logits, output.distillation_logits)
    loaded, _ = convert(folder)
    with torch.no_grad():
        tokens = loaded.forward_features(images)
        torch.testing.assert_close(loaded.head(tokens[:, 0]), output.cls_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loaded.head_dist(tokens[:, 1]), output.distillation_logits, atol=1e-5, rtol=1e-4)


def test_file_names_and_in_memory_names_map_alike(folders):
    """transformers 4.x names weights in memory as its files do (encoder.layer.N.attention.attention.query), 5.x
    otherwise (layers.N.attention.q_proj): both map to the same timm weights."""
    for architecture, (model, folder) in folders.items():
        token = None if architecture.startswith('ViT') else 'dist_token'
        on_disk, in_memory = timm_weights(load_file(folder / 'model.safetensors'), token), \
            timm_weights(model.state_dict(), token)
        assert sorted(on_disk) == sorted(in_memory)
        assert all(torch.equal(on_disk[name], in_memory[name]) for name in on_disk)


def test_defaults_without_a_processor_and_classes_given(tmp_path):
    """No preprocessor_config.json: DeiT's image processor's defaults (ImageNet's); generic labels take --classes."""
    folder = save_folder(random_model('DeiTForImageClassification', id2label=None), tmp_path / 'deit',
                         processor=False)
    with pytest.raises(CheckpointError, match='LABEL_0 to LABEL_9 only: give their names with --classes'):
        import_state_dict(folder, None, tmp_path / 'x.safetensors', None)
    meta = import_state_dict(folder, None, tmp_path / 'deit.safetensors', CLASSES)
    assert meta['classes'] == CLASSES and meta['mean'] == [0.485, 0.456, 0.406] and meta['std'] == [0.229, 0.224, 0.225]


@pytest.mark.slow  # starts processes
def test_a_hub_id_is_taken_from_the_hugging_face_cache_offline(folders, images, tmp_path):
    """A Hub id resolves as huggingface_hub resolves it: here, with downloads off, from a cache laid out as the hub
    library lays it out (refs/main naming the snapshot)."""
    model, folder = folders['DeiTForImageClassificationWithTeacher']
    repo = tmp_path / 'home' / 'hub' / 'models--advit-test--tiny-deit'
    commit = '0123456789abcdef0123456789abcdef01234567'
    shutil.copytree(folder, repo / 'snapshots' / commit)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    env = dict(os.environ, HF_HOME=str(tmp_path / 'home'), HF_HUB_OFFLINE='1')
    env.pop('HF_HUB_CACHE', None)

    def advit_import(source: str, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', 'advit', 'import', source, '--out', str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    result = advit_import('advit-test/tiny-deit', tmp_path / 'hub.safetensors')
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_function(tmp_path / 'hub.safetensors', model, images, prefix=2)
    assert load_checkpoint(tmp_path / 'hub.safetensors').meta['imported_from'] == 'advit-test/tiny-deit'
    result = advit_import('advit-test/not-cached', tmp_path / 'missing.safetensors')
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'nor a Hub model that is in the Hugging Face cache' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / 'missing.safetensors').exists()


def test_the_imported_checkpoint_teaches_a_student(folders, tmp_path):
    import timm

    from advit.core.losses import DistillationLoss, TeacherForward
    from advit.core.models import model_normalization
    _, folder = folders['ViTForImageClassification']
    import_state_dict(folder, None, tmp_path / 'teacher.safetensors', None)
    teacher = load_checkpoint(tmp_path / 'teacher.safetensors').model
    torch.manual_seed(0)
    student = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, num_classes=10)
    forward = TeacherForward(teacher, model_normalization(student), capture=True, attn_norm='raw')
    assert forward.norm == (tuple(MEAN), tuple(STD))  # its inputs re-expressed in its processor's normalisation
    loss = DistillationLoss('advit_l1', student, teacher)
    images, labels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.arange(4)
    with ClsAttentionCapture(student, 'raw') as capture:
        logits = student(images)
        total, terms = loss(logits, labels, forward(images), capture.pop())
    total.backward()
    assert torch.isfinite(total) and terms['attn'] > 0 and student.patch_embed.proj.weight.grad.abs().sum() > 0


# --- refusals -----------------------------------------------------------------------------------------

def refused(source, tmp_path: Path, message: str, classes: list[str] | None = None) -> None:
    out = tmp_path / 'refused.safetensors'
    with pytest.raises(CheckpointError, match=message):
        import_state_dict(source, None, out, classes)
    assert not out.exists()


def test_foreign_folders_are_refused_in_words(tmp_path):
    bert = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)
    transformers.BertForSequenceClassification(bert).save_pretrained(tmp_path / 'bert')
    swin = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                   window_size=4, num_labels=10)
    transformers.SwinForImageClassification(swin).save_pretrained(tmp_path / 'swin')
    supported = 'not one advit imports: ViTForImageClassification, DeiTForImageClassification'
    refused(tmp_path / 'bert', tmp_path, f"holds a 'bert' model \\(BertForSequenceClassification\\), {supported}")
    refused(tmp_path / 'swin', tmp_path, f"holds a 'swin' model \\(SwinForImageClassification\\), {supported}")
    (tmp_path / 'empty').mkdir()
    refused(tmp_path / 'empty', tmp_path, 'has no config.json: not a transformers checkpoint')
    with pytest.raises(CheckpointError, match='is not a folder: a transformers checkpoint is a folder'):
        convert(tmp_path / 'bert' / 'config.json')


def test_a_config_that_lies_is_refused(folders, tmp_path):
    _, folder = folders['ViTForImageClassification']
    config = json.loads((folder / 'config.json').read_text())
    for name, change, message in (
            ('wrong_type', dict(model_type='bert'), "holds a 'bert' model"),
            ('narrower', dict(intermediate_size=48),  # transformers 5 names weights and shapes so, 4.x the key only
             r'do not fit its config.json: .*vit\.(layers\.0\.mlp\.fc1\.weight is \(64, 32\) in the file, \(48, 32\) in '
             r'its config|encoder\.layer\.0\.intermediate\.dense\.weight has another shape)'),
            ('activation', dict(hidden_act='gelu_new'), "its activation is 'gelu_new': timm's ViT computes the exact"),
            ('non_square', dict(image_size=[32, 48]), 'its image_size is .*: advit imports square images')):
        lying = tmp_path / name
        shutil.copytree(folder, lying)
        (lying / 'config.json').write_text(json.dumps(dict(config, **change)))
        refused(lying, tmp_path, message)
    refused(folder, tmp_path, '3 class names given for a head of 10 classes', classes=['a', 'b', 'c'])
    with pytest.raises(CheckpointError, match='takes 32px images'):
        import_state_dict(folder, None, tmp_path / 'x.safetensors', None, image_size=224)


def test_broken_weights_are_refused(folders, tmp_path):
    _, folder = folders['ViTForImageClassification']
    weights = load_file(folder / 'model.safetensors')
    for name, change, message in (
            ('misshapen', {'classifier.weight': torch.zeros(7, 32)}, r'classifier\.weight (is \(7, 32\) in the file|has another shape)'),
            ('missing', {'vit.layernorm.weight': None}, 'vit.layernorm.weight is missing'),
            ('nan', {'vit.layernorm.bias': torch.full((32,), float('nan'))}, 'non-finite logits or attention')):
        broken = tmp_path / name
        shutil.copytree(folder, broken)
        tensors = {key: value for key, value in dict(weights, **change).items() if value is not None}
        save_file(tensors, broken / 'model.safetensors', metadata={'format': 'pt'})
        refused(broken, tmp_path, message)
    (broken / 'model.safetensors').unlink()
    refused(broken, tmp_path, 'transformers cannot load .*no file named .*model.safetensors')


def test_the_check_refuses_a_timm_model_that_computes_otherwise(folders):
    """The check is what stands between a mapping error and a wrong checkpoint: one weight off changes the logits;
    attention rows that differ are refused even where the logits agree."""
    model, folder = folders['DeiTForImageClassificationWithTeacher']
    converted, _ = convert(folder)
    assert check_equivalent(model, converted)['logit_gap'] < 1e-5
    with torch.no_grad():
        converted.blocks[1].mlp.fc2.bias[0] += 0.5
    with pytest.raises(CheckpointError, match='their logits differ by up to'):
        check_equivalent(model, converted)

    class AttendsElsewhere(torch.nn.Module):
        """The transformers model, its second layer's attention rows shifted by one token (its logits as they are)."""

        def forward(self, **inputs):
            output = model(**inputs)
            output.attentions = (output.attentions[0], output.attentions[1].roll(1, dims=-1))
            return output

    with pytest.raises(CheckpointError, match="layer 2's \\[CLS\\] attention differs by up to"):
        check_equivalent(AttendsElsewhere(), convert(folder)[0])


def test_the_cli_says_what_is_wrong_in_one_line(folders, tmp_path, capsys):
    from advit.cli import main
    weights = tmp_path / 'state.pth'
    torch.save({'w': torch.zeros(1)}, weights)
    assert main(['import', str(weights), '--out', str(tmp_path / 'x.safetensors')]) == 2
    assert 'is a state dict: give its architecture with --model' in capsys.readouterr().err
    (tmp_path / 'text').mkdir()
    transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64).save_pretrained(tmp_path / 'text')
    assert main(['import', str(tmp_path / 'text'), '--out', str(tmp_path / 'x.safetensors')]) == 2
    err = capsys.readouterr().err
    assert err.startswith("advit import: error: ") and "holds a 'bert' model" in err and len(err.splitlines()) == 1
    _, folder = folders['ViTForImageClassification']
    assert main(['import', str(folder), '--model', 'vit_base_patch16_224', '--out', str(tmp_path / 'x.safetensors')]) == 2
    assert 'whose config.json gives its architecture: leave out --model' in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ['state.pth', 'text']


@pytest.mark.slow  # starts a process
def test_without_transformers_the_import_says_how_to_install_it(folders, tmp_path):
    _, folder = folders['ViTForImageClassification']
    code = f'''
import importlib.abc, sys
class NoTransformers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] == 'transformers':
            raise ImportError(f'{{name}} is not installed')
sys.meta_path.insert(0, NoTransformers())
from advit.cli import main
sys.exit(main(['import', {str(folder)!r}, '--out', {str(tmp_path / 'x.safetensors')!r}]))
'''
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'needs the transformers package: pip install transformers' in result.stderr
