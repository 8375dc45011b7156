"""Uploaded images: every kind of file either decodes to the right RGB pixels or is refused with a clear reason."""
from __future__ import annotations

import gc
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advit.app.images import MAX_FILE_BYTES, MAX_PIXELS, ImageError, load_image, to_rgb
from conftest import png_chunk

NOT_AN_IMAGE = 'not an image'
TRUNCATED = 'truncated or corrupt'
TOO_LARGE = f'too large: {20000 * 20000} pixels, the limit is {MAX_PIXELS // 1_000_000} megapixels'


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == 'RGB'
    return np.asarray(image).astype(int)


def refused(path: Path) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path)
    return str(info.value)


def blank_bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG, all black: a few kilobytes however large it is."""
    ihdr = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed row
    idat = b''.join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', ihdr) + png_chunk(b'IDAT', idat) + png_chunk(b'IEND', b'')


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- files that are not usable images -------------------------------------------------------------

def test_missing_path_and_folder(tmp_path):
    assert 'no image' in refused(tmp_path / 'nothing.png')
    assert 'no image' in refused(tmp_path)


@pytest.mark.parametrize('content', [b'hello, this is a text file\n' * 20, b'', 'random'])
def test_not_an_image(tmp_path, content):
    if content == 'random':
        content = noise((4096,), seed=1).tobytes()
    path = tmp_path / 'upload.png'  # the name claims an image; the bytes do not
    path.write_bytes(content)
    message = refused(path)
    assert NOT_AN_IMAGE in message and 'PNG, JPEG' in message


@pytest.mark.parametrize('suffix', ['png', 'jpeg'])
def test_truncated_file(tmp_path, suffix):
    whole = tmp_path / f'whole.{suffix}'
    Image.fromarray(noise((64, 64, 3))).save(whole)
    assert load_image(whole).size == (64, 64)  # the untruncated file is fine
    cut = tmp_path / f'cut.{suffix}'
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    assert TRUNCATED in refused(cut)


def test_decompression_bomb_small_file_with_huge_header(tmp_path):
    small = tmp_path / 'small.png'
    Image.new('L', (8, 8), 200).save(small)
    data = bytearray(small.read_bytes())
    assert data[12:16] == b'IHDR'
    data[16:24] = struct.pack('>II', 20000, 20000)  # width, height
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))  # the IHDR's CRC, still valid
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(bytes(data))
    assert bomb.stat().st_size < 200
    message = refused(bomb)
    assert TOO_LARGE in message and str(Image.MAX_IMAGE_PIXELS) not in message  # the app's limit, not Pillow's


def test_blank_bilevel_png_is_a_real_png(tmp_path):
    path = tmp_path / 'small.png'
    path.write_bytes(blank_bilevel_png(13, 5))
    with Image.open(path) as image:
        assert image.size == (13, 5) and image.mode == '1'
    assert (pixels(load_image(path)) == 0).all()


def test_valid_20000_square_image_is_refused(tmp_path):
    path = tmp_path / 'huge.png'
    path.write_bytes(blank_bilevel_png(20000, 20000))  # well-formed: every row is there
    assert path.stat().st_size < 1024 * 1024
    message = refused(path)
    assert TOO_LARGE in message and str(Image.MAX_IMAGE_PIXELS) not in message  # the app's limit, not Pillow's


def test_over_the_pixel_limit_but_under_pillows(tmp_path):
    width, height = 7000, MAX_PIXELS // 7000 + 10
    assert MAX_PIXELS < width * height < Image.MAX_IMAGE_PIXELS  # Pillow alone would decode it
    path = tmp_path / 'large.png'
    path.write_bytes(blank_bilevel_png(width, height))
    message = refused(path)
    assert f'{width} x {height} pixels' in message and f'limit is {MAX_PIXELS // 1_000_000} megapixels' in message


def test_file_over_the_byte_limit(tmp_path):
    path = tmp_path / 'heavy.png'
    Image.new('RGB', (4, 4), (1, 2, 3)).save(path)
    with open(path, 'r+b') as f:
        f.truncate(MAX_FILE_BYTES + 1)  # a valid PNG followed by padding: over the limit in bytes
    message = refused(path)
    assert f'over the {MAX_FILE_BYTES // 2**20} MB limit' in message


# --- images that decode ----------------------------------------------------------------------------

def test_one_pixel(tmp_path):
    path = tmp_path / 'one.png'
    Image.new('RGB', (1, 1), (12, 34, 56)).save(path)
    image = load_image(path)
    assert image.size == (1, 1)
    assert pixels(image)[0, 0].tolist() == [12, 34, 56]


def test_rgb_png_is_unchanged(tmp_path):
    array = noise((5, 7, 3))
    path = tmp_path / 'rgb.png'
    Image.fromarray(array).save(path)
    image = load_image(path)
    assert image.size == (7, 5)
    assert np.array_equal(np.asarray(image), array)


def test_grayscale(tmp_path):
    array = np.array([[0, 100, 255]], dtype=np.uint8)
    path = tmp_path / 'gray.png'
    Image.fromarray(array, mode='L').save(path)
    result = pixels(load_image(path))
    assert result.shape == (1, 3, 3)
    assert np.array_equal(result, np.repeat(array[..., None], 3, axis=2))


def test_rgba_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128], [200, 100, 50, 64]]], dtype=np.uint8)
    path = tmp_path / 'rgba.png'
    Image.fromarray(rgba, mode='RGBA').save(path)
    alpha = rgba[..., 3:].astype(float) / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)  # "over" a white background
    result = pixels(load_image(path))
    assert result[0, 0].tolist() == [255, 255, 255]  # fully transparent: white, not red
    assert result[0, 1].tolist() == [0, 0, 255]
    assert np.abs(result - expected).max() <= 1


def test_la_composited_on_white():
    image = Image.fromarray(np.array([[[0, 0], [0, 255], [100, 128]]], dtype=np.uint8), mode='LA')
    result = pixels(to_rgb(image))
    expected = [255, 0, 100 * 128 / 255 + 255 * 127 / 255]
    assert np.abs(result[0, :, 0] - expected).max() <= 1
    assert np.array_equal(result[..., 0], result[..., 1]) and np.array_equal(result[..., 0], result[..., 2])


PALETTE = [10, 20, 30, 200, 0, 0, 0, 150, 250]  # entries 0, 1, 2


def palette_image() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2, 1]], dtype=np.uint8), mode='P')
    image.putpalette(PALETTE)
    return image


def test_palette_without_transparency(tmp_path):
    path = tmp_path / 'palette.png'
    palette_image().save(path)
    result = pixels(load_image(path))
    assert result[0].tolist() == [[10, 20, 30], [200, 0, 0], [0, 150, 250], [200, 0, 0]]


@pytest.mark.parametrize('suffix', ['png', 'gif'])
def test_palette_with_transparency(tmp_path, suffix):
    path = tmp_path / f'palette.{suffix}'
    palette_image().save(path, transparency=0)  # entry 0 transparent
    with Image.open(path) as check:
        assert check.mode == 'P' and check.info.get('transparency') == 0
    result = pixels(load_image(path))
    assert result[0].tolist() == [[255, 255, 255], [200, 0, 0], [0, 150, 250], [200, 0, 0]]


@pytest.mark.parametrize('mode,key,colour', [('RGB', (0, 0, 0), (10, 200, 30)), ('L', 0, 180)])
def test_colour_key_transparency_composited_on_white(tmp_path, mode, key, colour):
    image = Image.new(mode, (2, 1), key)
    image.putpixel((1, 0), colour)
    path = tmp_path / 'keyed.png'
    image.save(path, transparency=key)
    with Image.open(path) as check:
        assert check.mode == mode and 'transparency' in check.info
    result = pixels(load_image(path))
    assert result[0, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / 'cmyk.jpg'
    cmyk = Image.new('CMYK', (16, 16), (0, 255, 255, 0))  # no cyan or black, full magenta and yellow: red
    cmyk.paste((255, 0, 255, 0), (0, 8, 16, 16))  # full cyan and yellow: green
    cmyk.save(path, quality=100)
    with Image.open(path) as check:
        assert check.mode == 'CMYK'
    result = pixels(load_image(path))
    assert np.abs(result[2, 2] - [255, 0, 0]).max() <= 8
    assert np.abs(result[13, 13] - [0, 255, 0]).max() <= 8


def test_16_bit_grayscale_png(tmp_path):
    values = np.array([[65535, 32768, 0, 255]], dtype=np.uint16)
    path = tmp_path / 'deep.png'
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith('I')
    result = pixels(load_image(path))[0, :, 0]
    assert result[0] == 255
    assert abs(result[1] - 32768 / 65535 * 255) <= 1  # about 128
    assert result[2] == 0
    assert result[3] <= 1  # 255 of 65535 is nearly black, not white: the scale is 16-bit, not guessed


@pytest.mark.parametrize('mode, values, expected', [
    ('I', [0, 255, 65535], [0, 0, 255]),  # over 255: read as 16-bit
    ('I', [0, 100, 255], [0, 100, 255]),  # within 8 bits: kept
    ('F', [0.0, 0.5, 1.0], [0, 127, 255]),  # within [0, 1]: a unit scale
    ('F', [-5.0, 100.0, 255.0], [0, 100, 255]),  # up to 255: an 8-bit scale, negatives clipped
])
def test_wide_modes(mode, values, expected):
    dtype = np.int32 if mode == 'I' else np.float32
    image = Image.fromarray(np.array([values], dtype=dtype), mode=mode)
    result = pixels(to_rgb(image))[0, :, 0]
    assert np.abs(result - np.array(expected)).max() <= 1


FRAME_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize('suffix', ['gif', 'png'])
def test_animation_gives_the_first_frame(tmp_path, suffix):
    frames = [Image.new('RGB', (8, 6), colour) for colour in FRAME_COLOURS]
    path = tmp_path / f'animated.{suffix}'
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    result = pixels(load_image(path))
    assert result.shape == (6, 8, 3)
    assert (result == FRAME_COLOURS[0]).all()


def test_animation_file_is_closed(tmp_path):
    frames = [Image.new('RGB', (8, 6), colour) for colour in FRAME_COLOURS]
    path = tmp_path / 'animated.gif'
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        load_image(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and path.name in str(w.message)]


@pytest.mark.parametrize('orientation, turns', [(6, -1), (8, 1)])  # 6: turn clockwise to view; 8: anticlockwise
def test_exif_rotation_is_applied(tmp_path, orientation, turns):
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # quadrants on 16-pixel JPEG blocks
    stored[:16, :32], stored[:16, 32:] = (255, 0, 0), (0, 255, 0)
    stored[16:, :32], stored[16:, 32:] = (0, 0, 255), (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / 'photo.jpg'
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as check:
        assert check.size == (64, 32) and check.getexif()[0x0112] == orientation
    image = load_image(path)
    assert image.size == (32, 64)  # transposed
    expected = np.rot90(stored, k=turns).astype(int)
    result = pixels(image)
    for y in (8, 24, 40, 56):
        for x in (8, 24):
            assert np.abs(result[y, x] - expected[y, x]).max() <= 12, (y, x)
