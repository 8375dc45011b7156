"""The app's views, computed by Studio without a browser."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advit.app.about import about_markdown
from advit.measure.compare import Comparison
from advit.core.augment import mask_patches
from advit.measure.faithfulness import FaithfulnessCurves
from advit.measure.verdicts import HEADLINE_PROTOCOL, evaluation_key, verdict
from advit.measure.evaluate import load_predictions
from advit.app.images import ImageError, load_image
from advit.measure.inspection import inspect_model, model_input
from advit.measure.rollout import gradient_rollout, rollout
from advit.core.checks import RequestError
from advit.app.compare_views import GALLERY_LIMIT
from advit.app.forms import AttentionRequest, ProbeRequest, RolloutRequest
from advit.app.probe_views import ProbeOutline
from advit.app.offer import Defaults, StudioError
from advit.app.studio import Studio
from attention_reference import full_attention
from conftest import REPO

EXAMPLE = str(REPO / 'assets' / 'examples' / 'dog_5000.png')


def test_empty_studio_says_how_to_get_models(tmp_path, cifar_archive):
    empty = Studio([tmp_path / 'checkpoints'], tmp_path / 'runs', cifar_archive)
    assert empty.offer.choices() == []
    assert 'No usable models found' in empty.offer.problems() and 'advit train' in empty.offer.problems()
    assert empty.offer.defaults() == Defaults(teacher=None, student=None, compare_a=None, compare_b=None)
    with pytest.raises(StudioError, match='choose a teacher'):
        empty.attention.view(AttentionRequest(EXAMPLE, None, None))


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


def test_no_server_path_in_a_models_card(tiny_bundle, cifar_archive, tmp_path):
    """A student trained with --teacher as an absolute path: its card and the About tab name no folder."""
    from advit.core.checkpoint import load_checkpoint, save_checkpoint
    folder = tmp_path / 'checkpoints'
    folder.mkdir()
    loaded = load_checkpoint(tiny_bundle / 'advit_l1.safetensors')
    teacher = '/srv/private/models/teacher.safetensors'
    save_checkpoint(folder / 'student.safetensors', loaded.model, dict(loaded.meta, teacher=teacher))
    studio = Studio([folder], tmp_path / 'runs', cifar_archive)
    card = studio.offer.describe(studio.offer.choices()[0][1])
    assert '**teacher**: .../teacher.safetensors' in card and '/srv' not in card
    about = studio.scrub(about_markdown(studio.offer.entries()))
    assert '/srv' not in about and str(tmp_path) not in about


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


def test_distillation_over_time_from_the_shipped_bundles_records(tmp_path, cifar_archive):
    import shutil
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    from advit.measure.probe_file import load_probe
    runs = tmp_path / 'runs'
    bundle = Studio([REPO / 'checkpoints'], runs, cifar_archive)
    sources = bundle.probes.probed()
    assert 'checkpoints/advit_l1.safetensors' in sources and 'checkpoints/teacher.safetensors' not in sources
    view = bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', kind='l2', evaluation=2, image=1))
    probe = load_probe(REPO / 'checkpoints' / 'advit_l1.probe.npz')
    assert view.student == 'advit_l1' and 'vit' in view.students_names and view.data['steps'] == probe.steps.tolist()
    np.testing.assert_array_equal(np.asarray(view.heatmap.data[0].z), probe.gap('l2').T)
    assert len(view.curves.data) == probe.layers and len(view.students.data) == len(view.students_names)
    assert view.frame.size == Layout.of(PANEL_SIZE).size(probe.layers)
    assert f'step {probe.steps[2]}, probe image 1' in view.summary
    # Another step draws other student maps over the same probe image.
    last = bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', kind='l2', evaluation=-1, image=1))
    assert not np.array_equal(np.asarray(last.frame), np.asarray(view.frame))
    assert bundle.probes.outline('checkpoints/advit_l1.safetensors') == ProbeOutline(
        students=view.students_names, student='advit_l1', evaluations=len(probe.steps), images=len(probe.images))
    # A live job's run folder is offered once it has evaluated, by its runs name, never by a path.
    (runs / 'live' / 'advit_l2').mkdir(parents=True)
    shutil.copy(REPO / 'checkpoints' / 'advit_l2.probe.npz', runs / 'live' / 'advit_l2' / 'attention_probe.npz')
    assert 'runs/live' in bundle.probes.probed()
    assert bundle.probes.view(ProbeRequest('runs/live')).student == 'advit_l2'
    for source, message in (('checkpoints/teacher.safetensors', 'not a model or run with an attention probe'),
                            (str(REPO / 'checkpoints' / 'advit_l1.safetensors'), 'not a model or run'),
                            ('/etc', 'not a model or run')):
        with pytest.raises(StudioError, match=message):
            bundle.probes.view(ProbeRequest(source))
    with pytest.raises(StudioError, match='evaluation 99 out of range'):
        bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', evaluation=99))
    with pytest.raises(StudioError, match="no student 'nobody'"):
        bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', student='nobody'))
    (runs / 'live' / 'advit_l2' / 'attention_probe.npz').write_bytes(b'torn')
    with pytest.raises(StudioError) as corrupt:
        bundle.probes.view(ProbeRequest('runs/live'))
    assert str(tmp_path) not in str(corrupt.value)  # the message names the run, not the server's folders


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


def test_each_models_faithfulness_is_shown_beside_its_accuracy(studio, tiny_bundle):
    """The card beside each model list and the About tab carry the quarter drops the evaluation file holds."""
    defaults = studio.offer.defaults()
    entry = studio.offer.find(defaults.student)
    evaluation = json.loads((tiny_bundle / 'advit_l1.eval.json').read_text())
    headline = evaluation[evaluation_key(HEADLINE_PROTOCOL)]  # the card reads the headline protocol's
    sources = headline['summary']['sources']
    assert headline['count'] == 256
    assert list(sources) == ['layer 1', 'layer 2', 'rollout', 'gradient rollout']
    wanted = ('quarter_drop', 'quarter_drop_se')
    assert entry.faithfulness() == {'last layer': {key: sources['layer 2'][key] for key in wanted},
                                    **{name: {key: sources[name][key] for key in wanted}
                                       for name in ('rollout', 'gradient rollout')}}
    drop, error = sources['rollout']['quarter_drop'], sources['rollout']['quarter_drop_se']
    assert error > 0
    words = f'{drop:+.1f} ± {error:.1f} points, {verdict(drop, error)}'
    assert f'rollout: {words}' in studio.offer.describe(defaults.student)
    about = about_markdown(studio.offer.entries())
    assert 'faithfulness, last layer (pts)' in about and 'faithfulness, gradient rollout (pts)' in about
    row = next(line for line in about.splitlines() if 'advit_l1.safetensors' in line)
    assert words in row
