"""ADViT Studio: see and compare attention distillation in the browser.

Layout and wiring only: every view is computed by ``advit.app.studio.Studio``'s parts and the Train tab by
``advit.app.train_desk.TrainDesk`` (tested in tests/); each form's values reach them as one request
(``advit.app.forms``, ``advit.app.train_desk.JobForm``), passed by name (``inputs_kwargs``), so the API's
parameters are the requests' fields. Serves 127.0.0.1:7860 (``GRADIO_SERVER_NAME``,
``GRADIO_SERVER_PORT``; the Dockerfile binds 0.0.0.0 for a Space, and a public bind turns training off
without a token: ``advit.app.train_desk``); models come from ``checkpoints/`` and ``runs/``
(``ADVIT_CHECKPOINTS``, ``ADVIT_RUNS``), the comparison's test set from ``ADVIT_DATA``.
"""
from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

# Offline by default: no analytics, no hub calls (timm weights are used only if already cached).
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import gradio as gr  # noqa: E402

from advit.app.about import about_markdown  # noqa: E402
from advit.app.attention_views import BATCH_LIMIT  # noqa: E402
from advit.core.data import CIFAR10_CLASSES  # noqa: E402
from advit.measure.evaluate import TEST_IMAGES  # noqa: E402
from advit.measure.verdicts import HEADLINE_PROTOCOL  # noqa: E402
from advit.measure.removal import PROTOCOLS, REMOVED_AS  # noqa: E402
from advit.app.figure import figure_png  # noqa: E402
from advit.app.forms import (DISCARD, HEADS, KEEP, LAYERS, MAX_INDEX, OPACITY,  # noqa: E402
                             AttentionRequest, ProbeRequest, RolloutRequest)
from advit.app.gate import WORDED, GatedBlocks, http_error_handlers  # noqa: E402
from advit.app.images import MAX_FILE_BYTES  # noqa: E402
from advit.core.losses import METHODS  # noqa: E402
from advit.app.offer import StudioError  # noqa: E402
from advit.app.served import ServedFiles  # noqa: E402
from advit.app.studio import Studio  # noqa: E402
from advit.app.upload import UploadedImage  # noqa: E402
from advit.measure.probe_file import TO_RELEVANCE  # noqa: E402
from advit.app.train_desk import (DEVICES, LENGTHS, LIST_HEADERS, JobForm, TrainDesk, is_public, job_summary,  # noqa: E402
                              jobs_off_reason, server_name, student_architectures)

studio = Studio.from_env()
offer = studio.offer
served = ServedFiles.from_env()  # the galleries' images: written once each, never rewritten (see advit/app/served.py)
jobs_off = jobs_off_reason()
desk = TrainDesk.from_env(offer.runs_dir, offer.teacher_files, studio.data, studio.scrub) if jobs_off is None else None
defaults = offer.defaults()
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / 'assets' / 'examples').glob('*.png'))


def served_png(figure, stem: str) -> str:
    """A figure (PIL) as a PNG file for the page: to show, and to download under a readable name."""
    return served.save_bytes(figure_png(figure), 'png', stem)


def attention(**form):
    """The Attention tab's answer, by component (the API returns them in ``attention_outputs``' order)."""
    view = studio.attention.view(AttentionRequest(**form))
    figure = served_png(view.paper_figure, 'attention')
    downloads = [figure, *(served.save_bytes(data, suffix, 'attention-maps') for suffix, data in view.downloads.items())]
    return {panels: served.gallery(view.panels), gap_plot: view.figure, gap_rows: view.table,
            teacher_top5: view.teacher_top5, student_top5: view.student_top5, maps: view.data, paper_figure: figure,
            attention_downloads: downloads, seen: served_png(view.seen, 'seen'), seen_note: view.seen_note}


def needs_image(image, **others):
    """The browser's check before an Attention request: without an image, one message on the upload box
    and every output left as it was (a request from another client is refused by the views in words)."""
    return [gr.validate(image is not None, 'Upload an image, or choose one of the examples below, first.'),
            *(gr.validate(True, '') for _ in others)]


