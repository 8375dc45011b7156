"""The real app over HTTP: a launched server driven with gradio_client."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import urllib.request

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from advit.app.catalog import ModelCache
from advit.core.checkpoint import load_checkpoint
from advit.measure.compare import Comparison
from advit.measure.evaluate import load_predictions
from advit.app.images import MAX_FILE_BYTES, load_image
from advit.measure.inspection import inspect_pair
from advit.measure.verdicts import HEADLINE_PROTOCOL
from app_server import folder_bytes, raw_call, running_app
from conftest import REPO

pytestmark = pytest.mark.slow  # drives the real app server: `make test`, not `make check`

EXAMPLE = REPO / 'assets' / 'examples' / 'ship_8000.png'


@pytest.fixture(scope='module')
def app_url(tiny_bundle, cifar_archive, tmp_path_factory):
    runs = tmp_path_factory.mktemp('runs')
    with running_app(tmp_path_factory.mktemp('log') / 'app.log', ADVIT_CHECKPOINTS=str(tiny_bundle),
                     ADVIT_RUNS=str(runs), ADVIT_DATA=str(cifar_archive)) as url:
        yield url


@pytest.fixture(scope='module')
def client(app_url) -> Client:
    return Client(app_url, verbose=False)


@pytest.fixture(scope='module')
def keys(tiny_bundle) -> dict[str, str]:
    """The models by the names the app lists them under: how a request names a model."""
    return {name: f'{tiny_bundle.name}/{name}.safetensors' for name in ('teacher', 'advit_l1', 'deit_hard')}


@pytest.fixture(scope='module')
def files(tiny_bundle) -> dict[str, Path]:
    """The same models' files, for what the test reads itself."""
    return {name: tiny_bundle / f'{name}.safetensors' for name in ('teacher', 'advit_l1', 'deit_hard')}


def attention(client: Client, image, keys, fusion='mean', head=0):
    return client.predict(handle_file(str(image)), keys['teacher'], keys['advit_l1'], fusion, head, 0.6,
                          api_name='/attention')


def page_config(url: str) -> str:
    return urllib.request.urlopen(f'{url}/config', timeout=30).read().decode()


def test_attention_endpoint_maps_and_gaps_match_advit(client, keys, files):
    panels, figure, table, teacher_top5, student_top5, data, paper_figure, downloads, seen, seen_note = \
        attention(client, EXAMPLE, keys)
    # What the student reads: the example (32x32 already) shown 4x by whole pixels, and the classes it knows.
    shown = np.asarray(Image.open(seen).convert('RGB'))
    assert shown.shape == (128, 128, 3)
    np.testing.assert_array_equal(shown[::4, ::4], np.asarray(load_image(EXAMPLE).convert('RGB').resize((32, 32))))
    assert '32x32' in seen_note and 'airplane' in seen_note and 'truck' in seen_note
    layers = data['layers']
    assert len(layers) == 2 and len(panels) == 4  # one teacher and one student map per student layer
    # The paper's Fig. 2 (a row per layer) and the downloads: the figure, the maps as .npz and JSON.
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    assert Image.open(paper_figure).size == Layout.of(PANEL_SIZE).size(2)
    names = sorted(Path(path).name.split('-')[0] + Path(path).suffix for path in downloads)
    assert names == ['attention.json', 'attention.npz', 'attention.png']
    saved = np.load(next(path for path in downloads if path.endswith('.npz')), allow_pickle=False)
    np.testing.assert_allclose(saved['teacher_maps'], [layer['teacher_map'] for layer in layers], rtol=1e-6)
    large = client.predict(handle_file(str(EXAMPLE)), keys['teacher'], keys['advit_l1'], 'mean', 0, 0.6, 2,
                           api_name='/attention_layer')
    assert Image.open(large).size[0] > Image.open(paper_figure).size[0]
    assert all(len(layer['teacher_map']) == len(layer['student_map']) == 64 for layer in layers)

    cache = ModelCache()
    (teacher, teacher_meta), (student, student_meta) = (cache.get(str(files[name])) for name in ('teacher', 'advit_l1'))
    direct = inspect_pair(teacher, teacher_meta, student, student_meta, load_image(EXAMPLE), 'mean')
    for i, layer in enumerate(layers):
        for kind in ('l1', 'l2', 'kl'):
            assert layer[kind] == pytest.approx(float(direct.gaps[kind][i]), abs=1e-6)
        np.testing.assert_allclose(layer['student_map'], direct.student_maps[i], atol=1e-6)
        np.testing.assert_allclose(layer['teacher_map'], direct.teacher_maps[i], atol=1e-6)
    assert [row[2] for row in table['data']] == pytest.approx([layer['l1'] for layer in layers], abs=1e-6)
    assert student_top5['label'] == max(direct.student_top5, key=direct.student_top5.get)


