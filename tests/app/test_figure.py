"""The Fig. 2 figure draws the report's maps, scales and gaps; its exports hold the report's arrays."""
from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from advit.core.checkpoint import load_checkpoint
from advit.app.figure import (DIFFERENCE_COLORMAP, LARGE_PANEL, Layout, attention_figure, figure_png, layer_figure, maps_npz,
                          report_json)
from advit.measure.inspection import GAP_KINDS, AttentionReport, inspect_pair
from advit.app.render import ATTENTION_COLORMAP, PANEL_SIZE
from conftest import REPO, tiny_vit


@pytest.fixture(scope='module')
def image() -> Image.Image:
    return Image.open(REPO / 'assets' / 'examples' / 'cat_3000.png').convert('RGB')


@pytest.fixture(scope='module')
def report(image) -> AttentionReport:
    """The shipped bundle's teacher (6 layers) and ADViT-L1 student (4 layers)."""
    teacher, student = (load_checkpoint(REPO / 'checkpoints' / f'{name}.safetensors')
                        for name in ('teacher', 'advit_l1'))
    return inspect_pair(teacher.model, teacher.meta, student.model, student.meta, image)


def tiny_report(image: Image.Image, depth: int, same: bool = False) -> AttentionReport:
    """A 6-layer teacher and a student of ``depth`` layers (with ``same``, the teacher itself)."""
    teacher = tiny_vit(0, depth=6)
    return inspect_pair(teacher, {}, teacher if same else tiny_vit(1, depth=depth), {}, image)


def colour(colormap, value: float) -> np.ndarray:
    return (np.asarray(colormap(float(np.clip(value, 0, 1)))[:3]) * 255).astype(int)


def patch_pixel(figure: np.ndarray, layout: Layout, column: str, row: int, patch: tuple[int, int],
                grid: tuple[int, int]) -> np.ndarray:
    """The figure's RGB at the centre of one patch of one panel."""
    x = layout.columns[column] + int((patch[1] + 0.5) * layout.panel / grid[1])
    y = layout.row(row) + int((patch[0] + 0.5) * layout.panel / grid[0])
    return figure[y, x].astype(int)


def test_opaque_heatmaps_show_each_layers_maps_on_its_scales(report, image):
    """At opacity 1 every patch of every panel is its value's colour: teacher and student on 0 to the
    layer's larger peak, the difference on a scale symmetric around 0."""
    figure = np.asarray(attention_figure(report, image, opacity=1.0))
    layout, cols = Layout.of(PANEL_SIZE), report.grid[1]
    assert report.grid == (8, 8) and len(report.teacher_layers) == 4
    for layer in range(4):
        teacher, student = report.teacher_maps[layer], report.student_maps[layer]
        top = max(teacher.max(), student.max())
        difference = student - teacher
        spread = np.abs(difference).max()
        for index in (0, 9, 36, 63, int(np.argmax(teacher)), int(np.argmax(np.abs(difference)))):
            patch = divmod(index, cols)
            for column, want in (('teacher', colour(ATTENTION_COLORMAP, teacher[index] / top)),
                                 ('student', colour(ATTENTION_COLORMAP, student[index] / top)),
                                 ('difference', colour(DIFFERENCE_COLORMAP, (difference[index] + spread) / (2 * spread)))):
                got = patch_pixel(figure, layout, column, layer, patch, report.grid)
                assert np.abs(got - want).max() <= 1, (layer, index, column)
    # The colour bars run from the scale's top (row's top) to its bottom.
    bar_x = layout.columns['bar'] + layout.bar // 2
    step = 1 / (layout.panel - 1)
    for offset, value in ((2, 1 - 2 * step), (layout.panel - 3, 2 * step)):
        assert np.abs(figure[layout.row(0) + offset, bar_x].astype(int) - colour(ATTENTION_COLORMAP, value)).max() <= 1


def test_the_image_shows_under_transparent_heatmaps(report, image):
    figure = np.asarray(attention_figure(report, image, opacity=0.0))
    layout = Layout.of(PANEL_SIZE)
    shrunk = np.asarray(image.resize((PANEL_SIZE, PANEL_SIZE), Image.BICUBIC, reducing_gap=3.0))
    for column in ('teacher', 'student', 'difference'):
        x, y = layout.columns[column], layout.row(2)
        assert np.abs(figure[y:y + PANEL_SIZE, x:x + PANEL_SIZE].astype(int) - shrunk).max() <= 1


