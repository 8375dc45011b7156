"""The app's parts over one catalog: the models on offer, a view per tab, and the scrubber of server paths.

``app.py`` lays out components and wires them to a ``Studio``'s parts: ``offer`` (model lists,
defaults, cards), ``attention``, ``compare`` and ``probes`` (distillation over time); the Train tab's
jobs are ``train_desk.TrainDesk``'s, given the same offer and scrubber.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.data import default_dataset
from ..core.io import REPO
from ..results.bundle import EARLIER
from .attention_views import AttentionViews
from .compare_views import CompareViews
from .offer import Offer
from .probe_views import ProbeViews
from .scrubber import Scrubber


class Studio:
    """The models on offer and the views of them.

    Args:
        checkpoint_dirs: Folders whose ``*.safetensors`` are offered (the bundle first).
        runs_dir: A runs folder whose ``*/best.safetensors`` are offered.
        data: The dataset whose test split the comparison shows.
    """

    def __init__(self, checkpoint_dirs: list[Path], runs_dir: Path | None, data: Path) -> None:
        self.data = data
        self.scrub = Scrubber([*checkpoint_dirs, runs_dir], data)
        self.offer = Offer(checkpoint_dirs, runs_dir, self.scrub)
        self.attention = AttentionViews(self.offer)
        self.compare = CompareViews(self.offer, data)
        self.probes = ProbeViews(self.offer)

    @classmethod
    def from_env(cls) -> 'Studio':
        """Paths from ``ADVIT_CHECKPOINTS``, ``ADVIT_RUNS`` and ``ADVIT_DATA``, defaulting to the repository's
        (``bundle_folders`` of its ``checkpoints``)."""
        default = os.pathsep.join(map(str, bundle_folders(REPO / 'checkpoints')))
        checkpoints = os.environ.get('ADVIT_CHECKPOINTS', default)
        return cls(checkpoint_dirs=[Path(p) for p in checkpoints.split(os.pathsep) if p],
                   runs_dir=Path(os.environ.get('ADVIT_RUNS', REPO / 'runs')),
                   data=Path(default_dataset()))


def bundle_folders(bundle: Path) -> list[Path]:
    """The folders whose models a bundle offers: the bundle, then the earlier bundle it keeps (``bundle.EARLIER``)
    where it has one."""
    return [bundle, *([bundle / EARLIER] if (bundle / EARLIER).is_dir() else [])]
