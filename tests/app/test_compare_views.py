"""The Compare tab's views (compare_views.py): two models' saved test predictions side by side, the images one gets
right and the other wrong, and both models' maps on one of them."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from advit.app.compare_views import GALLERY_LIMIT
from advit.app.forms import AttentionRequest
from advit.app.offer import StudioError
from advit.app.studio import Studio
from advit.measure.compare import Comparison
from advit.measure.evaluate import load_predictions
from conftest import REPO

EXAMPLE = str(REPO / 'assets' / 'examples' / 'dog_5000.png')


def test_compare_view_matches_saved_predictions(studio, tiny_bundle):
    defaults = studio.offer.defaults()
    a, b = defaults.compare_a, defaults.compare_b
    saved_a, saved_b = (load_predictions(tiny_bundle.parent / name) for name in (a, b))
    expected = Comparison(saved_a['labels'].astype(int), saved_a['preds'].astype(int), saved_b['preds'].astype(int),
                          studio.compare.test_set().classes)
    view = studio.compare.view(a, b, 'all')
    assert view.table == expected.table()
    a_only, b_only = expected.disagreements()
    assert len(view.a_only) == min(GALLERY_LIMIT, len(a_only)) and len(view.b_only) == min(GALLERY_LIMIT, len(b_only))
    index = a_only[0]
    assert view.a_only[0][1].startswith(f'#{index} true {expected.classes[expected.labels[index]]}')
    cats = studio.compare.view(a, b, 'cat')
    assert all(' true cat ' in caption for _, caption in cats.a_only + cats.b_only)
    with pytest.raises(StudioError, match='unknown class'):
        studio.compare.view(a, b, 'unicorn')
    confusion_a, confusion_b = expected.confusion()
    heat_a, heat_b = view.confusion.data
    assert np.asarray(heat_a.customdata).tolist() == confusion_a.tolist()
    assert np.asarray(heat_b.customdata).tolist() == confusion_b.tolist()


def test_selecting_a_gallery_image_shows_both_models_on_it(studio):
    from advit.measure.inspection import inspect_model
    from advit.app.render import side_by_side_panels
    defaults = studio.offer.defaults()
    a, b = defaults.compare_a, defaults.compare_b
    view = studio.compare.view(a, b, 'all')
    index = studio.compare.disagreement(a, b, 'all', 'B', 0)
    assert view.b_only[0][1].startswith(f'#{index} ')  # the gallery's first image, by its caption
    detail = studio.compare.image(a, b, index, 0.5)
    image, caption = detail.panels[0]
    assert caption.startswith(f'#{index} true ') and '✓' in caption.split('B: ')[1] and '✗' in caption.split('B: ')[0]
    # Then both models' maps, layer by layer (same depth and grid: pairs on one scale), as inspected directly.
    depth = len(studio.offer.models.get(studio.offer.find(a).key)[0].blocks)
    assert len(detail.panels) == 1 + 2 * depth
    assert [c for _, c in detail.panels[1:3]] == ['layer 1 · A', 'layer 1 · B']
    test_image = studio.compare.test_set().images[index].permute(1, 2, 0).numpy()
    direct = [inspect_model(*studio.offer.models.get(studio.offer.find(key).key), Image.fromarray(test_image))
              for key in (a, b)]
    assert detail.top5_a == pytest.approx(direct[0].top5) and detail.top5_b == pytest.approx(direct[1].top5)
    expected = side_by_side_panels(Image.fromarray(test_image), ('A', direct[0].maps, direct[0].grid),
                                   ('B', direct[1].maps, direct[1].grid), 0.5)
    assert all(np.array_equal(np.asarray(got), np.asarray(want)) for (got, _), (want, _) in zip(detail.panels[1:], expected))
    assert image.size == (192, 192)
    with pytest.raises(StudioError, match='no image 1000'):
        studio.compare.disagreement(a, b, 'all', 'A', 1000)
    with pytest.raises(StudioError, match='not 10000'):
        studio.compare.image(a, b, 10000)


def test_a_cnn_is_compared_but_has_no_attention_view(studio, tiny_bundle, tmp_path, cifar_archive):
    from advit.core.checkpoint import save_checkpoint
    from advit.core.data import CIFAR10_CLASSES
    from advit.core.models import create_model
    folder = tmp_path / 'with-cnn'
    folder.mkdir()
    cnn = create_model('resnet10t', num_classes=10)
    save_checkpoint(folder / 'resnet.safetensors', cnn, dict(
        model='resnet10t', model_args=dict(num_classes=10, img_size=32), classes=list(CIFAR10_CLASSES),
        image_size=32, mean=[0.5] * 3, std=[0.5] * 3, method='vit', params=sum(p.numel() for p in cnn.parameters())))
    mixed = Studio([tiny_bundle, folder], None, cifar_archive)
    cnn_key, deit_key = 'with-cnn/resnet.safetensors', f'{tiny_bundle.name}/deit_hard.safetensors'
    assert cnn_key in [key for _, key in mixed.offer.choices()]
    assert cnn_key not in [key for _, key in mixed.offer.choices(vit_only=True)]
    view = mixed.compare.view(cnn_key, deit_key, 'all')
    assert len(view.table) == 11 and 'resnet' in view.summary
    with pytest.raises(StudioError, match='not a ViT: attention views need ViT models'):
        mixed.attention.view(AttentionRequest(EXAMPLE, mixed.offer.defaults().teacher, cnn_key))
