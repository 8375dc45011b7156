"""Text for clients: the server's folders named as the app names them, every other absolute path cut short.

One scrubber serves the whole app (its views, its job desk and its error messages), so a folder is
named the same everywhere: the checkpoint and runs folders by their own names, the dataset and the
app's folder relative to the app's folder, any other absolute path by its file alone (``checks.redacted``).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.checks import redacted
from ..core.data import OFFICIAL_CIFAR10
from ..core.io import REPO


class Scrubber:
    """Removes server paths from text meant for a client (call it on the text).

    Args:
        folders: The checkpoint and runs folders (``None`` entries skipped): each named by its own name.
        data: The app's dataset, named by its path from the app's folder (the official download: left as it is).
    """

    def __init__(self, folders: list[Path | str | None], data: Path | str | None = None) -> None:
        names = {str(folder): Path(folder).name for folder in folders if folder is not None}
        names.update({str(Path(folder).resolve()): name for folder, name in list(names.items())})
        if data is not None and str(data) != OFFICIAL_CIFAR10:
            names[str((REPO / data).resolve())] = names[str(data)] = os.path.relpath(REPO / data, REPO)
        # The app's folder last, so that a folder named above inside it keeps its own name.
        names.update({f'{REPO}{os.sep}': '', str(REPO): '.'})
        self.names = names

    def __call__(self, text: str) -> str:
        return redacted(text, self.names)
