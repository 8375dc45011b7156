"""The image input: Gradio's image box (preview, paste, drop) handing the app's decoder the upload unopened."""
from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

import gradio as gr
from gradio.data_classes import ImageData

from ..core.io import atomic_path
from .images import MAX_FILE_BYTES


class UploadedImage(gr.Image):
    """``gr.Image`` (preview, drag and drop, paste from the clipboard) whose upload reaches the app as
    the file Gradio received: a path, never opened.

    Gradio's own preprocessing opens every upload with Pillow, decodes it whenever its mode is not the
    box's, and decodes inline (base64) images whole, all before the app's limits in
    ``advit.app.images.load_image`` apply: a decompression bomb would be decoded, or refused with Pillow's
    words. Here the bytes go untouched to ``load_image``, which refuses it by its header.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.update(type='filepath', image_mode=None)  # what preprocess returns: the path, as received
        kwargs.setdefault('sources', ['upload', 'clipboard'])
        super().__init__(**kwargs)

    # The browser knows Gradio's own components only: this one is drawn as, and configured like, gr.Image
    # (Gradio names a component by its class and reads its config from its __init__'s arguments).
    def get_block_name(self) -> str:
        return 'image'

    def get_config(self, cls: type | None = None) -> dict:
        return super().get_config(cls or gr.Image)

    def preprocess(self, payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith('data:'):
            return self._save_inline(payload.url)
        if payload.path is None:
            raise gr.Error('no image was uploaded')
        return str(payload.path)

    def _save_inline(self, url: str) -> str:
        """An image sent inline as a data URL, written as it came (bounded before it is decoded from base64)."""
        encoded = url.split(',', 1)[-1]
        if len(encoded) > MAX_FILE_BYTES * 4 // 3 + 4:
            raise gr.Error(f'the image is over the {MAX_FILE_BYTES // 2**20} MB limit')
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise gr.Error('the inline image is not valid base64') from None
        digest = hashlib.sha256(data).hexdigest()
        path = Path(self.GRADIO_CACHE) / 'advit-inline' / f'{digest}.img'
        if not path.is_file():  # named by content: the same paste twice is one file, written once
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(data)
        return str(path)
