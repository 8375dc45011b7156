"""Atomic file writes (io.py): a reader sees the old file or the new one, never a torn one, and the temporary files
of killed writers do not pile up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from advit.core.checkpoint import load_checkpoint, save_checkpoint
from advit.core.io import atomic_path, write_json
from conftest import REPO


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / 'status.json'
    write_json(target, {'step': 1})
    with pytest.raises(RuntimeError, match='failed midway'):
        with atomic_path(target) as tmp:
            tmp.write_text('{"step": 2, "sta')
            raise RuntimeError('failed midway')
    assert json.loads(target.read_text()) == {'step': 1} and os.listdir(tmp_path) == ['status.json']


def test_a_new_file_gets_the_usual_mode_and_a_rewritten_one_keeps_its_own(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    new = tmp_path / 'made' / 'here.json'  # its folders are made too
    write_json(new, [1, 2])
    assert new.read_text() == json.dumps([1, 2], indent=2) + '\n'
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of the temporary file it was
    shared = tmp_path / 'shared.json'
    write_json(shared, {})
    shared.chmod(0o640)
    write_json(shared, {'a': 1})
    assert shared.stat().st_mode & 0o777 == 0o640 and json.loads(shared.read_text()) == {'a': 1}


def test_only_the_temporary_files_of_writers_that_are_gone_are_removed(tmp_path):
    gone = subprocess.Popen(['true'])
    gone.wait()  # its process id names no process now
    target = tmp_path / 'last.safetensors'
    dead = tmp_path / f'.last.safetensors.{gone.pid}.abc.tmp'
    live = tmp_path / f'.last.safetensors.{os.getpid()}.def.tmp'  # a writer still at work (this process)
    other = tmp_path / f'.other.safetensors.{gone.pid}.ghi.tmp'  # another file's
    for path in (dead, live, other):
        path.write_bytes(b'partial')
    with atomic_path(target) as tmp:
        tmp.write_bytes(b'whole')
    assert target.read_bytes() == b'whole'
    assert not dead.exists() and live.exists() and other.exists()


@pytest.mark.slow  # starts a writer and kills it (slow in test_faults.py, where it was)
def test_a_killed_writers_temp_file_is_cleaned_by_the_next_write(tmp_path):
    # Deterministic: the child is killed while it is certainly inside atomic_path (temp file written).
    target = tmp_path / 'last.safetensors'
    child = subprocess.Popen([sys.executable, '-c', (
        'import sys, time\nfrom advit.core.io import atomic_path\n'
        'with atomic_path(sys.argv[1]) as tmp:\n'
        '    tmp.write_bytes(b"x" * 100000)\n    print("inside", flush=True)\n    time.sleep(60)\n'), str(target)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == 'inside'
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(list(tmp_path.glob('.last.safetensors.*.tmp'))) == 1
    from conftest import TINY, tiny_vit
    model = tiny_vit()
    save_checkpoint(target, model, dict(model='vit_tiny_patch4_32'))  # the next write of the same file
    loaded = load_checkpoint(target, 'vit_tiny_patch4_32', TINY).model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in model.state_dict().items())
    assert list(tmp_path.glob('.last.safetensors.*.tmp')) == [], 'stale temp file of the killed writer remains'
