"""The one gate every request passes: each value checked against its component, every failure told in words.

Why here, before Gradio's preprocessing, and not in each view: a component bounds what a browser sends, not what
any client sends (``gradio_client``, a raw HTTP request). A string to a slider, a list to a radio button, a dict
for an image, 100,000 characters, NUL or NaN reach Gradio's own preprocessing, which answers in Python's words
("'<' not supported between instances of 'str' and 'int'"), echoes the value whole ("Value: ... is not in the list
of choices") or names the server path it would not move. ``GatedBlocks`` checks every value of every event (the
documented endpoints and the page's own private ones alike: a client can call those by number) against its
component first, in the session's copy Gradio itself reads (the page narrows sliders and fills lists), and refuses
in one sentence that quotes at most 60 characters of the value (``Refusal``). The app's own errors reach the client
as their messages without server paths; any other exception as one generic sentence, its traceback in the server's
log. Errors outside an event (an unknown endpoint, a body that is not JSON) get short JSON answers too
(``http_error_handlers``).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from gradio.block_function import BlockFunction
from gradio.data_classes import FileData, ImageData
from gradio.events import EventData
from gradio.route_utils import FnIndexInferError
from gradio.state_holder import SessionState
from pydantic import ValidationError

from ..core.checks import RequestError, number, shown_value
from ..training.jobs import JobError
from .images import MAX_FILE_BYTES, ImageError, check_image
from .offer import StudioError

MAX_TEXT = 1000  # characters of a text value: names, paths, architecture arguments and tokens are far shorter
MAX_ITEMS = 64  # items of a list value: methods, files
MAX_JSON = 100_000  # characters of a JSON value, as serialised
MAX_PATH = 4096  # characters of an uploaded file's server path (Linux's PATH_MAX)
MESSAGE_CHARS = 300  # a refusal is a sentence, not a page
INTERNAL = 'the app could not answer this request: an internal error, logged on the server'
NOT_FOUND = 'no endpoint of that name or number: the API description (/gradio_api/info) lists them'
WORDED = (StudioError, ImageError, JobError, RequestError)  # the app's errors whose messages are meant for clients

log = logging.getLogger(__name__)


class Refusal(gr.Error):
    """A request refused in words: the message goes to the client as it is, and no traceback to the log."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


class ValueRefusal(Refusal):
    """One value refused: ``index`` is its place among the event's inputs."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class GatedBlocks(gr.Blocks):
    """``gr.Blocks`` whose every event passes the gate before Gradio preprocesses a value.

    Args:
        scrub: Removes server paths from a message (the app's ``Scrubber``).
        **kwargs: ``gr.Blocks``'s arguments.
    """

    def __init__(self, scrub: Callable[[str], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scrub = scrub

    async def process_api(self, block_fn: BlockFunction | int, inputs: list[Any], state: SessionState | None = None,
                          **kwargs: Any) -> dict[str, Any]:
        """Gradio's ``process_api`` (preprocess, call, postprocess) behind the gate; every failure a ``Refusal``."""
        fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        try:
            check_inputs(fn, inputs, state)
            check_event(fn, kwargs.get('event_data'))
            return await super().process_api(fn, inputs, state, **kwargs)
        except Exception as err:
            refusal = self.refusal(fn, err)
            if fn.is_validator_function:  # its exception would reach the client as a bare HTTP 400: a verdict instead
                return _verdict(fn, err.index if isinstance(err, ValueRefusal) else None, refusal.message)
            raise refusal from None

    def refusal(self, fn: BlockFunction, error: Exception) -> Refusal:
        """What the client is told of ``error``: the gate's and the app's own words without server paths, at most
        ``MESSAGE_CHARS`` long; one generic sentence for anything else, its traceback logged here."""
        if isinstance(error, (Refusal, *WORDED)):
            return Refusal(_short(self.scrub(_message(error))))
        if isinstance(error, gr.Error):  # Gradio's own words, for a value the gate let through: kept, short
            log.warning('%s: a refusal the gate did not make: %s', fn.name, shown_value(error.message))
            return Refusal(_short(self.scrub(_message(error))))
        log.error('%s failed', fn.name, exc_info=error)
        return Refusal(INTERNAL)


def _message(error: Exception) -> str:
    return str(error.message) if isinstance(error, gr.Error) else str(error)


def _short(message: str) -> str:
    return message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS - 3] + '...'