def test_head_fusion_changes_the_maps(client, keys):
    mean = attention(client, EXAMPLE, keys, 'mean')[5]['layers']
    top = attention(client, EXAMPLE, keys, 'max')[5]['layers']
    head = attention(client, EXAMPLE, keys, 'head', 2)[5]['layers']
    assert not np.allclose(mean[0]['student_map'], top[0]['student_map'])
    assert not np.allclose(mean[0]['student_map'], head[0]['student_map'])


def plotly_array(value) -> np.ndarray:
    """An array of a figure's JSON: plotly sends numpy arrays as base64 typed arrays."""
    if isinstance(value, dict) and 'bdata' in value:
        shape = [int(n) for n in str(value.get('shape', '-1')).split(',')]
        return np.frombuffer(base64.b64decode(value['bdata']), dtype=value['dtype']).reshape(shape)
    return np.asarray(value)


def test_compare_endpoint_matches_saved_predictions(client, keys, files, cifar):
    summary, a_only, b_only, table, _, confusion = client.predict(keys['advit_l1'], keys['deit_hard'], 'all',
                                                                  api_name='/compare')
    a, b = load_predictions(files['advit_l1']), load_predictions(files['deit_hard'])
    expected = Comparison(a['labels'].astype(int), a['preds'].astype(int), b['preds'].astype(int),
                          cifar['test'].classes)
    assert table['data'] == expected.table()
    a_right, b_right = expected.disagreements()
    assert f'A right and B wrong: **{len(a_right)}**' in summary
    captions = [item['caption'] for item in a_only]
    assert captions[0].startswith(f'#{a_right[0]} ')
    assert len(b_only) == min(60, len(b_right))
    _, a_dogs, b_dogs, _, _, _ = client.predict(keys['advit_l1'], keys['deit_hard'], 'dog', api_name='/compare')
    assert all(' true dog ' in item['caption'] for item in a_dogs + b_dogs)
    heatmaps = json.loads(confusion['plot'])['data']
    assert [plotly_array(h['customdata']).tolist() for h in heatmaps] == [m.tolist() for m in expected.confusion()]
    # One image of the gallery, both models on it: the image, then both students' maps per layer.
    panels, top5_a, top5_b, about = client.predict(keys['advit_l1'], keys['deit_hard'], int(a_right[0]),
                                                   api_name='/compare_image')
    assert panels[0]['caption'] == captions[0] and f'#{a_right[0]}' in about
    assert len(panels) == 1 + 2 * 2 and len(top5_a['confidences']) == 5
    with pytest.raises(Exception, match='not 10000'):
        client.predict(keys['advit_l1'], keys['deit_hard'], 10000, api_name='/compare_image')


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()


def _bomb() -> bytes:
    """A 1-bit 20000 x 20000 PNG: a few kB on disk, 400 megapixels once decoded."""
    return _png(Image.new('1', (20000, 20000)))


def _exif_rotated() -> bytes:
    image = Image.fromarray(np.tile(np.arange(48, dtype=np.uint8), (32, 1)).repeat(3).reshape(32, 48, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', exif=exif)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new('RGB', (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format='GIF', save_all=True, append_images=frames[1:])
    return buffer.getvalue()


UPLOADS = {  # name: (bytes, error expected in the message, or None for a correct result)
    'text.png': (b'just some text, not an image', 'not an image'),
    'truncated.png': (_png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))[:400],
                      'truncated or corrupt'),
    'bomb.png': (_bomb(), 'too large'),
    'one_pixel.png': (_png(Image.new('RGB', (1, 1), (200, 10, 10))), None),
    'gray.png': (_png(Image.new('L', (40, 30), 90)), None),
    'rgba.png': (_png(Image.new('RGBA', (32, 32), (0, 255, 0, 128))), None),
    'palette.png': (_png(Image.new('RGB', (32, 32), (10, 200, 30)).convert('P')), None),
    'cmyk.jpg': (None, None),
    'sixteen_bit.png': (_png(Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))), None),
    'animated.gif': (_animated_gif(), None),
    'rotated.jpg': (_exif_rotated(), None),
}


