"""Heatmap overlays and charts, checked against colours computed here from matplotlib's colormap."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from matplotlib import colormaps
from PIL import Image

from advit.measure.inspection import AttentionReport
from advit.app.render import (PANEL_SIZE, confusion_figure, gap_figure, gap_table, layer_panels, overlay, per_class_figure,
                          side_by_side_panels)
from conftest import noise_image

GRID = (4, 4)
INFERNO = colormaps['inferno']


def expected_heat(attention: np.ndarray, grid: tuple[int, int], vmax: float, size: int) -> np.ndarray:
    """The colour-mapped map, each patch a block of ``size / grid`` pixels."""
    values = np.clip(np.asarray(attention, dtype=np.float64).reshape(grid) / vmax, 0, 1)
    colours = np.array([[INFERNO(v)[:3] for v in row] for row in values]) * 255
    blocks = np.repeat(np.repeat(colours.astype(np.uint8), size // grid[0], axis=0), size // grid[1], axis=1)
    assert blocks.shape == (size, size, 3)
    return blocks.astype(int)


def brightness(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float64).sum(axis=-1)


def block_means(pixels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Mean brightness of each patch's block of an overlay."""
    rows, cols = grid
    size = pixels.shape[0]
    light = brightness(pixels)
    return light.reshape(rows, size // rows, cols, size // cols).mean(axis=(1, 3))


def attention_map(seed: int, patches: int = 16) -> np.ndarray:
    values = np.random.default_rng(seed).random(patches)
    return (values / values.sum()).astype(np.float32)


@pytest.fixture()
def report() -> AttentionReport:
    teacher = np.stack([np.full(16, 0.02, np.float32), attention_map(2)])
    teacher[0, 5] = 0.7  # layer 1: the teacher peaks far above the student
    student = np.stack([attention_map(1), attention_map(3)])
    student[1, 10] = 0.9  # layer 2: the student peaks above the teacher
    return AttentionReport(
        student_maps=student, teacher_maps=teacher, teacher_layers=[1, 3], grid=GRID,
        gaps={'l1': np.array([0.123456789, 0.5], np.float32), 'l2': np.array([0.01, 0.25], np.float32),
              'kl': np.array([0.3, 1.75], np.float32)},
        student_top5={'cat': 0.6}, teacher_top5={'cat': 0.9},
        settings=dict(fusion='mean', layer_map=None, attn_norm='renormalized'))


# --- overlay ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [PANEL_SIZE, 64])
def test_overlay_size(size):
    result = overlay(noise_image(), attention_map(0), GRID, 0.2, 0.5, size=size)
    assert result.size == (size, size) and result.mode == 'RGB'
    assert overlay(noise_image(), attention_map(0), GRID, 0.2, 0.5).size == (PANEL_SIZE, PANEL_SIZE)


def test_opacity_zero_is_the_image():
    flat = Image.new('RGB', (32, 32), (30, 60, 90))
    result = np.asarray(overlay(flat, attention_map(0), GRID, 0.2, 0.0, size=80))
    assert (result == (30, 60, 90)).all()
    image = noise_image()
    result = overlay(image, attention_map(0), GRID, 0.2, 0.0, size=80)
    assert np.array_equal(np.asarray(result), np.asarray(image.resize((80, 80), Image.BICUBIC)))
    gray = image.convert('L')  # any mode is shown as RGB
    assert np.asarray(overlay(gray, attention_map(0), GRID, 0.2, 0.0, size=80)).shape == (80, 80, 3)


def test_opacity_one_is_the_colour_mapped_heatmap():
    attention = attention_map(4)
    vmax = float(attention.max()) * 0.8  # the top patch is clipped to the top of the scale
    result = np.asarray(overlay(noise_image(), attention, GRID, vmax, 1.0, size=80)).astype(int)
    expected = expected_heat(attention, GRID, vmax, 80)
    assert np.abs(result - expected).max() <= 1
    top = np.unravel_index(attention.argmax(), GRID)
    assert np.abs(result[top[0] * 20 + 10, top[1] * 20 + 10] - np.array(INFERNO(1.0)[:3]) * 255).max() <= 1


def test_opacity_is_clamped():
    image, attention = noise_image(), attention_map(4)
    over = np.asarray(overlay(image, attention, GRID, 0.1, 3.0, size=64))
    under = np.asarray(overlay(image, attention, GRID, 0.1, -1.0, size=64))
    assert np.array_equal(over, np.asarray(overlay(image, attention, GRID, 0.1, 1.0, size=64)))
    assert np.array_equal(under, np.asarray(overlay(image, attention, GRID, 0.1, 0.0, size=64)))


def test_half_opacity_is_the_mean():
    flat = Image.new('RGB', (32, 32), (200, 100, 0))
    attention = attention_map(5)
    result = np.asarray(overlay(flat, attention, GRID, float(attention.max()), 0.5, size=80)).astype(int)
    expected = (expected_heat(attention, GRID, float(attention.max()), 80) + np.array([200, 100, 0])) / 2
    assert np.abs(result - expected).max() <= 1


def test_non_square_grid():
    grid = (2, 4)
    attention = np.arange(8, dtype=np.float32)
    result = np.asarray(overlay(noise_image(), attention, grid, 7.0, 1.0, size=80)).astype(int)
    values = attention.reshape(grid) / 7.0
    for row in range(2):
        for col in range(4):
            block = result[row * 40:(row + 1) * 40, col * 20:(col + 1) * 20]
            colour = np.array(INFERNO(values[row, col])[:3]) * 255
            assert np.abs(block - colour.astype(np.uint8)).max() <= 1, (row, col)


def test_the_top_patch_is_the_brightest_region():
    attention = attention_map(6)
    attention[11] = attention.max() * 1.5
    flat = Image.new('RGB', (32, 32), (128, 128, 128))
    result = np.asarray(overlay(flat, attention, GRID, float(attention.max()), 0.6))
    means = block_means(result, GRID)
    assert np.unravel_index(means.argmax(), GRID) == np.unravel_index(11, GRID)
    order = np.argsort(attention)  # brightness follows attention (inferno grows lighter)
    assert (np.diff(means.reshape(-1)[order]) >= 0).all()


# --- layer panels -----------------------------------------------------------------------------------

def test_layer_panels_teacher_first_with_captions(report):
    panels = layer_panels(report, noise_image(), 0.6)
    assert len(panels) == 2 * len(report.teacher_layers) == 4
    assert all(image.size == (PANEL_SIZE, PANEL_SIZE) for image, _ in panels)
    captions = [caption for _, caption in panels]
    assert captions[0].startswith('layer 1') and 'teacher' in captions[0] and 'its layer 2' in captions[0]
    assert captions[1].startswith('layer 1') and 'student' in captions[1] and 'L1 0.123' in captions[1]
    assert captions[2].startswith('layer 2') and 'teacher' in captions[2] and 'its layer 4' in captions[2]
    assert captions[3].startswith('layer 2') and 'student' in captions[3] and 'L1 0.500' in captions[3]


def test_layer_panels_share_one_scale(report):
    panels = layer_panels(report, noise_image(), 1.0)
    teacher_0, student_0, teacher_1, student_1 = (np.asarray(image).astype(int) for image, _ in panels)
    # Layer 1: the teacher's peak (0.7) sets the scale, so the student's map stays dark.
    vmax = 0.7
    assert float(report.teacher_maps[0].max()) == pytest.approx(vmax)
    assert np.abs(teacher_0 - expected_heat(report.teacher_maps[0], GRID, vmax, PANEL_SIZE)).max() <= 1
    assert np.abs(student_0 - expected_heat(report.student_maps[0], GRID, vmax, PANEL_SIZE)).max() <= 1
    assert brightness(student_0).max() < brightness(teacher_0).max()
    top = np.array(INFERNO(1.0)[:3]) * 255
    assert not (np.abs(student_0 - top).max(axis=-1) <= 1).any()  # no student patch reaches the top colour
    # Layer 2: the student's peak sets it.
    vmax = float(report.student_maps[1].max())
    assert vmax > float(report.teacher_maps[1].max())
    assert np.abs(student_1 - expected_heat(report.student_maps[1], GRID, vmax, PANEL_SIZE)).max() <= 1
    assert np.abs(teacher_1 - expected_heat(report.teacher_maps[1], GRID, vmax, PANEL_SIZE)).max() <= 1
    assert brightness(teacher_1).max() < brightness(student_1).max()


# --- tables and figures -----------------------------------------------------------------------------

def test_gap_table(report):
    rows = gap_table(report)
    assert [row[:2] for row in rows] == [[1, 2], [2, 4]]
    for layer, row in enumerate(rows):
        assert row[2:] == pytest.approx([float(report.gaps[k][layer]) for k in ('l1', 'l2', 'kl')], abs=1e-6)
        assert all(isinstance(value, float) for value in row[2:])
    assert rows[0][2] == pytest.approx(0.123457, abs=1e-7)  # rounded to 6 places


def test_gap_figure(report):
    figure = gap_figure(report)
    assert isinstance(figure, go.Figure)
    assert len(figure.data) == 3
    for trace, kind in zip(figure.data, ('l1', 'l2', 'kl')):
        assert trace.name == kind.upper()
        assert list(trace.x) == [1, 2]
        assert list(trace.y) == pytest.approx(report.gaps[kind].tolist())
    assert {trace.xaxis for trace in figure.data} == {'x', 'x2', 'x3'}  # one axis each


def test_per_class_figure():
    classes = ['cat', 'dog', 'ship']
    figure = per_class_figure(classes, [50.0, 75.5, float('nan')], [60.0, 70.0, 10.0], 'advit', 'deit')
    assert len(figure.data) == 2 and all(isinstance(trace, go.Bar) for trace in figure.data)
    a, b = figure.data
    assert (a.name, b.name) == ('advit', 'deit')
    assert list(a.x) == classes and list(b.x) == classes
    assert list(a.y)[:2] == [50.0, 75.5] and np.isnan(a.y[2])
    assert list(b.y) == [60.0, 70.0, 10.0]
    assert figure.layout.barmode == 'group'


def test_confusion_figure_shows_rows_in_percent_with_counts():
    counts_a = np.array([[3, 1], [0, 0]])
    counts_b = np.array([[2, 2], [1, 4]])
    figure = confusion_figure(['cat', 'dog'], counts_a, counts_b, 'advit', 'deit')
    a, b = figure.data
    assert np.asarray(a.z).tolist() == [[75.0, 25.0], [0.0, 0.0]]  # an empty row stays 0, not NaN
    assert np.asarray(b.z).tolist() == [[50.0, 50.0], [20.0, 80.0]]
    assert np.asarray(b.customdata).tolist() == counts_b.tolist() and list(a.x) == ['cat', 'dog']
    assert (a.xaxis, b.xaxis) == ('x', 'x2') and (a.zmin, a.zmax) == (0, 100)
    assert [annotation.text for annotation in figure.layout.annotations] == ['A: advit', 'B: deit']


def test_side_by_side_panels_pair_layers_on_one_scale_or_list_each_model():
    image = Image.new('RGB', (32, 32), (128, 128, 128))
    low, high = np.full((2, 4), 0.25), np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    paired = side_by_side_panels(image, ('A', low, (2, 2)), ('B', high, (2, 2)), 1.0)
    assert [caption for _, caption in paired] == ['layer 1 · A', 'layer 1 · B', 'layer 2 · A', 'layer 2 · B']
    # Layer 1 shares B's peak: A's flat 0.25 is drawn a quarter up the scale, not at its top.
    assert np.array_equal(np.asarray(paired[0][0]), np.asarray(overlay(image, low[0], (2, 2), 1.0, 1.0)))
    deeper = np.full((3, 16), 1 / 16)
    listed = side_by_side_panels(image, ('A', low, (2, 2)), ('B', deeper, (4, 4)), 1.0)
    assert [caption for _, caption in listed] == ['layer 1 · A', 'layer 2 · A', 'layer 1 · B', 'layer 2 · B',
                                                  'layer 3 · B']
