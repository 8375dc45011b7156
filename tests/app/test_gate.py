"""The gate every request passes (advit/app/gate.py): each value against its component, refused in words; the
app's errors scrubbed, any other failure one generic sentence; and the real app fuzzed through its API description.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import uuid
import zlib
from pathlib import Path

import gradio as gr
import httpx
import pytest
from app_server import running_app
from conftest import REPO, png_chunk
from fastapi.testclient import TestClient
from gradio.events import EventData
from gradio.routes import App
from gradio_client import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advit.app.gate import (
    INTERNAL,
    MESSAGE_CHARS,
    NOT_FOUND,
    RULES,
    GatedBlocks,
    Refusal,
    http_error_handlers,
)
from advit.app.offer import StudioError
from advit.app.upload import UploadedImage

EXAMPLE = REPO / 'assets' / 'examples' / 'ship_8000.png'
NAMES = ('number', 'slider', 'radio', 'model', 'methods', 'text', 'image', 'files', 'data')


def _png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (its pixels are never there)."""
    return (b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + png_chunk(b'IDAT', zlib.compress(b'\0' * 16)) + png_chunk(b'IEND', b''))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Gradio's upload folder for the blocks built in a test, with an image, a non-image named .png, a PNG
    declaring 100,000 x 100,000 pixels and a link to a file outside it."""
    folder = tmp_path / 'gradio'
    folder.mkdir()
    monkeypatch.setenv('GRADIO_TEMP_DIR', str(folder))
    (folder / 'ship.png').write_bytes(EXAMPLE.read_bytes())
    (folder / 'text.png').write_text('not an image')
    (folder / 'huge.png').write_bytes(_png(100_000, 100_000))
    (tmp_path / 'outside.png').write_bytes(EXAMPLE.read_bytes())
    (folder / 'link.png').symlink_to(tmp_path / 'outside.png')
    return folder


@pytest.fixture
def demo(cache) -> GatedBlocks:
    """One event over every input kind the app has, answering 'ok'; a second that raises what a test sets."""
    with GatedBlocks(lambda text: text.replace(str(cache.parent), '...')) as blocks:
        inputs = [gr.Number(minimum=0), gr.Slider(0, 1), gr.Radio(['a', 'b']),
                  gr.Dropdown(['x'], allow_custom_value=True), gr.Dropdown(['m1', 'm2'], multiselect=True),
                  gr.Textbox(), UploadedImage(), gr.File(file_count='multiple', file_types=['image']), gr.JSON()]
        out = gr.Textbox()
        gr.Button().click(lambda number, slider, radio, model, methods, text, image, files, data: 'ok', inputs, out,
                          api_name='every')
        gr.Button().click(_raise, inputs[5], out, api_name='raises')
        gr.Gallery().select(_selected, None, out)
        gr.Examples([str(EXAMPLE)], inputs=inputs[6])
    return blocks


def _raise(text: str) -> str:
    raise {'studio': StudioError(f'model {text} is not on offer'), 'bug': KeyError('/srv/secret/x.py'),
           'gradio': gr.Error('y' * 1000)}[text]


def _selected(evt: gr.SelectData) -> str:
    return str(evt.index)


def _file(cache: Path, name: str) -> dict:
    return {'path': str(cache / name), 'meta': {'_type': 'gradio.FileData'}}


def _fitting(cache: Path) -> list:
    return [1, 0.5, 'a', 'any model', ['m1'], 'text', _file(cache, 'ship.png'), [_file(cache, 'ship.png')], {'k': 1}]


def _call(demo: GatedBlocks, api_name: str, values: list) -> list:
    fn = next(fn for fn in demo.fns.values() if fn.api_name == api_name)
    return asyncio.run(demo.process_api(fn, values))['data']


def _refused(demo: GatedBlocks, api_name: str, values: list) -> str:
    with pytest.raises(Refusal) as refused:
        _call(demo, api_name, values)
    message = refused.value.message
    assert len(message) <= MESSAGE_CHARS and 'Traceback' not in message and '.py' not in message, message
    return message


def test_values_that_fit_their_components_pass_untouched(demo, cache):
    assert _call(demo, 'every', _fitting(cache)) == ['ok']
    assert _call(demo, 'every', [None, 0, 'b', None, None, None, None, None, None]) == ['ok']  # empty boxes


@pytest.mark.parametrize('name, value, message', [
    ('number', 'abc', "number must be a number, got 'abc'"),
    ('number', -1, 'number must be at least 0, got -1'),
    ('number', 10**400, 'number is too large a number (over 1e308)'),
    ('slider', None, 'slider must be a number, got None'),
    ('slider', True, 'slider must be a number, got True'),
    ('slider', float('nan'), 'slider must be a finite number, got nan'),
    ('slider', float('-inf'), 'slider must be a finite number, got -inf'),
    ('slider', 2, 'slider must be between 0 and 1, got 2'),
    ('radio', ['a'], "radio must be one of 'a', 'b', got ['a']"),
    ('radio', None, "radio must be one of 'a', 'b', got None"),
    ('radio', 'x' * 100_000, "radio must be one of 'a', 'b', got 'xxxxx"),
    ('model', 5, 'model must be text (a name as the list shows it), got 5'),
    ('model', {'path': '/etc/passwd'}, 'model must be text'),
    ('model', 'a\0b', "model must not hold a NUL character, got 'a\\x00b'"),
    ('model', '\u202e' * 5000, 'model is 5,000 characters long: the limit is 1,000'),
    ('methods', ['m1', 'zz'], "methods must be one of 'm1', 'm2', got 'zz'"),
    ('methods', ['m1'] * 100, 'methods takes at most 64 values, got 100'),
    ('methods', [['m1']], "methods must be one of 'm1', 'm2', got ['m1']"),
    ('text', {'a': 1}, "text must be text, got {'a': 1}"),
    ('text', 12, 'text must be text, got 12'),
    ('image', '/etc/passwd', 'image must be a file uploaded to this server first'),
    ('image', {'path': 5}, 'image is not a file as Gradio describes one'),
    ('image', {'path': '/etc/passwd', 'meta': {'_type': 'gradio.FileData'}}, 'image is not a file uploaded to this'),
    ('image', {'path': 'http://169.254.169.254/latest', 'meta': {}}, 'image must be a file uploaded to this'),
    ('image', {'path': '/etc/passwd\0.png'}, 'image must be a file uploaded to this server first'),
    ('files', 'x', "files must be a list of uploaded files, got 'x'"),
    ('files', [{'path': '/etc/passwd'}] * 65, 'files takes at most 64 files, got 65'),
    ('data', [[[[]]]] * 30_000, 'data is 240,000 characters of JSON: the limit is 100,000'),
], ids=lambda value: repr(value)[:30])
def test_a_value_that_does_not_fit_is_refused_in_words(demo, cache, name, value, message):
    values = _fitting(cache)
    values[NAMES.index(name)] = value
    refused = _refused(demo, 'every', values)
    assert message in refused, refused
    assert '/etc' not in refused.replace("'/etc/passwd'", ''), 'a server path the client did not send'


@pytest.mark.parametrize('name, message', [
    ('text.png', 'the file is not an image in a format this app reads'),
    ('huge.png', 'the image is too large: 10000000000 pixels, the limit is 40 megapixels'),
    ('link.png', 'is not a file uploaded to this server'),  # a link out of the upload folder
    ('../outside.png', 'is not a file uploaded to this server'),
    ('gone.png', 'the uploaded file is no longer on the server'),
])
def test_an_upload_is_checked_by_what_it_is_not_by_its_name(demo, cache, name, message):
    """Uploads are read by their header (nothing decoded) and must lie in the upload folder, for one image and
    for each of several (named by the file then, as the view names it)."""
    for place, value in ((6, _file(cache, name)), (7, [_file(cache, 'ship.png'), _file(cache, name)])):
        values = _fitting(cache)
        values[place] = value
        refused = _refused(demo, 'every', values)
        assert message in refused and str(cache) not in refused, refused
    assert refused.startswith(f'{Path(name).stem}: ')


def test_the_number_of_values_is_the_endpoints(demo, cache):
    assert 'this endpoint takes 9 values (number, slider' in _refused(demo, 'every', _fitting(cache)[:2])
    assert 'got 10' in _refused(demo, 'every', [*_fitting(cache), 'extra'])


def test_an_example_is_named_by_its_number(demo):
    [load] = [fn for fn in demo.fns.values() if fn.inputs and isinstance(fn.inputs[0], gr.Dataset)]
    for value in (-1, 1, '0', None, 10**9):
        with pytest.raises(Refusal, match='must be the number of an example, 0 to 0'):
            asyncio.run(demo.process_api(load, [value]))


def test_what_a_client_says_was_selected_is_checked(demo):
    """A gallery's select event reads the image's number from what the client sends with the event."""
    [select] = [fn for fn in demo.fns.values() if fn.collects_event_data]
    for data in (None, {}, [1], {'index': 'a', 'value': 1}, {'index': [1, 2, 3], 'value': 1},
                 {'index': True, 'value': 1}, {'index': 1}, {'index': 1, 'value': 'x' * 200_000}):
        with pytest.raises(Refusal, match='this event reads what was selected|is 200,0'):
            asyncio.run(demo.process_api(select, [], event_data=EventData(None, data)))
    assert asyncio.run(demo.process_api(select, [], event_data=EventData(None, {'index': 3, 'value': 'x'})))['data'] \
        == ['3']


def test_the_apps_errors_keep_their_words_and_others_become_one_sentence(demo, caplog):
    assert _refused(demo, 'raises', ['studio']) == 'model studio is not on offer'
    with caplog.at_level(logging.ERROR, logger='advit.app.gate'):
        assert _refused(demo, 'raises', ['bug']) == INTERNAL
    assert '/srv/secret/x.py' in caplog.text, 'the detail stays in the server log'
    assert _refused(demo, 'raises', ['gradio']) == 'y' * (MESSAGE_CHARS - 3) + '...'


def test_a_validators_refusal_is_its_verdict_on_the_parameter(cache):
    """Gradio answers an exception in an event's validator with a bare HTTP 400 (gradio_client shows no
    message); the gate answers a validator's refused value as the validator's own verdict on that parameter."""
    with GatedBlocks(str) as blocks:
        slider, out = gr.Slider(0, 1), gr.Textbox()
        gr.Button().click(lambda value: 'ok', slider, out, validator=lambda value: gr.validate(True, ''))
    from gradio.queueing import create_validator_fn
    validator = create_validator_fn(blocks.fns[0])
    [verdict] = asyncio.run(blocks.process_api(validator, ['abc']))['data']
    assert verdict['is_valid'] is False and verdict['message'] == "value must be a number, got 'abc'"


def test_an_unknown_endpoint_or_a_malformed_body_gets_a_short_answer(demo):
    """Outside any event: Gradio's own answer to an unknown endpoint is a bare HTTP 500, and FastAPI's to a
    malformed body quotes it whole; here a 404 in words and a 422 naming the fault."""
    with TestClient(App.create_app(demo, app_kwargs={'exception_handlers': http_error_handlers()})) as client:
        for answer in (client.post('/gradio_api/call/nope', json={'data': []}),
                       client.post('/gradio_api/queue/join', json={'data': [], 'fn_index': 999, 'session_hash': 's'})):
            assert answer.status_code == 404 and answer.json() == {'error': NOT_FOUND}
        answer = client.post('/gradio_api/call/every', json={'data': 'x' * 100_000})
        assert answer.status_code == 422 and len(answer.text) < 300 and 'Input should be a valid list' in answer.text
        answer = client.post('/gradio_api/call/every', content=b'{"data": [',
                             headers={'content-type': 'application/json'})
        assert answer.status_code == 422 and 'JSON decode error' in answer.text


# --- the real app, fuzzed through its API description ------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get('ADVIT_FUZZ_EXAMPLES', '20'))  # per endpoint; a soak sets more
# Python's own words, server paths and traces: none may reach a client in an error (checked on every answer).
LEAKS = ('Traceback', 'File "', '.py', '/work', 'Original error', 'Could not preprocess', 'validation error for',
         'object has no attribute', 'not supported between', 'unhashable type', 'Exceeds the limit', 'embedded null',
         'object is not', 'NoneType', 'invalid literal')
ENDPOINTS = {'/attention', '/attention_layer', '/faithfulness', '/attention_images', '/more_views', '/compare',
             '/compare_image', '/start_job', '/job_status', '/cancel_job', '/resume_job', '/list_jobs',
             '/training_view'}
NEED_TOKEN = {'/start_job', '/cancel_job', '/resume_job'}  # refused without it, also when valid
LIES = {'image_size': 64, 'classes': ['cat', 'dog', 'ship'], 'std': [0, 0, 0], 'test_top1': 'high'}


@pytest.fixture(scope='module')
def lying_bundle(tmp_path_factory) -> Path:
    """A folder of the shipped bundle's ADViT-L1 student under metadata that lies (image size, class names, std,
    accuracy) and headers that are not settings (a list, 2 MB, a number of 5000 digits)."""
    from safetensors.torch import save_file

    from advit.core.checkpoint import load_checkpoint, save_checkpoint
    folder = tmp_path_factory.mktemp('lying')
    student = load_checkpoint(REPO / 'checkpoints' / 'advit_l1.safetensors')
    for field, lie in LIES.items():
        save_checkpoint(folder / f'{field}.safetensors', student.model, {**student.meta, field: lie})
    weights = {name: tensor.contiguous() for name, tensor in student.model.state_dict().items()}
    for name, header in (('list', '[1, 2]'), ('huge', json.dumps({**student.meta, 'pad': 'x' * 2_000_000})),
                         ('digits', json.dumps(student.meta)[:-1] + ', "step": ' + '9' * 5000 + '}')):
        save_file(weights, str(folder / f'{name}.safetensors'), metadata={'advit': header})
    return folder


@pytest.fixture(scope='module')
def fuzzed_app(lying_bundle, cifar_archive, cifar, tmp_path_factory):
    """The app on the shipped bundle and the lying one (``cifar`` decodes the test set for Compare first), jobs
    on behind a token no fuzzed request has: a request that got past every check would start no training."""
    runs, log = tmp_path_factory.mktemp('runs'), tmp_path_factory.mktemp('log') / 'app.log'
    with running_app(log, ADVIT_CHECKPOINTS=os.pathsep.join([str(REPO / 'checkpoints'), str(lying_bundle)]),
                     ADVIT_RUNS=str(runs), ADVIT_DATA=str(cifar_archive), ADVIT_JOBS_TOKEN='not-sent') as url:
        yield url, runs, log


def _texts(lying: list[str]) -> st.SearchStrategy[str]:
    quoted_safely = st.text(max_size=40).filter(lambda text: not any(leak in text for leak in LEAKS))
    return st.one_of(
        quoted_safely,
        st.sampled_from(['', '\0', 'a\0b', '\u202eevil\u202c', '../../etc/passwd', '/etc/passwd', 'checkpoints/../..',
                         '%2e%2e%2f', 'NaN', 'Infinity', '-1', 'all', 'mean', 'steps', 'runs', 'checkpoints'] + lying),
        st.builds(lambda char, count: char * count, st.sampled_from(['x', '\u202e', '9', 'é', '\0']),
                  st.sampled_from([61, 1001, 100_000])),
    )


def _hostile(lying: list[str]) -> st.SearchStrategy:
    """Values of every type a JSON client can send: wrong types, empty, huge, NaN, infinite, negative, NUL-bearing,
    unicode and right-to-left text, files named by paths that were never uploaded, nested lists and dicts."""
    texts = _texts(lying)
    numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from([-1, 0, 1, 2**31, 2**63, 10**400, -10**400, 1e308, -0.0, 5e-324]))
    files = st.fixed_dictionaries({'path': st.one_of(st.none(), texts, numbers)},
                                  optional={'meta': st.just({'_type': 'gradio.FileData'}),
                                            'url': st.sampled_from(['data:image/png;base64,@@', 'http://10.0.0.1/x'])})
    leaves = st.one_of(st.none(), st.booleans(), numbers, texts, files)
    nested = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=3),
                          max_leaves=8)
    return st.one_of(numbers, texts, leaves, nested)  # of the right type half the time: more reach the views


def _valid_value(parameter: dict, image: dict) -> object:
    """A value the parameter takes: its default, an uploaded example image, or an empty one."""
    if parameter['parameter_has_default']:
        return parameter['parameter_default']
    return {'Uploadedimage': image, 'Number': 0}.get(parameter['component'])


def _send(url: str, endpoint: str, values: list) -> tuple[str, str]:
    """A raw call (NaN and infinity as JSON literals, which gradio_client will not send): ('complete' or 'error',
    the answer), or ('HTTP <status>', the body) when refused before it is queued."""
    with httpx.Client(base_url=url, timeout=120) as http:
        queued = http.post(f'/gradio_api/call{endpoint}', content=json.dumps({'data': values}),
                           headers={'Content-Type': 'application/json'})
        if queued.status_code != 200:
            return f'HTTP {queued.status_code}', queued.text
        stream = http.get(f'/gradio_api/call{endpoint}/{queued.json()["event_id"]}').text
    kind = 'error' if 'event: error' in stream else 'complete' if 'event: complete' in stream else stream
    return kind, stream.split('data:', 1)[-1].strip()


def _send_by_number(url: str, fn_index: int, values: list, selected: object) -> tuple[str, str]:
    """An event called by its number, as the page calls its private ones (``selected``: the event's data, what a
    gallery select sends): ('complete' or 'error', its output), or ('HTTP <status>', the body)."""
    session = uuid.uuid4().hex
    with httpx.Client(base_url=url, timeout=120) as http:
        joined = http.post('/gradio_api/queue/join', content=json.dumps(
            {'data': values, 'fn_index': fn_index, 'session_hash': session, 'event_data': selected}),
            headers={'Content-Type': 'application/json'})
        if joined.status_code != 200:
            return f'HTTP {joined.status_code}', joined.text
        with http.stream('GET', '/gradio_api/queue/data', params={'session_hash': session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith('data:') else {}
                if message.get('msg') == 'process_completed':
                    return 'complete' if message.get('success') else 'error', json.dumps(message.get('output'))
    return 'no answer', ''


def _check_answer(kind: str, answer: str, folders: list[Path]) -> None:
    """A result, or a refusal in words: no 500, a message of at most 300 characters, no trace, no server path."""
    assert kind in ('complete', 'error', 'HTTP 404', 'HTTP 422'), (kind, answer[:300])
    if kind == 'complete':
        return
    if kind == 'error':
        messages = [json.loads(answer).get('error')]
    elif kind == 'HTTP 422' and 'is_valid' in answer:  # a validator's verdict: the refused parameters' messages
        messages = [fault['message'] for fault in json.loads(answer)['detail'] if not fault['is_valid']]
    else:
        messages = [answer]
    for message in messages:
        assert isinstance(message, str) and 0 < len(message) <= MESSAGE_CHARS, answer[:400]
        for leak in (*LEAKS, *map(str, folders)):
            assert leak not in message, f'{leak!r} in {message!r}'


def _snapshot(folders: list[Path]) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for folder in folders
            for path in folder.rglob('*') if path.is_file()}


@pytest.mark.slow
def test_no_value_a_client_sends_bends_the_app(fuzzed_app, lying_bundle):
    """Every endpoint of the API description, sent hypothesis's values of every type in place of one to three of
    its parameters, then every private event of the page called by its number with such values only: each answer
    a result or a refusal in words (no HTTP 500, no trace, no server path), the next request served, the model
    folders and runs untouched, no internal error in the server's log. Also: every input component of every event
    is of a kind the gate has a rule for."""
    url, runs, log = fuzzed_app
    client = Client(url, verbose=False, download_files=False)
    endpoints = client.view_api(return_format='dict', print_info=False)['named_endpoints']
    assert ENDPOINTS <= set(endpoints), sorted(endpoints)
    config = httpx.get(f'{url}/config').json()
    kinds = {component['id']: component['type'] for component in config['components']}
    ruled = {kind.__name__.lower() for kinds_, _ in RULES
             for kind in (kinds_ if isinstance(kinds_, tuple) else (kinds_,))}
    assert {kinds[i] for dependency in config['dependencies'] for i in dependency['inputs']} <= ruled
    folders = [REPO / 'checkpoints', lying_bundle, runs]
    server_paths = [REPO, lying_bundle, runs]  # none may appear in an error
    before = _snapshot(folders)
    with EXAMPLE.open('rb') as file:
        [uploaded] = httpx.post(f'{url}/gradio_api/upload', files={'files': (EXAMPLE.name, file, 'image/png')}).json()
    image = {'path': uploaded, 'meta': {'_type': 'gradio.FileData'}}
    hostile = _hostile([f'{lying_bundle.name}/{field}.safetensors' for field in (*LIES, 'list', 'huge', 'digits')])
    for endpoint, description in sorted(endpoints.items()):
        valid = [_valid_value(parameter, image) for parameter in description['parameters']]

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(changes=st.lists(st.tuples(st.integers(0, max(len(valid) - 1, 0)), hostile), min_size=1, max_size=3))
        def fuzz(changes):
            values = list(valid) if valid else [value for _, value in changes]  # none taken: any value is one too many
            for index, value in changes if valid else ():
                values[index] = value
            _check_answer(*_send(url, endpoint, values), server_paths)
            assert client.predict(api_name='/list_jobs')['headers'][0] == 'name', 'the next request is served'

        fuzz()
        kind, answer = _send(url, endpoint, valid)  # a valid request still works (the job desk's need the token)
        _check_answer(kind, answer, server_paths)
        assert kind == ('error' if endpoint in NEED_TOKEN else 'complete'), (endpoint, answer[:300])
    for dependency in config['dependencies']:  # the page's own events, called by number as any client can
        if dependency['api_visibility'] == 'public' or not dependency['backend_fn']:
            continue
        count, selecting = len(dependency['inputs']), dependency['collects_event_data']
        selected = st.one_of(hostile, st.fixed_dictionaries({'index': hostile, 'value': hostile})) if selecting \
            else st.none()

        @settings(max_examples=max(3, FUZZ_EXAMPLES // 4), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(values=st.lists(hostile, min_size=count, max_size=count) if count else st.lists(hostile, max_size=1),
               event=selected)
        def fuzz_private(values, event):
            _check_answer(*_send_by_number(url, dependency['id'], values, event), server_paths)

        fuzz_private()
    assert client.predict(api_name='/list_jobs')['headers'][0] == 'name', 'the next request is served'
    assert _snapshot(folders) == before, 'files changed in the model folders, the runs or the app'
    assert not any(runs.iterdir()), 'no job started'
    logged = log.read_text(errors='replace')  # no internal error, and no refusal in Gradio's words, even unseen
    assert 'Traceback' not in logged and 'a refusal the gate did not make' not in logged, logged[-3000:]