def student_layers(student, layer):
    """A layer slider over the student's layers, its value kept within them: a request for a layer the student
    lacks is refused, so the page offers none."""
    depth = offer.layers(student)
    return gr.Slider(maximum=max(depth, 2), value=min(layer, depth) if depth else layer)  # a slider needs two ends


def layer_range(student, layer):
    """The large layer's slider over the student's layers; the large layer waits for it (the figure shows them
    all)."""
    return student_layers(student, layer), None


def attention_layer(**form):
    request = AttentionRequest(**form)
    return served_png(studio.attention.layer(request), f'attention-layer{request.layer}')


def attention_images(files, **form):
    paths = [str(f) for f in files] if files else EXAMPLES[:BATCH_LIMIT]  # none given: the example row
    figure, rows = studio.attention.images(paths, AttentionRequest(**form))
    return served_png(figure, 'attention-images'), rows


def faithfulness(**form):
    view = studio.attention.faithfulness(AttentionRequest(**form))
    return view.figure, view.summary, view.data


def more_views(fusion, discard, keep, **form):
    view = studio.attention.more(AttentionRequest(**form), RolloutRequest(fusion, discard, keep))
    return served.gallery(view.panels), view.figure, view.data


@functools.cache  # once per server start; a visitor arriving while the start-up thread works may compute it too
def opening_views():
    """What the page shows before any click, computed once per server start (a visitor meets a finished
    answer, not empty boxes): the first example under the default teacher and best student (every
    Attention output, the last layer large, the deletion curves), and the default Compare pair on
    every class when their predictions are saved. A part that cannot be made (no models yet, predictions
    not computed) leaves its outputs as they are."""
    form = dict(image=EXAMPLES[0] if EXAMPLES else None, teacher=defaults.teacher, student=defaults.student)
    shown = {}  # by component: what is not made is not in it, and stays as it is on the page
    try:
        layers = offer.layers(defaults.student)
        shown.update({image: form['image'], **attention(**form),
                      layer: gr.Slider(maximum=max(layers, 2), value=layers),
                      layer_large: attention_layer(**form, layer=layers),
                      **dict(zip(faithfulness_outputs, faithfulness(**form)))})
    except WORDED:
        pass
    try:  # from saved predictions only: a pair of 224 models on 2 cores would take the CPU for many minutes
        view = studio.compare.view(defaults.compare_a, defaults.compare_b, 'all', compute=False)
        shown.update(zip(compare_outputs, compare_answer(view)))
    except StudioError:
        pass
    return shown


def compare_answer(view):
    """Compare's outputs of a ``CompareView``, the galleries' images as files."""
    return (view.summary, served.gallery(view.a_only), served.gallery(view.b_only), view.table, view.figure,
            view.confusion)


def compare(model_a, model_b, class_name, progress=gr.Progress()):
    return compare_answer(studio.compare.view(model_a, model_b, class_name,
                                                  progress=lambda done, line: progress(done, desc=line)))


def picked(side):
    """The test index of the image selected in one of the galleries (``side`` 'A' or 'B')."""
    def pick(model_a, model_b, class_name, evt: gr.SelectData):
        return studio.compare.disagreement(model_a, model_b, class_name, side, evt.index)
    return pick


def compare_image(model_a, model_b, index):
    view = studio.compare.image(model_a, model_b, index)
    return served.gallery(view.panels), view.top5_a, view.top5_b, view.summary


def start_job(token, **form):
    job = desk.start(JobForm(**form), token)
    rows = desk.rows()
    return job, gr.Dropdown(choices=[row[0] for row in rows], value=job['name']), rows


def propose_start(start):
    """The form's architecture, image size, learning rate and length for a student that starts from a checkpoint
    (its own, and a fine-tuning run's); left as they are for random weights."""
    proposal = desk.start_proposal(start)
    keys = ('model', 'model_args', 'image_size', 'lr', 'length', 'amount')
    return tuple(proposal[key] for key in keys) if proposal else tuple(gr.skip() for _ in keys)


def follow_teacher(teacher):
    """The form's image size, set to the chosen teacher's (a 224 teacher trains 224 students); else left as it is."""
    size = desk.teacher_size(teacher)
    return gr.skip() if size is None else size