def _verdict(fn: BlockFunction, index: int | None, message: str) -> dict[str, Any]:
    """A validator event's answer (``Blocks.process_api``'s shape): the value at ``index`` refused with
    ``message``, which Gradio returns as a 422 naming the parameter, the browser shows on its component and
    gradio_client raises; with no index, every value passes and the event itself meets the error, in words."""
    data = [gr.validate(position != index, message if position == index else '') for position in range(len(fn.inputs))]
    return {'data': data, 'is_generating': False, 'iterator': None, 'duration': 0.0, 'average_duration': None,
            'render_config': None, 'changed_state_ids': [], 'used_cache': None}


def check_inputs(fn: BlockFunction, inputs: list[Any], state: SessionState | dict | None) -> None:
    """Refuse, in words, a request whose values do not fit the components they are sent to.

    Args:
        fn: The event (endpoint) called.
        inputs: The values as the client sent them, one per input component.
        state: The client's session: its copies of the components, which the page may have changed.
    """
    names = fn.input_parameter_names
    if len(inputs) != len(fn.inputs):
        expected = ', '.join(name or '?' for name in names) or 'none'
        raise Refusal(f'this endpoint takes {len(fn.inputs)} values ({expected}), got {len(inputs)}')
    for index, (block, value) in enumerate(zip(fn.inputs, inputs)):
        if block.stateful:  # the server's own value: the client's is not read
            continue
        if isinstance(state, SessionState) and block._id in state:
            block = state[block._id]
        name = names[index] if index < len(names) and names[index] else getattr(block, 'label', None) or 'a value'
        rule = next((check for kinds, check in RULES if isinstance(block, kinds)), None)
        try:
            if rule is None:
                raise Refusal(f'{name}: this app takes no value of a {type(block).__name__} from a client')
            rule(block, value, name)
        except (Refusal, *WORDED) as err:
            raise ValueRefusal(_message(err), index) from None


def check_event(fn: BlockFunction, event: EventData | None) -> None:
    """Refuse, in words, what a client says was selected when the event reads it (``gr.SelectData``: a gallery's
    image by its number): a number, or a table cell's two, and a value of JSON the gate's size."""
    if not fn.collects_event_data:
        return
    data = getattr(event, '_data', None)
    index = data.get('index') if isinstance(data, dict) else None
    places = index if isinstance(index, list) and 1 <= len(index) <= 2 else [index]
    if not isinstance(data, dict) or 'value' not in data or \
            not all(isinstance(place, int) and not isinstance(place, bool) for place in places):
        raise Refusal('this event reads what was selected: its index (a number) and value, as the browser sends them')
    _json(None, data, 'what was selected')


def _number(block: gr.Slider | gr.Number, value: Any, name: str) -> None:
    if value is None and isinstance(block, gr.Number):  # a box left empty: the endpoint says if it needs one
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # Gradio would compare it with its bounds
        raise Refusal(f'{name} must be a number, got {shown_value(value)}')
    low = -math.inf if block.minimum is None else block.minimum
    high = math.inf if block.maximum is None else block.maximum
    number(value, name, low, high, whole=block.precision == 0)  # whole: Gradio would round a 1.5 unseen


def _choice(block: gr.Radio | gr.Dropdown, value: Any, name: str) -> None:
    dropdown = isinstance(block, gr.Dropdown)
    if value is None and dropdown:  # nothing chosen: the endpoint says if it needs a choice
        return
    if dropdown and block.multiselect and isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise Refusal(f'{name} takes at most {MAX_ITEMS} values, got {len(value)}')
        items = value
    else:
        items = [value]
    values = [choice for _, choice in block.choices]
    for item in items:
        if dropdown and block.allow_custom_value and isinstance(item, str):  # a name the list may not show yet
            _text(block, item, name)
        elif isinstance(item, bool) or not isinstance(item, (str, int, float)) or item not in values:
            raise Refusal(f'{name} must be {_one_of(values, block.allow_custom_value if dropdown else False)}, '
                          f'got {shown_value(item)}')


def _one_of(values: list[Any], custom: bool) -> str:
    """The rule of a choice, in words: the choices (the first few of many), or any text."""
    if custom:
        return 'text (a name as the list shows it)'
    listed = ', '.join(shown_value(value) for value in values[:8])
    return f'one of {listed}' + (f' ({len(values)} in all: the API description lists them)' if len(values) > 8 else '')


def _text(block: gr.components.Component, value: Any, name: str) -> None:
    if value is None:  # an empty box
        return
    if not isinstance(value, str):
        raise Refusal(f'{name} must be text, got {shown_value(value)}')
    if len(value) > MAX_TEXT:
        raise Refusal(f'{name} is {len(value):,} characters long: the limit is {MAX_TEXT:,} ({shown_value(value)})')
    if '\0' in value:
        raise Refusal(f'{name} must not hold a NUL character, got {shown_value(value)}')


