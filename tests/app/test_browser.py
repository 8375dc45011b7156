"""End to end in a real browser: Debian's Chromium driven by Playwright against the launched app.

Screenshots go to the test's folder, and to ``$ADVIT_SCREENSHOTS`` when set (the README's come
from ``ADVIT_SCREENSHOTS=assets/screenshots pytest tests/app/test_browser.py``: Attention, its More views
and Compare on the shipped bundle, Train with a tiny job running). The test fails if the
page asks any host other than the app's own (no CDN, analytics or web fonts).

The page opens on a finished answer (Attention and Compare drawn before any click).
What is drawn is checked against the models shown: the Fig. 2 image has one row per student layer
(``figure.Layout``) and the few-images figure one per image, More views a rollout, a mask and every
last-layer head of both models, Compare's selected image both models' maps of every layer.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from app_server import running_app
from conftest import REPO, TINY

pytestmark = pytest.mark.slow  # drives the app in Chromium: `make test`, not `make check`

CHROMIUM = Path('/usr/bin/chromium')
# As the machine's probe runs it: no sandbox as root, no background calls to the outside.
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
EXAMPLE = REPO / 'assets' / 'examples' / 'horse_7000.png'


@pytest.fixture(scope='module')
def browser():
    playwright_api = pytest.importorskip('playwright.sync_api', reason='pip install playwright (make test does)')
    if not CHROMIUM.is_file():
        pytest.fail(f'{CHROMIUM} not found: install Debian\'s chromium (make test does)')
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def save(page, tmp_path: Path, name: str, publish: bool = True) -> None:
    """A full-page screenshot in the test's folder; with ``publish``, also in ``$ADVIT_SCREENSHOTS``."""
    path = tmp_path / f'{name}.png'
    page.screenshot(path=str(path), full_page=True)
    if publish and os.environ.get('ADVIT_SCREENSHOTS'):
        target = Path(os.environ['ADVIT_SCREENSHOTS'])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def image_sources(page, element_id: str) -> list[str]:
    return page.locator(f'#{element_id} img').evaluate_all('images => images.map(image => image.src)')


def choose_refreshed_option(page, element_id: str, option: str, attempts: int = 3) -> None:
    """Pick ``option`` in a dropdown whose focus reads its choices again: the answer can redraw the open
    list under the click, so the pick is tried again then (a person would click again too)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    for attempt in range(attempts):
        page.locator(f'#{element_id} input').click()
        try:
            page.get_by_role('option', name=option, exact=True).click(timeout=10_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            page.keyboard.press('Escape')


def shape(studio, name: str) -> tuple[int, int]:
    """(layers, heads of the last layer) of a model on offer, by the name the page shows it by."""
    model = studio.offer.load(name, 'model')[0]
    return len(model.blocks), model.blocks[-1].attn.num_heads


def natural_size(page, element_id: str) -> tuple[int, int]:
    """The pixels of the image shown in ``#element_id``, once it has loaded (Gradio's images load lazily:
    scrolled into view first)."""
    page.locator(f'#{element_id} img').scroll_into_view_if_needed(timeout=120_000)
    page.wait_for_function('id => { const image = document.querySelector(`#${id} img`);'
                           ' return image && image.complete && image.naturalWidth > 0; }', arg=element_id,
                           timeout=120_000)
    return tuple(page.locator(f'#{element_id} img').evaluate('image => [image.naturalWidth, image.naturalHeight]'))


def plot_traces(page, element_id: str) -> list[dict]:
    """Type and point count of each trace of the plotly plot in ``#element_id`` (as plotly holds them)."""
    return page.evaluate('id => document.querySelector(`#${id} .js-plotly-plot`).data'
                         '.map(trace => ({type: trace.type, points: (trace.x || []).length}))', element_id)


def layer_maps(page) -> list[str]:
    """The images of the accordion 'Each map on its own' (drawn only while it is open: it is closed again)."""
    accordion = page.get_by_text('Each map on its own, and as data')
    accordion.click()
    page.locator('#attention-panels img').first.wait_for(timeout=60_000)
    sources = image_sources(page, 'attention-panels')
    accordion.click()
    return sources


