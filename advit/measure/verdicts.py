"""What the faithfulness measure's results say: the headline maps and protocol, where files keep them, and verdicts.

``faithfulness.py`` measures; this module reads what it measured. The tables, cards and views show three maps
of a ViT (``HEADLINE_MAPS``: the last layer's [CLS] map, rollout and gradient rollout) under one removal
protocol (``HEADLINE_PROTOCOL``), keep each protocol's curves under a fixed key of an evaluation file
(``evaluation_key``), and put a quarter drop into words against the bar this project sets its teacher
(``verdict``, ``FAITHFUL_BAR``). Changing a wording or a goal touches this module, never the measure.
"""
from __future__ import annotations

from typing import Any

from .faithfulness import WHOLE_MODEL_MAPS, FaithfulnessCurves
from .removal import check_protocol

HEADLINE_MAPS = ('last layer', *WHOLE_MODEL_MAPS)  # the maps tables show (``headline``)


# The protocol the tables, verdicts, goals and the training probe read: dropping a patch's token puts nothing out of
# distribution into a ViT, where the mean fill costs the shipped teacher 22 points of accuracy by itself (README,
# "Does that verdict hinge on the grey fill?"); the others are measured beside it.
HEADLINE_PROTOCOL = 'drop'


FIRST_PROTOCOL = 'mean'  # what every file from before protocols were named measured, under ``faithfulness``


def evaluation_key(protocol: str = HEADLINE_PROTOCOL) -> str:
    """Where an evaluation file keeps the curves of a removal protocol: ``faithfulness`` for the mean fill (as
    files from before protocols were named, all of which measured it), ``faithfulness_<protocol>`` else. Fixed
    by the protocol, not by which one is the headline, so that files keep their meaning if the headline changes."""
    check_protocol(None, protocol)
    return 'faithfulness' if protocol == FIRST_PROTOCOL else f'faithfulness_{protocol}'


def headline_key(name: str) -> str:
    """A table's column key of a headline map: ``faith_last``, ``faith_rollout``, ``faith_gradient``."""
    return f'faith_{name.split()[0]}'


FAITHFUL_BAR = 10.0  # points: the quarter drop this project asks of a teacher's maps
NOISE_MARGIN = 2.0  # standard errors within which a drop is not told from 0; without one, points


def verdict(quarter_drop: float, standard_error: float | None = None) -> str:
    """A quarter drop in words: within two standard errors of 0 (or 2 points, when the error is not known)
    ``no better than random``; above, ``weakly faithful``, and ``faithful`` from 10 points (the bar this
    project sets its teacher); below, ``points away from what the model uses``."""
    margin = NOISE_MARGIN * standard_error if standard_error is not None else NOISE_MARGIN
    if quarter_drop >= max(FAITHFUL_BAR, margin):
        return 'faithful'
    if quarter_drop >= margin:
        return 'weakly faithful'
    return 'no better than random' if quarter_drop > -margin else 'points away from what the model uses'


def last_layer(sources: list[str] | tuple[str, ...]) -> str | None:
    """The last layer's map among a measure's sources (``layer L``), None when there is none."""
    layers = [name for name in sources if name not in WHOLE_MODEL_MAPS]
    return layers[-1] if layers else None


def headline(evaluation: dict[str, Any], protocol: str = HEADLINE_PROTOCOL,
             keys: tuple[str, ...] = ('quarter_drop', 'quarter_drop_se')) -> dict[str, dict[str, float | None]]:
    """The maps tables show, from an evaluation file's contents: the last layer's (the [CLS] attention the
    classifier reads last), rollout's and gradient rollout's, each with the summary's ``keys`` (None where not
    measured: files from before gradient rollout have the first two), under a removal ``protocol``."""
    measured = evaluation.get(evaluation_key(protocol)) or {}
    # From the curves where the file has them, so that a summary written before a measure was added (the
    # relevance gain) still has it; else the summary as written.
    summary = FaithfulnessCurves.from_dict(measured).summary() if 'accuracy' in measured else \
        measured.get('summary', {})
    sources = summary.get('sources', {})
    last = last_layer(list(sources))
    chosen = {HEADLINE_MAPS[0]: sources[last] if last else {}, **{name: sources.get(name, {}) for name in WHOLE_MODEL_MAPS}}
    return {name: {key: entry.get(key) for key in keys} for name, entry in chosen.items()}


def describe_drop(entry: dict[str, float | None]) -> str:
    """A summary entry's quarter drop in words: ``+3.1 ± 1.2 points, weakly faithful``."""
    drop, error = entry['quarter_drop'], entry.get('quarter_drop_se')
    return f'{drop:+.1f}{f" ± {error:.1f}" if error is not None else ""} points, {verdict(drop, error)}'
