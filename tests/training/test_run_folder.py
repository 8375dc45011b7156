"""The run folder: one module names its files, stamps their format and reads them as a torn file allows."""
from __future__ import annotations

import json
import re

from advit.training.run_folder import (
    BEST,
    CONFIG,
    FORMAT_VERSION,
    LAST,
    LOG,
    METRICS,
    SESSIONS,
    STATUS,
    RunFolder,
    write_config,
)
from advit.training.train import TrainConfig
from conftest import REPO


def test_the_config_is_stamped_with_the_folders_format_and_an_older_folder_reads_as_version_1(tmp_path):
    run = tmp_path / 'run'
    write_config(run, dict(method='vit', lr=1e-3), world_size=1, group=['vit'])
    folder = RunFolder(run)
    assert folder.config()['format'] == FORMAT_VERSION == folder.format_version()
    assert TrainConfig.from_dict(dict(folder.config(), out=str(run))).lr == 1e-3, 'the stamp is not a setting'
    old = tmp_path / 'old'
    old.mkdir()
    (old / CONFIG).write_text(json.dumps(dict(method='vit')))
    assert RunFolder(old).format_version() == 1


def test_a_missing_or_torn_file_reads_as_not_written_yet(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.config() == {} and folder.status() == {} and not folder.finished()
    folder.status_file.write_text('{"state": "fini')  # a write cut short by a kill
    assert folder.status() == {}
    folder.status_file.write_text(json.dumps({'state': 'finished', 'step': 3}))
    assert folder.finished() and (folder.best, folder.last) == (tmp_path / BEST, tmp_path / LAST)


def test_no_other_module_spells_a_run_folders_file_names():
    """The names live in run_folder.py alone: a module that wants a run's file asks RunFolder (or the constant)."""
    names = [CONFIG, STATUS, METRICS, LOG, SESSIONS, BEST, LAST]
    spelled = re.compile('|'.join(re.escape(f"'{name}'") for name in names))
    owners = {REPO / 'advit' / 'training' / 'run_folder.py', REPO / 'advit' / 'core' / 'hf_import.py'}  # transformers' own config.json
    found = [f'{path.relative_to(REPO)}: {match.group()}' for path in sorted((REPO / 'advit').rglob('*.py'))
             if path not in owners for match in spelled.finditer(path.read_text())]
    found += [f'app.py: {match.group()}' for match in spelled.finditer((REPO / 'app.py').read_text())]
    assert found == []