@pytest.mark.parametrize('name', list(UPLOADS))
def test_bad_uploads_get_a_message_and_the_next_request_succeeds(client, keys, tmp_path, name):
    payload, error = UPLOADS[name]
    path = tmp_path / name
    if name == 'cmyk.jpg':
        Image.new('CMYK', (24, 24), (0, 128, 255, 0)).save(path, format='JPEG')
    else:
        path.write_bytes(payload)
    if error is None:
        assert len(attention(client, path, keys)[5]['layers']) == 2
    else:
        with pytest.raises(Exception) as raised:
            attention(client, path, keys)
        assert error in str(raised.value)
    assert len(attention(client, EXAMPLE, keys)[5]['layers']) == 2, 'the server keeps serving'


def test_upload_size_limit(client, keys, tmp_path):
    huge = tmp_path / 'huge.png'
    huge.write_bytes(_png(Image.new('RGB', (8, 8))) + b'\0' * (MAX_FILE_BYTES + 1024))
    with pytest.raises(Exception) as raised:
        attention(client, huge, keys)
    assert f'exceeds the maximum file size of {MAX_FILE_BYTES} bytes' in str(raised.value)  # the app's limit, told to clients
    assert len(attention(client, EXAMPLE, keys)[5]['layers']) == 2


def test_unusable_checkpoint_is_listed_with_its_reason(app_url):
    config = page_config(app_url)
    assert 'broken.safetensors' in config and 'not a readable safetensors file' in config


def test_app_starts_with_no_checkpoints_and_says_how_to_get_them(tmp_path, cifar_archive):
    with running_app(tmp_path / 'app.log', ADVIT_CHECKPOINTS=str(tmp_path / 'none'), ADVIT_RUNS=str(tmp_path / 'runs'),
                     ADVIT_DATA=str(cifar_archive)) as url:
        config = page_config(url)
        assert 'No usable models found' in config and 'advit train' in config
        endpoints = Client(url, verbose=False).view_api(print_info=False, return_format='dict')['named_endpoints']
        assert {'/attention', '/compare'} <= set(endpoints)


@pytest.mark.parametrize('route', ['/gradio_api/file=/etc/passwd', '/gradio_api/file=../../etc/passwd',
                                   '/gradio_api/file=%2Fetc%2Fpasswd', '/file=/etc/passwd'])
def test_no_file_outside_the_app_is_served(app_url, route, tiny_bundle):
    for target in (route, route.replace('/etc/passwd', str(tiny_bundle / 'teacher.safetensors'))):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(app_url + target, timeout=10)
        assert refused.value.code in (403, 404)


def test_the_readmes_client_example_runs_against_the_shipped_bundle(tmp_path, cifar_archive, monkeypatch):
    """The README's gradio_client example, as written, against `python app.py` on the committed
    checkpoints/ (the one change: the server's address, a free port here instead of 7860)."""
    readme = (REPO / 'README.md').read_text()
    after = readme.split('with `gradio_client`:\n\n', 1)[1]
    lines = []
    for line in after.splitlines():
        if not line.startswith('    '):
            break
        lines.append(line[4:])
    code = '\n'.join(lines)
    assert "Client('http://localhost:7860')" in code and 'checkpoints/' in code
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository
    with running_app(tmp_path / 'app.log', ADVIT_RUNS=str(tmp_path / 'runs'), ADVIT_DATA=str(cifar_archive)) as url:
        namespace: dict = {}
        exec(code.replace('http://localhost:7860', url), namespace)
    data, table = namespace['data'], namespace['table']
    teacher_path, student_path = re.findall(r"'(checkpoints/\w+\.safetensors)'", code)
    assert teacher_path == 'checkpoints/teacher.safetensors'
    student = load_checkpoint(REPO / student_path)
    depth = len(student.model.blocks)
    assert len(data['layers']) == len(table['data']) == depth and len(namespace['panels']) == 2 * depth
    assert all(layer['l1'] > 0 and len(layer['student_map']) == 64 for layer in data['layers'])
    assert namespace['student_top5']['label'] in student.meta['classes']


def test_everyone_asking_for_the_same_example_at_once_all_get_whole_answers(app_url, keys, tmp_path):
    """8 clients x 10 identical requests, each downloading its panels: the same images returned to
    concurrent responses were once rewritten in place while being streamed (torn downloads)."""
    clients, requests = 8, 10
    pool = [Client(app_url, verbose=False, download_files=str(tmp_path / f'client{i}')) for i in range(clients)]
    start_together = threading.Barrier(clients)

    def run(client: Client) -> list[str]:
        start_together.wait()
        problems = []
        for _ in range(requests):
            try:
                outputs = attention(client, EXAMPLE, keys)
                panels, data = outputs[0], outputs[5]
                for panel in panels:
                    with Image.open(panel['image']) as image:
                        image.load()  # a torn file does not decode
                if len(data['layers']) != 2:
                    problems.append(f'{len(data["layers"])} layers')
            except Exception as err:  # noqa: BLE001 - every failure of a request is the result
                problems.append(f'{type(err).__name__}: {err}')
        return problems

    with ThreadPoolExecutor(clients) as executor:
        problems = [p for found in executor.map(run, pool) for p in found]
    assert problems == [], f'{len(problems)} of {clients * requests} failed: {problems[:3]}'


