"""The CIFAR-native CNN (cnn.py): registered with timm, its spatial maps kept to the end, a teacher's weights loaded."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from advit.core.models import CIFAR10_MEAN, create_model, is_vit_name


def test_the_cifar_cnn_is_a_cnn_that_keeps_its_spatial_maps_to_the_end(tmp_path, x):
    model = create_model('cnn_airbench_32', num_classes=10, img_size=32, drop_path_rate=0.0).eval()
    assert not is_vit_name('cnn_airbench_32') and model.pretrained_cfg['mean'] == CIFAR10_MEAN
    assert model(x).shape == (2, 10)
    assert model.forward_features(x).shape == (2, 256, 4, 4)  # three halvings of 32, not timm's stride 32
    with pytest.raises(ValueError, match=r"drop: its drop_path_rate \(advit train's --drop-path\) must be 0"):
        create_model('cnn_airbench_32', drop_path_rate=0.1)
    with pytest.raises(ValueError, match='cannot build cnn_airbench_32'):
        create_model('cnn_airbench_32', depth=3)
    path = tmp_path / 'cnn.safetensors'
    save_file(model.state_dict(), str(path))
    five = create_model('cnn_airbench_32', pretrained_file=path, num_classes=5).eval()
    assert five.head.out_features == 5 and torch.equal(five.stem[0].weight, model.stem[0].weight)
