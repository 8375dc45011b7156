"""Whether the faithfulness verdicts hold under every removal protocol: each headline map of each model under
each protocol, and how far the protocols agree (Kendall's tau over the (model, map) pairs, and verdicts)."""
from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from ..measure.removal import PROTOCOLS
from ..measure.verdicts import HEADLINE_MAPS, evaluation_key, headline, verdict

MEASURES = ('quarter_drop', 'relevance_gain')


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-b of two paired lists (ties counted as neither concordant nor discordant, and corrected
    for); None with fewer than two pairs or where either list is constant."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2:
        return None
    upper = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[:, None] - x[None, :])[upper], np.sign(y[:, None] - y[None, :])[upper]
    untied_x, untied_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if not untied_x or not untied_y:
        return None
    return float(np.sum(dx * dy) / np.sqrt(untied_x * untied_y))


def protocol_rows(evaluations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, headline map) measured under every protocol: each protocol's quarter drop, its
    standard error, relevance gain and verdict. Models missing a protocol are left out (listed by
    ``missing_protocols``).

    Args:
        evaluations: Evaluation files' contents by model name.
    """
    rows = []
    for name, evaluation in evaluations.items():
        if any(evaluation_key(protocol) not in evaluation for protocol in PROTOCOLS):
            continue
        measured = {protocol: headline(evaluation, protocol, ('quarter_drop', 'quarter_drop_se', 'relevance_gain'))
                    for protocol in PROTOCOLS}
        for source in HEADLINE_MAPS:
            row: dict[str, Any] = dict(model=name, map=source)
            for protocol, maps in measured.items():
                entry = maps[source]
                if entry['quarter_drop'] is None:
                    break
                row[protocol] = dict(entry, verdict=verdict(entry['quarter_drop'], entry['quarter_drop_se']))
            else:
                rows.append(row)
    return rows


def missing_protocols(evaluations: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """The protocols each model's evaluation lacks (only models that lack one)."""
    missing = {name: [p for p in PROTOCOLS if evaluation_key(p) not in evaluation]
               for name, evaluation in evaluations.items()}
    return {name: protocols for name, protocols in missing.items() if protocols}


def agreement(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each pair of protocols: Kendall's tau of each measure over the rows, the share of rows whose verdicts
    are the same, and the rows whose verdicts differ (``model: map``)."""
    result = {}
    for first, second in combinations(PROTOCOLS, 2):
        differing = [f"{row['model']}: {row['map']}" for row in rows
                     if row[first]['verdict'] != row[second]['verdict']]
        result[f'{first} vs {second}'] = dict(
            **{f'tau_{measure}': kendall_tau([row[first][measure] for row in rows],
                                             [row[second][measure] for row in rows]) for measure in MEASURES},
            same_verdict=1 - len(differing) / len(rows) if rows else None, differing=differing)
    return result


def agreement_markdown(evaluations: dict[str, dict[str, Any]]) -> str:
    """The protocols side by side for every model's headline maps, then their agreement, as markdown."""
    rows = protocol_rows(evaluations)
    if not rows:
        return 'No model is measured under every removal protocol yet (`advit faithfulness --protocol`).'
    header = '| model | map | ' + ' | '.join(f'{p}: quarter drop (pts) | {p}: relevance gain' for p in PROTOCOLS) + ' |'
    lines = [header, '| --- | --- |' + ' --- | --- |' * len(PROTOCOLS)]
    for row in rows:
        cells = [f"{row[p]['quarter_drop']:+.1f} ± {row[p]['quarter_drop_se']:.1f} ({row[p]['verdict']}) | "
                 f"{row[p]['relevance_gain']:+.3f}" for p in PROTOCOLS]
        lines.append(f"| {row['model']} | {row['map']} | " + ' | '.join(cells) + ' |')
    lines += ['', '| protocols | Kendall tau, quarter drops | Kendall tau, relevance gains | same verdict | '
                  'verdicts that differ |', '| --- | --- | --- | --- | --- |']
    for pair, measured in agreement(rows).items():
        taus = [f'{measured[f"tau_{m}"]:+.2f}' if measured[f'tau_{m}'] is not None else 'n/a' for m in MEASURES]
        lines.append(f"| {pair} | {taus[0]} | {taus[1]} | {measured['same_verdict']:.0%} | "
                     f"{', '.join(measured['differing']) or 'none'} |")
    missing = missing_protocols(evaluations)
    if missing:
        lines += ['', 'Not measured under every protocol: ' + '; '.join(f'{name} ({", ".join(protocols)})'
                                                                        for name, protocols in missing.items())]
    return '\n'.join(lines)
