"""What the app does, without the app: model choices, the attention view and the comparison view.

``app.py`` only lays out components and wires them to a ``Studio``; every result here is plain
Python (PIL images, plotly figures, rows), so it is tested without a browser.
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from .checks import redacted, shown_value
from .capture import trained_normalization
from .catalog import TIMM_PREFIX, ModelCache, ModelEntry, discover
from .compare import compare
from .data import OFFICIAL_CIFAR10, DatasetError, ImageSet, default_dataset, load_dataset
from .images import ImageError, load_image
from .io import REPO
from .figure import attention_figure, images_figure, layer_figure, maps_npz, report_json
from .faithfulness import GRADIENT_ROLLOUT, QUARTER, ROLLOUT, last_layer, measure_faithfulness
from .inspection import AttentionReport, inspect_model, inspect_pair, model_input, seen_image
from .names import TEACHER_STEM
from .probe import PROBE_IMAGES
from .training_view import (PROBE_FILE, ProbeError, find_probes, gap_curves, gap_heatmap, load_probe, step_report,
                            students_faithfulness_figure, students_gap_figure)
from .render import (confusion_figure, faithfulness_figure, gap_figure, gap_table, layer_panels, per_class_figure,
                     prefix_share_figure, side_by_side_panels, views_panels)
from .rollout import model_views

GALLERY_LIMIT = 60  # images shown per direction in the comparison
BATCH_LIMIT = 8  # images in the few-images view: a row each, 8 forward passes of both models
SEEN_SCALE = 4  # the image as the model reads it, shown 4x (128x128 for a 32x32 model)
# One image's deletion curves: eighths of the patches, random orders averaged (44 masked copies per model).
IMAGE_FRACTIONS = tuple(i / 8 for i in range(9))
QUARTER_STEP = IMAGE_FRACTIONS.index(QUARTER)
IMAGE_RANDOM_ORDERS = 4
THUMBNAIL_SIZE = 96


class StudioError(ValueError):
    """A request the studio cannot serve; the message is for the user."""


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


@dataclass
class TrainingView:
    students: go.Figure  # every student of the source: its gap, mean over layers, against step
    faithfulness: go.Figure  # every student of the source: its maps' quarter drop against step
    heatmap: go.Figure  # the chosen student's gap, layer x step
    curves: go.Figure  # the same, one curve per layer
    frame: Image.Image  # at the chosen evaluation, teacher | student | difference on one probe image (Fig. 2 style)
    student: str
    students_names: list[str]
    summary: str
    data: dict[str, Any]


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


class Studio:
    """The models on offer and the views of them.

    Args:
        checkpoint_dirs: Folders whose ``*.safetensors`` are offered (the bundle first).
        runs_dir: A runs folder whose ``*/best.safetensors`` are offered.
        data: The dataset whose test split the comparison shows.
    """

    def __init__(self, checkpoint_dirs: list[Path], runs_dir: Path | None, data: Path) -> None:
        self.checkpoint_dirs, self.runs_dir, self.data = checkpoint_dirs, runs_dir, data
        self.models = ModelCache()
        self._test: ImageSet | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> 'Studio':
        """Paths from ``ADVIT_CHECKPOINTS``, ``ADVIT_RUNS`` and ``ADVIT_DATA``, defaulting to the repository's."""
        checkpoints = os.environ.get('ADVIT_CHECKPOINTS', str(REPO / 'checkpoints'))
        return cls(checkpoint_dirs=[Path(p) for p in checkpoints.split(os.pathsep) if p],
                   runs_dir=Path(os.environ.get('ADVIT_RUNS', REPO / 'runs')),
                   data=Path(default_dataset()))

    def shown(self, text: str) -> str:
        """Text for a client, with the server's folders as the app names them: the checkpoint and runs
        folders by their names, the dataset and the app's folder relative to it."""
        names = {str(folder): Path(folder).name for folder in [*self.checkpoint_dirs, self.runs_dir] if folder}
        names.update({str(Path(folder).resolve()): name for folder, name in list(names.items())})
        if str(self.data) != OFFICIAL_CIFAR10:
            names[str((REPO / self.data).resolve())] = names[str(self.data)] = os.path.relpath(REPO / self.data, REPO)
        names[str(REPO)] = '.'
        return redacted(text, names)

    # --- the models on offer ---------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """Every model found now (a finished run appears without a restart)."""
        return discover(self.checkpoint_dirs, self.runs_dir)

    def choices(self, vit_only: bool = False, checkpoints_only: bool = False) -> list[tuple[str, str]]:
        """(label, key) of the usable models; ``checkpoints_only`` leaves out the timm hub models."""
        offered = [(e.label(), e.name) for e in self.entries() if e.usable and (e.is_vit or not vit_only)
                   and not (checkpoints_only and e.key.startswith(TIMM_PREFIX))]
        labels = Counter(label for label, _ in offered)  # two models of one name: their paths tell them apart
        return [(label if labels[label] == 1 else f'{label} · {name}', name) for label, name in offered]

    def teacher_files(self) -> dict[str, str]:
        """The checkpoints a training job may take as its teacher: name as listed -> file."""
        return {e.name: e.key for e in self.entries()
                if e.usable and e.is_vit and not e.key.startswith(TIMM_PREFIX)}

    def problems(self) -> str:
        """Markdown listing the checkpoints that cannot be used, with the reason, or how to get models."""
        entries = self.entries()
        lines = [f'- `{e.name}`: {e.problem}' for e in entries if not e.usable]
        if not any(e.usable for e in entries):
            folders = ', '.join(f'`{Path(d).name}/`' for d in self.checkpoint_dirs)
            runs = f' or `{Path(self.runs_dir).name}/`' if self.runs_dir else ''
            lines.insert(0, f'No usable models found in {folders}{runs}. Train some with '
                            '`advit train ...` (see the README), or put the checkpoint bundle in `checkpoints/`.')
        elif lines:
            lines.insert(0, 'Unusable checkpoints:')
        return '\n'.join(lines)

    def describe(self, key: str | None) -> str:
        """Markdown describing a model from its metadata (a teacher given by path there named as the app names it)."""
        entry = self.offered(key, self.entries()) if isinstance(key, str) and key else None
        return self.shown(entry.describe()) if entry is not None else ''

    def default_keys(self) -> dict[str, str | None]:
        """Sensible defaults: the bundle's teacher (else the largest model) as teacher; the best ADViT
        student and the DeiT-hard student (else another DeiT), best chosen on validation top-1 (the
        held-out training images), never on the test set."""
        usable = [e for e in self.entries() if e.usable and e.is_vit]
        def best(predicate: Callable[[ModelEntry], bool]) -> ModelEntry | None:
            found = [e for e in usable if predicate(e)]
            return max(found, key=lambda e: e.meta.get('val_top1') or 0) if found else None
        teacher = next((e for e in usable if Path(e.key).stem == TEACHER_STEM), None) or \
            max(usable, key=lambda e: e.meta.get('params') or 0, default=None)
        advit = best(lambda e: 'advit' in (e.meta.get('method') or ''))
        deit = best(lambda e: e.meta.get('method') == 'deit_hard') or \
            best(lambda e: (e.meta.get('method') or '').startswith('deit'))
        student = advit or next((e for e in usable if e is not teacher), teacher)
        return dict(teacher=teacher and teacher.name, student=student and student.name,
                    compare_a=(advit or student) and (advit or student).name,
                    compare_b=(deit or teacher) and (deit or teacher).name)

    @staticmethod
    def offered(key: str, entries: list[ModelEntry]) -> ModelEntry | None:
        """The usable model a request names: by the name the lists show, its file's path, or another
        spelling of that file (relative to the app's folder). Nothing that is not on offer is ever returned."""
        def same_file(a: str, b: str) -> bool:
            if a.startswith(TIMM_PREFIX) or b.startswith(TIMM_PREFIX):
                return False
            try:
                return Path(a).resolve() == (REPO / b).resolve()
            except (OSError, ValueError):  # a path the OS cannot even name
                return False
        return next((e for e in entries if e.usable and key in (e.name, e.key)), None) or \
            next((e for e in entries if e.usable and same_file(e.key, key)), None)

    def _model(self, key: str | None, role: str, vit: bool = False):
        """The loaded model and metadata of a catalog key; with ``vit``, a ViT or refused before loading."""
        if not key or not isinstance(key, str):
            raise StudioError(f'choose a {role} model')
        entry = self.offered(key, self.entries())
        if entry is None:
            raise StudioError(f'{shown_value(key)} is not one of the models on offer')  # no arbitrary paths from a request
        if vit and not entry.is_vit:
            raise StudioError(f'{key} is not a ViT: attention views need ViT models')
        try:
            return self.models.get(entry.key)
        except Exception as err:  # any load failure is the user's to read, never a crash
            raise StudioError(f'the {role} model {key} cannot be loaded: {err}') from err

    # --- the attention view ----------------------------------------------------------------------

    def _pair(self, teacher_key: str, student_key: str) -> tuple[tuple[Any, dict], tuple[Any, dict]]:
        """The loaded teacher and student ViTs, each with its metadata."""
        return self._model(teacher_key, 'teacher', vit=True), self._model(student_key, 'student', vit=True)

    @staticmethod
    def _upload(image_path: str | None) -> Image.Image:
        if image_path is None:
            raise StudioError('upload an image or pick an example')
        return load_image(image_path)

    @staticmethod
    def _inspect(pair, image: Image.Image, fusion: str, head: int) -> AttentionReport:
        """The pair's attention report on ``image`` (see ``attention`` for ``fusion`` and ``head``)."""
        if fusion not in ('trained', 'mean', 'max', 'head'):
            raise StudioError(f'unknown head fusion {shown_value(fusion)}: choose trained, mean, max or head')
        (teacher, teacher_meta), (student, student_meta) = pair
        try:
            return inspect_pair(teacher, teacher_meta, student, student_meta, image,
                                int(head) if fusion == 'head' else fusion)
        except ValueError as err:
            raise StudioError(str(err)) from err

    def _report(self, image_path: str | None, teacher_key: str, student_key: str, fusion: str,
                head: int) -> tuple[Image.Image, AttentionReport]:
        """The decoded upload and the pair's attention report on it."""
        image = self._upload(image_path)
        return image, self._inspect(self._pair(teacher_key, student_key), image, fusion, head)

    def attention(self, image_path: str | None, teacher_key: str, student_key: str, fusion: str = 'trained',
                  head: int = 0, opacity: float = 0.6) -> AttentionView:
        """Teacher and student [CLS] attention on an uploaded image, layer by layer, with their gaps.

        Args:
            image_path: The uploaded image file.
            teacher_key: Catalog key of the teacher.
            student_key: Catalog key of the student.
            fusion: ``'trained'`` (the student's own, from its metadata), ``'mean'``, ``'max'`` or ``'head'``
                (then ``head`` selects it).
            head: Head index for ``fusion='head'``.
            opacity: Heatmap opacity over the image.
        """
        pair = self._pair(teacher_key, student_key)
        image = self._upload(image_path)
        report = self._inspect(pair, image, fusion, head)
        (_, teacher_meta), (student, student_meta) = pair
        seen = seen_image(image, student)
        classes = student_meta.get('classes') or teacher_meta.get('classes') or []
        known = f'the {len(classes)} classes {", ".join(classes)}' if classes else 'the classes they were trained on'
        note = (f'What the student reads: your image shrunk to {seen.width}x{seen.height} pixels (left as it is: '
                f'{image.width}x{image.height}). These models know {known}: whatever a photo shows, they answer one of '
                'them.')
        return AttentionView(panels=layer_panels(report, image, opacity), figure=gap_figure(report),
                             table=gap_table(report), teacher_top5=report.teacher_top5,
                             student_top5=report.student_top5, data=report.as_dict(),
                             paper_figure=attention_figure(report, image, opacity),
                             downloads=dict(npz=maps_npz(report), json=report_json(report)),
                             # Enlarged by whole pixels: a browser would smooth a 32x32 image into a blur.
                             seen=seen.resize((seen.width * SEEN_SCALE, seen.height * SEEN_SCALE), Image.NEAREST),
                             seen_note=note)

    def attention_layer(self, image_path: str | None, teacher_key: str, student_key: str, fusion: str = 'trained',
                        head: int = 0, opacity: float = 0.6, layer: int = 1) -> Image.Image:
        """One student layer of the attention view, large (``layer`` counts from 1, as the figure's rows; one
        past the student's last shows its last: the page's slider may still hold a deeper student's layer)."""
        image, report = self._report(image_path, teacher_key, student_key, fusion, head)
        try:
            return layer_figure(report, image, min(int(layer), len(report.teacher_layers)) - 1, opacity)
        except ValueError as err:
            raise StudioError(str(err)) from err

    def attention_images(self, image_paths: list[str], teacher_key: str, student_key: str, fusion: str = 'trained',
                         head: int = 0, layer: int = 1, opacity: float = 0.6) -> tuple[Image.Image, list[list]]:
        """One student layer on a few images at once, a row each (``figure.images_figure``), and each row's gaps.

        Args:
            image_paths: Up to ``BATCH_LIMIT`` image files.
            layer: Student layer, from 1 (past the student's last: its last).
        """
        if not image_paths:
            raise StudioError('upload a few images or use the examples')
        if len(image_paths) > BATCH_LIMIT:
            raise StudioError(f'{len(image_paths)} images: this view takes up to {BATCH_LIMIT} at once')
        if int(layer) < 1:
            raise StudioError(f'layer {layer} does not exist: layers count from 1')
        pair = self._pair(teacher_key, student_key)  # once: each lookup scans the catalog
        images, reports, names = [], [], []
        for path in image_paths:
            name = Path(path).stem[:16]
            try:
                image = self._upload(path)
            except ImageError as err:
                raise StudioError(f'{name}: {err}') from None
            images.append(image), reports.append(self._inspect(pair, image, fusion, head)), names.append(name)
        shown = min(int(layer), len(reports[0].teacher_layers))
        rows = [[name, shown, report.teacher_layers[shown - 1] + 1,
                 *(round(float(report.gaps[kind][shown - 1]), 6) for kind in ('l1', 'l2', 'kl'))]
                for name, report in zip(names, reports)]
        return images_figure(reports, images, names, shown - 1, opacity), rows

    def faithfulness(self, image_path: str | None, teacher_key: str, student_key: str) -> FaithfulnessView:
        """Do the maps on screen point at what each model uses? On the uploaded image, each model's
        deletion curves: the probability of the class it predicts on the whole image as the patches its
        last layer's map, and its rollout, attend to most are masked first, against random orders.
        """
        image = self._upload(image_path)
        curves, classes = {}, {}
        for role, (model, meta) in zip(('teacher', 'student'), self._pair(teacher_key, student_key)):
            inputs = model_input(image, meta, model)
            with torch.inference_mode():
                predicted = model(inputs).argmax(dim=-1)
            names = meta.get('classes') or []
            classes[role] = names[int(predicted)] if int(predicted) < len(names) else f'class {int(predicted)}'
            curves[role] = measure_faithfulness(
                model, inputs, predicted, trained_normalization(meta), meta.get('head_fusion') or 'mean',
                fractions=IMAGE_FRACTIONS, modes=('deletion',), orders=('map', 'random'), random_orders=IMAGE_RANDOM_ORDERS)
        lines = []
        for role, c in curves.items():
            def left(source: str, order: str = 'map', c=c) -> str:
                return f"{c.curve('probability', 'deletion', source, order)[QUARTER_STEP]:.2f}"
            lines.append(f"**{role}** predicts *{classes[role]}* (probability "
                         f"{c.curve('probability', 'deletion', ROLLOUT, 'map')[0]:.2f}); with the quarter of "
                         f"patches its last layer's map attends to most masked: {left(last_layer(c.sources))}, its "
                         f"rollout's: {left(ROLLOUT)}, its gradient rollout's: {left(GRADIENT_ROLLOUT)}, a random "
                         f"quarter: {left(ROLLOUT, 'random')}.")
        return FaithfulnessView(figure=faithfulness_figure(curves, classes), summary='\n\n'.join(lines),
                                data={role: dict(curves[role].as_dict(), class_read=classes[role]) for role in curves})

    def more_views(self, image_path: str | None, teacher_key: str, student_key: str, rollout_fusion: str = 'mean',
                   discard_ratio: float = 0.0, keep: float = 0.6, opacity: float = 0.6) -> MoreViews:
        """Teacher and student side by side: attention rollout, its attention-mass mask, the last layer's
        heads, and each layer's share of [CLS] attention on prefix tokens.

        Args:
            rollout_fusion: Rollout's fusion of heads: ``'mean'``, ``'max'`` or ``'min'``.
            discard_ratio: Rollout's share of the smallest attention entries dropped, in [0, 1).
            keep: Share of the rollout's mass the mask keeps, in (0, 1].
        """
        image = self._upload(image_path)
        try:
            views = [model_views(model, meta, image, rollout_fusion, float(discard_ratio), float(keep))
                     for model, meta in self._pair(teacher_key, student_key)]
        except ValueError as err:
            raise StudioError(str(err)) from err
        return MoreViews(panels=views_panels(*views, image, opacity), figure=prefix_share_figure(*views),
                         data=dict(teacher=views[0].as_dict(), student=views[1].as_dict()))

    # --- distillation over time -----------------------------------------------------------------

    def run_source(self, run: str) -> str:
        """A run's name among the probe sources (``runs/<run>``)."""
        return f'{Path(self.runs_dir).name}/{run}'

    def probe_sources(self, entries: list[ModelEntry] | None = None) -> list[str]:
        """What has an attention probe, by the names the app shows: the checkpoints on offer with one
        (the bundle's students), and the runs folder's runs with one (a live job's as soon as it has evaluated).

        Args:
            entries: The catalog, when the caller has just scanned it.
        """
        sources = []
        for entry in self.entries() if entries is None else entries:
            if entry.usable and not entry.key.startswith(TIMM_PREFIX):
                try:
                    find_probes(entry.key)
                    sources.append(entry.name)
                except ProbeError:
                    pass
        if self.runs_dir is not None and Path(self.runs_dir).is_dir():
            sources += [self.run_source(run.name) for run in sorted(Path(self.runs_dir).iterdir())
                        if run.is_dir() and ((run / PROBE_FILE).is_file() or any(run.glob(f'*/{PROBE_FILE}')))]
        return sources

    def _probes(self, source: str) -> tuple[dict[str, Path], str]:
        """(every student's probe file beside the source, by name; the source's own student)."""
        entries = self.entries()
        if source not in self.probe_sources(entries):
            raise StudioError(f'{shown_value(source)} is not a model or run with an attention probe on offer')
        entry = self.offered(source, entries)
        if entry is None:  # a run folder: all its students, an ADViT one first
            found = find_probes(Path(self.runs_dir) / Path(source).name)
            return found, next((name for name in found if 'advit' in name), next(iter(found)))
        (own, _), = find_probes(entry.key).items()
        folder = Path(entry.key).parent
        if Path(entry.key).name == 'best.safetensors' and folder.parent != Path(self.runs_dir):
            folder = folder.parent  # a student of a several-student run: its fellow students beside it
        return find_probes(folder), own

    def probe_outline(self, source: str, student: str | None = None) -> dict[str, Any]:
        """What the training view's controls range over: the source's students, the one shown, its
        number of evaluations and of probe images with maps."""
        paths, own = self._probes(source)
        student = student if student in paths else own
        try:
            probe = load_probe(paths[student])
        except ProbeError as err:
            raise StudioError(self.shown(str(err))) from None
        return dict(students=list(paths), student=student, evaluations=len(probe.steps), images=len(probe.images))

    def training_view(self, source: str, student: str | None = None, kind: str = 'l1', evaluation: int = -1,
                      image: int = 0, opacity: float = 0.6) -> TrainingView:
        """How a student's attention moved toward its teacher's over training, from its run's probe records.

        Args:
            source: A checkpoint or run with a probe (``probe_sources``).
            student: Which student of the source's run (default: the source's own, or a run's ADViT one).
            kind: The gap drawn: ``l1``, ``l2`` or ``kl``.
            evaluation: Which evaluation the frame shows, an index into the steps (-1: the last).
            image: Which probe image the frame shows.
            opacity: Heatmap opacity over the probe image.
        """
        paths, own = self._probes(source)
        try:
            probes = {name: load_probe(path) for name, path in paths.items()}
            student = student or own
            if student not in probes:
                raise StudioError(f'{source} has no student {shown_value(student)}: it has {", ".join(probes)}')
            probe = probes[student]
            evaluation = len(probe.steps) - 1 if evaluation == -1 else int(evaluation)
            frame = attention_figure(step_report(probe, evaluation, int(image)), probe.image(int(image)), opacity)
            students, heatmap, curves = (students_gap_figure(probes, kind), gap_heatmap(probe, kind),
                                         gap_curves(probe, kind))
            faithful = students_faithfulness_figure(probes)
        except ProbeError as err:
            raise StudioError(self.shown(str(err))) from None
        gaps = probe.gap(kind)
        summary = (f'`{student}`: {len(probe.steps)} evaluations (steps {probe.steps[0]}-{probe.steps[-1]}) on '
                   f'held-out probe images; mean {kind.upper()} gap over layers {gaps[0].mean():.3f} at the first, '
                   f'{gaps[-1].mean():.3f} at the last. The figure: step {probe.steps[evaluation]}, probe image {image}.')
        last = probe.layers - 1  # the last layer's column: each layer's come first
        if probe.faithfulness is not None and not np.isnan(probe.faithfulness[[0, -1], last]).any():
            drops = probe.faithfulness[:, last]
            summary += (f' Quarter drop of its last layer\'s map on the probe images: {drops[0]:+.1f} points at the '
                        f'first, {drops[-1]:+.1f} at the last (on {PROBE_IMAGES} images, a few points either way '
                        'are noise; the card\'s test figure has its standard error).')
        return TrainingView(students=students, faithfulness=faithful, heatmap=heatmap, curves=curves, frame=frame,
                            student=student,
                            students_names=list(probes), summary=summary,
                            data=probe.as_dict())

    # --- the comparison view ---------------------------------------------------------------------

    def test_set(self) -> ImageSet:
        with self._lock:
            if self._test is None:
                try:
                    self._test = load_dataset(self.data)['test']
                except DatasetError as err:
                    raise StudioError(f'the comparison needs the CIFAR-10 test set: {err}') from err
            return self._test

    def _comparison(self, key_a: str, key_b: str, progress: Callable[[float], None] | None = None):
        """(comparison, the two entries, the test set) of two checkpoints on offer."""
        checkpoints = [e for e in self.entries() if not e.key.startswith(TIMM_PREFIX)]
        chosen = [self.offered(key, checkpoints) if key else None for key in (key_a, key_b)]
        for key, entry in zip((key_a, key_b), chosen):
            if entry is None:
                raise StudioError(f'choose two checkpoints on offer to compare (got {shown_value(key)})')
        test = self.test_set()
        try:
            comparison = compare(chosen[0].key, chosen[1].key, test, self.data, progress)
        except Exception as err:
            raise StudioError(f'cannot compare: {err}') from err
        return comparison, chosen, test

    @staticmethod
    def _true_class(test: ImageSet, class_name: str | None) -> str | None:
        class_name = None if class_name in (None, '', 'all') else class_name
        if class_name is not None and class_name not in test.classes:
            raise StudioError(f'unknown class {shown_value(class_name)}')
        return class_name

    def compare(self, key_a: str, key_b: str, class_name: str | None = None,
                progress: Callable[[float], None] | None = None) -> CompareView:
        """Where A is right and B wrong and the reverse, per-class accuracy and confusion of both, on the test set.

        Args:
            key_a: Catalog key of model A (a checkpoint).
            key_b: Catalog key of model B.
            class_name: Show only test images of this true class (None or 'all': every class).
            progress: Called with the fraction done while missing predictions are computed.
        """
        comparison, (entry_a, entry_b), test = self._comparison(key_a, key_b, progress)
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
        shown = comparison.disagreements(self._true_class(test, class_name))[('A', 'B').index(side)][:GALLERY_LIMIT]
        if not 0 <= int(position) < len(shown):
            raise StudioError(f'the gallery has no image {position}: run the comparison again')
        return int(shown[int(position)])

    def compare_image(self, key_a: str, key_b: str, index: int, opacity: float = 0.6) -> CompareImageView:
        """Both models on one test image: their top-5 and, for ViTs, their [CLS] attention per layer.

        Args:
            key_a: Catalog key of model A.
            key_b: Catalog key of model B.
            index: The test image (as the galleries' captions number them).
            opacity: Heatmap opacity over the image.
        """
        comparison, entries, test = self._comparison(key_a, key_b)
        if not 0 <= int(index) < len(test):
            raise StudioError(f'the test set has images 0-{len(test) - 1}, not {index}')
        index = int(index)
        image = Image.fromarray(test.images[index].permute(1, 2, 0).numpy())
        views = []
        for role, entry in zip('AB', entries):
            model, meta = self._model(entry.key, f'model {role}')
            views.append(inspect_model(model, meta, image) if entry.is_vit else None)
        classes = comparison.classes
        verdicts = [f'{role}: {classes[preds[index]]} {"✓" if preds[index] == comparison.labels[index] else "✗"}'
                    for role, preds in (('A', comparison.preds_a), ('B', comparison.preds_b))]
        panels = [(image.resize((2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE), Image.BICUBIC),
                   f'#{index} true {classes[comparison.labels[index]]} · ' + ' · '.join(verdicts))]
        if all(views):
            panels += side_by_side_panels(image, *((role, view.maps, view.grid) for role, view in zip('AB', views)),
                                          opacity)
        return CompareImageView(panels=panels, top5_a=views[0].top5 if views[0] else {},
                                top5_b=views[1].top5 if views[1] else {},
                                summary=f'Test image #{index}, true class **{classes[comparison.labels[index]]}**: '
                                        + ' · '.join(verdicts) + ('' if all(views) else
                                                                  ' (attention maps need two ViTs)'))

    @staticmethod
    def _gallery(test: ImageSet, indices: np.ndarray, comparison, right: str, wrong: str) -> list[tuple[Image.Image, str]]:
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
