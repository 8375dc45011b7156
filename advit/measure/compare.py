"""Two classifiers on one test set: where one is right and the other wrong (Table 3), and per class (Table 2).

From the predictions saved at evaluation when they cover the test set, else from a cache of their own.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.data import ImageSet, default_cache_dir
from ..core.io import atomic_path
from .evaluate import (
    checkpoint_probs,
    evaluation_paths,
    load_predictions,
    summarize_predictions,
)

# Images per forward when Compare predicts on the CPU. On 2 fp32 EPYC cores a ViT-B/16 at 224 reads 2.7-3.2
# images/s at any batch from 1 to 64, a ViT-S/16 12-15 at batches 1-8 and 10 at 64: at 16 the progress bar
# moves every 5 s or so, not every 25 s, and nothing is lost in speed.
PREDICTION_BATCH = 16


@dataclass
class Comparison:
    """Two models' predictions on one test set."""
    labels: np.ndarray
    preds_a: np.ndarray
    preds_b: np.ndarray
    classes: list[str]

    def disagreements(self, class_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Test indices where A is right and B wrong, and where B is right and A wrong (of one true class)."""
        right_a, right_b = self.preds_a == self.labels, self.preds_b == self.labels
        keep = np.ones_like(right_a) if class_name is None else self.labels == self.classes.index(class_name)
        return np.flatnonzero(right_a & ~right_b & keep), np.flatnonzero(right_b & ~right_a & keep)

    def summaries(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A's and B's top-1, per-class accuracy and confusion matrix, by the evaluation's own rule
        (``evaluate.summarize_predictions``), so that this tab and the model card agree."""
        return tuple(summarize_predictions(torch.from_numpy(preds), torch.from_numpy(self.labels), self.classes)
                     for preds in (self.preds_a, self.preds_b))

    def per_class(self) -> tuple[list[float | None], list[float | None]]:
        """Per-class top-1 (percent) of A and of B; None for a class without test images."""
        a, b = self.summaries()
        return list(a['per_class'].values()), list(b['per_class'].values())

    def confusion(self) -> tuple[np.ndarray, np.ndarray]:
        """Confusion matrices of A and of B: counts, rows the true class, columns the predicted one."""
        a, b = self.summaries()
        return np.array(a['confusion']), np.array(b['confusion'])

    def top1(self) -> tuple[float, float]:
        a, b = self.summaries()
        return a['top1'], b['top1']

    def table(self) -> list[list]:
        """Rows (class, A %, B %, B − A; None where a class has no test image) and a last row for all classes."""
        a, b = self.summaries()
        rows = [[name, *_rounded(a['per_class'][name], b['per_class'][name])] for name in self.classes]
        return rows + [['all (top-1)', *_rounded(a['top1'], b['top1'])]]


def _rounded(a: float | None, b: float | None) -> list[float | None]:
    return [None if a is None else round(a, 2), None if b is None else round(b, 2),
            None if a is None or b is None else round(b - a, 2)]


class PredictionsMissing(LookupError):
    """Predictions that would have to be computed, where the caller said not to."""


def saved_predictions(
        checkpoint: str | Path,
        test: ImageSet,
        data: str | Path,
        progress: Callable[[float], None] | None = None,
        compute: bool = True,
) -> np.ndarray:
    """A checkpoint's predicted class per image of ``test``: from its saved predictions when they cover
    this test set, otherwise computed on it once and kept in the comparison cache
    (``<ADVIT_CACHE>/predictions``, keyed by the checkpoint file and the test set). A run's own
    evaluation files stay as training wrote them, so ``advit report`` reads what the run measured.

    Args:
        compute: Compute missing predictions (else ``PredictionsMissing``: minutes for a 224 model on a CPU).
    """
    if evaluation_paths(checkpoint)[1].is_file():
        saved = load_predictions(checkpoint)
        if len(saved['labels']) == len(test) and np.array_equal(saved['labels'], test.labels.numpy()):
            return saved['preds'].astype(np.int64)
    cached = comparison_cache(checkpoint, test)
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as saved:
            return saved['preds'].astype(np.int64)
    if not compute:
        raise PredictionsMissing(f'{Path(checkpoint).name} has no predictions on this test set yet')
    probs, _ = checkpoint_probs(checkpoint, test, batch_size=PREDICTION_BATCH, device='cpu', progress=progress)
    preds = probs.argmax(dim=-1).numpy().astype(np.int16)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, preds=preds, labels=test.labels.numpy().astype(np.int16))
    return preds.astype(np.int64)


def comparison_cache(checkpoint: str | Path, test: ImageSet) -> Path:
    """Where Compare keeps a checkpoint's predictions on ``test``: named by the checkpoint file (path,
    size, modification time) and the test set (its images and labels)."""
    stat = Path(checkpoint).stat()
    key = hashlib.sha256(f'{Path(checkpoint).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{test.fingerprint}'.encode())
    return default_cache_dir() / 'predictions' / f'{Path(checkpoint).stem}-{key.hexdigest()[:24]}.npz'


def time_left(elapsed: float, done: float) -> str:
    """``about 12 min left`` at the rate so far, from the seconds taken and the fraction done."""
    if done <= 0:
        return 'estimating the time left'
    if done >= 1:
        return 'done'
    left = elapsed * (1 - done) / done
    return f'about {left / 60:.0f} min left' if left >= 90 else f'about {max(left, 1):.0f} s left'


def compare(
        checkpoint_a: str | Path,
        checkpoint_b: str | Path,
        test: ImageSet,
        data: str | Path,
        progress: Callable[[float, str], None] | None = None,
        names: tuple[str, str] = ('A', 'B'),
        compute: bool = True,
) -> Comparison:
    """Compare two checkpoints on a test split.

    Args:
        checkpoint_a: First model (e.g. the ADViT student).
        checkpoint_b: Second model (e.g. the DeiT student).
        test: The test split the predictions refer to.
        data: Where the test split came from (recorded with predictions computed here).
        progress: Called while missing predictions are computed, with the fraction of both models' done and
            a line saying which model and the time its predictions have left (``time_left``).
        names: The two models as the progress line names them.
        compute: Compute missing predictions (else ``PredictionsMissing``).
    """
    def part(offset: float, name: str) -> Callable[[float], None] | None:
        if progress is None:
            return None
        start = time.monotonic()
        return lambda done: progress(offset + done / 2, f'{name}: predicting the {len(test):,} test images once, '
                                                        f'{time_left(time.monotonic() - start, done)}')
    preds_a = saved_predictions(checkpoint_a, test, data, part(0.0, names[0]), compute)
    preds_b = saved_predictions(checkpoint_b, test, data, part(0.5, names[1]), compute)
    return Comparison(labels=test.labels.numpy(), preds_a=preds_a, preds_b=preds_b, classes=test.classes)
