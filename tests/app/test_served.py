"""The app's served files: written once under their content's name, never rewritten, the folder bounded."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advit.app.served import ServedFiles, gradio_cache_dir
from conftest import noise_image


def test_the_same_content_is_the_same_file_never_rewritten(tmp_path):
    store = ServedFiles(tmp_path / 'served')
    first = store.save_image(noise_image(seed=0))
    inode = os.stat(first).st_ino
    again = store.save_image(noise_image(seed=0))
    assert again == first and os.stat(again).st_ino == inode, 'a file a response may be streaming is not replaced'
    other = store.save_image(noise_image(seed=1))
    assert other != first
    with Image.open(first) as image:
        assert np.array_equal(np.asarray(image.convert('RGB')).shape, (32, 32, 3))
    assert not [p for p in (tmp_path / 'served').iterdir() if p.name.startswith('.incoming-')]


def test_the_folder_stays_under_its_cap_least_recently_served_first(tmp_path):
    sizes = [len(Path(ServedFiles(tmp_path / f'probe{i}').save_image(noise_image(seed=i))).read_bytes()) for i in range(3)]
    store = ServedFiles(tmp_path / 'served', max_bytes=int(2.5 * max(sizes)))
    a, b = store.save_image(noise_image(seed=0)), store.save_image(noise_image(seed=1))
    store.save_image(noise_image(seed=0))  # served again: now b is the least recently served
    c = store.save_image(noise_image(seed=2))
    assert Path(a).is_file() and Path(c).is_file() and not Path(b).exists()
    on_disk = sum(p.stat().st_size for p in (tmp_path / 'served').iterdir())
    assert on_disk == store.size <= store.max_bytes
    for seed in range(3, 40):
        store.save_image(noise_image(seed=seed))
        assert sum(p.stat().st_size for p in (tmp_path / 'served').iterdir()) <= store.max_bytes


def test_a_file_removed_behind_its_back_is_written_again(tmp_path):
    store = ServedFiles(tmp_path / 'served')
    path = store.save_image(noise_image(seed=0))
    os.remove(path)  # Gradio's own cache expiry (delete_cache) removes files it has served
    assert store.save_image(noise_image(seed=0)) == path and Path(path).is_file()


def test_gallery_pairs_paths_with_captions(tmp_path):
    store = ServedFiles(tmp_path / 'served')
    items = store.gallery([(noise_image(seed=0), 'zero'), (noise_image(seed=1), 'one')])
    assert [caption for _, caption in items] == ['zero', 'one'] and all(Path(p).is_file() for p, _ in items)


def test_each_app_process_has_its_own_folder_and_ended_ones_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv('GRADIO_TEMP_DIR', str(tmp_path / 'gradio'))
    base = tmp_path / 'gradio' / 'advit-served'
    ended = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead = base / ended.stdout.strip()
    dead.mkdir(parents=True)
    (dead / 'old.webp').write_bytes(b'x')
    alive = base / str(os.getppid())  # the pytest runner's parent: alive, another app's folder
    alive.mkdir()
    store = ServedFiles.from_env()
    assert store.root == gradio_cache_dir() / 'advit-served' / str(os.getpid())
    assert not dead.exists() and alive.is_dir()


def test_a_cap_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match='positive'):
        ServedFiles(tmp_path, max_bytes=0)
