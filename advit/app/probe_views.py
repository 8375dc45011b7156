"""Distillation over time, chosen: the probed models and runs on offer, and a student's record as the Train tab shows it.

A model or run with an attention probe is called "probed" here; its student's gaps and maps over training are read by
``measure.probe_file`` and drawn by ``probe_figures``.
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
from ..measure.probe_file import PROBE_FILE, ProbeError, find_probes, load_probe, step_report
from ..training.run_folder import BEST
from .catalog import TIMM_PREFIX
from .figure import attention_figure
from .forms import ProbeRequest
from .offer import Offer, StudioError
from .probe_figures import gap_curves, gap_heatmap, students_faithfulness_figure, students_gap_figure


@dataclass
class ProbeView:
    students: go.Figure  # every student of the probed model or run: its gap, mean over layers, against step
    faithfulness: go.Figure  # every student of the probed model or run: its maps' quarter drop against step
    heatmap: go.Figure  # the chosen student's gap, layer x step
    curves: go.Figure  # the same, one curve per layer
    frame: Image.Image  # at the chosen evaluation, teacher | student | difference on one probe image (Fig. 2 style)
    student: str
    students_names: list[str]
    summary: str
    data: dict[str, Any]


@dataclass
class ProbeOutline:
    """What the view's controls range over: the probed model's or run's students, the one shown, its number of
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

    def run_name(self, run: str) -> str:
        """A run's name among the probed (``runs/<run>``)."""
        return f'{Path(self.offer.runs_dir).name}/{run}'

    def probed(self) -> list[str]:
        """What has an attention probe, by the names the app shows: the checkpoints on offer with one
        (the bundle's students), and the runs folder's runs with one (a live job's as soon as it has evaluated)."""
        probed = []
        for entry in self.offer.entries():
            if entry.usable and not entry.key.startswith(TIMM_PREFIX):
                try:
                    find_probes(entry.key)
                    probed.append(entry.name)
                except ProbeError:
                    pass
        runs = self.offer.runs_dir
        if runs is not None and Path(runs).is_dir():
            probed += [self.run_name(run.name) for run in sorted(Path(runs).iterdir())
                        if run.is_dir() and ((run / PROBE_FILE).is_file() or any(run.glob(f'*/{PROBE_FILE}')))]
        return probed

    def choice(self, preferred: str | None, current: str | None = None) -> tuple[list[str], str | None]:
        """The probed models and runs on offer now and the one to select: ``preferred`` (one of them, or a job by its
        name) when on offer, else ``current``, else the first."""
        probed = self.probed()
        wanted = [preferred, self.run_name(preferred), current] if preferred else [current]
        return probed, next((name for name in wanted if name in probed), probed[0] if probed else None)

    def _probes(self, probed: Any) -> tuple[dict[str, Path], str]:
        """(every student's probe file beside the probed model or run, by name; its own student)."""
        if probed not in self.probed():
            raise StudioError(f'{shown_value(probed)} is not a model or run with an attention probe on offer')
        # Listed by an entry's own name or as a run: no lookup by other spellings, no rescan.
        entry = next((e for e in self.offer.entries() if e.name == probed), None)
        runs = Path(self.offer.runs_dir) if self.offer.runs_dir is not None else None
        if entry is None:  # a run folder: all its students, an ADViT one first
            found = find_probes(runs / Path(probed).name)
            return found, next((name for name in found if 'advit' in name), next(iter(found)))
        (own, _), = find_probes(entry.key).items()
        folder = Path(entry.key).parent
        if Path(entry.key).name == BEST and folder.parent != runs:
            folder = folder.parent  # a student of a several-student run: its fellow students beside it
        return find_probes(folder), own

    def outline(self, probed: Any, student: str | None = None) -> ProbeOutline:
        """What the view's controls range over for a ``probed`` model or run (``student``: one of its students, else
        its own)."""
        paths, own = self._probes(probed)
        student = student if student in paths else own
        try:
            probe = load_probe(paths[student])
        except ProbeError as err:
            raise StudioError(self.offer.scrub(str(err))) from None
        return ProbeOutline(students=list(paths), student=student, evaluations=len(probe.steps),
                            images=len(probe.images))

    def view(self, request: ProbeRequest) -> ProbeView:
        """How a student's attention moved toward its teacher's over training, from its run's probe records."""
        paths, own = self._probes(request.probed)
        student, kind, image = request.student or own, request.kind, request.image
        try:
            probes = {name: load_probe(path) for name, path in paths.items()}
            if student not in probes:
                raise StudioError(f'{request.probed} has no student {shown_value(student)}: it has '
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
        return ProbeView(students=students, faithfulness=faithful, heatmap=heatmap, curves=curves, frame=frame,
                            student=student, students_names=list(probes), summary=summary, data=probe.as_dict())
