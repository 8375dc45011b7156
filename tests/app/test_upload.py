"""The image box hands the app the upload unopened: the app's decoder, not Gradio's, meets a bomb."""
import base64
import io

import gradio as gr
import pytest
from gradio.data_classes import ImageData
from PIL import Image

from advit.app.images import ImageError, load_image
from advit.app.upload import UploadedImage


def _bomb(path):
    """A 1-bit 20000 x 20000 PNG: a few kB on disk, 400 megapixels once decoded (over Pillow's own limit)."""
    Image.new('1', (20000, 20000)).save(path, format='PNG')
    return path


def test_a_bomb_reaches_our_decoder_unopened_and_gets_our_message(tmp_path):
    bomb = _bomb(tmp_path / 'bomb.png')
    # The stock box, even as a file path, opens the upload: Pillow refuses the bomb in its own words.
    with pytest.raises(Image.DecompressionBombError):
        gr.Image(type='filepath', image_mode=None).preprocess(ImageData(path=str(bomb), orig_name='bomb.png'))
    path = UploadedImage().preprocess(ImageData(path=str(bomb), orig_name='bomb.png'))
    assert path == str(bomb)
    with pytest.raises(ImageError, match='too large: 400000000 pixels, the limit is 40 megapixels'):
        load_image(path)


def test_an_image_over_our_limit_but_under_pillows_is_not_decoded_by_gradio(tmp_path):
    big = tmp_path / 'big.png'
    Image.new('1', (8000, 8000)).save(big, format='PNG')  # 64 megapixels: Pillow's limit is 89
    payload = ImageData(path=str(big), orig_name='big.png')
    # The stock box converts a 1-bit upload to RGB: it decodes all 64 megapixels and writes a new file.
    assert gr.Image(type='filepath').preprocess(payload) != str(big)
    assert UploadedImage().preprocess(payload) == str(big)
    with pytest.raises(ImageError, match='8000 x 8000 pixels: the limit is 40 megapixels'):
        load_image(big)


def test_an_inline_image_is_written_as_sent_once(tmp_path):
    buffer = io.BytesIO()
    Image.new('RGB', (5, 3), (200, 10, 10)).save(buffer, format='PNG')
    url = 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()
    box = UploadedImage()
    first, second = (box.preprocess(ImageData(url=url)) for _ in range(2))
    assert first == second and open(first, 'rb').read() == buffer.getvalue()  # bytes untouched, one file
    assert load_image(first).size == (5, 3)
    with pytest.raises(gr.Error, match='not valid base64'):
        box.preprocess(ImageData(url='data:image/png;base64,@@@not base64'))
    with pytest.raises(gr.Error, match='over the 20 MB limit'):
        box.preprocess(ImageData(url='data:image/png;base64,' + 'A' * (30 * 2**20)))


def test_the_box_offers_preview_upload_and_paste():
    box = UploadedImage(label='image')
    assert box.type == 'filepath' and box.image_mode is None and box.sources == ['upload', 'clipboard']
    assert box.preprocess(None) is None


def test_the_page_draws_it_as_gradios_image_box():
    """The browser knows Gradio's components only: a subclass's own name would draw nothing."""
    with gr.Blocks() as demo:
        UploadedImage(label='image', elem_id='upload', height=260)
    config, = [c for c in demo.get_config_file()['components'] if c.get('props', {}).get('elem_id') == 'upload']
    assert config['type'] == 'image'
    assert config['props']['label'] == 'image' and config['props']['sources'] == ['upload', 'clipboard']
    assert config['props']['height'] == 260