def _files(block: gr.Image | gr.File, value: Any, name: str) -> None:
    if value is None:  # none uploaded: the endpoint says if it needs one
        return
    if isinstance(block, gr.File) and block.file_count in ('multiple', 'directory'):
        if not isinstance(value, list):
            raise Refusal(f'{name} must be a list of uploaded files, got {shown_value(value)}')
        if len(value) > MAX_ITEMS:
            raise Refusal(f'{name} takes at most {MAX_ITEMS} files, got {len(value)}')
        for item in value:
            try:
                _file(block, item, name)
            except (Refusal, ImageError) as err:  # which of them, as the view names it
                stem = Path(item['path']).stem[:16] if isinstance(item, dict) and isinstance(item.get('path'), str) \
                    else None
                raise Refusal(f'{stem}: {_message(err)}' if stem else _message(err)) from None
    else:
        _file(block, value, name)


def _file(block: gr.Image | gr.File, value: Any, name: str) -> None:
    """One file as Gradio describes it (``FileData``), uploaded to this server first; an image kind's header read."""
    image = isinstance(block, gr.Image) or list(getattr(block, 'file_types', None) or []) == ['image']
    upload_first = f'{name} must be a file uploaded to this server first (gradio_client.handle_file does it)' + \
        ('' if isinstance(value, dict) else f', got {shown_value(value)}')  # a file's description is not quoted
    if not isinstance(value, dict):
        raise Refusal(upload_first)
    try:
        (ImageData if isinstance(block, gr.Image) else FileData).model_validate(value)
    except ValidationError:
        raise Refusal(f'{name} is not a file as Gradio describes one (path, url, orig_name, size, mime_type, '
                      'meta)') from None
    path, url = value.get('path'), value.get('url')
    if path is None and isinstance(block, gr.Image) and isinstance(url, str) and url.startswith('data:'):
        return  # pasted inline: the image box bounds it before decoding base64, the view's decoder reads it
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or '\0' in path or '://' in path:
        raise Refusal(upload_first)
    # Not named by the client: a path outside the upload folder is refused without saying what lies there.
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(Path(block.GRADIO_CACHE).resolve()):
        raise Refusal(f'{name} is not a file uploaded to this server: upload it first (gradio_client.handle_file '
                      'does it)')
    if not real.is_file():
        raise Refusal(f'{name}: the uploaded file is no longer on the server (uploads are kept for an hour)')
    if image:
        check_image(real)
    elif real.stat().st_size > MAX_FILE_BYTES:
        raise Refusal(f'{name} is over the {MAX_FILE_BYTES // 2**20} MB limit')


def _example(block: gr.Dataset, value: Any, name: str) -> None:
    count = len(block.samples)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        raise Refusal(f'{name} must be the number of an example, 0 to {count - 1}, got {shown_value(value)}')


def _json(block: gr.JSON | None, value: Any, name: str) -> None:
    try:
        size = len(json.dumps(value))
    except (RecursionError, ValueError, TypeError):
        raise Refusal(f'{name} is not JSON this app reads (nested too deep)') from None
    if size > MAX_JSON:
        raise Refusal(f'{name} is {size:,} characters of JSON: the limit is {MAX_JSON:,}')


# Each input component kind the app has, and its rule (the first that matches: an UploadedImage is a gr.Image).
RULES: tuple[tuple[type | tuple[type, ...], Callable[[Any, Any, str], None]], ...] = (
    ((gr.Slider, gr.Number), _number),
    ((gr.Radio, gr.Dropdown), _choice),
    (gr.Textbox, _text),
    ((gr.Image, gr.File), _files),
    (gr.Dataset, _example),
    (gr.JSON, _json),
)


def http_error_handlers() -> dict[Any, Callable]:
    """Answers for errors outside any event, for ``launch(app_kwargs={'exception_handlers': ...})``: an endpoint
    that does not exist (a name, a number) is a 404 that says so, a malformed body a 422 that names the fault
    without echoing the value, anything else a 500 with one generic sentence (Starlette logs its traceback)."""
    return {FnIndexInferError: _not_found, KeyError: _not_found, RequestValidationError: _malformed,
            Exception: _failed}


async def _not_found(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({'error': NOT_FOUND}, status_code=404)


async def _malformed(request: Request, error: RequestValidationError) -> JSONResponse:
    faults = [{'loc': fault.get('loc'), 'msg': fault.get('msg'), 'type': fault.get('type')}
              for fault in error.errors()[:10]]  # pydantic's own would quote the input, however long
    return JSONResponse({'detail': faults}, status_code=422)


async def _failed(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({'error': INTERNAL}, status_code=500)