def test_the_figure_has_one_row_per_layer(image):
    sizes = {depth: attention_figure(tiny_report(image, depth), image).size for depth in (1, 3, 6)}
    assert {width for width, _ in sizes.values()} == {Layout.of(PANEL_SIZE).size(1)[0]}
    assert all(height == Layout.of(PANEL_SIZE).size(depth)[1] for depth, (_, height) in sizes.items())
    row = PANEL_SIZE + Layout.of(PANEL_SIZE).gap
    assert (sizes[3][1] - sizes[1][1], sizes[6][1] - sizes[3][1]) == (2 * row, 3 * row)
    png = Image.open(io.BytesIO(figure_png(attention_figure(tiny_report(image, 3), image))))
    assert png.format == 'PNG' and png.size == sizes[3]


def test_each_row_is_labelled_with_its_layers_and_gaps(report):
    from advit.app.figure import _row_label
    for layer in range(4):
        gaps = [f'{kind.upper()} {float(report.gaps[kind][layer]):.3g}' for kind in GAP_KINDS]
        assert _row_label(report, layer).split('\n') == [f'layer {layer + 1}',
                                                          f'teacher {report.teacher_layers[layer] + 1}', *gaps]


def test_a_large_upload_is_shrunk_for_the_panels(report):
    huge = Image.new('RGB', (2400, 2400), (20, 200, 40))
    figure = np.asarray(attention_figure(report, huge, opacity=0.0))
    layout = Layout.of(PANEL_SIZE)
    x, y = layout.columns['student'], layout.row(3)
    assert (figure[y:y + PANEL_SIZE, x:x + PANEL_SIZE] == (20, 200, 40)).all()


def test_one_layer_large(report, image):
    large = attention_figure(report, image, 1.0)
    one = layer_figure(report, image, 2, opacity=1.0)
    layout = Layout.of(LARGE_PANEL)
    assert one.size == layout.size(1) and one.size[0] > 2 * large.size[0]
    pixels, teacher = np.asarray(one), report.teacher_maps[2]
    top = max(teacher.max(), report.student_maps[2].max())
    for index in (0, 27, int(np.argmax(teacher))):
        got = patch_pixel(pixels, layout, 'teacher', 0, divmod(index, 8), report.grid)
        assert np.abs(got - colour(ATTENTION_COLORMAP, teacher[index] / top)).max() <= 1
    for layer in (-1, 4):
        with pytest.raises(ValueError, match=f'layer {layer + 1} does not exist: this student has layers 1-4'):
            layer_figure(report, image, layer)


def test_identical_maps_have_a_flat_symmetric_difference(image):
    same = tiny_report(image, 6, same=True)
    assert all(float(same.gaps['l1'][layer]) == 0 for layer in range(6))
    figure = np.asarray(attention_figure(same, image, opacity=1.0))
    layout = Layout.of(PANEL_SIZE)
    x, y = layout.columns['difference'], layout.row(0)
    middle = colour(DIFFERENCE_COLORMAP, 0.5)  # zero is the diverging scale's middle
    assert (np.abs(figure[y:y + PANEL_SIZE, x:x + PANEL_SIZE].astype(int) - middle) <= 1).all()


def test_threads_render_the_same_figure(report, image):
    alone = figure_png(attention_figure(report, image))
    results = []
    threads = [threading.Thread(target=lambda: results.append(figure_png(attention_figure(report, image))))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [alone] * 4


def test_npz_holds_the_reports_arrays(report):
    arrays = np.load(io.BytesIO(maps_npz(report)), allow_pickle=False)
    assert sorted(arrays.files) == ['difference', 'gap_kinds', 'gaps', 'grid', 'student_maps', 'teacher_layers',
                                    'teacher_maps']
    for name in ('teacher_maps', 'student_maps'):
        np.testing.assert_array_equal(arrays[name], getattr(report, name))
        assert arrays[name].dtype == getattr(report, name).dtype
    np.testing.assert_array_equal(arrays['difference'], report.student_maps - report.teacher_maps)
    assert arrays['gap_kinds'].tolist() == list(GAP_KINDS)
    for kind, gaps in zip(arrays['gap_kinds'], arrays['gaps']):
        np.testing.assert_array_equal(gaps, report.gaps[str(kind)])
    assert arrays['teacher_layers'].tolist() == [t + 1 for t in report.teacher_layers], 'from 1, as the JSON'
    assert tuple(arrays['grid'].tolist()) == report.grid


def test_json_is_the_reports_dict(report):
    saved = json.loads(report_json(report))
    assert saved == report.as_dict()
    assert saved['grid'] == list(report.grid)
    assert [layer['teacher_layer'] for layer in saved['layers']] == [t + 1 for t in report.teacher_layers]
    for index, layer in enumerate(saved['layers']):
        np.testing.assert_allclose(layer['teacher_map'], report.teacher_maps[index], rtol=1e-6)
        np.testing.assert_allclose(layer['student_map'], report.student_maps[index], rtol=1e-6)
        assert [layer[kind] for kind in GAP_KINDS] == pytest.approx([float(report.gaps[k][index]) for k in GAP_KINDS])