def job_status(name):
    view = desk.view(name)
    return view.progress, view.figure, view.log, view.job, view.table_md


def cancel_job(name, token):
    return desk.cancel(name, token)


def resume_job(name, token):
    return desk.resume(name, token)


def probe_view(source, **form):
    # `source` is the API's published name of the probed model or run (the `training_view` endpoint's parameter).
    view = studio.probes.view(ProbeRequest(probed=source, **form))
    return (view.summary, view.students, view.heatmap, view.curves,
            served_png(view.frame, 'distillation-step'), view.data, view.faithfulness)


def probe_controls(probed, student):
    """The student list and the sliders' ranges of a probed model or run, the last evaluation selected."""
    outline = studio.probes.outline(probed, student or None)
    return (gr.Dropdown(choices=outline.students, value=outline.student),  # a slider needs two ends:
            gr.Slider(maximum=max(outline.evaluations - 1, 1), value=outline.evaluations - 1),
            gr.Slider(maximum=max(outline.images - 1, 1)))


def probed_choices(preferred, current):
    """The probed models and runs on offer now (a run appears once it has evaluated), ``preferred`` (one of them, or
    a job by its name) selected when on offer, else the current one."""
    probed, value = studio.probes.choice(preferred, current)
    return gr.Dropdown(choices=probed, value=value)


def list_jobs():
    return desk.rows()


def job_names(selected):
    """The job list's names as the dropdown's choices. Its value is set only when none is: this runs
    when the list changes, also in the answer of a launch that selects the new job, and may still see
    the job selected before, which it must not put back."""
    names = [row[0] for row in desk.rows()]
    if selected:
        return gr.Dropdown(choices=names)
    return gr.Dropdown(choices=names, value=names[0] if names else None)


def refresh():
    """Rescan checkpoints and runs (a finished run appears without a restart)."""
    offer.refresh()
    vits, everything, now = offer.choices(vit_only=True), offer.choices(), offer.defaults()
    return (gr.Dropdown(choices=vits, value=now.teacher), gr.Dropdown(choices=vits, value=now.student),
            gr.Dropdown(choices=everything, value=now.compare_a),
            gr.Dropdown(choices=everything, value=now.compare_b), offer.problems())


# What each form opens on: its request's defaults.
attention_defaults, rollout_defaults, probe_defaults = AttentionRequest(), RolloutRequest(), ProbeRequest()

