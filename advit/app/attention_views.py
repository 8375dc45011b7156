"""The Attention tab, without the app: a teacher's and a student's maps on an image, and the views beside them.

One layer large, a few images at once, the deletion curves of the maps on screen, and the views
beyond the distilled map (rollout, heads, attention mass, prefix shares).
Every view takes the tab's ``forms.AttentionRequest`` and returns plain Python (PIL images, plotly
figures, rows), so it is tested without a browser.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from PIL import Image

from ..core.capture import trained_normalization
from ..core.checks import shown_value
from ..measure.faithfulness import (
    GRADIENT_ROLLOUT,
    QUARTER,
    ROLLOUT,
    measure_faithfulness,
    source_names,
)
from ..measure.inspection import AttentionReport, inspect_pair, model_input, seen_image
from ..measure.removal import REMOVED_AS
from ..measure.rollout import model_views
from ..measure.verdicts import last_layer
from .figure import attention_figure, images_figure, layer_figure, maps_npz, report_json
from .forms import AttentionRequest, RolloutRequest
from .images import ImageError, load_image
from .offer import Offer, StudioError
from .render import (
    faithfulness_figure,
    gap_figure,
    gap_table,
    layer_panels,
    prefix_share_figure,
    views_panels,
)

BATCH_LIMIT = 8  # images in the few-images view: a row each, 8 forward passes of both models
SEEN_SIZE = 128  # the image as the model reads it, enlarged by whole pixels to at least this (4x for 32x32)
# One image's deletion curves of the three maps drawn: eighths of the patches, random orders averaged.
IMAGE_FRACTIONS = tuple(i / 8 for i in range(9))
QUARTER_STEP = IMAGE_FRACTIONS.index(QUARTER)
IMAGE_RANDOM_ORDERS = 4
FUSIONS = ('trained', 'mean', 'max', 'head')

Pair = tuple[tuple[Any, dict], tuple[Any, dict]]  # (teacher, its metadata), (student, its metadata)


@dataclass
class AttentionView:
    panels: list[tuple[Image.Image, str]]
    figure: go.Figure
    table: list[list]
    teacher_top5: dict[str, float]
    student_top5: dict[str, float]
    data: dict[str, Any]
    paper_figure: Image.Image  # the paper's Fig. 2: every layer's teacher | student | difference
    downloads: dict[str, bytes]  # the maps as .npz and as JSON, by extension
    seen: Image.Image  # the image as the student reads it (e.g. 32x32), enlarged without smoothing to show
    seen_note: str  # in words: what the models read and which classes they know


@dataclass
class FaithfulnessView:
    figure: go.Figure  # both models' deletion curves
    summary: str  # in words: the class read and each model's quarter drop on this image
    data: dict[str, Any]  # by role: the curves (FaithfulnessCurves.as_dict) and the class read


@dataclass
class MoreViews:
    panels: list[tuple[Image.Image, str]]
    figure: go.Figure
    data: dict[str, Any]


class AttentionViews:
    """The Attention tab's views of the models on offer.

    Args:
        offer: The models on offer.
    """

    def __init__(self, offer: Offer) -> None:
        self.offer = offer

    def _pair(self, request: AttentionRequest) -> Pair:
        """The loaded teacher and student ViTs of a request, each with its metadata."""
        return (self.offer.load(request.teacher, 'teacher', vit=True),
                self.offer.load(request.student, 'student', vit=True))

    @staticmethod
    def _upload(image_path: str | None) -> Image.Image:
        if image_path is None:
            raise StudioError('upload an image or pick an example')
        return load_image(image_path)

    @staticmethod
    def _inspect(pair: Pair, image: Image.Image, request: AttentionRequest) -> AttentionReport:
        """The pair's attention report on ``image``, fused as the request says."""
        if request.fusion not in FUSIONS:
            raise StudioError(f'unknown head fusion {shown_value(request.fusion)}: choose trained, mean, max or head')
        (teacher, teacher_meta), (student, student_meta) = pair
        try:
            return inspect_pair(teacher, teacher_meta, student, student_meta, image=image,
                                fusion=request.head if request.fusion == 'head' else request.fusion)
        except ValueError as err:
            raise StudioError(str(err)) from err

    def view(self, request: AttentionRequest) -> AttentionView:
        """Teacher and student [CLS] attention on the uploaded image, layer by layer, with their gaps."""
        pair = self._pair(request)
        image = self._upload(request.image)
        report = self._inspect(pair, image, request)
        (_, teacher_meta), (student, student_meta) = pair
        seen = seen_image(image, student)
        classes = student_meta.get('classes') or teacher_meta.get('classes') or []
        known = f'the {len(classes)} classes {", ".join(classes)}' if classes else 'the classes they were trained on'
        note = (f'What the student reads: your image shrunk to {seen.width}x{seen.height} pixels (left as it is: '
                f'{image.width}x{image.height}). These models know {known}: whatever a photo shows, they answer one of '
                'them.')
        opacity = request.opacity
        scale = max(1, SEEN_SIZE // max(seen.width, seen.height))  # 224x224 is shown as it is
        return AttentionView(panels=layer_panels(report, image, opacity), figure=gap_figure(report),
                             table=gap_table(report), teacher_top5=report.teacher_top5,
                             student_top5=report.student_top5, data=report.as_dict(),
                             paper_figure=attention_figure(report, image, opacity),
                             downloads=dict(npz=maps_npz(report), json=report_json(report)),
                             # Enlarged by whole pixels: a browser would smooth a 32x32 image into a blur.
                             seen=seen.resize((seen.width * scale, seen.height * scale), Image.NEAREST),
                             seen_note=note)

    def layer(self, request: AttentionRequest) -> Image.Image:
        """The request's student layer of the attention view, large."""
        pair = self._pair(request)
        image = self._upload(request.image)
        report = self._inspect(pair, image, request)
        try:
            return layer_figure(report, image, request.layer - 1, request.opacity)
        except ValueError as err:
            raise StudioError(str(err)) from err

    def images(self, image_paths: list[str], request: AttentionRequest) -> tuple[Image.Image, list[list]]:
        """The request's student layer on a few images at once, a row each (``figure.images_figure``), and each
        row's gaps.

        Args:
            image_paths: Up to ``BATCH_LIMIT`` image files (the request's own image is not used).
            request: The pair, fusion, opacity and layer.
        """
        if not image_paths:
            raise StudioError('upload a few images or use the examples')
        if len(image_paths) > BATCH_LIMIT:
            raise StudioError(f'{len(image_paths)} images: this view takes up to {BATCH_LIMIT} at once')
        pair = self._pair(request)
        images, reports, names = [], [], []
        for path in image_paths:
            name = Path(path).stem[:16]
            try:
                image = self._upload(path)
            except ImageError as err:
                raise StudioError(f'{name}: {err}') from None
            images.append(image), reports.append(self._inspect(pair, image, request)), names.append(name)
        try:
            figure = images_figure(reports, images, names, request.layer - 1, request.opacity)
        except ValueError as err:
            raise StudioError(str(err)) from err
        shown = request.layer
        rows = [[name, shown, report.teacher_layers[shown - 1] + 1,
                 *(round(float(report.gaps[kind][shown - 1]), 6) for kind in ('l1', 'l2', 'kl'))]
                for name, report in zip(names, reports)]
        return figure, rows

    def faithfulness(self, request: AttentionRequest) -> FaithfulnessView:
        """Do the maps on screen point at what each model uses? On the uploaded image, each model's
        deletion curves: the probability of the class it predicts on the whole image as the patches its
        last layer's map, and its rollout, attend to most are removed first (by the request's protocol),
        against random orders.
        """
        image = self._upload(request.image)
        curves, classes = {}, {}
        for role, (model, meta) in zip(('teacher', 'student'), self._pair(request)):
            inputs = model_input(image, meta, model)
            with torch.inference_mode():
                predicted = model(inputs).argmax(dim=-1)
            names = meta.get('classes') or []
            classes[role] = names[int(predicted)] if int(predicted) < len(names) else f'class {int(predicted)}'
            curves[role] = measure_faithfulness(
                model, inputs, predicted, trained_normalization(meta), meta.get('head_fusion') or 'mean',
                sources=(last_layer(source_names(len(model.blocks))), ROLLOUT, GRADIENT_ROLLOUT),  # those drawn
                fractions=IMAGE_FRACTIONS, modes=('deletion',), orders=('map', 'random'),
                random_orders=IMAGE_RANDOM_ORDERS, protocol=request.protocol)
        lines = []
        for role, c in curves.items():
            def left(source: str, order: str = 'map', c=c) -> str:
                return f"{c.curve('probability', 'deletion', source, order)[QUARTER_STEP]:.2f}"
            lines.append(f"**{role}** predicts *{classes[role]}* (probability "
                         f"{c.curve('probability', 'deletion', ROLLOUT, 'map')[0]:.2f}); with the quarter of "
                         f"patches its last layer's map attends to most {REMOVED_AS[request.protocol]}: "
                         f"{left(last_layer(c.sources))}, its "
                         f"rollout's: {left(ROLLOUT)}, its gradient rollout's: {left(GRADIENT_ROLLOUT)}, a random "
                         f"quarter: {left(ROLLOUT, 'random')}.")
        return FaithfulnessView(figure=faithfulness_figure(curves, classes), summary='\n\n'.join(lines),
                                data={role: dict(curves[role].as_dict(), class_read=classes[role]) for role in curves})

    def more(self, request: AttentionRequest, rollout: RolloutRequest) -> MoreViews:
        """Teacher and student side by side: attention rollout, its attention-mass mask, the last layer's
        heads, and each layer's share of [CLS] attention on prefix tokens (the request's opacity)."""
        image = self._upload(request.image)
        try:
            views = [model_views(model, meta, image, rollout_fusion=rollout.fusion, discard_ratio=rollout.discard,
                                 keep=rollout.keep)
                     for model, meta in self._pair(request)]
        except ValueError as err:
            raise StudioError(str(err)) from err
        return MoreViews(panels=views_panels(*views, image, request.opacity), figure=prefix_share_figure(*views),
                         data=dict(teacher=views[0].as_dict(), student=views[1].as_dict()))
