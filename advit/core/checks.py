"""What crosses to and from a client: values checked as they enter, text without server paths.

The values a client sends are checked where they enter the app, refused in words and never silently
rewritten (``number``); the text it gets names no server path (``redacted``).

A slider or number box bounds what a browser sends, not what any client may send (``gradio_client``,
a raw HTTP request): NaN, infinity, strings, 1e300 or a fractional head index arrive all the same.
"""
from __future__ import annotations

import math
import re
from typing import Any

# The folders of an absolute path (the file's name stays): not after a word, '.', ':' (URLs) or '/'.
_ABSOLUTE_FOLDERS = re.compile(r'(?<![\w./:~-])/(?:[^\s/\'"():,;]+/)+')

NAME_SHOWN = 60  # characters of a refused text value echoed back: enough to recognise it


class RequestError(ValueError):
    """A value a client sent that the app does not take; the message says the rule."""


def shown_value(value: Any, quoted: bool = True) -> str:
    """A client's value as an error message quotes it: its repr (``quoted``; else a text as it is), cut
    to ``NAME_SHOWN`` characters."""
    text = repr(value) if quoted or not isinstance(value, str) else value
    return text if len(text) <= NAME_SHOWN else f'{text[:NAME_SHOWN]}... ({len(text)} characters)'


def number(value: Any, name: str, low: float, high: float, whole: bool = False,
           typed: bool = False) -> int | float:
    """``value`` as a finite number in [``low``, ``high``] (an int when ``whole``), or ``RequestError``.

    Args:
        value: What the client sent (a number, or a numeric string as some clients send).
        name: The setting's name, as the page labels it.
        low: Smallest value taken.
        high: Largest value taken.
        whole: Take whole numbers only (a 2.0 is taken as 2; a 2.5 is refused, not rounded).
        typed: The value comes from a file its writer typed (JSON, a checkpoint's metadata): a number written
            as text, or a whole number written as a float, is a wrong type there, not a client's habit.
    """
    if typed and isinstance(value, str):
        raise RequestError(f'{name} must be a number, got the text {shown_value(value)}')
    if typed and whole and isinstance(value, float):
        raise RequestError(f'{name} must be a whole number, got {value!r}')
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RequestError(f'{name} must be a number, got {shown_value(value)}') from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f'{name} must be a number, got {shown_value(value)}')
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f'{name} must be a finite number, got {value}')
    if isinstance(value, int) and abs(value) >= 2**1024:  # JSON's ints are unbounded; no float holds this one
        raise RequestError(f'{name} is too large a number (over 1e308), got {shown_value(value)}')
    if whole and value != int(value):
        raise RequestError(f'{name} must be a whole number, got {value:g}')
    if not low <= value <= high:
        bounds = (f'between {low:g} and {high:g}' if math.isfinite(low) and math.isfinite(high)
                  else f'at least {low:g}' if math.isfinite(low) else f'at most {high:g}')
        raise RequestError(f'{name} must be {bounds}, got {value:g}')
    return int(value) if whole else float(value)


def redacted(text: str, names: dict[str, str]) -> str:
    """``text`` for a client: each folder in ``names`` replaced by the name the app gives it (the
    longest first: a folder inside another), then the folders of any other absolute path left out
    (``/usr/lib/python3/x.py`` reads ``.../x.py``).

    Args:
        text: Text that may hold server paths (an error, a job's output, a model's settings).
        names: Server folder -> what the client calls it (``runs``, ``checkpoints``, ``.``).
    """
    for path in sorted(names, key=len, reverse=True):
        text = text.replace(path, names[path])
    return _ABSOLUTE_FOLDERS.sub('.../', text)
