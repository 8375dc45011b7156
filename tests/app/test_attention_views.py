"""The Attention tab's views (attention_views.py): a teacher's and a student's maps on one image, a few images at
once, More views, and the deletion curves of the maps on screen, computed without a browser."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advit.app.forms import AttentionRequest, RolloutRequest
from advit.app.images import ImageError, load_image
from advit.app.offer import StudioError
from advit.core.augment import mask_patches
from advit.core.checks import RequestError
from advit.measure.faithfulness import FaithfulnessCurves
from advit.measure.inspection import inspect_model, model_input
from advit.measure.rollout import gradient_rollout, rollout
from attention_reference import full_attention
from conftest import REPO

EXAMPLE = str(REPO / 'assets' / 'examples' / 'dog_5000.png')


def test_attention_view(studio):
    defaults = studio.offer.defaults()
    view = studio.attention.view(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'mean', 0, 0.5))
    layers = view.data['layers']
    assert len(layers) == 2 and len(view.panels) == 4
    assert [caption.split(' · ')[1] for _, caption in view.panels[:2]] == ['teacher (its layer 2)', 'student']
    assert all(image.size == (160, 160) for image, _ in view.panels)
    assert [row[2] for row in view.table] == pytest.approx([layer['l1'] for layer in layers], abs=1e-6)
    assert len(view.teacher_top5) == 5 and sum(view.student_top5.values()) <= 1 + 1e-6
    # What the student reads: a large photo shrunk to 32x32 (shown 4x by whole pixels), and the classes it knows.
    photo = load_image(EXAMPLE).resize((300, 200))
    big = Path(studio.offer.runs_dir) / 'photo.png'
    photo.save(big)
    seen = studio.attention.view(AttentionRequest(str(big), defaults.teacher, defaults.student, 'mean', 0, 0.5))
    assert seen.seen.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(seen.seen)[::4, ::4], np.asarray(photo.resize((32, 32), Image.BICUBIC)))
    assert 'shrunk to 32x32 pixels' in seen.seen_note and '300x200' in seen.seen_note
    assert 'the 10 classes airplane, automobile' in seen.seen_note
    other = studio.attention.view(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'head', 1, 0.5))
    assert not np.allclose(layers[0]['student_map'], other.data['layers'][0]['student_map'])
    with pytest.raises(StudioError, match='head 7 does not exist'):
        studio.attention.view(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'head', 7, 0.5))
    # The paper's Fig. 2 of the same maps, one row per student layer, and the maps for download.
    from advit.app.figure import LARGE_PANEL, Layout
    from advit.app.render import PANEL_SIZE
    assert view.paper_figure.size == Layout.of(PANEL_SIZE).size(len(layers))
    saved = np.load(io.BytesIO(view.downloads['npz']), allow_pickle=False)
    np.testing.assert_allclose(saved['student_maps'], [layer['student_map'] for layer in layers], rtol=1e-6)
    assert json.loads(view.downloads['json']) == view.data
    large = studio.attention.layer(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'mean', 0, 0.5, 2))
    assert large.size == Layout.of(LARGE_PANEL).size(1)
    # A layer past this student's last is refused in words, not quietly shown as its last.
    deeper = AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'mean', 0, 0.5, 9)
    with pytest.raises(StudioError, match='layer 9 does not exist: this student has layers 1-2'):
        studio.attention.layer(deeper)
    with pytest.raises(RequestError, match='layer must be between 1 and 1e\\+06, got 0'):  # refused as it enters
        AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'mean', 0, 0.5, 0)


def test_attention_refuses_bad_requests(studio, tmp_path, tiny_bundle):
    defaults = studio.offer.defaults()
    text = tmp_path / 'notes.png'
    text.write_text('not an image')
    with pytest.raises(ImageError, match='not an image'):
        studio.attention.view(AttentionRequest(str(text), defaults.teacher, defaults.student))
    with pytest.raises(StudioError, match='upload an image'):
        studio.attention.view(AttentionRequest(None, defaults.teacher, defaults.student))
    with pytest.raises(StudioError, match='not one of the models on offer'):
        studio.attention.view(AttentionRequest(EXAMPLE, str(tiny_bundle / 'broken.safetensors'), defaults.student))
    outside = tmp_path / 'elsewhere.safetensors'  # a loadable file, but not offered: never loaded from a request
    outside.write_bytes((tiny_bundle / 'teacher.safetensors').read_bytes())
    with pytest.raises(StudioError, match='not one of the models on offer'):
        studio.attention.view(AttentionRequest(EXAMPLE, str(outside), defaults.student))
    with pytest.raises(StudioError, match='choose two checkpoints on offer'):
        studio.compare.view(str(outside), defaults.student)
    # A model on offer named by its absolute server path is refused as any other path is (issue #41): answering
    # it would let a client confirm where the app is installed. Its listed name still works.
    offered = studio.offer.find(defaults.teacher)
    assert Path(offered.key).is_absolute() and offered.name == defaults.teacher
    for spelling in (offered.key, str(Path(offered.key).resolve())):
        with pytest.raises(StudioError) as refused:
            studio.attention.view(AttentionRequest(EXAMPLE, spelling, defaults.student))
        assert 'is not one of the models on offer' in str(refused.value)
    assert studio.offer.find(defaults.teacher) is offered
    with pytest.raises(StudioError, match='unknown head fusion'):
        studio.attention.view(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'median'))
    long_name = 'x' * 100_000  # quoted, not echoed whole
    with pytest.raises(StudioError, match=r"^'x{59}\.\.\. \(100002 characters\) is not one of the models on offer$"):
        studio.attention.view(AttentionRequest(EXAMPLE, long_name, defaults.student))
    for key in (7, ['a'], {'b': 1}):  # what a raw client may send as a model name
        with pytest.raises(StudioError, match='choose a teacher model'):
            studio.attention.view(AttentionRequest(EXAMPLE, key, defaults.student))


def test_more_views_rollout_mask_heads_and_prefix_shares(studio):
    defaults = studio.offer.defaults()
    pair = AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, opacity=0.6)
    view = studio.attention.more(pair, RolloutRequest('max', 0.2, 0.5))
    teacher, student = view.data['teacher'], view.data['student']
    heads = len(teacher['heads']) + len(student['heads'])
    assert len(view.panels) == 6 + heads and all(image.size == (160, 160) for image, _ in view.panels)
    assert [caption for _, caption in view.panels[:2]] == ['rollout · teacher', 'rollout · student']
    assert [caption for _, caption in view.panels[4:6]] == ['gradient rollout · teacher', 'gradient rollout · student']
    assert sum(student['rollout']) == pytest.approx(1.0) and len(student['rollout']) == 64
    # The mask holds at least half the rollout's mass with the fewest patches: one fewer would not.
    flow = np.array(student['rollout'])
    kept = np.array(student['mask'])
    assert flow[kept].sum() >= 0.5 and flow[kept].sum() - flow[kept].min() < 0.5
    assert len(student['prefix_share']) == 2 and all(0 < share < 1 for share in student['prefix_share'])
    model, meta = studio.offer.load(defaults.student, 'student', vit=True)
    direct = rollout(full_attention(model, model_input(load_image(EXAMPLE), meta, model)), 1, 'max', 0.2)[0]
    np.testing.assert_allclose(flow, direct.numpy(), atol=1e-6)
    relevance = gradient_rollout(model, model_input(load_image(EXAMPLE), meta, model))[0]
    np.testing.assert_allclose(student['gradient_rollout'], relevance.detach().numpy(), atol=1e-6)
    with pytest.raises(StudioError, match='unknown rollout head fusion'):
        studio.attention.more(pair, RolloutRequest('median'))
    with pytest.raises(RequestError, match='mask share must be between 0.1 and 1, got 0'):
        RolloutRequest('mean', 0.0, 0.0)


def test_a_few_images_at_once(studio, tmp_path):
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    defaults = studio.offer.defaults()
    examples = sorted(str(p) for p in (REPO / 'assets' / 'examples').glob('*.png'))[:3]
    pair = AttentionRequest(None, defaults.teacher, defaults.student, 'mean', 0, 0.5)
    figure, rows = studio.attention.images(examples, replace(pair, layer=2))
    assert figure.size == Layout.of(PANEL_SIZE).size(3)  # a row per image
    assert [row[0] for row in rows] == [Path(p).stem for p in examples] and {row[1] for row in rows} == {2}
    for path, row in zip(examples, rows):  # each row's gaps are the single-image view's at that layer
        single = studio.attention.view(AttentionRequest(path, defaults.teacher, defaults.student, 'mean', 0, 0.5))
        assert row[3:] == pytest.approx(single.table[1][2:], abs=1e-6)
    for view in (lambda request: studio.attention.images(examples[:1], request), studio.attention.layer):
        with pytest.raises(StudioError, match='layer 99 does not exist: this student has layers 1-2'):
            view(replace(pair, layer=99, image=examples[0]))  # refused, not quietly shown as its last
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not an image')
    with pytest.raises(StudioError, match='broken: the file is not an image'):
        studio.attention.images([examples[0], str(broken)], pair)
    with pytest.raises(StudioError, match='up to 8 at once'):
        studio.attention.images(examples * 3, pair)
    with pytest.raises(StudioError, match='upload a few images'):
        studio.attention.images([], pair)


def test_faithfulness_of_the_maps_on_screen(studio):
    """Both models' deletion curves on the image: at 0 the probability of the class each predicts (its
    top-1 in the attention view), at a quarter what masking its last layer's top quarter, taken from the
    map the attention view shows, leaves (recomputed here by hand)."""
    import torch
    defaults = studio.offer.defaults()
    # The mean fill, whose quarter is recomputed below by hand with mask_patches (the drop protocol: its own test).
    view = studio.attention.faithfulness(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, protocol='mean'))
    shown = studio.attention.view(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, 'trained', 0, 0.5))
    image = load_image(EXAMPLE)
    for role, top5 in (('teacher', shown.teacher_top5), ('student', shown.student_top5)):
        curves = FaithfulnessCurves.from_dict(view.data[role])
        assert curves.modes == ['deletion'] and curves.orders == ['map', 'random'] and curves.count == 1
        assert curves.fractions[0] == 0 and curves.fractions[-1] == 1 and 0.25 in curves.fractions
        predicted, probability = max(top5.items(), key=lambda item: item[1])
        assert view.data[role]['class_read'] == predicted and f'*{predicted}*' in view.summary
        assert curves.curve('probability', 'deletion', 'rollout', 'map')[0] == pytest.approx(probability, abs=1e-5)
        model, meta = studio.offer.models.get(studio.offer.find(getattr(defaults, role)).key)
        last = inspect_model(model, meta, image).maps[-1]
        grid = (8, 8)
        masked = torch.zeros(1, 64, dtype=torch.bool)
        masked[0, torch.from_numpy(last).argsort(descending=True, stable=True)[:16]] = True
        with torch.no_grad():
            probs = model(mask_patches(model_input(image, meta, model), masked, grid)).softmax(-1)[0]
        label = meta['classes'].index(predicted)
        quarter = curves.fractions.index(0.25)
        assert curves.curve('probability', 'deletion', curves.sources[-3], 'map')[quarter] == \
            pytest.approx(float(probs[label]), abs=1e-5)
        assert curves.sources[-2:] == ['rollout', 'gradient rollout'] and 'gradient rollout' in view.summary
    assert len(view.figure.data) == 8  # per model: last layer, rollout, gradient rollout, random
    with pytest.raises(StudioError, match='upload an image'):
        studio.attention.faithfulness(AttentionRequest(None, defaults.teacher, defaults.student))
    with pytest.raises(StudioError, match='not one of the models on offer'):
        studio.attention.faithfulness(AttentionRequest(EXAMPLE, '/etc/passwd', defaults.student))


def test_the_deletion_curves_on_screen_follow_the_chosen_removal_protocol(studio):
    """Dropped tokens instead of grey patches: the same maps and predictions, other curves, said in the summary;
    a protocol that does not exist is refused in words before any model runs."""
    from advit.core.checks import RequestError
    defaults = studio.offer.defaults()
    views = {protocol: studio.attention.faithfulness(AttentionRequest(EXAMPLE, defaults.teacher, defaults.student,
                                                                      protocol=protocol))
             for protocol in ('mean', 'drop')}
    for role in ('teacher', 'student'):
        mean, drop = (FaithfulnessCurves.from_dict(views[p].data[role]) for p in ('mean', 'drop'))
        assert (mean.protocol, drop.protocol) == ('mean', 'drop')
        assert views['mean'].data[role]['class_read'] == views['drop'].data[role]['class_read']
        assert mean.curve('probability', 'deletion', 'rollout', 'map')[0] == \
            pytest.approx(drop.curve('probability', 'deletion', 'rollout', 'map')[0], abs=1e-5)
        assert not (mean.probability == drop.probability).all()
    assert 'dropped from the tokens' in views['drop'].summary and 'set to the mean' in views['mean'].summary
    with pytest.raises((ValueError, RequestError), match='unknown removal protocol'):
        AttentionRequest(EXAMPLE, defaults.teacher, defaults.student, protocol='x' * 10_000)
