"""ADViT Studio: see and compare attention distillation in the browser.

Layout and wiring only: every view is computed by ``advit.studio.Studio`` (tested in tests/).
Serves on port 7860 (``GRADIO_SERVER_PORT``); models come from ``checkpoints/`` and ``runs/``
(``ADVIT_CHECKPOINTS``, ``ADVIT_RUNS``), the comparison's test set from ``ADVIT_DATA``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

# Offline by default: no analytics, no hub calls (timm weights are used only if already cached).
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import gradio as gr  # noqa: E402

from advit.about import about_markdown  # noqa: E402
from advit.data import CIFAR10_CLASSES  # noqa: E402
from advit.images import MAX_FILE_BYTES, ImageError  # noqa: E402
from advit.studio import Studio, StudioError  # noqa: E402

studio = Studio.from_env()
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / 'assets' / 'examples').glob('*.png'))


def user_errors(fn):
    """Show a request's own errors (bad upload, unusable model) as a message, not a server error."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StudioError, ImageError) as err:
            raise gr.Error(str(err)) from None
    return wrapper


@user_errors
def attention(image, teacher, student, fusion, head, opacity):
    view = studio.attention(image, teacher, student, fusion, int(head), float(opacity))
    return view.panels, view.figure, view.table, view.teacher_top5, view.student_top5, view.data


@user_errors
def compare(model_a, model_b, class_name, progress=gr.Progress()):
    view = studio.compare(model_a, model_b, class_name,
                          progress=lambda done: progress(done, desc='predicting the test set once'))
    return view.summary, view.a_only, view.b_only, view.table, view.figure


def refresh():
    """Rescan checkpoints and runs (a finished run appears without a restart)."""
    vits, everything, defaults = studio.choices(vit_only=True), studio.choices(), studio.default_keys()
    return (gr.Dropdown(choices=vits, value=defaults['teacher']), gr.Dropdown(choices=vits, value=defaults['student']),
            gr.Dropdown(choices=everything, value=defaults['compare_a']),
            gr.Dropdown(choices=everything, value=defaults['compare_b']), studio.problems())


with gr.Blocks(title='ADViT Studio', analytics_enabled=False) as demo:
    gr.Markdown('# ADViT Studio\nAttention distillation for Vision Transformers: how a student\'s '
                '[CLS] attention follows its teacher\'s, layer by layer.')
    problems = gr.Markdown(studio.problems())
    refresh_button = gr.Button('Refresh model list', size='sm')

    with gr.Tab('Attention'):
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label='Image (PNG, JPEG, WebP, GIF, BMP, TIFF)', file_types=['image'],
                                type='filepath')
                gr.Examples(EXAMPLES, inputs=image, label='CIFAR-10 test images', examples_per_page=20)
                teacher = gr.Dropdown(label='Teacher', choices=studio.choices(vit_only=True),
                                      value=studio.default_keys()['teacher'])
                teacher_info = gr.Markdown(studio.describe(teacher.value))
                student = gr.Dropdown(label='Student', choices=studio.choices(vit_only=True),
                                      value=studio.default_keys()['student'])
                student_info = gr.Markdown(studio.describe(student.value))
                fusion = gr.Radio(['mean', 'max', 'head'], value='mean', label='Head fusion (mean: as trained)')
                head = gr.Slider(0, 15, value=0, step=1, label='Head (when fusion is "head")')
                opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label='Heatmap opacity')
                show = gr.Button('Show attention', variant='primary')
            with gr.Column(scale=2):
                panels = gr.Gallery(label='[CLS] attention per layer: teacher (left) and student (right), '
                                          'one colour scale per layer', columns=2, height='auto')
                gap_plot = gr.Plot(label='Gap between the maps, per layer')
                gap_rows = gr.Dataframe(headers=['student layer', 'teacher layer', 'L1', 'L2', 'KL'],
                                        label='Gap per layer', interactive=False)
                with gr.Row():
                    teacher_top5 = gr.Label(num_top_classes=5, label='Teacher top-5')
                    student_top5 = gr.Label(num_top_classes=5, label='Student top-5')
                with gr.Accordion('Maps and gaps as data', open=False):
                    maps = gr.JSON(label='per layer: both maps on the student grid, L1, L2, KL')
        gr.on([show.click, fusion.change, head.release, opacity.release], attention,
              inputs=[image, teacher, student, fusion, head, opacity],
              outputs=[panels, gap_plot, gap_rows, teacher_top5, student_top5, maps], api_name='attention')
        teacher.change(studio.describe, teacher, teacher_info, api_visibility='private')
        student.change(studio.describe, student, student_info, api_visibility='private')

    with gr.Tab('Compare'):
        gr.Markdown('Two classifiers on the CIFAR-10 test set: the images one gets right and the other wrong '
                    '(paper Table 3), and per-class accuracy side by side (Table 2).')
        with gr.Row():
            model_a = gr.Dropdown(label='Model A (default: the best ADViT student)', choices=studio.choices(),
                                  value=studio.default_keys()['compare_a'])
            model_b = gr.Dropdown(label='Model B (default: the DeiT student)', choices=studio.choices(),
                                  value=studio.default_keys()['compare_b'])
            class_name = gr.Dropdown(['all', *CIFAR10_CLASSES], value='all', label='True class')
        run_compare = gr.Button('Compare', variant='primary')
        summary = gr.Markdown()
        with gr.Row():
            a_only = gr.Gallery(label='A right, B wrong', columns=6, height=360)
            b_only = gr.Gallery(label='B right, A wrong', columns=6, height=360)
        per_class_plot = gr.Plot(label='Per-class top-1')
        per_class_rows = gr.Dataframe(headers=['class', 'A %', 'B %', 'B − A'], label='Per-class top-1',
                                      interactive=False)
        gr.on([run_compare.click, class_name.change], compare, inputs=[model_a, model_b, class_name],
              outputs=[summary, a_only, b_only, per_class_rows, per_class_plot], api_name='compare')

    with gr.Tab('About'):
        gr.Markdown(about_markdown(studio.entries()))

    refresh_button.click(refresh, outputs=[teacher, student, model_a, model_b, problems], api_visibility='private')
    demo.load(refresh, outputs=[teacher, student, model_a, model_b, problems], api_visibility='private')


if __name__ == '__main__':
    demo.queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get('GRADIO_SERVER_NAME', '0.0.0.0'),
        server_port=int(os.environ.get('GRADIO_SERVER_PORT', '7860')),
        max_file_size=MAX_FILE_BYTES, show_error=True)
