"""The model catalog: discovering checkpoints, checking them without loading, and the loaded-model cache."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import advit  # noqa: F401  (registers the CIFAR ViTs with timm)
from advit.app.catalog import TIMM_PREFIX, ModelCache, ModelEntry, cached_timm_models, check_checkpoint, discover
from advit.core.checkpoint import save_checkpoint
from advit.core.data import CIFAR10_CLASSES
from conftest import REPO, TINY
from conftest import tiny_vit as tiny

NAME = 'vit_tiny_patch4_32'
CLASSES = list(CIFAR10_CLASSES)


def meta_for(**model_args) -> dict:
    return dict(model=NAME, model_args=dict(dict(TINY, num_classes=10), **model_args), classes=CLASSES, method='advit',
                test_top1=87.5, params=5_432_100)


def save(path: Path, seed: int = 0, meta: dict | None = None, **kwargs) -> Path:
    save_checkpoint(path, tiny(seed), meta or meta_for(), **kwargs)
    return path


@pytest.fixture(scope='module')
def inputs() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- ModelEntry -------------------------------------------------------------------------------------

def test_good_checkpoint_is_usable_and_described(tmp_path):
    path = save(tmp_path / 'student.safetensors')
    entry = check_checkpoint(path)
    assert entry.usable and entry.problem is None
    assert entry.key == str(path) and entry.is_vit
    assert entry.meta['model'] == NAME and entry.meta['test_top1'] == 87.5
    assert entry.label() == 'advit student · ViT-Ti/4 (2 layers, width 48) · 87.5%'
    lines = entry.describe().splitlines()
    assert f'- **file**: `{path}`' in lines
    assert '- **architecture**: vit_tiny_patch4_32' in lines
    assert '- **method**: advit' in lines
    assert '- **test top-1**: 87.50%' in lines
    assert '- **classes**: 10' in lines
    assert '- **parameters**: 5.4M' in lines
    assert not any('teacher' in line or 'chosen at step' in line for line in lines)  # absent from the metadata


def test_entry_without_method_or_accuracy():
    entry = ModelEntry(key='timm:vit_small_patch16_224.augreg_in21k_ft_in1k',
                       meta={'model': 'vit_small_patch16_224.augreg_in21k_ft_in1k', 'image_size': 224})
    assert entry.usable and entry.is_vit
    assert entry.label() == 'ImageNet-pretrained (timm) · ViT-S/16 · 224px'
    assert entry.describe().splitlines() == ['- **file**: `timm:vit_small_patch16_224.augreg_in21k_ft_in1k`',
                                             '- **architecture**: vit_small_patch16_224.augreg_in21k_ft_in1k',
                                             '- **image size**: 224']


@pytest.mark.parametrize('model, vit', [('vit_tiny_patch4_32', True), ('deit_small_distilled_patch4_32', True),
                                        ('resnet18', False), ('vit_base_patch16_224.augreg_in21k', True)])
def test_is_vit(model, vit):
    assert ModelEntry(key='x', meta={'model': model}).is_vit is vit
    assert not ModelEntry(key='y', problem='broken').usable


def test_half_checkpoint_and_training_state_are_usable(tmp_path):
    half = save(tmp_path / 'half.safetensors', half=True)
    last = save(tmp_path / 'last.safetensors',
                train_state={'optimizer/step': torch.tensor([3.0]), 'optimizer/exp_avg.0': torch.zeros(7, 5)})
    for path in (half, last):
        entry = check_checkpoint(path)
        assert entry.usable, entry.problem


# --- unusable checkpoints ---------------------------------------------------------------------------

def test_random_bytes(tmp_path):
    path = tmp_path / 'noise.safetensors'
    path.write_bytes(os.urandom(4096))
    entry = check_checkpoint(path)
    assert not entry.usable
    assert 'not a readable safetensors file' in entry.problem and str(path) in entry.problem


@pytest.mark.parametrize('keep', [0.5, 0.999, 20, 3])
def test_truncated(tmp_path, keep):
    data = save(tmp_path / 'whole.safetensors').read_bytes()
    path = tmp_path / 'cut.safetensors'
    path.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    entry = check_checkpoint(path)
    assert not entry.usable
    assert 'not a readable safetensors file' in entry.problem


def test_deeper_metadata_than_weights(tmp_path):
    path = save(tmp_path / 'deep.safetensors', meta=meta_for(depth=3))  # weights of depth 2
    entry = check_checkpoint(path)
    assert not entry.usable
    assert entry.problem.startswith(f'weights do not fit {NAME}: missing: blocks.2.')
    assert 'unexpected' not in entry.problem and 'shape mismatch' not in entry.problem


def test_shallower_metadata_than_weights(tmp_path):
    path = save(tmp_path / 'shallow.safetensors', meta=meta_for(depth=1))
    entry = check_checkpoint(path)
    assert not entry.usable
    assert entry.problem.startswith(f'weights do not fit {NAME}: unexpected: blocks.1.')


def test_wrong_width(tmp_path):
    path = save(tmp_path / 'wide.safetensors', meta=meta_for(embed_dim=96))
    entry = check_checkpoint(path)
    assert not entry.usable
    assert entry.problem.startswith(f'weights do not fit {NAME}: shape mismatch: ')
    assert 'missing' not in entry.problem


def test_wrong_class_count(tmp_path):
    path = save(tmp_path / 'seven.safetensors', meta=meta_for(num_classes=7))  # weights have 10 classes
    entry = check_checkpoint(path)
    assert not entry.usable
    assert entry.problem == (f'weights do not fit {NAME}: shape mismatch: head.bias (10,) vs (7,), '
                             'head.weight (10, 48) vs (7, 48)')


def test_unknown_architecture(tmp_path):
    path = save(tmp_path / 'alien.safetensors', meta=dict(meta_for(), model='vit_no_such_model'))
    entry = check_checkpoint(path)
    assert not entry.usable and 'unknown model' in entry.problem and 'vit_no_such_model' in entry.problem


def test_safetensors_without_advit_metadata(tmp_path):
    path = tmp_path / 'plain.safetensors'
    save_file({k: v.contiguous() for k, v in tiny().state_dict().items()}, str(path))
    entry = check_checkpoint(path)
    assert not entry.usable and 'no advit metadata' in entry.problem


def test_metadata_without_architecture(tmp_path):
    meta = meta_for()
    del meta['model']
    path = save(tmp_path / 'anonymous.safetensors', meta=meta)
    entry = check_checkpoint(path)
    assert not entry.usable
    assert 'architecture' in entry.problem or 'metadata' in entry.problem


# --- discover ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('lie, reason', [
    (dict(image_size=64), "image_size 64 does not fit the model's 8x8 grid of 4-pixel patches"),
    (dict(image_size='big'), "image_size must be a number, got the text 'big'"),
    (dict(image_size='32'), 'image_size must be a number, got the text'),
    (dict(image_size=True), 'image_size must be a number'),
    (dict(classes=['cat', 'dog', 'ship']), '3 class names for a head of 10 classes'),
    (dict(classes='cat,dog'), 'classes must be a list of names'),
    (dict(classes=[1] * 10), 'classes must be a list of names'),
    (dict(std=[0, 0, 0]), 'each std value must be between'),
    (dict(std=[0.2, float('nan'), 0.2]), 'each std value must be a finite number'),
    (dict(mean=[0.5, 0.5]), 'mean must be a list of 3 numbers'),
    (dict(mean='grey'), 'mean must be a list of 3 numbers'),
    (dict(step=-1), 'step must be between'),
    (dict(test_top1=250.0), 'test_top1 must be between 0 and 100'),
    (dict(test_top1='high'), 'test_top1 must be a number'),
], ids=lambda value: str(value)[:40])
def test_metadata_that_lies_about_the_weights_or_sense_is_listed_unusable_with_the_reason(tmp_path, lie, reason):
    """A copy of a good checkpoint whose metadata says something the weights or sense deny: listed as unusable,
    saying which field and why, before any view could trust it (issue #41)."""
    honest = dict(meta_for(), image_size=32, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26], step=10)
    entry = check_checkpoint(save(tmp_path / 'liar.safetensors', meta={**honest, **lie}))
    assert not entry.usable and reason in entry.problem, entry.problem
    assert len(entry.problem) < 300
    assert check_checkpoint(save(tmp_path / 'honest.safetensors', meta=honest)).usable


