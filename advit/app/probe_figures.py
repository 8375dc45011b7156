"""Distillation over time, drawn: a run's attention probe as gap heatmaps and curves, its students side by side.

The probe file is read and checked by ``measure.probe_file``; the models and runs on offer are ``probe_views``'.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..measure.probe_file import ProbeRecord
from ..measure.removal import REMOVED_AS


def _layer_labels(probe: ProbeRecord) -> list[str]:
    return [f'layer {layer + 1} (teacher {teacher + 1})' for layer, teacher in enumerate(probe.teacher_layers)]


def gap_heatmap(probe: ProbeRecord, kind: str, zmax: float | None = None) -> go.Figure:
    """Student layer (rows) by evaluation step (columns), coloured by the gap of one kind.

    Args:
        probe: One student's probe.
        kind: A gap kind of the probe (``l1``, ``l2``, ``kl``).
        zmax: Top of the colour scale (bottom: 0), to draw several students on one scale; default this one's largest.
    """
    values = probe.gap(kind).T  # (layers, steps): a row per layer
    labels = np.repeat(np.array(_layer_labels(probe))[:, None], values.shape[1], axis=1)  # each cell's hover
    figure = go.Figure(go.Heatmap(
        z=values, x=probe.steps.tolist(), y=list(range(1, probe.layers + 1)), zmin=0.0,
        zmax=float(np.nanmax(values)) if zmax is None else zmax,
        colorscale='Inferno', colorbar=dict(title=dict(text=f'{kind.upper()} gap')), customdata=labels,
        hovertemplate=f'step %{{x}}<br>%{{customdata}}<br>{kind.upper()} gap %{{z:.4f}}<extra></extra>'))
    figure.update_layout(xaxis_title='step', yaxis_title='student layer', yaxis_dtick=1, height=320,
                         margin=dict(l=40, r=10, t=30, b=40))
    return figure


def gap_curves(probe: ProbeRecord, kind: str) -> go.Figure:
    """The gap of one kind against step, one curve per student layer."""
    values = probe.gap(kind)
    figure = go.Figure([go.Scatter(x=probe.steps.tolist(), y=values[:, layer], mode='lines+markers', name=label)
                        for layer, label in enumerate(_layer_labels(probe))])
    figure.update_layout(xaxis_title='step', yaxis_title=f'{kind.upper()} gap', yaxis_rangemode='tozero', height=320,
                         margin=dict(l=40, r=10, t=30, b=40), legend=dict(orientation='h'))
    return figure


def students_gap_figure(probes: dict[str, ProbeRecord], kind: str) -> go.Figure:
    """Each student's gap of one kind, averaged over its layers, against step: a group's students on one chart."""
    figure = go.Figure([go.Scatter(x=probe.steps.tolist(), y=probe.gap(kind).mean(axis=1), mode='lines+markers',
                                   name=name) for name, probe in probes.items()])
    figure.update_layout(xaxis_title='step', yaxis_title=f'{kind.upper()} gap, mean over layers',
                         yaxis_rangemode='tozero', height=320, margin=dict(l=40, r=10, t=30, b=40),
                         legend=dict(orientation='h'))
    return figure


def students_faithfulness_figure(probes: dict[str, ProbeRecord]) -> go.Figure:
    """Each student's quarter drop against step (``faithfulness.py``), so that a map becoming faithful as its gap
    falls shows: its last layer's map (solid, the map the paper distils) drawn, one line a student; its rollout
    (dotted) and, where recorded, its gradient rollout (dash-dot) a click on the legend away."""
    figure = go.Figure()
    for name, probe in probes.items():
        if probe.faithfulness is None:
            continue
        for index, dash in zip(range(probe.layers - 1, len(probe.faithfulness_sources)), ('solid', 'dot', 'dashdot')):
            figure.add_trace(go.Scatter(x=probe.steps.tolist(), y=probe.faithfulness[:, index].tolist(),
                                        mode='lines+markers', line=dict(dash=dash),
                                        visible=True if index == probe.layers - 1 else 'legendonly',
                                        name=f'{name}: {probe.faithfulness_sources[index]}'))
    protocols = sorted({REMOVED_AS[probe.faithfulness_protocol] for probe in probes.values()
                        if probe.faithfulness is not None})
    layout = dict(xaxis_title='step', yaxis_title=f'quarter drop (points): map beyond random, patches {" or ".join(protocols)}',
                  height=320,
                  margin=dict(l=40, r=10, t=30, b=40), legend=dict(orientation='h'))
    if not figure.data:
        layout['annotations'] = [dict(text='not recorded: these runs predate the faithfulness measure', x=0.5,
                                      y=0.5, xref='paper', yref='paper', showarrow=False)]
    figure.update_layout(**layout)
    return figure
