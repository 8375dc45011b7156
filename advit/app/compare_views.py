"""The Compare tab, without the app: two classifiers on the test set, and both on one test image.

Where each is right and the other wrong (Table 3), per class (Table 2), their confusion matrices,
and on a selected image both models' top-5 and attention per layer.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from ..core.checks import number, shown_value
from ..core.data import DatasetError, ImageSet, load_dataset
from ..measure.compare import Comparison, PredictionsMissing, compare
from ..measure.inspection import inspect_model, predicted_top5
from .catalog import ModelEntry
from .forms import MAX_INDEX, OPACITY
from .offer import Offer, StudioError
from .render import confusion_figure, per_class_figure, side_by_side_panels

GALLERY_LIMIT = 60  # images shown per direction in the comparison
THUMBNAIL_SIZE = 96
SIDES = ('A', 'B')  # the galleries: A right and B wrong, B right and A wrong


@dataclass
class CompareView:
    a_only: list[tuple[Image.Image, str]]
    b_only: list[tuple[Image.Image, str]]
    table: list[list]
    figure: go.Figure
    confusion: go.Figure
    summary: str


@dataclass
class CompareImageView:
    panels: list[tuple[Image.Image, str]]
    top5_a: dict[str, float]
    top5_b: dict[str, float]
    summary: str


class CompareViews:
    """The Compare tab's views of the checkpoints on offer.

    Args:
        offer: The models on offer (the timm hub models are left out: they have no test predictions).
        data: The dataset whose test split the comparison shows.
    """

    def __init__(self, offer: Offer, data: Path) -> None:
        self.offer, self.data = offer, data
        self._test: ImageSet | None = None
        self._lock = threading.Lock()

    def test_set(self) -> ImageSet:
        """The test split, loaded on first use and kept."""
        with self._lock:
            if self._test is None:
                try:
                    self._test = load_dataset(self.data)['test']
                except DatasetError as err:
                    raise StudioError(f'the comparison needs the CIFAR-10 test set: {err}') from err
            return self._test

    def _comparison(self, key_a: Any, key_b: Any, progress: Callable[[float, str], None] | None = None,
                    compute: bool = True) -> tuple[Comparison, list[ModelEntry], ImageSet]:
        """(comparison, the two entries, the test set) of two checkpoints on offer."""
        chosen = [self.offer.find(key, checkpoints_only=True) for key in (key_a, key_b)]
        for key, entry in zip((key_a, key_b), chosen):
            if entry is None:
                raise StudioError(f'choose two checkpoints on offer to compare (got {shown_value(key)})')
        test = self.test_set()
        try:
            comparison = compare(chosen[0].key, chosen[1].key, test, self.data, progress,
                                 names=(f'A ({chosen[0].label()})', f'B ({chosen[1].label()})'), compute=compute)
        except PredictionsMissing as err:
            raise StudioError(f'not compared yet: {err}') from None
        except Exception as err:
            raise StudioError(f'cannot compare: {err}') from err
        return comparison, chosen, test

    @staticmethod
    def _true_class(test: ImageSet, class_name: str | None) -> str | None:
        class_name = None if class_name in (None, '', 'all') else class_name
        if class_name is not None and class_name not in test.classes:
            raise StudioError(f'unknown class {shown_value(class_name)}')
        return class_name

    def view(self, key_a: str, key_b: str, class_name: str | None = None,
             progress: Callable[[float, str], None] | None = None, compute: bool = True) -> CompareView:
        """Where A is right and B wrong and the reverse, per-class accuracy and confusion of both, on the test set.

        Args:
            key_a: Model A as the lists name it (a checkpoint).
            key_b: Model B.
            class_name: Show only test images of this true class (None or 'all': every class).
            progress: Called with the fraction done and a line with the time left while missing predictions
                are computed (on the CPU: minutes for a ViT-B/16 at 224).
            compute: Compute missing predictions; else refused (the page's opening view reads saved ones only).
        """
        comparison, (entry_a, entry_b), test = self._comparison(key_a, key_b, progress, compute)
        class_name = self._true_class(test, class_name)
        a_only, b_only = comparison.disagreements(class_name)
        name_a, name_b = Path(entry_a.key).stem, Path(entry_b.key).stem
        top_a, top_b = comparison.top1()
        per_a, per_b = comparison.per_class()
        summary = (f'**A** `{entry_a.name}`: {top_a:.2f}% · **B** `{entry_b.name}`: {top_b:.2f}% top-1 on '
                   f'{len(test)} test images. A right and B wrong: **{len(a_only)}**; B right and A wrong: '
                   f'**{len(b_only)}**' + (f' (true class {class_name})' if class_name else '') +
                   f'. Galleries show up to {GALLERY_LIMIT} each; select one to see both models on it.')
        return CompareView(
            a_only=self._gallery(test, a_only, comparison, 'A', 'B'),
            b_only=self._gallery(test, b_only, comparison, 'B', 'A'),
            table=comparison.table(), figure=per_class_figure(test.classes, per_a, per_b, name_a, name_b),
            confusion=confusion_figure(test.classes, *comparison.confusion(), name_a, name_b),
            summary=summary)

    def disagreement(self, key_a: str, key_b: str, class_name: str | None, side: str, position: int) -> int:
        """The test index of the ``position``-th image of a gallery: ``side`` 'A' (A right, B wrong) or 'B'."""
        comparison, _, test = self._comparison(key_a, key_b)
        shown = comparison.disagreements(self._true_class(test, class_name))[SIDES.index(side)][:GALLERY_LIMIT]
        if not 0 <= int(position) < len(shown):
            raise StudioError(f'the gallery has no image {position}: run the comparison again')
        return int(shown[int(position)])

    def image(self, key_a: str, key_b: str, index: Any, opacity: float = 0.6) -> CompareImageView:
        """Both models on one test image: their top-5 and, for ViTs, their [CLS] attention per layer.

        Args:
            key_a: Model A as the lists name it.
            key_b: Model B.
            index: The test image (as the galleries' captions number them), as the client sent it.
            opacity: Heatmap opacity over the image.
        """
        index = number(index, 'test image', 0, MAX_INDEX, whole=True)
        opacity = number(opacity, 'heatmap opacity', *OPACITY)
        comparison, entries, test = self._comparison(key_a, key_b)
        if index >= len(test):
            raise StudioError(f'the test set has images 0-{len(test) - 1}, not {index}')
        image = Image.fromarray(test.images[index].permute(1, 2, 0).numpy())
        views, top5s = [], []
        for role, entry in zip(SIDES, entries):
            model, meta = self.offer.load(entry.name, f'model {role}')
            views.append(inspect_model(model, meta, image) if entry.is_vit else None)
            top5s.append(views[-1].top5 if entry.is_vit else predicted_top5(model, meta, image))
        classes = comparison.classes
        verdicts = [f'{role}: {classes[preds[index]]} {"✓" if preds[index] == comparison.labels[index] else "✗"}'
                    for role, preds in zip(SIDES, (comparison.preds_a, comparison.preds_b))]
        panels = [(image.resize((2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE), Image.BICUBIC),
                   f'#{index} true {classes[comparison.labels[index]]} · ' + ' · '.join(verdicts))]
        if all(views):
            panels += side_by_side_panels(image, *((role, view.maps, view.grid) for role, view in zip(SIDES, views)),
                                          opacity)
        return CompareImageView(panels=panels, top5_a=top5s[0], top5_b=top5s[1],
                                summary=f'Test image #{index}, true class **{classes[comparison.labels[index]]}**: '
                                        + ' · '.join(verdicts) + ('' if all(views) else
                                                                  ' (attention maps need two ViTs)'))

    @staticmethod
    def _gallery(test: ImageSet, indices: np.ndarray, comparison: Comparison, right: str,
                 wrong: str) -> list[tuple[Image.Image, str]]:
        items = []
        for index in indices[:GALLERY_LIMIT]:
            pixels = test.images[index].permute(1, 2, 0).numpy()
            thumbnail = Image.fromarray(pixels).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BICUBIC)
            classes = comparison.classes
            pred = {'A': comparison.preds_a[index], 'B': comparison.preds_b[index]}
            caption = (f'#{index} true {classes[comparison.labels[index]]} · {right}: {classes[pred[right]]} ✓ · '
                       f'{wrong}: {classes[pred[wrong]]} ✗')
            items.append((thumbnail, caption))
        return items
