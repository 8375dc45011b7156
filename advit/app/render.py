"""Pictures and charts of attention and accuracy: heatmap overlays (numpy + a matplotlib colormap) and plotly figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from matplotlib import colormaps
from PIL import Image

from ..core.io import atomic_path
from ..measure.faithfulness import GRADIENT_ROLLOUT, ROLLOUT, FaithfulnessCurves
from ..measure.inspection import AttentionReport
from ..measure.rollout import ModelViews
from ..measure.verdicts import last_layer

PANEL_SIZE = 160  # pixels of each heatmap panel
ATTENTION_COLORMAP = colormaps['inferno']


def overlay(image: Image.Image, attention: np.ndarray, grid: tuple[int, int], vmax: float,
            opacity: float, size: int = PANEL_SIZE, colormap=ATTENTION_COLORMAP) -> Image.Image:
    """The image with a heatmap of ``attention`` (patches of ``grid``) blended over it.

    Args:
        image: The RGB image.
        attention: One map, ``grid[0] * grid[1]`` values.
        grid: Patch grid (rows, cols).
        vmax: The value drawn at the top of the colour scale (shared by the maps of one layer).
        opacity: 0 shows the image alone, 1 the heatmap alone.
        size: Output side in pixels.
        colormap: A matplotlib colormap, 0 to ``vmax`` over its range.
    """
    scaled = np.clip(attention.reshape(grid) / max(vmax, 1e-12), 0.0, 1.0)
    heat = Image.fromarray((colormap(scaled)[..., :3] * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
    base = image.convert('RGB').resize((size, size), Image.BICUBIC)
    return Image.blend(base, heat, float(np.clip(opacity, 0.0, 1.0)))


def layer_panels(report: AttentionReport, image: Image.Image, opacity: float) -> list[tuple[Image.Image, str]]:
    """Per layer, the teacher's then the student's overlay on one colour scale, with captions."""
    # Shrunk once, not for each of the 2 x layers overlays: an upload may have millions of pixels.
    image = image.convert('RGB').resize((PANEL_SIZE, PANEL_SIZE), Image.BICUBIC)
    panels = []
    for layer, teacher_layer in enumerate(report.teacher_layers):
        teacher_map, student_map = report.teacher_maps[layer], report.student_maps[layer]
        vmax = float(max(teacher_map.max(), student_map.max()))
        gap = f'L1 {report.gaps["l1"][layer]:.3f}'
        panels.append((overlay(image, teacher_map, report.grid, vmax, opacity),
                       f'layer {layer + 1} · teacher (its layer {teacher_layer + 1})'))
        panels.append((overlay(image, student_map, report.grid, vmax, opacity), f'layer {layer + 1} · student · {gap}'))
    return panels


def side_by_side_panels(image: Image.Image, first: tuple[str, np.ndarray, tuple[int, int]],
                        second: tuple[str, np.ndarray, tuple[int, int]], opacity: float) -> list[tuple[Image.Image, str]]:
    """Two models' per-layer maps, ``(name, maps (layers, patches), grid)`` each: layer by layer on one colour
    scale when their layers and grids match, else each model's layers in turn on its own scales."""
    image = image.convert('RGB').resize((PANEL_SIZE, PANEL_SIZE), Image.BICUBIC)
    (name_a, maps_a, grid_a), (name_b, maps_b, grid_b) = first, second
    if maps_a.shape == maps_b.shape and grid_a == grid_b:
        panels = []
        for layer, (map_a, map_b) in enumerate(zip(maps_a, maps_b)):
            top = float(max(map_a.max(), map_b.max()))
            panels += [(overlay(image, map_a, grid_a, top, opacity), f'layer {layer + 1} · {name_a}'),
                       (overlay(image, map_b, grid_b, top, opacity), f'layer {layer + 1} · {name_b}')]
        return panels
    return [(overlay(image, layer_map, grid, float(layer_map.max()), opacity), f'layer {layer + 1} · {name}')
            for name, maps, grid in (first, second) for layer, layer_map in enumerate(maps)]