def opening_view(page, depth: int, size: int = 32) -> None:
    """The page as it opens, before any click: Attention's finished answer on the first example (the Fig. 2
    figure with a row per student layer, the last layer large, the deletion curves, what the student reads:
    ``size`` pixels square, enlarged by whole pixels to at least 128) and Compare's galleries, with no error badge."""
    from advit.app.attention_views import SEEN_SIZE
    from advit.app.figure import LARGE_PANEL, Layout
    from advit.app.render import PANEL_SIZE
    page.wait_for_function('size => document.querySelector("#attention-layer img")'
                           ' && document.querySelector("#faithfulness-plot .js-plotly-plot")?.data?.length === 8'
                           ' && document.querySelector("#seen-image img")'
                           ' && document.querySelector("#seen-note")?.textContent.includes(`${size}x${size}`)',
                           arg=size, timeout=180_000)
    assert natural_size(page, 'attention-figure') == Layout.of(PANEL_SIZE).size(depth)
    assert natural_size(page, 'attention-layer') == Layout.of(LARGE_PANEL).size(1)
    shown = max(1, SEEN_SIZE // size) * size
    assert natural_size(page, 'seen-image') == (shown, shown)
    page.get_by_role('tab', name='Compare').click()  # a tab is drawn when opened
    page.wait_for_function('() => document.querySelectorAll("#a-only img").length > 0'
                           ' && document.querySelector("#confusion-plot .js-plotly-plot")', timeout=180_000)
    assert page.get_by_text('Error', exact=True).count() == 0
    page.get_by_role('tab', name='Attention').click()


def show_attention(page, url: str, depth: int) -> None:
    """Upload the example (its preview shows), show attention, and check the Fig. 2 figure (a row per
    student layer), the maps per layer, the three downloads, and the layer shown large: none until the
    slider (over the student's layers) is released, then the last layer, then the first."""
    from PIL import Image
    import numpy as np
    from advit.app.figure import LARGE_PANEL, Layout
    from advit.app.render import PANEL_SIZE

    upload = page.locator('#upload')
    upload.locator('input[type=file]').set_input_files(str(EXAMPLE))
    upload.locator('img').wait_for(timeout=60_000)  # the image box's preview of the upload
    before = page.locator('#attention-figure img').get_attribute('src') \
        if page.locator('#attention-figure img').count() else None  # the opening view's, if drawn
    page.get_by_role('button', name='Show attention').click()
    page.wait_for_function('before => document.querySelector("#attention-figure img")?.src'
                           ' && document.querySelector("#attention-figure img").src !== before'
                           ' && document.querySelector("#gap-plot .js-plotly-plot")'
                           ' && document.querySelectorAll("#attention-downloads a[download]").length >= 3',
                           arg=before, timeout=120_000)
    assert natural_size(page, 'attention-figure') == Layout.of(PANEL_SIZE).size(depth)  # a row per student layer
    assert len(layer_maps(page)) == 2 * depth  # the teacher's and the student's map per layer
    # Then, drawn after the view: both models' deletion curves on this image (last layer, rollout, random).
    page.wait_for_function('() => document.querySelector("#faithfulness-plot .js-plotly-plot")?.data?.length === 8'
                           ' && document.querySelector("#faithfulness-summary")?.textContent.includes("predicts")',
                           timeout=120_000)
    assert plot_traces(page, 'faithfulness-plot') == [dict(type='scatter', points=9)] * 8

    # The downloads: the figure, the maps as .npz and as JSON, each a link that serves it.
    links = page.locator('#attention-downloads a[download]').evaluate_all(
        'links => links.map(link => [link.getAttribute("download"), link.href])')
    assert sorted(Path(name).suffix for name, _ in links) == ['.json', '.npz', '.png'], links
    for name, href in links:
        assert href.startswith(url), href
        response = page.request.get(href)
        assert response.ok, (href, response.status)
        if name.endswith('.png'):
            assert Image.open(io.BytesIO(response.body())).size == Layout.of(PANEL_SIZE).size(depth)
        elif name.endswith('.npz'):
            assert np.load(io.BytesIO(response.body()))['student_maps'].shape[0] == depth
        else:
            assert len(json.loads(response.body())['layers']) == depth

    # The slider runs over the student's layers, and the large layer waits for it: released on a layer,
    # that layer is drawn large; on another, it is redrawn.
    page.wait_for_function('top => document.querySelector("#layer-slider input[type=range]")?.max === top',
                           arg=str(max(depth, 2)), timeout=60_000)
    page.locator('#attention-layer img').wait_for(state='detached', timeout=60_000)  # the new image's waits
    number = page.locator('#layer-slider input[type=number]')
    before = None
    for layer in (depth, 1):
        number.fill(str(layer))
        number.blur()  # the number box releases the slider on blur
        page.wait_for_function('before => { const image = document.querySelector("#attention-layer img");'
                               ' return image && image.src !== before; }', arg=before, timeout=120_000)
        assert natural_size(page, 'attention-layer') == Layout.of(LARGE_PANEL).size(1)
        before = page.locator('#attention-layer img').get_attribute('src')


def show_few_images(page, files: list[Path] = (), depth: int | None = None) -> None:
    """Open 'A few images at once', upload ``files`` (none: the app takes its first examples), check the
    figure has a row per image and the table a row of gaps per image, by its name, and (given the student's
    ``depth``) that its layer slider runs over the student's layers only; close it again."""
    from playwright.sync_api import expect
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    from advit.app.attention_views import BATCH_LIMIT
    shown = list(files) or sorted(EXAMPLE.parent.glob('*.png'))[:BATCH_LIMIT]
    accordion = page.get_by_text('A few images at once')
    accordion.click()
    if depth is not None:  # a layer the student lacks is refused, so the page offers none
        page.wait_for_function('top => document.querySelector("#batch-layer input[type=range]")?.max === top',
                               arg=str(max(depth, 2)), timeout=60_000)
    if files:
        page.locator('#batch-files input[type=file]').set_input_files([str(path) for path in files])
        page.locator('#batch-files', has_text=files[-1].stem).wait_for(timeout=60_000)
    page.get_by_role('button', name='Show them', exact=True).click()
    assert natural_size(page, 'batch-figure') == Layout.of(PANEL_SIZE).size(len(shown))
    table = page.get_by_role('grid', name='Gap per image')  # Gradio's table: its rows are ARIA rows
    expect(table).to_have_attribute('aria-rowcount', str(len(shown) + 1), timeout=60_000)  # and the header
    names = table.locator('[role=row]:not([aria-rowindex="1"])').evaluate_all(
        'rows => rows.map(row => row.querySelector("[role=gridcell]").textContent.trim())')
    assert names == [path.stem[:16] for path in shown]
    accordion.click()


def show_more_views(page, teacher: tuple[int, int], student: tuple[int, int]) -> None:
    """Open More views and check its panels (both rollouts, masks and gradient rollouts, every last-layer head of each model)
    and the prefix-share plot (a line per model, a point per layer); ``teacher`` and ``student`` are
    (layers, heads)."""
    page.get_by_text('More views: attention rollout').click()
    page.get_by_role('button', name='Show more views', exact=True).click()
    panels = 6 + teacher[1] + student[1]
    page.wait_for_function(f'() => document.querySelectorAll("#more-panels img").length >= {panels}'
                           ' && document.querySelector("#prefix-plot .js-plotly-plot")?.data?.length',
                           timeout=120_000)
    assert len(image_sources(page, 'more-panels')) == panels
    assert plot_traces(page, 'prefix-plot') == [dict(type='scatter', points=teacher[0]),
                                                dict(type='scatter', points=student[0])]


def compare_and_pick(page, depth: int) -> str:
    """Compare (the galleries, the per-class table, both confusion matrices), then select the first image
    A gets right and B wrong (B right and A wrong if there is none): its test index, both models' map of
    every layer (``depth`` each). Returns the gallery picked from."""
    page.get_by_role('tab', name='Compare').click()
    page.get_by_role('button', name='Compare', exact=True).click()
    page.get_by_text('A right and B wrong').wait_for(timeout=180_000)
    page.wait_for_function('() => (document.querySelector("#per-class-table") || {}).textContent'
                           '?.includes("all (top-1)")'
                           ' && document.querySelector("#confusion-plot .js-plotly-plot")?.data?.length',
                           timeout=180_000)
    table = page.locator('#per-class-table').text_content()
    assert all(name in table for name in ('airplane', 'truck', 'all (top-1)'))
    assert [trace['type'] for trace in plot_traces(page, 'confusion-plot')] == ['heatmap', 'heatmap']
    side = 'a-only' if image_sources(page, 'a-only') else 'b-only'
    assert image_sources(page, side), 'the models agree on every test image'
    first = page.locator(f'#{side} img').first
    index = re.match(r'#(\d+) ', first.get_attribute('alt')).group(1)  # captions start with the test index
    first.click()
    page.wait_for_function(f'() => document.querySelectorAll("#image-panels img").length >= {1 + 2 * depth}'
                           ' && document.querySelector("#image-summary")?.textContent.includes("Test image #")',
                           timeout=120_000)
    assert page.locator('#image-index input').input_value() == index
    assert f'Test image #{index}' in page.locator('#image-summary').text_content()
    assert len(image_sources(page, 'image-panels')) == 1 + 2 * depth  # the image, then A's and B's map per layer
    return side


def show_distillation(page, students: int, depth: int, evaluations: int) -> None:
    """The Train tab's distillation view, drawn on load for the default student: every student of its run
    on one chart, its gap as a layer x step heatmap and curves, the frame at the last step; then an
    earlier step, by its slider, redraws the frame."""
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    page.get_by_role('tab', name='Train').click()
    page.wait_for_function('() => document.querySelector("#probe-heatmap .js-plotly-plot")?.data?.length'
                           ' && document.querySelector("#probe-frame img")', timeout=120_000)
    assert len(plot_traces(page, 'probe-students')) == students
    heatmap = page.evaluate('() => { const trace = document.querySelector("#probe-heatmap .js-plotly-plot").data[0];'
                            ' return {type: trace.type, rows: trace.y.length, steps: trace.x.length}; }')
    assert heatmap == dict(type='heatmap', rows=depth, steps=evaluations)  # a row per student layer
    assert [trace['points'] for trace in plot_traces(page, 'probe-curves')] == [evaluations] * depth
    assert natural_size(page, 'probe-frame') == Layout.of(PANEL_SIZE).size(depth)
    last = page.locator('#probe-frame img').get_attribute('src')
    number = page.locator('#probe-step input[type=number]')
    assert number.input_value() == str(evaluations - 1)
    number.fill('0')
    number.blur()
    page.wait_for_function('before => document.querySelector("#probe-frame img")?.src !== before', arg=last,
                           timeout=120_000)
    assert 'The figure: step' in page.locator('#probe-summary').text_content()


def test_every_tab_in_a_real_browser(browser, tiny_bundle, cifar_archive, tmp_path):
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    from advit.app.studio import Studio
    studio = Studio([tiny_bundle], None, cifar_archive)
    defaults = studio.offer.defaults()
    teacher, student = shape(studio, defaults.teacher), shape(studio, defaults.student)
    depth = shape(studio, defaults.compare_a)[0]
    assert shape(studio, defaults.compare_b)[0] == depth  # the selected image's maps pair up layer by layer
    runs = tmp_path / 'runs'
    with running_app(tmp_path / 'app.log', ADVIT_CHECKPOINTS=str(tiny_bundle), ADVIT_RUNS=str(runs),
                     ADVIT_DATA=str(cifar_archive), ADVIT_JOBS='on') as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        requested = []
        page.on('request', lambda request: requested.append(request.url))
        page.goto(url)
        opening_view(page, student[0])

        # Without an image, the button says so once, in words, and every output stays as it was.
        figure = page.locator('#attention-figure img').get_attribute('src')
        page.locator('#upload').get_by_role('button', name='Remove Image').click()
        page.get_by_role('button', name='Show attention').click()
        page.get_by_text('Upload an image, or choose one of the examples below, first.').wait_for(timeout=30_000)
        assert page.get_by_text('Error', exact=True).count() == 0
        assert page.locator('#attention-figure img').get_attribute('src') == figure

        # Attention: upload (a preview), the Fig. 2 figure, a layer large, the downloads.
        show_attention(page, url, student[0])
        save(page, tmp_path, 'attention', publish=False)  # the README's is of the shipped bundle

        # Another head fusion redraws the figure and the maps.
        figure, maps = page.locator('#attention-figure img').get_attribute('src'), layer_maps(page)
        page.locator('fieldset', has_text='Head fusion').get_by_label('max').check()
        page.wait_for_function('before => document.querySelector("#attention-figure img")?.src !== before',
                               arg=figure, timeout=120_000)
        assert natural_size(page, 'attention-figure') == Layout.of(PANEL_SIZE).size(student[0])
        redrawn = layer_maps(page)
        assert len(redrawn) == 2 * student[0] and redrawn != maps
        page.locator('#attention-layer img').wait_for(state='detached', timeout=60_000)  # it waits for the slider

        # A few images at once: two uploads, a row each.
        show_few_images(page, sorted(EXAMPLE.parent.glob('*.png'))[:2], depth=student[0])

        # More views: rollouts, masks and heads of both models, the prefix share per layer.
        show_more_views(page, teacher, student)
        save(page, tmp_path, 'attention-more', publish=False)

        # Compare: the galleries, the per-class table, the confusion matrices, one image selected.
        compare_and_pick(page, depth)
        save(page, tmp_path, 'compare', publish=False)

        # Train: a tiny job (the default method, advit_l1, with the bundle's teacher) starts, its curve grows,
        # and it is cancelled.
        page.get_by_role('tab', name='Train').click()
        page.get_by_label('Run name (folder in runs/)').fill('browser-job')
        page.get_by_label('Architecture arguments').fill(', '.join(f'{k}={v}' for k, v in TINY.items()))
        page.get_by_label('how many').fill('100000')
        page.get_by_label('Subset (0: all images)').fill('256')
        page.get_by_label('Batch size').fill('64')
        page.get_by_label('cpu', exact=True).check()
        page.get_by_role('button', name='Launch', exact=True).click()
        page.locator('#launched-summary', has_text='Job browser-job').wait_for(timeout=60_000)  # a sentence, not JSON
        points = ('() => { const plot = document.querySelector("#job-curves .js-plotly-plot");'
                  ' return plot && plot.data && plot.data.length ? plot.data[0].x.length : 0; }')
        page.wait_for_function(f'({points})() >= 2', timeout=90_000)
        first = page.evaluate(f'({points})()')
        page.wait_for_function(f'({points})() > {first}', timeout=60_000)
        save(page, tmp_path, 'train')
        page.get_by_role('button', name='Cancel').click()
        page.locator('#job-progress', has_text='cancelled').wait_for(timeout=30_000)

        # The Table 1 job: two methods, one process; both students' curves, then the run's Table 1, and the
        # run's distillation view (offered once it has evaluated: the list is read again on focus).
        page.get_by_label('Run name (folder in runs/)').fill('browser-table1')
        methods = page.locator('#job-methods input')
        methods.click()
        page.get_by_role('option', name='vit', exact=True).click()
        page.get_by_label('how many').fill('2')
        page.get_by_role('button', name='Launch', exact=True).click()
        page.locator('#job-progress', has_text='finished').wait_for(timeout=180_000)
        page.wait_for_function('() => document.querySelector("#job-table1 table")', timeout=60_000)
        rows = page.locator('#job-table1 tr').evaluate_all(
            'rows => rows.map(row => [...row.cells].map(cell => cell.textContent.trim()))')
        assert {'advit_l1', 'vit'} <= {cell for row in rows for cell in row}  # a row each, not 'vit' in 'advit_l1'
        students = page.evaluate('() => document.querySelector("#job-curves .js-plotly-plot").data'
                                 '.map(trace => trace.name.split(" · ")[0])')
        assert set(students) == {'advit_l1', 'vit'}
        choose_refreshed_option(page, 'probe-source', f'{runs.name}/browser-table1')
        page.wait_for_function('() => document.querySelector("#probe-summary")?.textContent.includes("advit_l1")'
                               ' && document.querySelector("#probe-students .js-plotly-plot")?.data?.length === 2',
                               timeout=120_000)
        heatmap_rows = page.evaluate('() => document.querySelector("#probe-heatmap .js-plotly-plot").data[0].y.length')
        assert heatmap_rows == TINY['depth']

        external = sorted({request for request in requested if not request.startswith(url)})
        assert external == [], f'the page asked other hosts: {external[:5]}'


def test_the_shipped_bundle_opens_on_its_defaults_in_a_real_browser(browser, cifar_archive, tmp_path):
    """`python app.py` on the committed checkpoints/: Attention opens on the bundle's teacher and best
    ADViT student (chosen on validation), Compare on that student against DeiT-hard, by readable names."""
    from advit.app.studio import Studio, bundle_folders
    studio = Studio(bundle_folders(REPO / 'checkpoints'), None, cifar_archive)  # as app.py opens it
    defaults, labels = studio.offer.defaults(), dict((key, label) for label, key in studio.offer.choices())
    assert Path(defaults.teacher).name == 'teacher.safetensors'
    assert Path(defaults.compare_b).name == 'deit_hard.safetensors'
    assert defaults.student == defaults.compare_a and Path(defaults.student).name.startswith('advit_')
    teacher, student = shape(studio, defaults.teacher), shape(studio, defaults.student)
    assert shape(studio, defaults.compare_b)[0] == student[0]  # compare_a is the student
    with running_app(tmp_path / 'app.log', ADVIT_RUNS=str(tmp_path / 'runs'), ADVIT_DATA=str(cifar_archive)) as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto(url)
        opening_view(page, student[0])
        save(page, tmp_path, 'opening')
        for label in (labels[defaults.teacher], labels[defaults.student]):  # the names people read, not paths
            page.wait_for_function('label => [...document.querySelectorAll("input")].some(i => i.value === label)',
                                   arg=label, timeout=60_000)
        show_attention(page, url, student[0])
        save(page, tmp_path, 'attention')
        show_few_images(page)  # none uploaded: the first examples
        show_more_views(page, teacher, student)
        save(page, tmp_path, 'attention-more')

        assert compare_and_pick(page, student[0]) == 'a-only' and len(image_sources(page, 'b-only')) > 0
        save(page, tmp_path, 'compare')

        from conftest import load_probes
        probes = load_probes(REPO / 'checkpoints')
        own = probes[Path(defaults.student).stem]
        show_distillation(page, len(probes), student[0], len(own.steps))
        save(page, tmp_path, 'distillation')


def test_attention_and_compare_on_the_papers_model_sizes_in_a_real_browser(browser, paper_models, tmp_path):
    """The paper's sizes alone in the app (``tests/paper_models.py``: a ViT-B/16 teacher, 224x224 students trained
    one step): it opens on the teacher and the best ADViT student with every layer's 14x14 maps, shows an
    upload's maps, the More views of 12 and 3 heads, and compares that student with the DeiT-hard one."""
    from advit.app.studio import Studio
    runs, folder, data = paper_models
    studio = Studio([folder], runs, data)
    defaults = studio.offer.defaults()
    assert Path(defaults.teacher).name == 'teacher.safetensors'
    teacher, student = shape(studio, defaults.teacher), shape(studio, defaults.student)
    assert teacher == (12, 12) and student[0] == 12 and shape(studio, defaults.compare_b)[0] == 12
    with running_app(tmp_path / 'app.log', ADVIT_CHECKPOINTS=str(folder), ADVIT_RUNS=str(runs),
                     ADVIT_DATA=str(data)) as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto(url)
        opening_view(page, student[0], size=224)
        show_attention(page, url, student[0])
        show_more_views(page, teacher, student)
        save(page, tmp_path, 'paper-attention', publish=False)
        compare_and_pick(page, student[0])
        assert 'on 30 test images' in page.locator('#compare-summary').text_content()
        save(page, tmp_path, 'paper-compare', publish=False)
        page.get_by_role('tab', name='Train').click()  # the form opens on the 224 teacher, so at its size
        assert page.locator('#job-image-size input').input_value() == '224'