@pytest.mark.parametrize('header, reason', [
    ('[1, 2, 3]', 'advit metadata that is a list, not a mapping of fields'),
    ('"vit_tiny_patch4_32"', 'advit metadata that is a str, not a mapping of fields'),
    ('{"model": "x", "pad": "' + 'x' * 1_100_000 + '"}', 'characters of advit metadata: over the 1,000,000'),
    ('{"model": "vit_tiny_patch4_32", "step": ' + '9' * 5000 + '}', 'corrupt advit metadata: a number too long'),
    ('[' * 100_000 + ']' * 100_000, 'corrupt advit metadata: nested too deep'),
    ('{"model": 5}', 'model must be a timm name and model_args a mapping, got 5'),
    ('{"model": "vit_tiny_patch4_32", "model_args": [4, 3]}', 'model_args a mapping, got'),
    ('{"model": "vit_tiny_patch4_32", "model_args": {"depth": "' + 'x' * 10_000 + '"}}',
     "depth must be a number, got 'xxx"),
], ids=lambda value: str(value)[:30])
def test_hostile_metadata_is_listed_unusable_in_words(tmp_path, header, reason):
    """A safetensors file whose advit header is not settings (another type, huge, deep, unreadable numbers, wrong
    field types): listed as unusable with a short reason, never Python's message, never loaded."""
    path = tmp_path / 'hostile.safetensors'
    save_file({k: v.contiguous() for k, v in tiny().state_dict().items()}, str(path), metadata={'advit': header})
    entry = check_checkpoint(path)
    assert not entry.usable and reason in entry.problem and len(entry.problem) < 300, entry.problem[:400]
    assert entry.meta == {} or isinstance(entry.meta, dict)
    for python in ('Traceback', 'object has no attribute', 'not subscriptable', 'argument after **', 'Exceeds the'):
        assert python not in entry.problem