def views_panels(teacher: ModelViews, student: ModelViews, image: Image.Image,
                 opacity: float) -> list[tuple[Image.Image, str]]:
    """Teacher then student: attention rollout (one colour scale for both), its attention-mass mask, gradient
    rollout (one scale for both), and each last-layer head's map (one scale per model)."""
    image = image.convert('RGB').resize((PANEL_SIZE, PANEL_SIZE), Image.BICUBIC)
    shared = float(max(teacher.rollout.max(), student.rollout.max()))
    panels = [(overlay(image, views.rollout, views.grid, shared, opacity), f'rollout · {role}')
              for role, views in (('teacher', teacher), ('student', student))]
    panels += [(overlay(image, views.mask.astype(np.float32), views.grid, 1.0, opacity),
                f'rollout mass mask · {role} · {int(views.mask.sum())} patches')
               for role, views in (('teacher', teacher), ('student', student))]
    relevant = float(max(teacher.gradient_rollout.max(), student.gradient_rollout.max()))
    panels += [(overlay(image, views.gradient_rollout, views.grid, relevant, opacity), f'gradient rollout · {role}')
               for role, views in (('teacher', teacher), ('student', student))]
    for role, views in (('teacher', teacher), ('student', student)):
        top = float(views.heads.max())
        panels += [(overlay(image, head, views.grid, top, opacity), f'last layer · {role} · head {index}')
                   for index, head in enumerate(views.heads)]
    return panels


def prefix_share_figure(teacher: ModelViews, student: ModelViews) -> go.Figure:
    """Per layer, the share of [CLS] attention on prefix tokens (what the renormalised maps leave out)."""
    figure = go.Figure()
    for role, views in (('teacher', teacher), ('student', student)):
        figure.add_trace(go.Scatter(x=list(range(1, len(views.prefix_share) + 1)), y=views.prefix_share,
                                    mode='lines+markers', name=role))
    figure.update_layout(xaxis_title='layer', yaxis_title='[CLS] attention on prefix tokens', yaxis_range=[0, 1],
                         height=300, margin=dict(l=40, r=10, t=30, b=40))
    return figure


def gap_table(report: AttentionReport) -> list[list]:
    """Rows of (student layer, teacher layer, L1, L2, KL), 1-based layers."""
    return [[layer + 1, teacher_layer + 1, *(round(float(report.gaps[k][layer]), 6) for k in ('l1', 'l2', 'kl'))]
            for layer, teacher_layer in enumerate(report.teacher_layers)]


def gap_figure(report: AttentionReport) -> go.Figure:
    """The per-layer gaps (L1, L2, KL) across layers, each on its own axis."""
    layers = list(range(1, len(report.teacher_layers) + 1))
    titles = {'l1': 'L1: Σ|A_s − A_t|', 'l2': 'L2: Σ(A_s − A_t)²', 'kl': 'KL(A_t ‖ A_s)'}
    # Three axes side by side, laid out by hand: plotly's make_subplots took 9 ms, most of the figure's time.
    figure, layout = go.Figure(), dict(height=320, showlegend=False, margin=dict(l=40, r=20, t=50, b=40), annotations=[])
    for index, (kind, title) in enumerate(titles.items()):
        suffix = str(index + 1) if index else ''
        left = index * 0.36
        figure.add_trace(go.Scatter(x=layers, y=report.gaps[kind], mode='lines+markers', name=kind.upper(),
                                    xaxis=f'x{suffix}', yaxis=f'y{suffix}'))
        layout[f'xaxis{suffix}'] = dict(domain=[left, left + 0.28], title=dict(text='student layer'), dtick=1,
                                        anchor=f'y{suffix}')
        layout[f'yaxis{suffix}'] = dict(anchor=f'x{suffix}')
        layout['annotations'].append(dict(text=title, x=left + 0.14, y=1.0, xref='paper', yref='paper',
                                          xanchor='center', yanchor='bottom', showarrow=False))
    figure.update_layout(**layout)
    return figure


