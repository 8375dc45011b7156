"""Two classifiers on one test set: disagreements and per-class accuracy, and the predictions they come from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import advit  # noqa: F401  (registers the CIFAR ViTs with timm)
from advit.measure.compare import (Comparison, PredictionsMissing, compare, comparison_cache, saved_predictions,
                           time_left)
from advit.core.data import load_dataset
from advit.measure.evaluate import evaluation_paths, load_predictions, save_evaluation, summarize
from advit.core.models import CIFAR10_MEAN, CIFAR10_STD
from conftest import save_tiny_checkpoint, tiny_vit, write_small_cifar

NAME = 'vit_tiny_patch4_32'


# --- Comparison on a hand-made example --------------------------------------------------------------
#
#   index     0  1  2  3  4  5
#   label     0  0  0  1  1  1      (class 2, ship, has no test image)
#   A         0  0  1  1  0  2      right: 0 1 . 3 . .   cat 2/3, dog 1/3, all 3/6
#   B         0  1  2  1  1  1      right: 0 . . 3 4 5   cat 1/3, dog 3/3, all 4/6

@pytest.fixture()
def example() -> Comparison:
    return Comparison(labels=np.array([0, 0, 0, 1, 1, 1]), preds_a=np.array([0, 0, 1, 1, 0, 2]),
                      preds_b=np.array([0, 1, 2, 1, 1, 1]), classes=['cat', 'dog', 'ship'])


def test_disagreements(example):
    a_only, b_only = example.disagreements()
    assert a_only.tolist() == [1] and b_only.tolist() == [4, 5]


@pytest.mark.parametrize('name, a_only, b_only', [('cat', [1], []), ('dog', [], [4, 5]), ('ship', [], [])])
def test_disagreements_of_one_class(example, name, a_only, b_only):
    found_a, found_b = example.disagreements(name)
    assert found_a.tolist() == a_only and found_b.tolist() == b_only


def test_disagreements_of_an_unknown_class(example):
    with pytest.raises(ValueError):
        example.disagreements('horse')


def test_per_class(example):
    per_a, per_b = example.per_class()
    assert per_a[:2] == pytest.approx([200 / 3, 100 / 3]) and per_a[2] is None  # no ship among the labels
    assert per_b[:2] == pytest.approx([100 / 3, 100.0]) and per_b[2] is None


def test_the_compare_tab_and_the_evaluation_files_share_one_per_class_rule(example):
    """Table 2 of the Compare tab and of the model card (the evaluation files' summary) are the same numbers."""
    for preds, per_class, confusion, top1 in zip((example.preds_a, example.preds_b), example.per_class(),
                                                  example.confusion(), example.top1()):
        probs = torch.nn.functional.one_hot(torch.from_numpy(preds), len(example.classes)).float()
        evaluated = summarize(probs, torch.from_numpy(example.labels), example.classes)
        assert list(evaluated['per_class'].values()) == per_class
        assert evaluated['confusion'] == confusion.tolist() and evaluated['top1'] == top1


def test_top1(example):
    assert example.top1() == pytest.approx((50.0, 400 / 6))


def test_table(example):
    rows = example.table()
    assert [row[0] for row in rows] == ['cat', 'dog', 'ship', 'all (top-1)']
    assert rows[0][1:] == [66.67, 33.33, -33.33]
    assert rows[1][1:] == [33.33, 100.0, 66.67]
    assert rows[2][1:] == [None, None, None]
    assert rows[3][1:] == [50.0, 66.67, 16.67]


def test_confusion(example):
    # Rows true (cat, dog, ship), columns predicted; A: cat -> cat, cat, dog; dog -> dog, cat, ship.
    confusion_a, confusion_b = example.confusion()
    assert confusion_a.tolist() == [[2, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert confusion_b.tolist() == [[1, 1, 1], [0, 3, 0], [0, 0, 0]]
    assert np.trace(confusion_a) / confusion_a.sum() * 100 == pytest.approx(example.top1()[0])


def test_identical_models_never_disagree():
    labels = np.arange(20) % 4
    preds = (labels + (np.arange(20) % 3 == 0)) % 4  # some right, some wrong
    same = Comparison(labels=labels, preds_a=preds, preds_b=preds.copy(), classes=list('abcd'))
    assert all(len(found) == 0 for found in same.disagreements())
    per_a, per_b = same.per_class()
    assert per_a == per_b
    assert all(row[3] == 0 for row in same.table())


# --- predictions saved beside a checkpoint ----------------------------------------------------------

@torch.no_grad()
def predicted_here(seed: int, images: torch.Tensor) -> np.ndarray:
    """The classes the checkpoint's model predicts, computed here (its own normalisation)."""
    model = tiny_vit(seed, NAME)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return model((images.float() / 255 - mean) / std).argmax(dim=-1).numpy()


def stamp(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


def one_hot(classes: np.ndarray, count: int = 10) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(classes, dtype=torch.long), count).float()


def test_saved_predictions_that_cover_the_test_set_are_used(tmp_path, cifar, cifar_archive):
    test = cifar['test']
    checkpoint = save_tiny_checkpoint(tmp_path / 'a.safetensors', 'vit', 0)
    labels = test.labels.numpy()
    fake = (labels + 3) % 10  # predictions no model made: proof that the file is what is read
    save_evaluation(checkpoint, one_hot(fake), test.labels, test.classes, {})
    predictions = evaluation_paths(checkpoint)[1]
    before = stamp(predictions)
    calls = []
    preds = saved_predictions(checkpoint, test, cifar_archive, calls.append)
    assert preds.dtype == np.int64 and np.array_equal(preds, fake)
    assert calls == []  # nothing computed
    assert stamp(predictions) == before  # nor rewritten


@pytest.fixture(scope='module')
def small_data(tmp_path_factory, cifar) -> Path:
    """An ImageFolder tree of 30 real CIFAR-10 test images (3 a class) and 10 train images, as PNG files."""
    return write_small_cifar(tmp_path_factory.mktemp('small-cifar'), cifar, test_per_class=3, train_per_class=1)


def test_predictions_of_the_same_size_but_other_images_are_recomputed(tmp_path, small_data):
    test = load_dataset(small_data)['test']
    assert len(test) == 30 and test.classes == sorted(test.classes)
    checkpoint = save_tiny_checkpoint(tmp_path / 'a.safetensors', 'vit', 5)
    other = torch.roll(test.labels, 1)  # 30 labels, not these
    save_evaluation(checkpoint, one_hot(np.zeros(30, dtype=np.int64)), other, test.classes, {})
    own = [stamp(path) for path in evaluation_paths(checkpoint)]
    calls = []
    preds = saved_predictions(checkpoint, test, small_data, calls.append)
    assert np.array_equal(preds, predicted_here(5, test.images))
    assert calls[-1] == pytest.approx(1.0)
    assert [stamp(path) for path in evaluation_paths(checkpoint)] == own, 'the run\'s own files stay as they were'
    with np.load(comparison_cache(checkpoint, test)) as cached:
        assert np.array_equal(cached['labels'], test.labels.numpy()) and np.array_equal(cached['preds'], preds)
    calls = []
    assert np.array_equal(saved_predictions(checkpoint, test, small_data, calls.append), preds) and calls == []


def test_saved_predictions_for_a_subset_test_set(tmp_path, small_data):
    test = load_dataset(small_data)['test'].subset(10)
    checkpoint = save_tiny_checkpoint(tmp_path / 'a.safetensors', 'vit', 6)
    preds = saved_predictions(checkpoint, test, small_data)
    assert len(preds) == len(test) == 10


@pytest.mark.slow  # two models over the 10,000 test images
def test_compare_on_the_cifar_test_set(tmp_path, cifar, cifar_archive):
    test = cifar['test']
    a = save_tiny_checkpoint(tmp_path / 'a.safetensors', 'vit', 3)
    b = save_tiny_checkpoint(tmp_path / 'b.safetensors', 'vit', 4)
    subset = test.subset(300)  # A: predictions of another test set (e.g. a run with --test-subset 300)
    save_evaluation(a, one_hot(subset.labels.numpy()), subset.labels, subset.classes, {})
    assert not evaluation_paths(b)[1].exists()  # B: none yet
    fractions = []
    comparison = compare(a, b, test, cifar_archive, lambda done, _: fractions.append(done))
    assert np.array_equal(comparison.labels, test.labels.numpy()) and comparison.classes == test.classes
    assert len(comparison.preds_a) == len(comparison.preds_b) == 10000
    # A's own 300 predictions are left as they are (a later `advit report` reads what the run measured);
    # B gets no evaluation files of its own: both are in the comparison cache.
    assert len(load_predictions(a)['labels']) == 300 and not evaluation_paths(b)[1].exists()
    for checkpoint, preds, seed in ((a, comparison.preds_a, 3), (b, comparison.preds_b, 4)):
        with np.load(comparison_cache(checkpoint, test)) as saved:  # computed on the whole test set, cached
            assert np.array_equal(saved['labels'], test.labels.numpy()) and np.array_equal(saved['preds'], preds)
        here = predicted_here(seed, test.images[:300])
        assert (preds[:300] != here).sum() <= 2  # the model's own predictions (a near-tie may flip in another batch)
    assert not np.array_equal(comparison.preds_a, comparison.preds_b)  # two different models
    # Progress: A's evaluation fills the first half, B's the second, rising to 1.
    assert len(fractions) >= 4
    assert all(0 < f <= 1 for f in fractions) and fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0) and 0.5 in fractions
    assert any(f < 0.5 for f in fractions) and any(0.5 < f < 1 for f in fractions)
    # The cached predictions serve the next comparison: nothing computed, nothing rewritten.
    before = stamp(comparison_cache(a, test)), stamp(comparison_cache(b, test))
    fractions = []
    again = compare(a, b, test, cifar_archive, lambda done, _: fractions.append(done))
    assert fractions == []
    assert (stamp(comparison_cache(a, test)), stamp(comparison_cache(b, test))) == before
    assert np.array_equal(again.preds_a, comparison.preds_a) and np.array_equal(again.preds_b, comparison.preds_b)
    # The summary row is each model's top-1 over the saved predictions.
    expected = [float((comparison.preds_a == test.labels.numpy()).mean() * 100),
                float((comparison.preds_b == test.labels.numpy()).mean() * 100)]
    assert comparison.top1() == pytest.approx(tuple(expected))
    assert comparison.table()[-1] == ['all (top-1)', round(expected[0], 2), round(expected[1], 2),
                                      round(expected[1] - expected[0], 2)]


def test_time_left_holds_the_rate_so_far():
    assert time_left(10.0, 0.5) == 'about 10 s left'
    assert time_left(60.0, 0.25) == 'about 3 min left'
    assert time_left(3.0, 0.0) == 'estimating the time left' and time_left(3.0, 1.0) == 'done'


def test_compare_reports_each_models_progress_with_its_time_left(tmp_path, small_data):
    test = load_dataset(small_data)['test']
    a, b = (save_tiny_checkpoint(tmp_path / f'{name}.safetensors', 'vit', seed) for name, seed in (('a', 1), ('b', 2)))
    with pytest.raises(PredictionsMissing, match='a.safetensors has no predictions on this test set yet'):
        compare(a, b, test, small_data, compute=False)  # the app's opening view: saved predictions only
    reports = []
    compare(a, b, test, small_data, lambda done, line: reports.append((done, line)), names=('A (one)', 'B (two)'))
    fractions = [done for done, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert reports[0][1].startswith('A (one): predicting the 30 test images once, ')
    assert reports[-1][1] == 'B (two): predicting the 30 test images once, done'
    reports.clear()
    compare(a, b, test, small_data, lambda done, line: reports.append((done, line)))
    assert reports == [], 'predictions already made are read, not computed again'
    assert compare(a, b, test, small_data, compute=False).top1() == compare(a, b, test, small_data).top1()
