"""Checkpoints: self-describing safetensors round trips, plain state dicts, refusals and atomic writes."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from advit.core.checkpoint import architecture_args, load_checkpoint, read_metadata, save_checkpoint
from advit.core.weights import CheckpointError, read_tensors, train_state
from advit.core.models import CIFAR10_MEAN, CIFAR10_STD
from advit.core.data import CIFAR10_CLASSES
from conftest import TINY
from conftest import tiny_vit as tiny

NAME = 'vit_tiny_patch4_32'
CLASSES = list(CIFAR10_CLASSES)


def meta_for(**model_args) -> dict:
    return dict(model=NAME, model_args=dict(TINY, **model_args), classes=CLASSES, mean=list(CIFAR10_MEAN),
                std=list(CIFAR10_STD), method='vit', test_top1=12.5)


@pytest.fixture(scope='module')
def inputs() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


# --- round trips -----------------------------------------------------------------------------------

def test_round_trip_rebuilds_from_metadata_alone(tmp_path, inputs):
    model = tiny(num_classes=7)
    path = tmp_path / 'best.safetensors'
    save_checkpoint(path, model, meta_for(num_classes=7))
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    assert torch.equal(outputs(loaded.model, inputs), outputs(model, inputs))
    assert not torch.allclose(outputs(tiny(seed=1, num_classes=7), inputs), outputs(model, inputs))
    assert loaded.model.head.out_features == 7 and len(loaded.model.blocks) == TINY['depth']
    assert loaded.meta['classes'] == CLASSES and loaded.meta['test_top1'] == 12.5
    assert loaded.meta['model'] == NAME and loaded.meta['model_args'] == dict(TINY, num_classes=7)
    assert loaded.meta['format'].startswith('advit-checkpoint/')
    assert read_metadata(path) == loaded.meta
    # What tells its architecture apart: the arguments less those its classes and image size give.
    assert architecture_args(read_metadata(path)) == TINY and 'num_classes' not in TINY
    assert architecture_args(dict(model=NAME)) == {}


def test_train_state_is_kept_apart_from_the_weights(tmp_path, inputs):
    model = tiny()
    state = {'optimizer/step': torch.tensor([12.0]), 'rng/cpu': torch.arange(5, dtype=torch.uint8)}
    path = tmp_path / 'last.safetensors'
    save_checkpoint(path, model, meta_for(), train_state=state)
    tensors = read_tensors(path)
    kept = train_state(tensors)
    assert set(kept) == set(state) and all(torch.equal(kept[k], state[k]) for k in state)
    assert torch.equal(outputs(load_checkpoint(path).model, inputs), outputs(model, inputs))


def test_wrapper_prefixes_are_stripped_on_save(tmp_path, inputs):
    model = tiny()
    wrapper = nn.Module()
    wrapper.module = model  # what DistributedDataParallel's state dict looks like: 'module.' keys
    assert all(key.startswith('module.') for key in wrapper.state_dict())
    path = tmp_path / 'wrapped.safetensors'
    save_checkpoint(path, wrapper, meta_for())
    assert not any(key.startswith('module.') for key in read_tensors(path))
    assert torch.equal(outputs(load_checkpoint(path).model, inputs), outputs(model, inputs))


def test_half_stores_float16_and_still_loads(tmp_path, inputs):
    model = tiny()
    full, half = tmp_path / 'full.safetensors', tmp_path / 'half.safetensors'
    save_checkpoint(full, model, meta_for())
    save_checkpoint(half, model, meta_for(), half=True)
    with safe_open(str(half), framework='pt') as f:
        dtypes = {f.get_slice(key).get_dtype() for key in f.keys()}
    assert dtypes == {'F16'}
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    loaded = load_checkpoint(half).model
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    assert torch.allclose(outputs(loaded, inputs), outputs(rounded, inputs), atol=1e-6)
    assert torch.allclose(outputs(loaded, inputs), outputs(model, inputs), atol=1e-2)


# --- plain state dicts -----------------------------------------------------------------------------

@pytest.mark.parametrize('prefix, nest', [('module.', 'model'), ('_orig_mod.', 'state_dict'),
                                          ('module._orig_mod.', None), ('', 'model_state')])
def test_pth_state_dict_with_wrapper_prefixes(tmp_path, inputs, prefix, nest):
    model = tiny()
    state = {prefix + key: value for key, value in model.state_dict().items()}
    payload = {nest: state, 'epoch': 3} if nest else state
    path = tmp_path / 'weights.pth'
    torch.save(payload, path)
    loaded = load_checkpoint(path, model_name=NAME, model_args=TINY)
    assert torch.equal(outputs(loaded.model, inputs), outputs(model, inputs))
    assert loaded.meta['model'] == NAME


def test_pth_without_a_model_name(tmp_path):
    path = tmp_path / 'weights.pt'
    torch.save(tiny().state_dict(), path)
    with pytest.raises(CheckpointError, match='architecture'):
        load_checkpoint(path)


def test_plain_safetensors_needs_a_model_name(tmp_path, inputs):
    model = tiny()
    path = tmp_path / 'plain.safetensors'
    save_file(model.state_dict(), str(path))
    with pytest.raises(CheckpointError, match='no advit metadata'):
        load_checkpoint(path)
    loaded = load_checkpoint(path, model_name=NAME, model_args=TINY)
    assert torch.equal(outputs(loaded.model, inputs), outputs(model, inputs))


def test_import_makes_a_state_dict_a_checkpoint_that_describes_itself(tmp_path, inputs, capsys):
    from advit.app.catalog import check_checkpoint
    from advit.cli import main
    from advit.core.models import create_model
    torch.manual_seed(0)
    model = create_model('vit_mini4_convstem_32').eval()
    weights = tmp_path / 'deit_style.pth'
    torch.save({'model': model.state_dict(), 'epoch': 3}, weights)  # DeiT's own checkpoints nest the weights
    out = tmp_path / 'imported.safetensors'
    assert main(['import', str(weights), '--model', 'vit_mini4_convstem_32', '--method', 'advit_l1',
                 '--out', str(out)]) == 0
    loaded = load_checkpoint(out)
    assert torch.equal(outputs(loaded.model, inputs), outputs(model, inputs))
    assert loaded.meta['classes'] == CLASSES and loaded.meta['image_size'] == 32 and loaded.meta['method'] == 'advit_l1'
    assert loaded.meta['mean'] == list(CIFAR10_MEAN) and loaded.meta['imported_from'] == 'deit_style.pth'
    assert check_checkpoint(out).usable
    for flags, message in ((['--model', 'vit_mini6_convstem_32'], 'missing: blocks.4'),
                           (['--model', 'vit_mini4_convstem_32', '--classes', 'cat,dog'], 'shape mismatch: head.bias'),
                           (['--model', 'vit_mini4_convstem_32', '--out', str(tmp_path / 'x.pth')],
                            'the imported checkpoint is a .safetensors file, not x.pth')):
        flags = flags if '--out' in flags else [*flags, '--out', str(tmp_path / 'refused.safetensors')]
        assert main(['import', str(weights), *flags]) == 2
        assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ['deit_style.pth', 'imported.safetensors']


class Payload:
    """Unpickling this calls ``print``: harmless, but no weights-only loader may run it."""

    def __reduce__(self):
        return print, ('ADVIT-UNSAFE-PICKLE-RAN',)


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / 'unsafe.pth'
    torch.save({'model': tiny().state_dict(), 'extra': Payload()}, path)
    with pytest.raises(CheckpointError, match='weights-only'):
        load_checkpoint(path, model_name=NAME, model_args=TINY)
    assert 'ADVIT-UNSAFE-PICKLE-RAN' not in capsys.readouterr().out


def test_pickled_whole_model_is_refused(tmp_path):
    path = tmp_path / 'model.pth'
    torch.save(tiny(), path)
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path, model_name=NAME, model_args=TINY)


def test_pth_holding_no_tensors(tmp_path):
    for payload in ([torch.zeros(1)], {'model': {'weight': [1, 2, 3]}}):
        path = tmp_path / 'odd.pth'
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match='state dict of tensors'):
            load_checkpoint(path, model_name=NAME, model_args=TINY)


# --- mismatches and unreadable files ---------------------------------------------------------------

def test_missing_keys_are_named(tmp_path):
    path = tmp_path / 'shallow.safetensors'
    save_checkpoint(path, tiny(), meta_for(depth=3))  # metadata claims a deeper model than the weights
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert 'missing: blocks.2.' in message and 'more)' in message
    assert 'unexpected' not in message and 'shape mismatch' not in message


def test_unexpected_keys_are_named(tmp_path):
    path = tmp_path / 'deep.safetensors'
    save_checkpoint(path, tiny(depth=3), meta_for(depth=3))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model_name=NAME, model_args=TINY)
    message = str(info.value)
    assert 'unexpected: blocks.2.' in message and 'missing' not in message


def test_shape_mismatches_are_named(tmp_path):
    path = tmp_path / 'ten.safetensors'
    save_checkpoint(path, tiny(), meta_for())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model_name=NAME, model_args=dict(TINY, num_classes=5))
    message = str(info.value)
    assert 'shape mismatch' in message and 'head.weight (10, 48) vs (5, 48)' in message
    assert 'head.bias (10,) vs (5,)' in message and 'missing' not in message


def test_unbuildable_architecture(tmp_path):
    path = tmp_path / 'odd.safetensors'
    save_checkpoint(path, tiny(), dict(meta_for(), model_args=dict(TINY, no_such_argument=1)))
    with pytest.raises(CheckpointError, match='cannot build'):
        load_checkpoint(path)
    save_checkpoint(path, tiny(), dict(meta_for(), model='no_such_model_anywhere'))
    with pytest.raises(CheckpointError, match='no_such_model_anywhere'):
        load_checkpoint(path)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / 'good.safetensors'
    save_checkpoint(path, tiny(), meta_for())
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 100, 4):
        truncated = tmp_path / f'cut{cut}.safetensors'
        truncated.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=truncated.name):
            load_checkpoint(truncated)
        with pytest.raises(CheckpointError, match=truncated.name):
            load_checkpoint(truncated, model_name=NAME, model_args=TINY)


@pytest.mark.parametrize('name', ['noise.safetensors', 'noise.pth', 'noise.pt'])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(path, model_name=NAME, model_args=TINY)


def test_corrupt_metadata(tmp_path):
    path = tmp_path / 'meta.safetensors'
    save_file(tiny().state_dict(), str(path), metadata={'advit': '{not json'})
    with pytest.raises(CheckpointError, match='corrupt advit metadata'):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    path = tmp_path / 'nowhere.safetensors'
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match='not found'):
        read_metadata(tmp_path / 'nowhere.pth')


# --- atomic writes ---------------------------------------------------------------------------------

def _failing_write_bytes(self, data):
    """Writes part of a file, as a crash or a full disk would, then fails."""
    with open(self, 'wb') as f:
        f.write(data[:20])
    raise OSError('no space left on device')


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, inputs):
    path = tmp_path / 'best.safetensors'
    first = tiny(seed=0)
    save_checkpoint(path, first, meta_for())
    before = path.read_bytes()
    monkeypatch.setattr(Path, 'write_bytes', _failing_write_bytes)
    with pytest.raises(OSError, match='no space'):
        save_checkpoint(path, tiny(seed=1), meta_for())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    assert torch.equal(outputs(load_checkpoint(path).model, inputs), outputs(first, inputs))


def test_unserialisable_tensors_leave_no_file(tmp_path):
    """Tensors sharing memory cannot be saved by safetensors: the save fails inside the atomic write."""
    path = tmp_path / 'last.safetensors'
    shared = torch.zeros(4)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, tiny(), meta_for(), train_state={'a': shared, 'b': shared})
    assert os.listdir(tmp_path) == []
    save_checkpoint(path, tiny(), meta_for())
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        save_checkpoint(path, tiny(seed=2), meta_for(), train_state={'a': shared, 'b': shared})
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


def test_saved_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    plain = tmp_path / 'plain.txt'
    plain.write_text('reference')
    path = tmp_path / 'best.safetensors'
    save_checkpoint(path, tiny(), meta_for())
    assert (path.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_metadata_must_be_json(tmp_path):
    path = tmp_path / 'x.safetensors'
    with pytest.raises(TypeError):
        save_checkpoint(path, tiny(), dict(meta_for(), when=object()))
    assert os.listdir(tmp_path) == []