def test_gradio_cache_stays_bounded_over_a_soak(tiny_bundle, cifar_archive, keys, tmp_path):
    """300 requests whose panels all differ (a new opacity each time): the served images are capped
    (ADVIT_SERVED_MB), and the uploads (the 20 examples, by content) do not grow with requests."""
    cache, cap_mb = tmp_path / 'gradio', 0.25
    examples = sorted((REPO / 'assets' / 'examples').glob('*.png'))
    with running_app(tmp_path / 'app.log', ADVIT_CHECKPOINTS=str(tiny_bundle), ADVIT_RUNS=str(tmp_path / 'runs'),
                     ADVIT_DATA=str(cifar_archive), GRADIO_TEMP_DIR=str(cache), ADVIT_SERVED_MB=str(cap_mb)) as url:
        client = Client(url, verbose=False, download_files=False)
        readings = {}
        for n in range(1, 301):
            image = examples[n % len(examples)]
            client.predict(handle_file(str(image)), keys['teacher'], keys['advit_l1'], 'mean', 0, n / 301,
                           api_name='/attention')
            if n in (100, 200, 300):
                readings[n] = folder_bytes(cache)
        served = folder_bytes(cache / 'advit-served')
        last = client.predict(handle_file(str(examples[0])), keys['teacher'], keys['advit_l1'], 'mean', 0, 0.5,
                              api_name='/attention')[0]
    uploads = sum(image.stat().st_size for image in examples)
    assert served <= cap_mb * 2**20
    assert all(size <= cap_mb * 2**20 + 3 * uploads for size in readings.values()), readings
    assert readings[300] <= readings[100] * 1.25, f'the cache grows with requests: {readings}'
    assert len(last) == 4


def test_more_views_endpoint(client, keys):
    panels, figure, data = client.predict(handle_file(str(EXAMPLE)), keys['teacher'], keys['advit_l1'], 'mean', 0.0,
                                          0.6, 0.6, api_name='/more_views')
    heads = len(data['teacher']['heads']) + len(data['student']['heads'])
    assert heads == 4 + 3 and len(panels) == 6 + heads  # the tiny teacher's 4 heads, the student's 3
    assert len(data['student']['prefix_share']) == 2 and sum(data['teacher']['rollout']) == pytest.approx(1.0)
    with pytest.raises(Exception, match='discard must be between 0 and 0.95, got 1'):  # the slider's bound, worded
        client.predict(handle_file(str(EXAMPLE)), keys['teacher'], keys['advit_l1'], 'mean', 1.0, 0.6, 0.6,
                       api_name='/more_views')


def test_faithfulness_endpoint(client, keys):
    figure, summary, data = client.predict(handle_file(str(EXAMPLE)), keys['teacher'], keys['advit_l1'],
                                           api_name='/faithfulness')
    assert set(data) == {'teacher', 'student'} and 'predicts' in summary
    for role in data:
        deletion = np.asarray(data[role]['probability'])[0]  # (sources, orders, fractions)
        assert deletion.shape == (len(data[role]['sources']), 2, 9) and np.all((deletion >= 0) & (deletion <= 1))
        assert data[role]['sources'][-2:] == ['rollout', 'gradient rollout']
    assert len(json.loads(figure['plot'])['data']) == 8  # per model: last layer, rollout, gradient rollout, random
    with pytest.raises(Exception, match='not one of the models on offer'):
        client.predict(handle_file(str(EXAMPLE)), keys['teacher'], '/etc/passwd', api_name='/faithfulness')
    assert all(data[role]['protocol'] == HEADLINE_PROTOCOL == 'drop' for role in data), \
        'the headline protocol when none is named'
    _, summary, filled = client.predict(handle_file(str(EXAMPLE)), keys['teacher'], keys['advit_l1'], 'mean',
                                        api_name='/faithfulness')
    assert all(filled[role]['protocol'] == 'mean' for role in filled) and 'set to the mean' in summary
    assert filled['teacher']['probability'] != data['teacher']['probability']


