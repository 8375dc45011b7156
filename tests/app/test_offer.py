"""The models on offer (offer.py): the lists, the defaults chosen on validation, the problems, and one catalog scan
kept until a name it lacks."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from advit.app.studio import Studio


def test_choices_defaults_and_problems(studio, tiny_bundle):
    offer = studio.offer
    keys = [key for _, key in offer.choices()]
    # Named by folder and file, never by an absolute server path (the page's config is public).
    assert sorted(keys) == sorted(f'{tiny_bundle.name}/{n}.safetensors' for n in ('teacher', 'advit_l1', 'deit_hard'))
    assert offer.find(keys[0]).key == str(tiny_bundle.parent / keys[0])
    defaults = offer.defaults()
    assert defaults.teacher.endswith('teacher.safetensors')  # the largest model
    assert defaults.student.endswith('advit_l1.safetensors') and defaults.compare_a == defaults.student
    assert defaults.compare_b.endswith('deit_hard.safetensors')
    problems = offer.problems()
    assert 'broken.safetensors' in problems and 'Unusable' in problems
    assert 'advit_l1' in offer.describe(defaults.student)
    assert offer.layers(defaults.student) == 2 and offer.layers('nothing offered') == 0  # the layer slider's range


def test_the_catalog_is_scanned_once_until_a_name_it_lacks(tiny_bundle, cifar_archive, tmp_path, monkeypatch):
    """Requests look models up in the last scan; a model that appeared since (a finished run) is found by
    one rescan (and is listed from then on), and unknown names rescan at most every RESCAN_AFTER_S."""
    import shutil
    import advit.app.offer
    from advit.app.catalog import discover
    folder = tmp_path / 'checkpoints'
    shutil.copytree(tiny_bundle, folder)
    studio = Studio([folder], tmp_path / 'runs', cifar_archive)
    scans = []
    monkeypatch.setattr(advit.app.offer, 'discover', lambda *args: scans.append(args) or discover(*args))
    monkeypatch.setattr(advit.app.offer, 'RESCAN_AFTER_S', 0.0)
    teacher = studio.offer.defaults().teacher
    for _ in range(3):
        studio.offer.describe(teacher), studio.offer.choices(), studio.offer.load(teacher, 'teacher')
    assert len(scans) == 1
    (folder / 'copy.safetensors').write_bytes((folder / 'teacher.safetensors').read_bytes())
    assert 'checkpoints/copy.safetensors' not in [key for _, key in studio.offer.choices()]
    assert studio.offer.find('checkpoints/copy.safetensors').name == 'checkpoints/copy.safetensors'
    assert len(scans) == 2 and 'checkpoints/copy.safetensors' in [key for _, key in studio.offer.choices()]
    assert studio.offer.find('checkpoints/none.safetensors') is None and len(scans) == 3
    monkeypatch.setattr(advit.app.offer, 'RESCAN_AFTER_S', 3600.0)  # a stream of made-up names: no rescan each
    assert all(studio.offer.find(f'checkpoints/none{index}.safetensors') is None for index in range(20))
    assert len(scans) == 3


def test_defaults_are_chosen_on_validation_and_names_are_readable(tmp_path, cifar_archive):
    """The bundle's teacher; the ADViT student of best validation top-1 even where another has the
    better test top-1; DeiT-hard before a better DeiT-soft. Two models of one name are told apart."""
    from advit.core.checkpoint import load_checkpoint, save_checkpoint
    from conftest import save_tiny_checkpoint
    folder, other = tmp_path / 'checkpoints', tmp_path / 'more'
    folder.mkdir()
    other.mkdir()
    for name, method, val, test in (('teacher', 'vit', 80.0, 80.0), ('advit_l1', 'advit_l1', 60.0, 40.0),
                                    ('advit_l2', 'advit_l2', 55.0, 90.0), ('deit_soft', 'deit_soft', 70.0, 70.0),
                                    ('deit_hard', 'deit_hard', 50.0, 50.0)):
        path = save_tiny_checkpoint(folder / f'{name}.safetensors', method, 0)
        loaded = load_checkpoint(path)
        save_checkpoint(path, loaded.model, dict(loaded.meta, val_top1=val, test_top1=test))
    studio = Studio([folder], None, cifar_archive)
    defaults = {role: Path(key).stem for role, key in asdict(studio.offer.defaults()).items()}
    assert defaults == dict(teacher='teacher', student='advit_l1', compare_a='advit_l1', compare_b='deit_hard')
    labels = dict((Path(key).stem, label) for label, key in studio.offer.choices())
    assert labels['teacher'].startswith('Teacher · ViT-Ti/4') and labels['teacher'].endswith('· 80.0%')
    assert labels['advit_l1'].startswith('ADViT-L1 student · ') and labels['deit_soft'].startswith('DeiT-soft student')

    (other / 'advit_l1.safetensors').write_bytes((folder / 'advit_l1.safetensors').read_bytes())
    both = Studio([folder, other], None, cifar_archive).offer.choices()
    twins = [label for label, key in both if Path(key).stem == 'advit_l1']
    assert len(twins) == 2 and len(set(twins)) == 2 and all(label.startswith(labels['advit_l1']) for label in twins)
    assert len({label for label, _ in both}) == len(both)
    # The earlier bundle kept inside it (its students better on validation, another teacher's): the defaults stay
    # the bundle's own, and its models are on offer, named as the earlier bundle's.
    from advit.app.studio import bundle_folders
    from advit.results.bundle import EARLIER
    (folder / EARLIER).mkdir()
    for name, method in (('teacher', 'vit'), ('advit_l2', 'advit_l2'), ('deit_hard', 'deit_hard')):
        path = save_tiny_checkpoint(folder / EARLIER / f'{name}.safetensors', method, 1)
        loaded = load_checkpoint(path)
        save_checkpoint(path, loaded.model, dict(loaded.meta, val_top1=99.0))
    with_earlier = Studio(bundle_folders(folder), None, cifar_archive).offer
    assert asdict(with_earlier.defaults()) == dict(
        teacher='checkpoints/teacher.safetensors', student='checkpoints/advit_l1.safetensors',
        compare_a='checkpoints/advit_l1.safetensors', compare_b='checkpoints/deit_hard.safetensors')
    earlier = [label for label, key in with_earlier.choices() if Path(key).parent.name == EARLIER]
    assert len(earlier) == 3 and all(label.endswith(f'· {EARLIER} bundle') for label in earlier)
