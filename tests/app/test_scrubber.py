"""The scrubber (scrubber.py): text for clients names the server's folders as the app names them, and no other
absolute path whole."""
from __future__ import annotations

from advit.app.about import about_markdown
from advit.app.scrubber import Scrubber
from advit.app.studio import Studio
from conftest import REPO


def test_no_server_path_in_a_models_card(tiny_bundle, cifar_archive, tmp_path):
    """A student trained with --teacher as an absolute path: its card and the About tab name no folder."""
    from advit.core.checkpoint import load_checkpoint, save_checkpoint
    folder = tmp_path / 'checkpoints'
    folder.mkdir()
    loaded = load_checkpoint(tiny_bundle / 'advit_l1.safetensors')
    teacher = '/srv/private/models/teacher.safetensors'
    save_checkpoint(folder / 'student.safetensors', loaded.model, dict(loaded.meta, teacher=teacher))
    studio = Studio([folder], tmp_path / 'runs', cifar_archive)
    card = studio.offer.describe(studio.offer.choices()[0][1])
    assert '**teacher**: .../teacher.safetensors' in card and '/srv' not in card
    about = studio.scrub(about_markdown(studio.offer.entries()))
    assert '/srv' not in about and str(tmp_path) not in about


def test_each_folder_is_named_by_its_own_name_however_the_text_spells_it(tmp_path):
    """A checkpoint or runs folder reads as its name, also where the text has the folder's resolved path (a link
    followed); a folder of None (no runs folder) is skipped."""
    real = tmp_path / 'disk' / 'bundle'
    real.mkdir(parents=True)
    link = tmp_path / 'checkpoints'
    link.symlink_to(real)
    scrub = Scrubber([link, None, tmp_path / 'runs'])
    assert scrub(f'{link}/teacher.safetensors, {real}/teacher.safetensors') == \
        'checkpoints/teacher.safetensors, checkpoints/teacher.safetensors'
    assert scrub(f'{tmp_path}/runs/a/best.safetensors') == 'runs/a/best.safetensors'


def test_the_dataset_and_the_apps_folder_are_named_from_the_apps_folder_and_any_other_path_by_its_file():
    beside = REPO.parent / 'shared' / 'cifar10.tar.xz'  # a dataset beside the app's folder
    scrub = Scrubber([], beside)
    assert scrub(f'reading {beside}') == 'reading ../shared/cifar10.tar.xz'
    assert scrub(f'{REPO}/advit/cli.py, line 3, run in {REPO}') == 'advit/cli.py, line 3, run in .'
    assert scrub('/usr/lib/python3/os.py and /srv/secret/notes.txt') == '.../os.py and .../notes.txt'
    assert Scrubber([])(f'reading {beside}') == 'reading .../cifar10.tar.xz'  # not the app's dataset: its file


def test_a_folder_inside_the_apps_folder_keeps_its_own_name():
    nested = REPO / 'elsewhere' / 'models'
    assert Scrubber([nested])(f'{nested}/a.safetensors') == 'models/a.safetensors'
    assert Scrubber([])(f'{nested}/a.safetensors') == 'elsewhere/models/a.safetensors'