def faithfulness_figure(curves: dict[str, FaithfulnessCurves], classes: dict[str, str]) -> go.Figure:
    """Deletion curves side by side, one axis per model: the probability of the class the model predicts on
    the whole image as its most-attended patches go (its last layer's map, rollout, gradient rollout), against
    random orders.

    Args:
        curves: By model role (teacher, student): deletion curves with the ``map`` and ``random`` orders.
        classes: By role, the class whose probability is read.
    """
    figure, layout = go.Figure(), dict(height=320, margin=dict(l=50, r=20, t=50, b=40), annotations=[],
                                       legend=dict(orientation='h', y=-0.25))
    styles = {'map': 'solid', 'random': 'dot'}  # the maps' colours tell them apart
    for index, (role, model_curves) in enumerate(curves.items()):
        suffix = str(index + 1) if index else ''
        left = index * 0.55
        last = last_layer(model_curves.sources)
        shown = [(last, 'map', f'{last} (last): most attended first'), (ROLLOUT, 'map', 'rollout: most attended first'),
                 (GRADIENT_ROLLOUT, 'map', 'gradient rollout: most relevant first'), (ROLLOUT, 'random', 'random order')]
        for source, order, name in shown:
            figure.add_trace(go.Scatter(
                x=model_curves.fractions, y=model_curves.curve('probability', 'deletion', source, order),
                mode='lines+markers', name=f'{role}: {name}', xaxis=f'x{suffix}', yaxis=f'y{suffix}',
                line=dict(dash=styles[order])))
        layout[f'xaxis{suffix}'] = dict(domain=[left, left + 0.45], anchor=f'y{suffix}',
                                        title=dict(text='share of patches masked'))
        layout[f'yaxis{suffix}'] = dict(anchor=f'x{suffix}', range=[0, 1.02],
                                        title=dict(text=f'P({classes[role]})'))
        layout['annotations'].append(dict(text=f'{role}: P({classes[role]}) as its patches go', x=left + 0.225, y=1.0,
                                          xref='paper', yref='paper', xanchor='center', yanchor='bottom',
                                          showarrow=False))
    figure.update_layout(**layout)
    return figure


def per_class_figure(classes: Sequence[str], accuracy_a: Sequence[float], accuracy_b: Sequence[float],
                     name_a: str, name_b: str) -> go.Figure:
    """Grouped bars of two models' per-class accuracy."""
    figure = go.Figure([go.Bar(name=name_a, x=list(classes), y=list(accuracy_a)),
                        go.Bar(name=name_b, x=list(classes), y=list(accuracy_b))])
    figure.update_layout(barmode='group', height=340, yaxis_title='top-1 (%)',
                         margin=dict(l=40, r=20, t=30, b=40), legend=dict(orientation='h'))
    return figure


def confusion_figure(classes: Sequence[str], confusion_a: np.ndarray, confusion_b: np.ndarray,
                     name_a: str, name_b: str) -> go.Figure:
    """Two confusion matrices side by side: each row (true class) in percent of its images, counts on hover."""
    from plotly.subplots import make_subplots
    figure = make_subplots(rows=1, cols=2, subplot_titles=[f'A: {name_a}', f'B: {name_b}'], horizontal_spacing=0.12)
    for column, counts in enumerate((confusion_a, confusion_b), start=1):
        percent = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        figure.add_trace(go.Heatmap(z=percent, x=list(classes), y=list(classes), customdata=counts,
                                    zmin=0, zmax=100, colorscale='Blues', showscale=column == 2,
                                    colorbar=dict(title='% of row'), texttemplate='%{z:.0f}',
                                    hovertemplate='true %{y} · predicted %{x}: %{customdata} images '
                                                  '(%{z:.1f}%)<extra></extra>'), row=1, col=column)
        figure.update_xaxes(title_text='predicted', row=1, col=column)
        figure.update_yaxes(title_text='true', autorange='reversed', row=1, col=column)
    figure.update_layout(height=420, margin=dict(l=60, r=20, t=40, b=60))
    return figure