def test_discover(tmp_path):
    bundle, extra, runs = tmp_path / 'bundle', tmp_path / 'extra', tmp_path / 'runs'
    good = save(bundle / 'b_good.safetensors')
    broken = bundle / 'a_broken.safetensors'
    broken.write_bytes(b'not a checkpoint')
    save(bundle / 'nested' / 'hidden.safetensors')  # only the folder itself is searched
    (bundle / 'notes.txt').write_text('not a model')
    other = save(extra / 'other.safetensors', meta=meta_for(depth=3))
    run_best = save(runs / 'run1' / 'best.safetensors')
    save(runs / 'run1' / 'last.safetensors', train_state={'step': torch.tensor([1])})
    save(runs / 'run2' / 'last.safetensors')  # a run with no best yet
    run3_best = save(runs / 'run3' / 'best.safetensors')
    save(runs / 'best.safetensors')  # not inside a run
    group_best = save(runs / 'group' / 'advit_l1' / 'best.safetensors')  # a student of a several-student run

    entries = discover([bundle, extra, tmp_path / 'missing'], runs)
    checkpoints = [e for e in entries if not e.key.startswith(TIMM_PREFIX)]
    assert [e.key for e in checkpoints] == [str(p) for p in (broken, good, other, run_best, run3_best, group_best)]
    assert [e.usable for e in checkpoints] == [False, True, False, True, True, True]
    # Clients see folder and file, and reasons that name them so, never the server's absolute paths.
    assert [e.name for e in checkpoints] == ['bundle/a_broken.safetensors', 'bundle/b_good.safetensors',
                                             'extra/other.safetensors', 'runs/run1/best.safetensors',
                                             'runs/run3/best.safetensors', 'runs/group/advit_l1/best.safetensors']
    assert str(tmp_path) not in checkpoints[0].problem and 'bundle/a_broken.safetensors' in checkpoints[0].problem
    inside = discover([bundle], None, home=tmp_path)  # a folder inside the app's: the path from there
    assert [e.name for e in inside][:2] == ['bundle/a_broken.safetensors', 'bundle/b_good.safetensors']
    timm_entries = [e.key for e in entries if e.key.startswith(TIMM_PREFIX)]
    assert timm_entries == [e.key for e in cached_timm_models()]

    without_runs = discover([bundle], None)
    assert [e.key for e in without_runs if not e.key.startswith(TIMM_PREFIX)] == [str(broken), str(good)]
    assert [e.key for e in discover([], tmp_path / 'no-runs') if not e.key.startswith(TIMM_PREFIX)] == []


# --- ModelCache -------------------------------------------------------------------------------------

def test_cache_returns_the_loaded_model(tmp_path, inputs):
    path = save(tmp_path / 'a.safetensors', seed=3)
    cache = ModelCache(capacity=2)
    model, meta = cache.get(str(path))
    assert not model.training
    assert meta['model'] == NAME and meta['classes'] == CLASSES
    with torch.no_grad():
        assert torch.equal(model(inputs), tiny(seed=3)(inputs))
    again, meta_again = cache.get(str(path))
    assert again is model and meta_again is meta


