"""The attention probe's file: its format, one writer and one reader (checked), wherever a probe lies.

A run's probe (``probe.AttentionProbe``) is ``runs/<run>/attention_probe.npz``; a group run has one per student
(``runs/<group>/<method>/attention_probe.npz``) and the bundle one beside each shipped student
(``checkpoints/<name>.probe.npz``). Its arrays:

- ``steps`` (E,), ``gaps`` (E, 3, layers) in the order of ``kinds``,
- for a student taught the teacher's relevance (``advit_relevance``), ``relevance_gaps`` (E, 3, layers): the same
  gaps to the target it was trained on, and ``teacher_relevance`` (MAP_IMAGES, layers, patches) float16,
- ``faithfulness`` (E, sources) quarter drops in points, in the order of ``faithfulness_sources``
  (NaN where an evaluation did not measure them), under the removal protocol ``faithfulness_protocol`` (a probe
  without it: the mean fill),
- ``student_maps`` (E, MAP_IMAGES, layers, patches) float16, ``teacher_maps`` (MAP_IMAGES, layers, patches),
- ``images`` (MAP_IMAGES, 3, H, W) uint8, ``teacher_layers`` (layers,), ``grid`` (2,).

Every file is checked before it is used: a missing, unreadable or inconsistent one is a ``ProbeError`` whose
message is for the user.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.io import atomic_path
from .faithfulness import WHOLE_MODEL_MAPS, source_names
from .inspection import AttentionReport
from .verdicts import FIRST_PROTOCOL

PROBE_FILE = 'attention_probe.npz'  # a run's
PROBE_SUFFIX = '.probe.npz'  # the bundle's: NAME.probe.npz beside NAME.safetensors
PROBE_KEYS = ('steps', 'gaps', 'student_maps', 'teacher_maps', 'images', 'teacher_layers', 'grid', 'kinds')
TO_RELEVANCE = ' to relevance'  # a gap kind to the teacher's relevance (advit_relevance's target), e.g. 'l1 to relevance'


def shipped_probe(checkpoint: str | Path) -> Path:
    """Where a shipped checkpoint's probe lies: ``NAME.probe.npz`` beside ``NAME.safetensors``."""
    return Path(checkpoint).with_suffix(PROBE_SUFFIX)


class ProbeError(ValueError):
    """No attention probe for a model or run, or a file that is not one; the message is for the user."""