def training_curves(metrics: list[dict], test: tuple[int, float] | None = None) -> go.Figure:
    """Loss terms (left) and validation top-1 (right) against steps, from a run's metrics lines.

    Args:
        metrics: The run's metrics lines.
        test: (step, top-1) of the checkpoint selected on validation, evaluated once at the end (its evaluation
            file's, ``JobManager.test_result``): the right panel's star.
    """
    from plotly.subplots import make_subplots
    figure = make_subplots(rows=1, cols=2, subplot_titles=['loss terms', 'top-1 (%)'])
    train = [m for m in metrics if m.get('event') == 'train']
    for term in ('loss', 'ce', 'kd', 'attn'):
        points = [(m['step'], m[term]) for m in train if term in m]
        if points:
            steps, values = zip(*points)
            figure.add_trace(go.Scatter(x=steps, y=values, mode='lines', name=term), row=1, col=1)
    points = [(m['step'], m['val_top1']) for m in metrics if m.get('event') == 'eval' and m.get('val_top1') is not None]
    if points:
        steps, values = zip(*points)
        figure.add_trace(go.Scatter(x=steps, y=values, mode='lines+markers', name='validation top-1'), row=1, col=2)
    if test is not None:
        figure.add_trace(go.Scatter(x=[test[0]], y=[test[1]], mode='markers', name='test top-1 (selected)',
                                    marker=dict(symbol='star', size=12)), row=1, col=2)
    figure.update_xaxes(title_text='step')
    figure.update_layout(height=320, margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation='h'))
    return figure


def progress_html(step: int | None, total: int | None, fraction: float | None, eta_s: float | None,
                  state: str) -> str:
    """A progress bar with step, total and ETA."""
    percent = 100.0 * (fraction or 0.0)
    parts = [f'<b>{state}</b>']
    if step is not None:
        parts.append(f'step {step}' + (f' / {total}' if total else ''))
    parts.append(f'{percent:.0f}%')
    if eta_s is not None and state == 'running':
        minutes, seconds = divmod(int(eta_s), 60)
        parts.append(f'ETA {minutes}m{seconds:02d}s')
    return (f'<progress value="{percent:.1f}" max="100" style="width:100%"></progress>'
            f'<div>{" · ".join(parts)}</div>')


def students_curves(metrics: dict[str, list[dict]], tests: dict[str, tuple[int, float]] | None = None) -> go.Figure:
    """Several students trained together (a ``--methods`` run), one colour each: total loss (left) and
    validation top-1 (right) against steps, from each student's metrics lines by method.

    Args:
        metrics: Each student's metrics lines, by method.
        tests: (step, top-1) of each student's checkpoint selected on validation, evaluated once at the end, by
            method: its star on the right.
    """
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots
    figure = make_subplots(rows=1, cols=2, subplot_titles=['loss', 'top-1 (%)'])
    series = (('train', 'loss', 'loss', 1, 'lines'), ('eval', 'val_top1', 'validation top-1', 2, 'lines+markers'))
    for index, (method, lines) in enumerate(metrics.items()):
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        for event, key, label, column, mode in series:
            points = [(m['step'], m[key]) for m in lines if m.get('event') == event and m.get(key) is not None]
            if points:
                steps, values = zip(*points)
                figure.add_trace(go.Scatter(x=steps, y=values, mode=mode, name=f'{method} · {label}',
                                            legendgroup=method, line=dict(color=colour), marker=dict(color=colour)),
                                 row=1, col=column)
        if (tests or {}).get(method) is not None:
            step, top1 = tests[method]
            figure.add_trace(go.Scatter(x=[step], y=[top1], mode='markers', name=f'{method} · test top-1 (selected)',
                                        legendgroup=method, line=dict(color=colour),
                                        marker=dict(color=colour, symbol='star', size=12)),
                             row=1, col=2)
    figure.update_xaxes(title_text='step')
    figure.update_layout(height=360, margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation='h'))
    return figure


def per_class_chart(rows: list[dict[str, Any]], name_a: str, name_b: str, path: Path) -> None:
    """Table 2 of a report (``advit report --compare``) as grouped bars, written atomically to a PNG file."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # here, not at import: the app never draws this one
    classes = [row['class'] for row in rows]
    positions = range(len(classes))
    figure, axes = plt.subplots(figsize=(9, 3.5))
    axes.bar([p - 0.2 for p in positions], [row['a'] or 0 for row in rows], width=0.4, label=name_a)
    axes.bar([p + 0.2 for p in positions], [row['b'] or 0 for row in rows], width=0.4, label=name_b)
    axes.set_xticks(list(positions), classes, rotation=30)
    axes.set_ylabel('test top-1 (%)')
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format='png')
    plt.close(figure)
