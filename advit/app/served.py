"""The image files the app's pages fetch: each written once, atomically, under its content's name, in a bounded folder.

Why not let Gradio save the PIL images an event returns: it names each file by its content's hash
and rewrites it in place (``gradio.processing_utils.save_pil_to_cache``), so when two requests
return the same image (everyone clicking the same example) one response streams a file that the
other is truncating; clients see "peer closed connection without sending complete message body"
and the server logs "Too little data for declared Content-Length". It also never removes them.
Here a file that exists is reused, never rewritten; a new one is renamed into place whole; and
the least recently served files are removed once the folder passes its size cap.

The folder lies inside Gradio's cache folder, so Gradio serves these paths as they are, without a
copy of its own; one folder per app process (``advit-served/<pid>``), removed with it.
"""
from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

DEFAULT_MAX_BYTES = 128 * 2**20
IMAGE_FORMAT = 'webp'  # what Gradio itself writes for a PIL image: small and quick to encode


def gradio_cache_dir() -> Path:
    """The folder Gradio serves its files from (``GRADIO_TEMP_DIR``, else ``<tmp>/gradio``): the rule of
    ``gradio.utils.get_upload_folder``, without importing Gradio."""
    return Path(os.environ.get('GRADIO_TEMP_DIR') or Path(tempfile.gettempdir()) / 'gradio').resolve()


class ServedFiles:
    """A folder of content-named files, at most ``max_bytes`` in all (the least recently served go first).

    Args:
        root: The folder (made if missing); files already in it are not counted, and are removed.
        max_bytes: The cap on the folder's size.
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f'max_bytes must be positive, got {max_bytes}')
        self.root, self.max_bytes = Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.iterdir():
            if stale.is_file():
                stale.unlink(missing_ok=True)
        self._sizes: OrderedDict[str, int] = OrderedDict()  # file name -> bytes, least recently served first
        self._bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> 'ServedFiles':
        """This process's folder in Gradio's cache folder, capped at ``ADVIT_SERVED_MB`` megabytes
        (default 128); the folders of app processes that have ended are removed."""
        base = gradio_cache_dir() / 'advit-served'
        if base.is_dir():
            for folder in base.iterdir():
                if folder.name.isdigit() and not _alive(int(folder.name)):
                    shutil.rmtree(folder, ignore_errors=True)
        megabytes = os.environ.get('ADVIT_SERVED_MB')
        store = cls(base / str(os.getpid()), int(float(megabytes) * 2**20) if megabytes else DEFAULT_MAX_BYTES)
        atexit.register(shutil.rmtree, store.root, True)
        return store

    @property
    def size(self) -> int:
        """The bytes held now."""
        with self._lock:
            return self._bytes

    def save_bytes(self, data: bytes, suffix: str, stem: str = '') -> str:
        """The path of a file holding ``data``: the existing one if there is one, else a new one.

        Args:
            suffix: The file's extension.
            stem: A readable start of the name, for files people download (``attention-<content>.png``).
        """
        name = f'{stem + "-" if stem else ""}{hashlib.sha256(data).hexdigest()[:40]}.{suffix}'
        path = self.root / name
        with self._lock:
            if name in self._sizes:
                try:
                    os.utime(path)  # served again: Gradio's own cache expiry ages files by ctime
                    self._sizes.move_to_end(name)
                    return str(path)
                except FileNotFoundError:  # removed by someone else: write it again
                    self._bytes -= self._sizes.pop(name)
            handle, staging = tempfile.mkstemp(dir=self.root, prefix='.incoming-')
            try:
                with os.fdopen(handle, 'wb') as out:
                    out.write(data)
                os.replace(staging, path)
            except BaseException:
                Path(staging).unlink(missing_ok=True)
                raise
            self._sizes[name] = len(data)
            self._bytes += len(data)
            self._evict()
        return str(path)

    def save_image(self, image: Image.Image) -> str:
        """The path of a file holding ``image`` (WebP)."""
        buffer = io.BytesIO()
        image.save(buffer, format=IMAGE_FORMAT)
        return self.save_bytes(buffer.getvalue(), IMAGE_FORMAT)

    def gallery(self, items: list[tuple[Image.Image, str]]) -> list[tuple[str, str]]:
        """A gallery's (image, caption) pairs as (path, caption)."""
        return [(self.save_image(image), caption) for image, caption in items]

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._sizes) > 1:  # the file just written stays
            name, size = self._sizes.popitem(last=False)
            (self.root / name).unlink(missing_ok=True)
            self._bytes -= size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