def test_cache_reloads_a_changed_file(tmp_path, inputs):
    path = save(tmp_path / 'a.safetensors', seed=0)
    cache = ModelCache()
    first, _ = cache.get(str(path))
    stamp = path.stat().st_mtime
    save(path, seed=1)  # new weights in the same file
    os.utime(path, (stamp + 10, stamp + 10))
    second, _ = cache.get(str(path))
    assert second is not first
    with torch.no_grad():
        assert torch.equal(second(inputs), tiny(seed=1)(inputs))
        assert torch.equal(first(inputs), tiny(seed=0)(inputs))
    assert cache.get(str(path))[0] is second


def test_cache_evicts_the_least_recently_used(tmp_path):
    a, b, c = (save(tmp_path / f'{name}.safetensors', seed=i) for i, name in enumerate('abc'))
    cache = ModelCache(capacity=2)
    model_a, model_b = cache.get(str(a))[0], cache.get(str(b))[0]
    assert cache.get(str(a))[0] is model_a  # a is now the most recent
    model_c = cache.get(str(c))[0]  # over capacity: b goes
    assert cache.get(str(a))[0] is model_a
    assert cache.get(str(c))[0] is model_c
    reloaded_b = cache.get(str(b))[0]
    assert reloaded_b is not model_b  # b was dropped and is loaded afresh (now a, the least recent, goes)
    assert cache.get(str(c))[0] is model_c
    assert cache.get(str(a))[0] is not model_a


def test_cache_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        ModelCache().get(str(tmp_path / 'gone.safetensors'))


def test_cache_drops_the_stale_model_of_a_rewritten_file(tmp_path):
    a, b = save(tmp_path / 'a.safetensors', seed=0), save(tmp_path / 'b.safetensors', seed=1)
    cache = ModelCache(capacity=2)
    model_b = cache.get(str(b))[0]
    cache.get(str(a))
    stamp = a.stat().st_mtime
    save(a, seed=2)
    os.utime(a, (stamp + 10, stamp + 10))
    cache.get(str(a))  # two live models (a new, b): both fit in a capacity of 2
    assert cache.get(str(b))[0] is model_b


# --- files named by metadata, plain state dicts, faithfulness on the card ---------------------------

@pytest.mark.parametrize('key, value', [('checkpoint_path', 'SECRET'), ('pretrained_cfg', {'file': 'SECRET'}),
                                        ('pretrained_cfg_overlay', {'file': 'SECRET'})])
def test_metadata_that_names_a_file_is_refused_before_any_model_is_built(tmp_path, key, value):
    """A checkpoint's metadata must never make the app open another file (timm reads checkpoint_path)."""
    secret = tmp_path / 'secret.pth'
    torch.save(tiny().state_dict(), secret)  # weights timm would load, were the key passed on
    value = str(secret) if value == 'SECRET' else {'file': str(secret)}
    path = save(tmp_path / 'sly.safetensors', meta=meta_for(**{key: value}))
    entry = check_checkpoint(path)
    assert not entry.usable and f'not an architecture argument: {key}' in entry.problem
    with pytest.raises(Exception, match=f'not an architecture argument: {key}'):
        ModelCache().get(str(path))


def test_a_state_dict_in_a_checkpoint_folder_is_listed_with_how_to_import_it(tmp_path):
    torch.save({'head.weight': torch.zeros(10, 4)}, tmp_path / 'timm_weights.pth')
    (entry,) = [e for e in discover([tmp_path], None, home=tmp_path) if e.name == 'timm_weights.pth']
    assert not entry.usable
    assert entry.problem == ('a plain state dict, which does not name its architecture: `advit import timm_weights.pth '
                             '--model ARCHITECTURE --out timm_weights.safetensors` makes it a checkpoint this app lists')


def test_a_model_card_says_how_faithful_its_maps_are_under_every_removal_protocol_measured():
    """The shipped ADViT-L1 student was measured with patches set to the mean, dropped and blurred: its card in the
    app has a line for each, with the numbers of its evaluation file."""
    from advit.measure.verdicts import headline
    from advit.measure.removal import PROTOCOLS, REMOVED_AS
    path = REPO / 'checkpoints' / 'advit_l1.safetensors'
    lines = check_checkpoint(path).describe().splitlines()
    evaluation = json.loads(path.with_suffix('.eval.json').read_text())
    for protocol in PROTOCOLS:
        line = next(line for line in lines if f'removed patches {REMOVED_AS[protocol]})' in line)
        drop = headline(evaluation, protocol)['last layer']['quarter_drop']
        assert f'last layer: {drop:+.1f}' in line
