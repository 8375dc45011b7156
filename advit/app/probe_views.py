"""Distillation over time, without the app: the models and runs with an attention probe, and a student's record.

A student's gaps and maps over its training, as the Train tab shows them (drawn by ``training_view``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from ..core.checks import shown_value
from ..measure.probe import PROBE_IMAGES
from ..training.run_folder import BEST
from .catalog import TIMM_PREFIX
from .figure import attention_figure
from .forms import ProbeRequest
from .offer import Offer, StudioError
from .training_view import (
    PROBE_FILE,
    ProbeError,
    find_probes,
    gap_curves,
    gap_heatmap,
    load_probe,
    step_report,
    students_faithfulness_figure,
    students_gap_figure,
)


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
class ProbeOutline:
    """What the view's controls range over: the source's students, the one shown, its number of
    evaluations and of probe images with maps."""
    students: list[str]
    student: str
    evaluations: int
    images: int


class ProbeViews:
    """The attention probes of the models on offer and of the runs folder's runs.

    Args:
        offer: The models on offer (its runs folder holds the runs, a live job's among them).
    """

    def __init__(self, offer: Offer) -> None:
        self.offer = offer

    def run_source(self, run: str) -> str:
        """A run's name among the sources (``runs/<run>``)."""
        return f'{Path(self.offer.runs_dir).name}/{run}'

    def sources(self) -> list[str]:
        """What has an attention probe, by the names the app shows: the checkpoints on offer with one
        (the bundle's students), and the runs folder's runs with one (a live job's as soon as it has evaluated)."""
        sources = []
        for entry in self.offer.entries():
            if entry.usable and not entry.key.startswith(TIMM_PREFIX):
                try:
                    find_probes(entry.key)
                    sources.append(entry.name)
                except ProbeError:
                    pass
        runs = self.offer.runs_dir
        if runs is not None and Path(runs).is_dir():
            sources += [self.run_source(run.name) for run in sorted(Path(runs).iterdir())
                        if run.is_dir() and ((run / PROBE_FILE).is_file() or any(run.glob(f'*/{PROBE_FILE}')))]
        return sources

    def choice(self, preferred: str | None, current: str | None = None) -> tuple[list[str], str | None]:
        """The sources on offer now and the one to select: ``preferred`` (a source, or a job by its name)
        when on offer, else ``current``, else the first."""
        sources = self.sources()
        wanted = [preferred, self.run_source(preferred), current] if preferred else [current]
        return sources, next((s for s in wanted if s in sources), sources[0] if sources else None)

    def _probes(self, source: Any) -> tuple[dict[str, Path], str]:
        """(every student's probe file beside the source, by name; the source's own student)."""
        if source not in self.sources():
            raise StudioError(f'{shown_value(source)} is not a model or run with an attention probe on offer')
        # A source is listed by an entry's own name or as a run: no lookup by other spellings, no rescan.
        entry = next((e for e in self.offer.entries() if e.name == source), None)
        runs = Path(self.offer.runs_dir) if self.offer.runs_dir is not None else None
        if entry is None:  # a run folder: all its students, an ADViT one first
            found = find_probes(runs / Path(source).name)
            return found, next((name for name in found if 'advit' in name), next(iter(found)))
        (own, _), = find_probes(entry.key).items()
        folder = Path(entry.key).parent
        if Path(entry.key).name == BEST and folder.parent != runs:
            folder = folder.parent  # a student of a several-student run: its fellow students beside it
        return find_probes(folder), own

    def outline(self, source: Any, student: str | None = None) -> ProbeOutline:
        """What the view's controls range over for ``source`` (``student``: one of its students, else its own)."""
        paths, own = self._probes(source)
        student = student if student in paths else own
        try:
            probe = load_probe(paths[student])
        except ProbeError as err:
            raise StudioError(self.offer.scrub(str(err))) from None
        return ProbeOutline(students=list(paths), student=student, evaluations=len(probe.steps),
                            images=len(probe.images))

    def view(self, request: ProbeRequest) -> TrainingView:
        """How a student's attention moved toward its teacher's over training, from its run's probe records."""
        paths, own = self._probes(request.source)
        student, kind, image = request.student or own, request.kind, request.image
        try:
            probes = {name: load_probe(path) for name, path in paths.items()}
            if student not in probes:
                raise StudioError(f'{request.source} has no student {shown_value(student)}: it has '
                                  f'{", ".join(probes)}')
            probe = probes[student]
            evaluation = len(probe.steps) - 1 if request.evaluation == -1 else request.evaluation
            frame = attention_figure(step_report(probe, evaluation, image), probe.image(image), request.opacity)
            students, heatmap, curves = (students_gap_figure(probes, kind), gap_heatmap(probe, kind),
                                         gap_curves(probe, kind))
            faithful = students_faithfulness_figure(probes)
        except ProbeError as err:
            raise StudioError(self.offer.scrub(str(err))) from None
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
                            student=student, students_names=list(probes), summary=summary, data=probe.as_dict())
