"""Uploaded images, decoded safely: any common format to RGB, with clear errors and size limits."""
from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # about 6300 x 6300; a larger image is refused before it is decoded


class ImageError(ValueError):
    """An upload that is not a usable image; the message says why, for the user."""


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB: first frame of an animation, EXIF rotation applied.

    Args:
        path: The uploaded file.

    Raises:
        ImageError: not an image, truncated or corrupt, too large in bytes or pixels.
    """
    with _opened(path) as image:
        image.seek(0)  # the first frame of an animated GIF/WebP/PNG
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def check_image(path: str | Path) -> None:
    """Refuse, with ``load_image``'s words, a file that is not an image this app reads or is over its limits,
    from the file's size and header alone (nothing is decoded): what the app's gate asks of an upload."""
    with _opened(path):
        pass


@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """The image file open with its size checked, its header read and nothing decoded; an error in the block
    (decoding it) becomes the same ``ImageError``s."""
    path = Path(path)
    if not path.is_file():
        raise ImageError('no image was uploaded')
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageError(f'the file is {size / 2**20:.2f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as image:  # closed here: Pillow keeps multi-frame files open otherwise
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f'the image is {width} x {height} pixels: the limit is '
                                     f'{MAX_PIXELS / 1e6:.0f} megapixels')
                yield image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError('the file is not an image in a format this app reads (PNG, JPEG, WebP, GIF, BMP, TIFF)') \
            from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # over Pillow's own, larger limit
        found = re.search(r'\((\d+) pixels\)', str(err))
        size = f'{found[1]} pixels' if found else 'over Pillow\'s limit'
        raise ImageError(f'the image is too large: {size}, the limit is {MAX_PIXELS / 1e6:.0f} megapixels') from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated data, broken headers
        raise ImageError(f'the image is truncated or corrupt ({err})') from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL mode: 16-bit and float scaled to 8 bits, transparency composited on white."""
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith('I;16') or values.max() > 255 else 255.0
        if image.mode == 'F' and values.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), mode='L')
    if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:  # alpha, or a keyed colour
        rgba = image.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert('RGB')
    return image.convert('RGB')
