"""The attention report as the paper's Fig. 2: teacher, student and their difference per layer, and its data for download.

Rows are student layers; columns the teacher's map, the student's (one colour scale per layer, so the
two compare directly) and student − teacher on a diverging scale symmetric around 0, each drawn at
the patch grid over the image, each scale with its colour bar, each row with its L1, L2 and KL.
Composed with Pillow from the same overlays as the panels (``render.overlay``): a matplotlib figure
of the same took 110 ms for four layers, over four times the whole attention request.
"""
from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from ..measure.inspection import GAP_KINDS, AttentionReport
from .render import ATTENTION_COLORMAP, PANEL_SIZE, overlay

LARGE_PANEL = 384  # a layer's row alone, shown large
DIFFERENCE_COLORMAP = colormaps['RdBu_r']  # red: the student attends more than the teacher
BAR, TICKS, GAP, LABEL, HEADER = 12, 44, 6, 96, 22  # pixels at the panel size 160; scaled with the panel
BACKGROUND = (255, 255, 255)


def attention_figure(report: AttentionReport, image: Image.Image, opacity: float = 0.6) -> Image.Image:
    """Every layer as a row of teacher | student | student − teacher over the image, with colour bars and gaps.

    Args:
        report: The pair's maps and gaps (``inspection.inspect_pair``).
        image: The image the maps were taken on, any size (it is shrunk once, to a panel's pixels).
        opacity: Heatmap opacity over the image: 0 the image alone, 1 the heatmap alone.
    """
    rows = [(report, layer, image, _row_label(report, layer)) for layer in range(len(report.teacher_layers))]
    return _draw(rows, opacity, PANEL_SIZE)


def images_figure(reports: list[AttentionReport], images: list[Image.Image], names: list[str], layer: int,
                  opacity: float = 0.6) -> Image.Image:
    """One layer on several images, a row each: teacher | student | student − teacher, with colour bars and gaps.

    Args:
        reports: The pair's report on each image.
        images: The images, in the same order.
        names: A short name per image, written beside its row.
        layer: Student layer, 0-based (``check_layer``).
    """
    rows = []
    for report, image, name in zip(reports, images, names):
        check_layer(report, layer)
        rows.append((report, layer, image, f'{name}\n' + _row_label(report, layer)))
    return _draw(rows, opacity, PANEL_SIZE)


def check_layer(report: AttentionReport, layer: int) -> None:
    """Refuse, in words, a 0-based student layer the report does not have (none is quietly shown instead)."""
    layers = len(report.teacher_layers)
    if not 0 <= layer < layers:
        raise ValueError(f'layer {layer + 1} does not exist: this student has layers 1-{layers}')


def layer_figure(report: AttentionReport, image: Image.Image, layer: int, opacity: float = 0.6) -> Image.Image:
    """One layer's row, large: teacher | student | student − teacher over the image, with colour bars and gaps.

    Args:
        layer: Student layer, 0-based as in the report's arrays (the figure labels it 1-based).
    """
    check_layer(report, layer)
    return _draw([(report, layer, image, _row_label(report, layer))], opacity, LARGE_PANEL)


@dataclass(frozen=True)
class Layout:
    """Where a figure's parts are, in pixels: the left edge of each column, a row's top, the sizes."""
    panel: int
    bar: int
    ticks: int
    gap: int
    label: int
    header: int

    @classmethod
    def of(cls, panel: int) -> 'Layout':
        scale = panel / PANEL_SIZE
        return cls(panel, *(round(size * scale) for size in (BAR, TICKS, GAP, LABEL, HEADER)))

    @property
    def columns(self) -> dict[str, int]:
        """x of the teacher, student and difference panels and of the two colour bars."""
        teacher = self.label + self.gap
        student = teacher + self.panel + self.gap
        bar = student + self.panel + self.gap
        difference = bar + self.bar + self.ticks
        return dict(teacher=teacher, student=student, bar=bar, difference=difference,
                    difference_bar=difference + self.panel + self.gap)

    def row(self, index: int) -> int:
        return self.header + index * (self.panel + self.gap)

    def size(self, rows: int) -> tuple[int, int]:
        """(width, height) of a figure of ``rows`` rows: one row per layer."""
        return self.columns['difference_bar'] + self.bar + self.ticks, self.row(rows)


def figure_png(figure: Image.Image) -> bytes:
    """The figure as PNG bytes (zlib's fastest level: deflating at the default took most of the time)."""
    buffer = io.BytesIO()
    figure.save(buffer, format='PNG', compress_level=1)
    return buffer.getvalue()


