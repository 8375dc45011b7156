"""The models on offer: one catalog scan kept until refreshed, its lists, defaults and cards, and loading by name.

The app's views take one ``Offer``: a request looks a model up in the last scan (a name it does not
hold, such as a run finished since, rescans once, at most every ``RESCAN_AFTER_S``), so requests do not
each walk the folders, nor does a stream of made-up names.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..core.checks import shown_value
from ..core.io import REPO
from ..results.report import best_on_validation
from .catalog import TIMM_PREFIX, ModelCache, ModelEntry, discover
from .names import TEACHER_STEM
from .scrubber import Scrubber

RESCAN_AFTER_S = 2.0  # a name the last scan lacks rescans only when the scan is at least this old


class StudioError(ValueError):
    """A request the app's views cannot serve; the message is for the user."""


@dataclass(frozen=True)
class Defaults:
    """The models the page opens on, by the names the lists show (None where there is none)."""
    teacher: str | None
    student: str | None
    compare_a: str | None
    compare_b: str | None


class Offer:
    """The models found in the checkpoint folders and the runs folder.

    Args:
        checkpoint_dirs: Folders whose ``*.safetensors`` are offered (the bundle first).
        runs_dir: A runs folder whose ``*/best.safetensors`` (and each group student's) are offered.
        scrub: The app's scrubber of server paths (cards are for clients).
    """

    def __init__(self, checkpoint_dirs: list[Path], runs_dir: Path | None, scrub: Scrubber) -> None:
        self.checkpoint_dirs, self.runs_dir, self.scrub = checkpoint_dirs, runs_dir, scrub
        self.models = ModelCache()
        self._entries: list[ModelEntry] | None = None
        self._scanned_at = float('-inf')  # time.monotonic() of the last scan
        self._lock = threading.Lock()

    @property
    def bundle(self) -> Path | None:
        """The checkpoint bundle: the first checkpoint folder (its card's evaluations, its seeds)."""
        return self.checkpoint_dirs[0] if self.checkpoint_dirs else None

    def refresh(self) -> list[ModelEntry]:
        """Scan the folders again (a finished run appears without a restart) and keep the result."""
        entries = discover(self.checkpoint_dirs, self.runs_dir)
        with self._lock:
            self._entries, self._scanned_at = entries, time.monotonic()
        return entries

    def entries(self) -> list[ModelEntry]:
        """Every model of the last scan (the first call scans)."""
        with self._lock:
            entries = self._entries
        return entries if entries is not None else self.refresh()

    def find(self, key: Any, checkpoints_only: bool = False) -> ModelEntry | None:
        """The usable model a request names: by the name the lists show, or another spelling of that file
        relative to the app's folder (never an absolute path); a name the last scan lacks rescans once when
        that scan is ``RESCAN_AFTER_S`` old. Nothing that is not on offer is ever returned.

        Args:
            key: What the client sent.
            checkpoints_only: Leave out the timm hub models.
        """
        if not isinstance(key, str) or not key or os.path.isabs(key):
            return None  # a server path is never a name: answering one would confirm where the app lies
        for entries in (self.entries(), None):
            if entries is None:
                with self._lock:
                    recent = time.monotonic() - self._scanned_at < RESCAN_AFTER_S
                if recent:
                    return None
                entries = self.refresh()
            offered = [e for e in entries if e.usable and not (checkpoints_only and e.key.startswith(TIMM_PREFIX))]
            found = next((e for e in offered if key in (e.name, e.key)), None) or \
                next((e for e in offered if _same_file(e.key, key)), None)
            if found is not None:
                return found
        return None

    def choices(self, vit_only: bool = False, checkpoints_only: bool = False) -> list[tuple[str, str]]:
        """(label, name) of the usable models; ``checkpoints_only`` leaves out the timm hub models."""
        offered = [(e.label(), e.name) for e in self.entries() if e.usable and (e.is_vit or not vit_only)
                   and not (checkpoints_only and e.key.startswith(TIMM_PREFIX))]
        labels = Counter(label for label, _ in offered)  # two models of one name: their paths tell them apart
        return [(label if labels[label] == 1 else f'{label} · {name}', name) for label, name in offered]

    def teacher_files(self) -> dict[str, str]:
        """The checkpoints a training job may take as its teacher: name as listed -> file. Scanned afresh:
        a job starts rarely, and a run finished a moment ago may teach it."""
        return {e.name: e.key for e in self.refresh() if e.usable and e.is_vit and not e.key.startswith(TIMM_PREFIX)}

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
        entry = self.find(key)
        return self.scrub(entry.describe()) if entry is not None else ''

    def defaults(self) -> Defaults:
        """Sensible defaults: the bundle's teacher (else the largest model) as teacher; the best ADViT
        student and the DeiT-hard student (else another DeiT), best chosen on validation top-1 (the
        held-out training images), never on the test set, among the teacher's folder first (the earlier
        bundle kept beside it has students of another teacher)."""
        usable = [e for e in self.entries() if e.usable and e.is_vit]
        teacher = next((e for e in usable if Path(e.key).stem == TEACHER_STEM), None) or \
            max(usable, key=lambda e: e.meta.get('params') or 0, default=None)
        home = [e for e in usable if Path(e.key).parent == Path(teacher.key).parent] if teacher else []

        def best(predicate: Callable[[ModelEntry], bool]) -> ModelEntry | None:
            for pool in (home, usable):
                found = {e.key: e for e in pool if predicate(e)}
                if found:
                    return found.get(best_on_validation({key: e.meta.get('val_top1') for key, e in found.items()}))
            return None
        advit = best(lambda e: 'advit' in (e.meta.get('method') or ''))
        deit = best(lambda e: e.meta.get('method') == 'deit_hard') or \
            best(lambda e: (e.meta.get('method') or '').startswith('deit'))
        student = advit or next((e for e in usable if e is not teacher), teacher)
        compare_a, compare_b = advit or student, deit or teacher
        return Defaults(*(entry and entry.name for entry in (teacher, student, compare_a, compare_b)))

    def load(self, key: Any, role: str, vit: bool = False) -> tuple[nn.Module, dict[str, Any]]:
        """The loaded model and metadata of a model on offer; with ``vit``, a ViT or refused before loading.

        Args:
            key: The model as the request names it.
            role: What the request calls it (``teacher``, ``model A``), for the messages.
        """
        if not key or not isinstance(key, str):
            raise StudioError(f'choose a {role} model')
        entry = self.find(key)
        if entry is None:
            raise StudioError(f'{shown_value(key)} is not one of the models on offer')  # no arbitrary paths from a request
        if vit and not entry.is_vit:
            raise StudioError(f'{key} is not a ViT: attention views need ViT models')
        try:
            return self.models.get(entry.key)
        except Exception as err:  # any load failure is the user's to read, never a crash
            raise StudioError(f'the {role} model {key} cannot be loaded: {err}') from err

    def layers(self, key: Any) -> int:
        """How many attention layers a ViT on offer has (0 for anything else): the range of the layer sliders."""
        entry = self.find(key)
        if entry is None or not entry.is_vit:
            return 0
        model, _ = self.load(key, 'student', vit=True)
        return len(model.blocks)


def _same_file(a: str, b: str) -> bool:
    """Whether two spellings name one checkpoint file (``b`` relative to the app's folder)."""
    if a.startswith(TIMM_PREFIX) or b.startswith(TIMM_PREFIX):
        return False
    try:
        return Path(a).resolve() == (REPO / b).resolve()
    except (OSError, ValueError):  # a path the OS cannot even name
        return False