def test_a_few_images_at_once_default_to_the_example_row(client, keys, tmp_path):
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    from advit.app.attention_views import BATCH_LIMIT
    figure, rows = client.predict(None, keys['teacher'], keys['advit_l1'], 'mean', 0, 1, 0.6,
                                  api_name='/attention_images')
    assert Image.open(figure).size == Layout.of(PANEL_SIZE).size(BATCH_LIMIT) and len(rows['data']) == BATCH_LIMIT
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(_bomb())
    with pytest.raises(Exception, match='bomb: the image is too large'):
        client.predict([handle_file(str(EXAMPLE)), handle_file(str(bomb))], keys['teacher'], keys['advit_l1'], 'mean',
                       0, 1, 0.6, api_name='/attention_images')


@pytest.mark.parametrize('endpoint, data, message', [
    ('attention', '[IMAGE, "T", "S", "head", 0, NaN]', 'opacity must be a finite number, got nan'),
    ('attention', '[IMAGE, "T", "S", "head", NaN, 0.6]', 'head must be a finite number, got nan'),
    ('attention', '[IMAGE, "T", "S", "head", 1.5, 0.6]', 'head must be a whole number, got 1.5'),
    ('attention_layer', '[IMAGE, "T", "S", "mean", 0, 0.6, Infinity]', 'layer must be a finite number, got inf'),
    ('attention_layer', '[IMAGE, "T", "S", "mean", 0, 0.6, NaN]', 'layer must be a finite number, got nan'),
    ('more_views', '[IMAGE, "T", "S", "mean", NaN, 0.6, 0.6]', 'discard must be a finite number, got nan'),
])
def test_odd_numbers_are_refused_in_words_and_the_next_request_served(app_url, client, keys, endpoint, data, message):
    """Refused by the gate (or, for a fractional head, by the view): as an error event, or for the Attention
    endpoint, whose browser check runs first, as that check's verdict naming the parameter (HTTP 422)."""
    body = data.replace('"T"', json.dumps(keys['teacher'])).replace('"S"', json.dumps(keys['advit_l1']))
    answer = raw_call(app_url, endpoint, body, EXAMPLE)
    assert ('event: error' in answer or answer.startswith('HTTP 422')) and message in answer, answer[-500:]
    assert len(attention(client, EXAMPLE, keys)[5]['layers']) == 2


def test_a_long_model_name_is_quoted_not_echoed(client, keys):
    with pytest.raises(Exception) as refused:
        client.predict(handle_file(str(EXAMPLE)), 'x' * 100_000, keys['advit_l1'], 'mean', 0, 0.6, api_name='/attention')
    assert 'teacher is 100,000 characters long: the limit is 1,000' in str(refused.value)
    assert len(str(refused.value)) < 1000


def test_importing_the_app_exits_cleanly(tmp_path):
    """A process that imports app.py (a tool, `gradio app.py`'s reload) and exits: no background work of the
    server start may still be inside torch then, which aborted the interpreter (exit 134). On the shipped bundle."""
    code = 'import threading, app; print(sorted(t.name for t in threading.enumerate()))'
    done = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'ADVIT_RUNS': str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'advit-jobs' not in done.stdout and 'opening-views' not in done.stdout, 'importing the app starts nothing'


def test_the_distillation_view_answers_any_evaluation_and_image_it_has_through_the_api(cifar_archive, tmp_path):
    """On the shipped bundle (11 evaluations a student): its sliders' API range is what they index, so evaluation 5
    and -1 (the last) are answered, not refused by a slider declared 0-1 that only the browser widened; one past
    the last is refused by the view, in words."""
    from advit.measure.probe_file import load_probe
    evaluations = len(load_probe(REPO / 'checkpoints' / 'advit_l1.probe.npz').steps)
    with running_app(tmp_path / 'app.log', ADVIT_CHECKPOINTS=str(REPO / 'checkpoints'), ADVIT_RUNS=str(tmp_path),
                     ADVIT_DATA=str(cifar_archive)) as url:
        client = Client(url, verbose=False, download_files=False)
        source = 'checkpoints/advit_l1.safetensors'  # a shipped student is a source: its probe
        fifth = client.predict(source, 'advit_l1', 'l1', 5, 7, 0.6, api_name='/training_view')
        last = client.predict(source, 'advit_l1', 'l1', -1, 0, 0.6, api_name='/training_view')
        steps = last[5]['steps']
        assert len(steps) == evaluations and f'step {steps[5]}, probe image 7' in fifth[0] and f'step {steps[-1]}' in last[0]
        with pytest.raises(Exception) as refused:
            client.predict(source, 'advit_l1', 'l1', evaluations, 0, 0.6, api_name='/training_view')
        assert 'evaluation' in str(refused.value) and 'Traceback' not in str(refused.value)
