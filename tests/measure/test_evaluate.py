"""Evaluation: metrics by hand, and a tiny checkpoint evaluated on the real CIFAR-10 test split."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

from advit.core.checkpoint import save_checkpoint
from advit.core.checkpoint import read_metadata
from advit.measure.evaluate import (evaluate_checkpoint, evaluate_split, evaluation_paths, load_predictions,
                                    read_evaluation, recorded_test_top1, summarize)
from advit.core.models import CIFAR10_MEAN, CIFAR10_STD
from advit.measure.verdicts import evaluation_key
from advit.measure.removal import PROTOCOLS
from conftest import TINY

# The tests that evaluate checkpoints on the CIFAR test set are marked slow (`make test`); the rules by hand are not.

NAME = 'vit_tiny_patch4_32'


def test_summarize_by_hand():
    classes = ['cat', 'dog', 'bird']
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    preds = [0, 0, 1, 1, 2, 2, 0]
    probs = torch.full((7, 3), 0.2)
    probs[torch.arange(7), torch.tensor(preds)] = 0.6
    metrics = summarize(probs, labels, classes)
    # Right: images 0, 1, 3 and 5 -> 4 of 7. Per class: cat 2 of 3, dog 1 of 2, bird 1 of 2.
    assert metrics['top1'] == pytest.approx(100 * 4 / 7)
    assert metrics['count'] == 7
    assert metrics['per_class'] == pytest.approx({'cat': 100 * 2 / 3, 'dog': 50.0, 'bird': 50.0})
    assert list(metrics['per_class']) == classes
    # Rows: true class; columns: predicted class.
    assert metrics['confusion'] == [[2, 1, 0],
                                    [0, 1, 1],
                                    [1, 0, 1]]
    assert metrics['classes'] == classes
    json.dumps(metrics)  # plain JSON types


def test_summarize_all_right_and_all_wrong():
    labels = torch.tensor([2, 0, 1, 1])
    right = torch.nn.functional.one_hot(labels, 3).float()
    wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).float()
    assert summarize(right, labels, ['a', 'b', 'c'])['top1'] == 100.0
    assert summarize(right, labels, ['a', 'b', 'c'])['confusion'] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    assert summarize(wrong, labels, ['a', 'b', 'c'])['top1'] == 0.0
    assert summarize(wrong, labels, ['a', 'b', 'c'])['per_class'] == {'a': 0.0, 'b': 0.0, 'c': 0.0}


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory, cifar):
    torch.manual_seed(0)
    model = timm.create_model(NAME, **TINY).eval()
    path = tmp_path_factory.mktemp('run') / 'best.safetensors'
    save_checkpoint(path, model, dict(model=NAME, model_args=dict(TINY, num_classes=10, img_size=32),
                                      classes=cifar['test'].classes, mean=list(CIFAR10_MEAN),
                                      std=list(CIFAR10_STD), method='vit'))
    return path, model


@pytest.mark.slow
def test_evaluate_checkpoint_writes_consistent_files(tiny_checkpoint, cifar, cifar_archive, cache_dir):
    path, model = tiny_checkpoint
    returned = evaluate_checkpoint(path, cifar_archive, batch_size=64, device='cpu', subset=200,
                                   cache_dir=cache_dir)
    metrics_path, predictions_path = path.with_name('best.eval.json'), path.with_name('best.predictions.npz')
    assert evaluation_paths(path) == (metrics_path, predictions_path)
    assert metrics_path.is_file() and predictions_path.is_file()
    metrics = json.loads(metrics_path.read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert metrics['count'] == 200 and metrics['model'] == NAME and metrics['method'] == 'vit'
    assert metrics['checkpoint'] == str(path) and metrics['classes'] == cifar['test'].classes

    saved = load_predictions(path)
    assert set(saved) == {'labels', 'preds', 'probs'}
    with np.load(predictions_path) as raw:
        for key in saved:
            np.testing.assert_array_equal(saved[key], raw[key])
    labels, preds, probs = saved['labels'].astype(np.int64), saved['preds'].astype(np.int64), saved['probs']
    assert labels.shape == preds.shape == (200,) and probs.shape == (200, 10)
    np.testing.assert_array_equal(labels, cifar['test'].subset(200).labels.numpy())  # the fixed subset, in order

    # The metrics agree with the predictions.
    assert metrics['top1'] == pytest.approx((preds == labels).mean() * 100)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    assert metrics['confusion'] == confusion.tolist()
    assert confusion.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()
    for c, name in enumerate(metrics['classes']):
        right, total = confusion[c, c], confusion[c].sum()
        assert metrics['per_class'][name] == pytest.approx(100 * right / total if total else 0.0)
    assert (sum(confusion[c, c] for c in range(10)) / 200 * 100) == pytest.approx(metrics['top1'])

    # The probabilities are a softmax, the predictions their argmax...
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=1), 1.0, atol=5e-3)
    assert (probs[np.arange(200), preds] == probs.max(axis=1)).all()
    # ...and those of the model on the normalised images, recomputed here.
    images = cifar['test'].subset(200).images.float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images - mean) / std).softmax(dim=-1).numpy()
    np.testing.assert_allclose(probs.astype(np.float32), expected, atol=1e-3)
    assert (expected[np.arange(200), preds] >= expected.max(axis=1) - 1e-3).all()

    # A quick look at fewer images, or at other data, never replaces that evaluation: refused, files unchanged.
    before = metrics_path.read_bytes(), predictions_path.read_bytes()
    with pytest.raises(ValueError, match='holds an evaluation on 200 test images'):
        evaluate_checkpoint(path, cifar_archive, batch_size=64, device='cpu', subset=50, cache_dir=cache_dir,
                            faithfulness_images=0)
    assert (metrics_path.read_bytes(), predictions_path.read_bytes()) == before
    assert evaluate_checkpoint(path, cifar_archive, batch_size=64, device='cpu', subset=300, cache_dir=cache_dir,
                               faithfulness_images=0)['count'] == 300, 'more images than before: written'


@pytest.mark.slow
@pytest.mark.parametrize('half', [False, True], ids=['fp32-run-file', 'fp16-shipped-file'])
def test_a_chosen_checkpoint_is_evaluated_and_its_figures_recorded_in_one_place(tmp_path, cifar, half):
    """The end of a run and the bundle's export both call evaluate_split: the evaluation file beside the checkpoint
    is the one record of its test figures (every protocol's faithfulness, how it was chosen); the checkpoint itself
    is not rewritten, and its test top-1 is read from the evaluation (recorded_test_top1)."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, **TINY).eval()
    path = tmp_path / 'best.safetensors'
    save_checkpoint(path, model, dict(model=NAME, model_args=dict(TINY, num_classes=10, img_size=32), step=7,
                                      val_top1=12.5, classes=cifar['test'].classes, mean=list(CIFAR10_MEAN),
                                      std=list(CIFAR10_STD), method='vit'), half=half)
    written = path.read_bytes()
    metrics = evaluate_split(path, cifar['test'].subset(64), 'cifar10', batch_size=32, device='cpu',
                             faithfulness_images=16, extra={'split': 'test'})
    assert path.read_bytes() == written, 'the checkpoint is left as it was'
    meta = read_metadata(path)
    assert not {'test_top1', 'test_faithfulness'} & set(meta), 'test figures are kept in the evaluation only'
    assert {evaluation_key(protocol) for protocol in PROTOCOLS} <= set(metrics)
    assert (metrics['step'], metrics['val_top1'], metrics['split']) == (7, 12.5, 'test'), 'how it was chosen'
    assert read_evaluation(path) == json.loads(json.dumps(metrics))
    assert recorded_test_top1(read_evaluation(path), meta) == metrics['top1']


def test_a_checkpoint_of_before_evaluation_files_has_its_test_top1_read_from_its_metadata(tmp_path):
    """The older format, recognised in one place: a checkpoint whose metadata alone held its test top-1."""
    path = tmp_path / 'old.safetensors'
    assert recorded_test_top1(read_evaluation(path), {'test_top1': 71.25}) == 71.25
    assert recorded_test_top1(read_evaluation(path), {}) is None
    for lie in ('high', True, float('nan'), 250.0, -1):  # a lying header is no figure
        assert recorded_test_top1(read_evaluation(path), {'test_top1': lie}) is None
    evaluation_paths(path)[0].write_text(json.dumps({'top1': 70.5}))
    assert recorded_test_top1(read_evaluation(path), {'test_top1': 71.25}) == 70.5, \
        'an evaluation file wins over old metadata'
    evaluation_paths(path)[0].write_text('{"top1": 70')  # torn by a kill: as if not evaluated
    assert read_evaluation(path) is None and recorded_test_top1(read_evaluation(path), {}) is None


@pytest.mark.slow
def test_evaluate_state_dict_with_model_name(tmp_path, cifar, cifar_archive, cache_dir):
    """No advit metadata: normalisation from the model's config, classes from the dataset."""
    torch.manual_seed(0)
    model = timm.create_model(NAME).eval()  # the default architecture (the name alone rebuilds it): kept to 4 images
    path = tmp_path / 'weights.pth'
    torch.save(model.state_dict(), path)
    metrics = evaluate_checkpoint(path, cifar_archive, batch_size=3, device='cpu', subset=4,
                                  cache_dir=cache_dir, model_name=NAME)
    assert (tmp_path / 'weights.eval.json').is_file() and (tmp_path / 'weights.predictions.npz').is_file()
    saved = load_predictions(path)
    assert metrics['count'] == 4 and metrics['model'] == NAME
    assert metrics['top1'] == pytest.approx((saved['preds'] == saved['labels']).mean() * 100)
    assert metrics['classes'] == cifar['test'].classes
    images = cifar['test'].subset(4).images.float() / 255  # normalised with the model's own (CIFAR) config
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images - mean) / std).softmax(dim=-1).numpy()
    np.testing.assert_allclose(saved['probs'].astype(np.float32), expected, atol=1e-3)


@pytest.mark.slow
def test_other_class_names_are_refused(tmp_path, cifar_archive, cache_dir):
    torch.manual_seed(0)
    model = timm.create_model(NAME, **TINY)
    path = tmp_path / 'other.safetensors'
    save_checkpoint(path, model, dict(model=NAME, model_args=TINY, classes=[f'class{i}' for i in range(10)]))
    with pytest.raises(ValueError, match='class0'):
        evaluate_checkpoint(path, cifar_archive, device='cpu', subset=50, cache_dir=cache_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['other.safetensors']  # nothing written