@dataclass
class ProbeRecord:
    """One student's attention probe, checked for consistency (shapes as in this module's docstring)."""
    steps: np.ndarray  # (E,) the step of each evaluation
    gaps: np.ndarray  # (E, kinds, layers), averaged over the probe images
    student_maps: np.ndarray  # (E, images, layers, patches)
    teacher_maps: np.ndarray  # (images, layers, patches), aligned to the student
    images: np.ndarray  # (images, 3, H, W) uint8
    teacher_layers: list[int]  # 0-based teacher layer per student layer
    grid: tuple[int, int]
    kinds: tuple[str, ...]
    # (E, sources) quarter drops of each layer's map, rollout and (since it is measured) gradient rollout, in
    # points; None in probes recorded before the measure (the shipped bundle's), NaN where not measured.
    faithfulness: np.ndarray | None = None
    faithfulness_sources: tuple[str, ...] = ()
    faithfulness_protocol: str = 'mean'  # how patches were removed (``removal.PROTOCOLS``)

    @property
    def layers(self) -> int:
        return self.gaps.shape[2]

    def gap(self, kind: str) -> np.ndarray:
        """The gaps of one kind, (E, layers)."""
        if kind not in self.kinds:
            raise ProbeError(f'unknown gap kind {kind!r}: this probe has {", ".join(self.kinds)}')
        return self.gaps[:, self.kinds.index(kind)]

    def image(self, index: int) -> Image.Image:
        """A probe image whose maps were kept, as RGB."""
        return Image.fromarray(self.images[index].transpose(1, 2, 0))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the steps, and per kind the gap of every layer at every evaluation (``gaps[kind][e][layer]``)."""
        faithful = {} if self.faithfulness is None else dict(faithfulness={
            source: [None if np.isnan(value) else float(value) for value in self.faithfulness[:, index]]
            for index, source in enumerate(self.faithfulness_sources)})
        return dict(steps=[int(step) for step in self.steps], teacher_layers=self.teacher_layers,
                    gaps={kind: self.gap(kind).tolist() for kind in self.kinds}, **faithful)


def find_probes(target: str | Path) -> dict[str, Path]:
    """The probe file of each student of a checkpoint or run folder, by the student's name.

    Args:
        target: A checkpoint (``NAME.safetensors`` with ``NAME.probe.npz`` beside it, or a run's
            ``best``/``last`` with the run's ``attention_probe.npz``), a run folder, a group run's
            folder (one probe per student folder) or a bundle folder (its ``NAME.probe.npz``).
    """
    path = Path(target)
    if path.is_file():
        beside = ((shipped_probe(path), path.stem), (path.parent / PROBE_FILE, path.parent.name))
        for candidate, name in beside:
            if candidate.is_file():
                return {name: candidate}
        raise ProbeError(f'{target} has no attention probe (no {shipped_probe(path).name} or {PROBE_FILE} '
                         'beside it): only students of a ViT teacher trained with held-out images record one')
    if path.is_dir():
        if (path / PROBE_FILE).is_file():
            return {path.name: path / PROBE_FILE}
        found = {probe.parent.name: probe for probe in sorted(path.glob(f'*/{PROBE_FILE}'))}
        found.update((probe.name[:-len(PROBE_SUFFIX)], probe) for probe in sorted(path.glob(f'*{PROBE_SUFFIX}')))
        if found:
            return found
        raise ProbeError(f'{target} holds no attention probe ({PROBE_FILE} of a run or of its students\' folders, '
                         f'or a bundle\'s NAME{PROBE_SUFFIX}): only students of a ViT teacher trained with held-out '
                         'images record one')
    raise ProbeError(f'{target} does not exist')


def load_probe(path: str | Path) -> ProbeRecord:
    """One probe file, checked: its keys, shapes and types."""
    if not Path(path).is_file():
        raise ProbeError(f'no attention probe file at {path}')
    if not zipfile.is_zipfile(path):  # np.load would unpickle or return a lone array
        raise ProbeError(f'{path} is not an attention probe file (not an .npz archive)')
    try:
        arrays = read_probe(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ProbeError(f'{path} is not a readable attention probe file ({err})') from err
    missing = [key for key in PROBE_KEYS if key not in arrays]
    if missing:
        raise ProbeError(f'{path} is not an attention probe file: it has no {", ".join(missing)}')
    problem = _inconsistency(arrays)
    if problem:
        raise ProbeError(f'{path} is not a consistent attention probe file: {problem}')
    kinds, gaps = tuple(arrays['kinds'].tolist()), arrays['gaps']
    if 'relevance_gaps' in arrays:  # a student of advit_relevance: its gaps to the target it learnt, as more kinds
        kinds += tuple(f'{kind}{TO_RELEVANCE}' for kind in kinds)
        gaps = np.concatenate([gaps, arrays['relevance_gaps']], axis=1)
    return ProbeRecord(steps=arrays['steps'], gaps=gaps,
                       student_maps=arrays['student_maps'], teacher_maps=arrays['teacher_maps'],
                       images=arrays['images'], teacher_layers=[int(t) for t in arrays['teacher_layers']],
                       grid=(int(arrays['grid'][0]), int(arrays['grid'][1])), kinds=kinds,
                       faithfulness=arrays.get('faithfulness'),
                       faithfulness_sources=tuple(arrays.get('faithfulness_sources', np.array([])).tolist()),
                       faithfulness_protocol=probe_protocol(arrays))


def _inconsistency(arrays: dict[str, np.ndarray]) -> str | None:
    """What in a probe's arrays disagrees with the format (this module's docstring), or None."""
    steps, gaps, kinds, teacher_maps = arrays['steps'], arrays['gaps'], arrays['kinds'], arrays['teacher_maps']
    if steps.ndim != 1 or not len(steps) or steps.dtype.kind not in 'iu':
        return f'steps should be one or more step numbers, not an array {steps.dtype} {steps.shape}'
    if kinds.ndim != 1 or kinds.dtype.kind != 'U' or 'l1' not in kinds:
        return 'kinds should name the gap kinds, l1 among them'
    if gaps.ndim != 3 or teacher_maps.ndim != 3 or gaps.dtype.kind != 'f':
        return f'gaps {gaps.shape} and teacher_maps {teacher_maps.shape} should be 3-d float arrays'
    evaluations, (images, layers, patches) = len(steps), teacher_maps.shape
    expected = dict(gaps=(evaluations, len(kinds), layers), student_maps=(evaluations, images, layers, patches),
                    **({'relevance_gaps': (evaluations, len(kinds), layers)} if 'relevance_gaps' in arrays else {}),
                    teacher_maps=(images, layers, patches), images=(images, 3, None, None), teacher_layers=(layers,),
                    grid=(2,))
    for key, shape in expected.items():
        found = arrays[key].shape
        if len(found) != len(shape) or any(want is not None and want != got for want, got in zip(shape, found)):
            wanted = ', '.join('any' if want is None else str(want) for want in shape)
            return f'{key} has shape {found}, expected ({wanted}) for {evaluations} evaluations of {layers} layers'
    if arrays['images'].dtype != np.uint8 or int(np.prod(arrays['grid'])) != patches:
        return f'images should be uint8 and the grid {arrays["grid"].tolist()} should have {patches} patches'
    if ('faithfulness' in arrays) != ('faithfulness_sources' in arrays):
        return 'faithfulness and faithfulness_sources come together'
    if 'faithfulness' in arrays:
        faithful, sources = arrays['faithfulness'], arrays['faithfulness_sources']
        # Each layer's map, then rollout (and, in probes since it was measured, gradient rollout).
        known = [source_names(layers)[:layers + count] for count in range(1, len(WHOLE_MODEL_MAPS) + 1)]
        if faithful.dtype.kind != 'f' or sources.dtype.kind != 'U' or sources.tolist() not in known or \
                faithful.shape != (evaluations, len(sources)):
            return (f'faithfulness {faithful.shape} should be float ({evaluations}, sources) with its sources named in '
                    f'faithfulness_sources {sources.tolist()[:3]}...: each of the {layers} layers, then rollout')
    return None


def read_probe(path: str | Path) -> dict[str, np.ndarray]:
    """A run's ``attention_probe.npz`` as arrays (see the module's docstring)."""
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def probe_protocol(probe: dict[str, np.ndarray]) -> str:
    """The removal protocol a probe's faithfulness was measured under (``mean`` in probes from before it was named)."""
    return str(probe['faithfulness_protocol']) if 'faithfulness_protocol' in probe else FIRST_PROTOCOL


