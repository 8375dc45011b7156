"""End to end in a real browser: Debian's Chromium driven by Playwright against the launched app.

Screenshots go to the test's folder, and to ``$ADVIT_SCREENSHOTS`` when set (the README's come
from ``ADVIT_SCREENSHOTS=assets/screenshots pytest tests/test_browser.py``: Attention and Compare
on the shipped bundle, Train with a tiny job running). The test fails if the
page asks any host other than the app's own (no CDN, analytics or web fonts).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app_server import running_app
from conftest import REPO, TINY

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


def test_every_tab_in_a_real_browser(browser, tiny_bundle, cifar_archive, tmp_path):
    runs = tmp_path / 'runs'
    with running_app(tmp_path / 'app.log', ADVIT_CHECKPOINTS=str(tiny_bundle), ADVIT_RUNS=str(runs),
                     ADVIT_DATA=str(cifar_archive), ADVIT_JOBS='on') as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        requested = []
        page.on('request', lambda request: requested.append(request.url))
        page.goto(url)

        # Attention: upload, and see a map per layer for both models and the gap chart.
        page.locator('input[type=file]').first.set_input_files(str(EXAMPLE))
        page.get_by_role('button', name='Show attention').click()
        layer_images = f'document.querySelectorAll("#attention-panels img").length >= {2 * TINY["depth"]}'
        page.wait_for_function(f'() => {layer_images} && document.querySelector("#gap-plot .js-plotly-plot")',
                               timeout=60_000)
        mean_maps = image_sources(page, 'attention-panels')
        assert len(mean_maps) == 2 * TINY['depth']  # the teacher's and the student's map of every layer
        save(page, tmp_path, 'attention', publish=False)  # the README's is of the shipped bundle

        # Another head fusion redraws the maps.
        page.get_by_label('max').check()
        page.wait_for_function('before => [...document.querySelectorAll("#attention-panels img")]'
                               '.map(image => image.src).join() !== before.join()', arg=mean_maps, timeout=60_000)
        assert len(image_sources(page, 'attention-panels')) == 2 * TINY['depth']

        # Compare: the galleries and the per-class table.
        page.get_by_role('tab', name='Compare').click()
        page.get_by_role('button', name='Compare', exact=True).click()
        page.get_by_text('A right and B wrong').wait_for(timeout=60_000)
        page.wait_for_function('() => (document.querySelector("#per-class-table") || {}).textContent'
                               '?.includes("all (top-1)")', timeout=60_000)
        table = page.locator('#per-class-table').text_content()
        assert all(name in table for name in ('airplane', 'truck', 'all (top-1)'))
        assert len(image_sources(page, 'a-only')) + len(image_sources(page, 'b-only')) > 0
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
        page.get_by_role('button', name='Launch').click()
        points = ('() => { const plot = document.querySelector("#job-curves .js-plotly-plot");'
                  ' return plot && plot.data && plot.data.length ? plot.data[0].x.length : 0; }')
        page.wait_for_function(f'({points})() >= 2', timeout=90_000)
        first = page.evaluate(f'({points})()')
        page.wait_for_function(f'({points})() > {first}', timeout=60_000)
        save(page, tmp_path, 'train')
        page.get_by_role('button', name='Cancel').click()
        page.locator('#job-progress', has_text='cancelled').wait_for(timeout=30_000)

        external = sorted({request for request in requested if not request.startswith(url)})
        assert external == [], f'the page asked other hosts: {external[:5]}'


def test_the_shipped_bundle_opens_on_its_defaults_in_a_real_browser(browser, cifar_archive, tmp_path):
    """`python app.py` on the committed checkpoints/: Attention opens on the bundle's teacher and best
    ADViT student (chosen on validation), Compare on that student against DeiT-hard, by readable names."""
    from advit.studio import Studio
    studio = Studio([REPO / 'checkpoints'], None, cifar_archive)
    defaults, labels = studio.default_keys(), dict((key, label) for label, key in studio.choices())
    assert Path(defaults['teacher']).name == 'teacher.safetensors'
    assert Path(defaults['compare_b']).name == 'deit_hard.safetensors'
    assert defaults['student'] == defaults['compare_a'] and Path(defaults['student']).name.startswith('advit_')
    depth = len(studio.models.get(defaults['student'])[0].blocks)
    with running_app(tmp_path / 'app.log', ADVIT_RUNS=str(tmp_path / 'runs'), ADVIT_DATA=str(cifar_archive)) as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto(url)
        for label in (labels[defaults['teacher']], labels[defaults['student']]):  # the names people read, not paths
            page.wait_for_function('label => [...document.querySelectorAll("input")].some(i => i.value === label)',
                                   arg=label, timeout=60_000)
        page.locator('input[type=file]').first.set_input_files(str(EXAMPLE))
        page.get_by_role('button', name='Show attention').click()
        page.wait_for_function(f'() => document.querySelectorAll("#attention-panels img").length >= {2 * depth}'
                               ' && document.querySelector("#gap-plot .js-plotly-plot")', timeout=60_000)
        assert len(image_sources(page, 'attention-panels')) == 2 * depth
        save(page, tmp_path, 'attention')

        page.get_by_role('tab', name='Compare').click()
        page.get_by_role('button', name='Compare', exact=True).click()
        page.wait_for_function('() => (document.querySelector("#per-class-table") || {}).textContent'
                               '?.includes("all (top-1)")', timeout=120_000)
        assert len(image_sources(page, 'a-only')) > 0 and len(image_sources(page, 'b-only')) > 0
        save(page, tmp_path, 'compare')