# Every event's values pass one gate before Gradio or a view reads them (advit/app/gate.py).
with GatedBlocks(studio.scrub, title='ADViT Studio', analytics_enabled=False, delete_cache=(600, 3600)) as demo:
    gr.Markdown('# ADViT Studio\nAttention distillation for Vision Transformers: how a student\'s '
                '[CLS] attention follows its teacher\'s, layer by layer.')
    problems = gr.Markdown(offer.problems())
    refresh_button = gr.Button('Refresh model list', size='sm')

    with gr.Tab('Attention'):
        with gr.Row():
            with gr.Column(scale=1):
                image = UploadedImage(label='Image (PNG, JPEG, WebP, GIF, BMP, TIFF): upload, drop or paste',
                                      height=260, elem_id='upload')
                gr.Examples(EXAMPLES, inputs=image, label='CIFAR-10 test images', examples_per_page=20)
                with gr.Row():
                    seen = gr.Image(label='What the student reads', type='filepath', interactive=False, height=140,
                                    buttons=[], elem_id='seen-image', scale=1)
                    seen_note = gr.Markdown(elem_id='seen-note')
                # Custom values let API clients name runs that finished after start-up (a name the last
                # scan lacks rescans once); the views accept only models on offer.
                teacher = gr.Dropdown(label='Teacher', choices=offer.choices(vit_only=True),
                                      value=defaults.teacher, allow_custom_value=True)
                teacher_info = gr.Markdown(offer.describe(teacher.value))
                student = gr.Dropdown(label='Student', choices=offer.choices(vit_only=True),
                                      value=defaults.student, allow_custom_value=True)
                student_info = gr.Markdown(offer.describe(student.value))
                fusion = gr.Radio([('as trained', 'trained'), ('mean', 'mean'), ('max', 'max'), ('one head', 'head')],
                                  value=attention_defaults.fusion, label='Head fusion (as trained: the student\'s own)')
                head = gr.Slider(*HEADS, value=attention_defaults.head, step=1, label='Head (when fusion is "head")')
                opacity = gr.Slider(*OPACITY, value=attention_defaults.opacity, step=0.05, label='Heatmap opacity')
                show = gr.Button('Show attention', variant='primary')
            with gr.Column(scale=2):
                # The images' labels would float over the figures' column titles: a caption above instead.
                gr.Markdown('**Per layer: teacher | student | student - teacher**, one colour scale per layer '
                            '(as the paper\'s Fig. 2)')
                paper_figure = gr.Image(type='filepath', show_label=False, interactive=False,
                                        elem_id='attention-figure', buttons=['download', 'fullscreen'])
                with gr.Row():
                    layer = gr.Slider(*LAYERS, value=attention_defaults.layer, step=1, label='Layer shown large',
                                      elem_id='layer-slider')
                    attention_downloads = gr.File(label='Downloads: the figure (PNG), the maps (.npz, JSON)',
                                                  file_count='multiple', interactive=False,
                                                  elem_id='attention-downloads')
                layer_large = gr.Image(label='One layer, large (move the slider)', show_label=False, type='filepath',
                                       interactive=False,
                                       elem_id='attention-layer')
                gap_plot = gr.Plot(label='Gap between the maps, per layer', elem_id='gap-plot')
                gr.Markdown('**Do these maps point at what each model uses?** Patches removed most attended '
                            'first, against a random order: a faithful map makes the model\'s probability fall '
                            'faster than random does. How a patch is removed is a choice that can change the '
                            'verdict: its pixels set to the dataset mean, its token dropped (a ViT needs no '
                            'fill), or its pixels blurred. The card of each model (left) gives the same measure '
                            f'on {TEST_IMAGES} test images under each.')
                protocol = gr.Radio([(f'{name}: {REMOVED_AS[name]}', name) for name in PROTOCOLS],
                                    value=HEADLINE_PROTOCOL, label='Removal protocol', elem_id='removal-protocol')
                faithful_plot = gr.Plot(label='Deletion curves on this image', elem_id='faithfulness-plot')
                faithful_summary = gr.Markdown(elem_id='faithfulness-summary')
                faithful_data = gr.JSON(visible=False)
                faithfulness_outputs = [faithful_plot, faithful_summary, faithful_data]
                gap_rows = gr.Dataframe(headers=['student layer', 'teacher layer', 'L1', 'L2', 'KL'],
                                        label='Gap per layer', interactive=False)
                with gr.Row():
                    teacher_top5 = gr.Label(num_top_classes=5, label='Teacher top-5')
                    student_top5 = gr.Label(num_top_classes=5, label='Student top-5')
                with gr.Accordion('Each map on its own, and as data', open=False):
                    panels = gr.Gallery(label='[CLS] attention per layer: teacher (left) and student (right), '
                                              'one colour scale per layer', columns=2, height='auto',
                                        elem_id='attention-panels')
                    maps = gr.JSON(label='per layer: both maps on the student grid, L1, L2, KL')
        # The Attention form by its request's fields; each endpoint takes what it uses, in this order.
        pair = dict(teacher=teacher, student=student)
        attention_form = dict(image=image, **pair, fusion=fusion, head=head, opacity=opacity)
        layer.release(attention_layer, inputs_kwargs=dict(**attention_form, layer=layer), outputs=layer_large,
                      api_name='attention_layer')
        attention_outputs = [panels, gap_plot, gap_rows, teacher_top5, student_top5, maps, paper_figure,
                             attention_downloads, seen, seen_note]
        gr.on([show.click, fusion.change, head.release, opacity.release], attention, inputs_kwargs=attention_form,
              outputs=attention_outputs, api_name='attention', validator=needs_image).success(
            layer_range, inputs=[student, layer], outputs=[layer, layer_large], api_visibility='private').success(
            faithfulness, inputs_kwargs=dict(image=image, **pair, protocol=protocol),
            outputs=faithfulness_outputs, api_name='faithfulness')
        protocol.change(faithfulness, inputs_kwargs=dict(image=image, **pair, protocol=protocol),
                        outputs=faithfulness_outputs, api_visibility='private')
        with gr.Accordion('A few images at once: one layer, teacher and student on each', open=False):
            with gr.Row():
                batch = gr.File(label=f'Up to {BATCH_LIMIT} images (none: the first {BATCH_LIMIT} examples)',
                                file_count='multiple', file_types=['image'], type='filepath', elem_id='batch-files')
                batch_layer = gr.Slider(*LAYERS, value=attention_defaults.layer, step=1,
                                        label='Student layer (1 to the student\'s last)', elem_id='batch-layer')
            show_batch = gr.Button('Show them')
            batch_figure = gr.Image(label='A row per image: teacher | student | student - teacher', show_label=False,
                                    type='filepath', interactive=False, elem_id='batch-figure')
            batch_rows = gr.Dataframe(headers=['image', 'student layer', 'teacher layer', 'L1', 'L2', 'KL'],
                                      interactive=False, label='Gap per image')
        show_batch.click(attention_images, inputs_kwargs=dict(files=batch, **pair, fusion=fusion, head=head,
                                                              layer=batch_layer, opacity=opacity),
                         outputs=[batch_figure, batch_rows], api_name='attention_images')
        gr.on([show.click, student.change], student_layers, inputs=[student, batch_layer], outputs=batch_layer,
              api_visibility='private')  # the few images' slider over the student's layers, as the large one's
        with gr.Accordion('More views: attention rollout, last-layer heads, attention mass, prefix share', open=False):
            with gr.Row():
                rollout_fusion = gr.Radio(['mean', 'max', 'min'], value=rollout_defaults.fusion,
                                          label='Rollout head fusion')
                discard = gr.Slider(*DISCARD, value=rollout_defaults.discard, step=0.05, label='Rollout discard ratio')
                keep = gr.Slider(*KEEP, value=rollout_defaults.keep, step=0.05,
                                 label='Mask keeps this share of attention')
            show_more = gr.Button('Show more views')
            more_panels = gr.Gallery(label='teacher and student: rollout, its mass mask, gradient rollout, each '
                                           'last-layer head', columns=4, height='auto', elem_id='more-panels')
            prefix_plot = gr.Plot(label='Share of [CLS] attention on prefix tokens, per layer', elem_id='prefix-plot')
            more_data = gr.JSON(label='rollouts, masks, heads and prefix shares as data')
        show_more.click(more_views, inputs_kwargs=dict(image=image, **pair, fusion=rollout_fusion, discard=discard,
                                                       keep=keep, opacity=opacity),
                        outputs=[more_panels, prefix_plot, more_data], api_name='more_views')
        teacher.change(offer.describe, teacher, teacher_info, api_visibility='private')
        student.change(offer.describe, student, student_info, api_visibility='private')

    with gr.Tab('Compare'):
        gr.Markdown('Two classifiers on the CIFAR-10 test set: the images one gets right and the other wrong '
                    '(paper Table 3), and per-class accuracy side by side (Table 2).')
        with gr.Row():
            model_a = gr.Dropdown(label='Model A (default: the best ADViT student)', choices=offer.choices(),
                                  value=defaults.compare_a, allow_custom_value=True)
            model_b = gr.Dropdown(label='Model B (default: the DeiT student)', choices=offer.choices(),
                                  value=defaults.compare_b, allow_custom_value=True)
            class_name = gr.Dropdown(['all', *CIFAR10_CLASSES], value='all', label='True class')
        run_compare = gr.Button('Compare', variant='primary')
        summary = gr.Markdown(elem_id='compare-summary')
        with gr.Row():
            a_only = gr.Gallery(label='A right, B wrong', columns=6, height=360, elem_id='a-only')
            b_only = gr.Gallery(label='B right, A wrong', columns=6, height=360, elem_id='b-only')
        with gr.Group():
            with gr.Row():
                image_index = gr.Number(label='Test image # (or select one above)', minimum=0, step=1,
                                        elem_id='image-index')
                show_image = gr.Button('Show both models on it')
            image_summary = gr.Markdown(elem_id='image-summary')
            with gr.Row():
                top5_a = gr.Label(num_top_classes=5, label='A top-5')
                top5_b = gr.Label(num_top_classes=5, label='B top-5')
            image_panels = gr.Gallery(label='the image, then A\'s and B\'s [CLS] attention per layer',
                                      columns=9, height=220, elem_id='image-panels')
        per_class_plot = gr.Plot(label='Per-class top-1')
        per_class_rows = gr.Dataframe(headers=['class', 'A %', 'B %', 'B − A'], label='Per-class top-1',
                                      interactive=False, elem_id='per-class-table')
        confusion_plot = gr.Plot(label='Confusion matrices', elem_id='confusion-plot')
        compare_outputs = [summary, a_only, b_only, per_class_rows, per_class_plot, confusion_plot]
        gr.on([run_compare.click, class_name.change], compare, inputs=[model_a, model_b, class_name],
              outputs=compare_outputs, api_name='compare')
        image_outputs = [image_panels, top5_a, top5_b, image_summary]
        show_image.click(compare_image, inputs=[model_a, model_b, image_index], outputs=image_outputs,
                         api_name='compare_image')
        for gallery, side in ((a_only, 'A'), (b_only, 'B')):
            gallery.select(picked(side), inputs=[model_a, model_b, class_name], outputs=image_index,
                           api_visibility='private').then(
                compare_image, inputs=[model_a, model_b, image_index], outputs=image_outputs,
                api_visibility='private')

    with gr.Tab('Train'):
        if desk is None:
            gr.Markdown(jobs_off, elem_id='jobs-off')
        else:
            job_defaults = JobForm()  # what the form opens on
            with gr.Row():
                with gr.Column(scale=1):
                    run_name = gr.Textbox(label='Run name (folder in runs/)', placeholder='e.g. tiny-l1')
                    method = gr.Dropdown(list(METHODS), value=job_defaults.method, multiselect=True,
                                         elem_id='job-methods',
                                         label='Method (several: one run of them all on the same batches, '
                                               'with its Table 1 at the end)')
                    student_model = gr.Dropdown(student_architectures(), value=job_defaults.model,
                                                allow_custom_value=True, label='Student architecture (timm name)')
                    model_args = gr.Textbox(label='Architecture arguments', placeholder='depth=6, embed_dim=192')
                    job_start = gr.Dropdown(label='Student starts from (a checkpoint: fine-tuning; its architecture '
                                                  'and image size are the student\'s)',
                                            choices=[('random weights', '')]
                                            + offer.choices(vit_only=True, checkpoints_only=True),
                                            value='', allow_custom_value=True, elem_id='job-start')
                    job_teacher = gr.Dropdown(label='Teacher checkpoint',
                                              choices=offer.choices(vit_only=True, checkpoints_only=True),
                                              value=defaults.teacher, allow_custom_value=True)
                    dataset = gr.Textbox(label='Dataset (CIFAR-10 archive or an ImageFolder path on the server, '
                                               'from the app\'s folder)', value=desk.default_data)
                    with gr.Row():
                        length = gr.Radio(list(LENGTHS), value=job_defaults.length, label='Run length in')
                        amount = gr.Number(job_defaults.amount, label='how many')
                    with gr.Row():
                        lr = gr.Number(job_defaults.lr, label='Learning rate')
                        attn_weight = gr.Number(job_defaults.attn_weight, label='Attention loss weight')
                        alpha = gr.Number(job_defaults.alpha, label='DeiT weight (alpha)')
                        tau = gr.Number(job_defaults.tau, label='Temperature (tau)')
                    with gr.Row():
                        seed = gr.Number(job_defaults.seed, step=1, label='Seed')
                        subset = gr.Number(job_defaults.subset, step=1, label='Subset (0: all images)')
                        batch_size = gr.Number(job_defaults.batch_size, step=1, label='Batch size')
                        device = gr.Radio(list(DEVICES), value=job_defaults.device, label='Device')
                        image_size = gr.Number(desk.teacher_size(defaults.teacher) or job_defaults.image_size,
                                               step=1, elem_id='job-image-size',
                                               label='Image size (px): the teacher\'s')
                    token = gr.Textbox(label='Token', type='password', visible=desk.token is not None)
                    launch = gr.Button('Launch', variant='primary')
                    launched_summary = gr.Markdown(job_summary(None), elem_id='launched-summary')
                    with gr.Accordion('Launched job, as data', open=False):
                        launched = gr.JSON(label='Launched job')
                with gr.Column(scale=2):
                    rows = desk.rows()
                    jobs = gr.Dataframe(headers=LIST_HEADERS, value=rows, interactive=False, label='Jobs')
                    # Any client names any job (the list is per page; API clients reconnect).
                    selected = gr.Dropdown(label='Job', choices=[row[0] for row in rows], allow_custom_value=True)
                    progress = gr.HTML(elem_id='job-progress')
                    curves = gr.Plot(label='Loss terms and test accuracy', elem_id='job-curves')
                    log = gr.Textbox(label='Output (end)', lines=12, max_lines=12, autoscroll=True)
                    with gr.Row():
                        cancel = gr.Button('Cancel', variant='stop')
                        resume = gr.Button('Resume')
                    job_summary_md = gr.Markdown(job_summary(None), elem_id='job-summary')
                    table1 = gr.Markdown(elem_id='job-table1')
                    with gr.Accordion('Job status, as data', open=False):
                        job = gr.JSON(label='Job status')
            # The form by JobForm's fields, the token last: the endpoint's parameters in this order.
            job_form = dict(name=run_name, method=method, model=student_model, model_args=model_args,
                            teacher=job_teacher, data=dataset, length=length, amount=amount, lr=lr,
                            attn_weight=attn_weight, alpha=alpha, tau=tau, seed=seed, subset=subset,
                            batch_size=batch_size, device=device, image_size=image_size)
            job_teacher.change(follow_teacher, inputs=job_teacher, outputs=image_size, api_visibility='private')
            job_start.change(propose_start, inputs=job_start, outputs=[student_model, model_args, image_size, lr, length,
                                                                       amount], api_name='start_proposal')
            # The start follows the token: clients that name the parameters before it by position keep working.
            launch.click(start_job, inputs_kwargs=dict(**job_form, token=token, start=job_start),
                         outputs=[launched, selected, jobs], api_name='start_job')
            gr.on([selected.change, gr.Timer(2.0).tick], job_status, inputs=selected,
                  outputs=[progress, curves, log, job, table1], api_name='job_status', show_progress='hidden')
            cancel.click(cancel_job, inputs=[selected, token], outputs=job, api_name='cancel_job')
            resume.click(resume_job, inputs=[selected, token], outputs=job, api_name='resume_job')
            # The sentences follow their JSON, whatever set it (an answer, the timer): the API stays as it was.
            launched.change(job_summary, inputs=launched, outputs=launched_summary, api_visibility='private',
                            show_progress='hidden')
            job.change(job_summary, inputs=job, outputs=job_summary_md, api_visibility='private', show_progress='hidden')
            gr.Timer(3.0).tick(list_jobs, outputs=jobs, api_name='list_jobs', show_progress='hidden')
            jobs.change(job_names, inputs=selected, outputs=selected, api_visibility='private', show_progress='hidden')

        with gr.Accordion('Distillation over time: how the student\'s attention moved toward the teacher\'s',
                          open=True):
            gr.Markdown('At every evaluation a run records, on held-out training images, each layer\'s gap to the '
                        'teacher and the student\'s maps: the bundle\'s students, finished runs and live jobs alike.')
            probe_choices, default_probed = studio.probes.choice(defaults.student)  # the best ADViT student's
            with gr.Row():
                probed = gr.Dropdown(probe_choices, value=default_probed, label='Model or run', allow_custom_value=True,
                                     elem_id='probe-source')
                probe_student = gr.Dropdown([], label='Student (of its run)', allow_custom_value=True,
                                            elem_id='probe-student')
                gap_kind = gr.Radio(['l1', 'l2', 'kl', f'l1{TO_RELEVANCE}'], value=probe_defaults.kind, label='Gap',
                                    info='to the teacher\'s attention, or (students of advit_relevance) to the '
                                         'relevance they learnt')
            with gr.Row():
                # The API takes any index the view checks (-1: the last evaluation); the page narrows both sliders
                # to the chosen student's evaluations and probe images (probe_controls).
                evaluation = gr.Slider(-1, MAX_INDEX, value=-1, step=1, label='Evaluation (step; -1: the last)',
                                       elem_id='probe-step')
                probe_image = gr.Slider(0, MAX_INDEX, value=probe_defaults.image, step=1, label='Probe image',
                                        elem_id='probe-image')
                probe_opacity = gr.Slider(*OPACITY, value=probe_defaults.opacity, step=0.05, label='Heatmap opacity')
            show_training = gr.Button('Show distillation over time', variant='primary')
            probe_summary = gr.Markdown(elem_id='probe-summary')
            students_plot = gr.Plot(label='Every student of the run: gap to the teacher, mean over layers',
                                    elem_id='probe-students')
            faithfulness_plot = gr.Plot(label='Every student of the run: are its maps faithful? (the quarter drop, '
                                              'points: masking its maps\' top quarter beyond a random quarter)',
                                        elem_id='probe-faithfulness')
            with gr.Row():
                heatmap_plot = gr.Plot(label='Gap per layer and step', elem_id='probe-heatmap')
                curves_plot = gr.Plot(label='Gap per layer against step', elem_id='probe-curves')
            gr.Markdown('**At the chosen step, on a probe image: teacher | student | student - teacher**')
            frame = gr.Image(type='filepath', show_label=False, interactive=False, elem_id='probe-frame')
            with gr.Accordion('The records as data', open=False):
                probe_data = gr.JSON(label='steps and per-layer gaps by kind')
        probe_form = dict(source=probed, student=probe_student, kind=gap_kind, evaluation=evaluation,
                             image=probe_image, opacity=probe_opacity)
        probe_outputs = [probe_summary, students_plot, heatmap_plot, curves_plot, frame, probe_data,
                            faithfulness_plot]
        gr.on([show_training.click, gap_kind.change, evaluation.release, probe_image.release, probe_opacity.release],
              probe_view, inputs_kwargs=probe_form, outputs=probe_outputs, api_name='training_view')
        if desk is not None:
            selected.change(probed_choices, inputs=[selected, probed], outputs=probed, api_visibility='private')
        probed.focus(probed_choices, inputs=[probed, probed], outputs=probed, api_visibility='private')
        gr.on([probed.change, probe_student.input], probe_controls, inputs=[probed, probe_student],
              outputs=[probe_student, evaluation, probe_image], api_visibility='private').success(
            probe_view, inputs_kwargs=probe_form, outputs=probe_outputs, api_visibility='private')

    with gr.Tab('About'):
        gr.Markdown(studio.scrub(about_markdown(offer.entries(), offer.bundle)))

    refresh_button.click(refresh, outputs=[teacher, student, model_a, model_b, problems], api_visibility='private')
    demo.load(refresh, outputs=[teacher, student, model_a, model_b, problems], api_visibility='private')
    demo.load(opening_views, outputs=[image, *attention_outputs, layer, layer_large, *faithfulness_outputs,
                                      *compare_outputs], api_visibility='private')
    if default_probed is not None:  # the view opens drawn, on the bundle's best ADViT student
        demo.load(probe_controls, inputs=[probed, probe_student], outputs=[probe_student, evaluation, probe_image],
                  api_visibility='private').success(probe_view, inputs_kwargs=probe_form,
                                                    outputs=probe_outputs, api_visibility='private')


if __name__ == '__main__':
    # The opening views are made while the server starts, so the first visitor does not wait for them either.
    # Only when serving: a process that merely imports the app would exit while the thread is inside torch,
    # which aborts the interpreter ("terminate called without an active exception").
    threading.Thread(target=opening_views, name='opening-views', daemon=True).start()
    if desk is not None:
        desk.manager.start_scheduler()  # queued jobs start only in a serving process, never on import
    demo.queue(default_concurrency_limit=2).launch(
        server_name=server_name(), server_port=int(os.environ.get('GRADIO_SERVER_PORT', '7860')),
        max_file_size=MAX_FILE_BYTES, show_error=not is_public(),
        app_kwargs=dict(exception_handlers=http_error_handlers()))  # an unknown endpoint: a 404 in words, not a 500