def faithfulness_columns(probe: dict[str, np.ndarray], sources: list[str]) -> np.ndarray:
    """An earlier probe's quarter drops in the columns of ``sources`` (NaN where it did not measure one:
    a probe from before a map was measured, resumed by a later version)."""
    earlier = list(probe.get('faithfulness_sources', np.array([])).tolist())
    values = np.full((len(probe['steps']), len(sources)), np.nan, dtype=np.float32)
    for column, source in enumerate(sources):
        if source in earlier:
            values[:, column] = probe['faithfulness'][:, earlier.index(source)]
    return values


def write_probe(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a probe's arrays atomically (a reader sees the last evaluation's file or this one)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, **arrays)


def step_report(probe: ProbeRecord, evaluation: int, image: int) -> AttentionReport:
    """One evaluation's recorded maps on one probe image, as the Attention tab's report of a teacher-student pair.

    Its gaps are the layers' at that evaluation, averaged over all probe images (as the heatmap shows them).

    Args:
        probe: One student's probe.
        evaluation: Index into ``probe.steps``.
        image: Index of the probe image (of those whose maps were kept).
    """
    if not 0 <= evaluation < len(probe.steps):
        raise ProbeError(f'evaluation {evaluation} out of range: this probe has {len(probe.steps)} (0 to '
                         f'{len(probe.steps) - 1}, steps {probe.steps[0]} to {probe.steps[-1]})')
    if not 0 <= image < len(probe.images):
        raise ProbeError(f'image {image} out of range: this probe kept the maps of {len(probe.images)} images '
                         f'(0 to {len(probe.images) - 1})')
    return AttentionReport(student_maps=probe.student_maps[evaluation, image].astype(np.float32),
                           teacher_maps=probe.teacher_maps[image].astype(np.float32),
                           teacher_layers=probe.teacher_layers, grid=probe.grid,
                           gaps={kind: probe.gaps[evaluation, index] for index, kind in enumerate(probe.kinds)},
                           student_top5={}, teacher_top5={},
                           settings=dict(step=int(probe.steps[evaluation]), probe_image=image))
