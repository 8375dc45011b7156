"""Weight files as tensors (weights.py): safetensors or weights-only ``.pth``, wrapper prefixes stripped, resume state
apart, and anything else a CheckpointError that names the file."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from advit.core.weights import (TRAIN_STATE_PREFIX, CheckpointError, model_weights, read_tensors,
                                strip_wrapper_prefixes, train_state)


class Opaque:
    """An object a weights-only load must not unpickle."""


def test_wrapper_prefixes_are_stripped_from_the_front_only():
    assert strip_wrapper_prefixes('module._orig_mod.module.blocks.0.attn.qkv.weight') == 'blocks.0.attn.qkv.weight'
    assert strip_wrapper_prefixes('blocks.0.module.weight') == 'blocks.0.module.weight'
    assert strip_wrapper_prefixes('modules.weight') == 'modules.weight'


def test_a_checkpoints_weights_and_its_resume_state_are_told_apart():
    weight, step = torch.ones(2), torch.tensor([3.0])
    tensors = {'module.head.weight': weight, f'{TRAIN_STATE_PREFIX}optimizer/step': step}
    weights, state = model_weights(tensors), train_state(tensors)
    assert weights.keys() == {'head.weight'} and torch.equal(weights['head.weight'], weight)
    assert state.keys() == {'optimizer/step'} and torch.equal(state['optimizer/step'], step)


def test_safetensors_are_read_whole(tmp_path):
    tensors = {'head.weight': torch.arange(6.0).reshape(2, 3), f'{TRAIN_STATE_PREFIX}rng': torch.arange(4).byte()}
    save_file(tensors, str(tmp_path / 'w.safetensors'))
    read = read_tensors(tmp_path / 'w.safetensors')
    assert read.keys() == tensors.keys() and all(torch.equal(read[key], tensors[key]) for key in tensors)


@pytest.mark.parametrize('nest', [None, 'model', 'state_dict', 'model_state'])
def test_a_pth_state_dict_is_read_as_saved_or_from_under_its_trainers_key(tmp_path, nest):
    state = {'head.weight': torch.randn(3, 2), 'head.bias': torch.zeros(3)}
    path = tmp_path / 'weights.pth'
    torch.save({nest: state, 'epoch': torch.tensor(7)} if nest else state, path)
    read = read_tensors(path)
    assert read.keys() == state.keys() and all(torch.equal(read[key], state[key]) for key in state)


@pytest.mark.parametrize('name, payload, message', [
    ('missing.safetensors', None, 'checkpoint not found'),
    ('noise.safetensors', b'\x07' * 64, 'is not a readable safetensors file'),
    ('noise.pth', b'\x07' * 64, 'is not a loadable weights-only state dict'),
    ('pickled.pth', {'model': Opaque()}, 'is not a loadable weights-only state dict'),
    ('list.pth', [torch.zeros(1)], 'does not hold a state dict of tensors'),
    ('numbers.pth', {'model': {'weight': [1, 2]}}, 'does not hold a state dict of tensors'),
], ids=['missing', 'noise-safetensors', 'noise-pth', 'pickled-object', 'list', 'not-tensors'])
def test_what_is_not_a_state_dict_of_tensors_is_a_checkpoint_error_naming_the_file(tmp_path, name, payload, message):
    path = tmp_path / name
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif payload is not None:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message) as refused:
        read_tensors(path)
    assert str(path) in str(refused.value)