def maps_npz(report: AttentionReport) -> bytes:
    """The maps as an ``.npz`` (loads without pickle): teacher_maps, student_maps and difference (layers,
    patches), gaps (kinds, layers) in the order of gap_kinds, teacher_layers (the teacher layer compared with each
    student layer, counted from 1 as the JSON download and the page count them) and grid."""
    buffer = io.BytesIO()
    np.savez(buffer, teacher_maps=report.teacher_maps, student_maps=report.student_maps,
             difference=report.student_maps - report.teacher_maps,
             gaps=np.stack([report.gaps[kind] for kind in GAP_KINDS]), gap_kinds=np.array(GAP_KINDS),
             teacher_layers=np.array(report.teacher_layer_numbers), grid=np.array(report.grid))
    return buffer.getvalue()


def report_json(report: AttentionReport) -> bytes:
    """The report as JSON bytes (``AttentionReport.as_dict``)."""
    return (json.dumps(report.as_dict(), indent=2) + '\n').encode()


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _colour_bar(colormap, height: int, width: int) -> Image.Image:
    """A vertical bar of ``colormap``, its top the scale's top."""
    values = np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1)
    return Image.fromarray((colormap(values)[..., :3] * 255).astype(np.uint8))


def _draw(rows: list[tuple[AttentionReport, int, Image.Image, str]], opacity: float, panel: int) -> Image.Image:
    """Rows of (report, its layer, the image under it, the row's label), each panel ``panel`` pixels square."""
    layout = Layout.of(panel)
    columns, bar = layout.columns, layout.bar
    font, small = _font(round(12 * panel / PANEL_SIZE)), _font(round(10 * panel / PANEL_SIZE))
    figure = Image.new('RGB', layout.size(len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    for column, title in (('teacher', 'teacher'), ('student', 'student'), ('difference', 'student - teacher')):
        draw.text((columns[column] + panel // 2, layout.header - layout.gap), title, fill='black', font=font,
                  anchor='ms')
    attention_bar = _colour_bar(ATTENTION_COLORMAP, panel, bar)
    difference_bar = _colour_bar(DIFFERENCE_COLORMAP, panel, bar)
    shrunk: dict[int, Image.Image] = {}
    for row, (report, layer, image, label) in enumerate(rows):
        y = layout.row(row)
        if id(image) not in shrunk:  # once for all of an image's rows: an upload may have millions of pixels
            shrunk[id(image)] = image.convert('RGB').resize((panel, panel), Image.BICUBIC, reducing_gap=3.0)
        base = shrunk[id(image)]
        teacher, student = report.teacher_maps[layer], report.student_maps[layer]
        top = float(max(teacher.max(), student.max()))
        difference = student - teacher
        spread = float(np.abs(difference).max()) or 1e-12  # identical maps: a flat, still symmetric scale
        for role, maps in (('teacher', teacher), ('student', student)):
            figure.paste(overlay(base, maps, report.grid, vmax=top, opacity=opacity, size=panel), (columns[role], y))
        # The difference on [-spread, spread], mapped to [0, 1] around the diverging map's white middle.
        figure.paste(overlay(base, (difference + spread) / 2, report.grid, vmax=spread, opacity=opacity, size=panel,
                             colormap=DIFFERENCE_COLORMAP), (columns['difference'], y))
        for x, colours, low, high in ((columns['bar'], attention_bar, 0.0, top),
                                      (columns['difference_bar'], difference_bar, -spread, spread)):
            figure.paste(colours, (x, y))
            draw.rectangle((x, y, x + bar - 1, y + panel - 1), outline='black')
            for fraction, value in ((0.0, high), (0.5, (low + high) / 2), (1.0, low)):
                draw.text((x + bar + 3, y + fraction * (panel - 1)), f'{value:.2g}', fill='black', font=small,
                          anchor='lm' if 0 < fraction < 1 else ('la' if fraction == 0 else 'ld'))
        draw.multiline_text((layout.label, y + panel // 2), label, fill='black', font=small, anchor='rm',
                            align='right')
    return figure


def _row_label(report: AttentionReport, layer: int) -> str:
    """A row's label: the student layer, the teacher layer it was compared with, and its L1, L2 and KL."""
    gaps = '\n'.join(f'{kind.upper()} {float(report.gaps[kind][layer]):.3g}' for kind in GAP_KINDS)
    return f'layer {layer + 1}\nteacher {report.teacher_layers[layer] + 1}\n{gaps}'
