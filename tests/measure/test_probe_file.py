"""The attention probe's file: found beside checkpoints, runs, group runs and the bundle; corrupt or foreign files
refused with a message."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import BUNDLE_STUDENTS, REPO, load_probes

from advit.measure.probe_file import ProbeError, find_probes, load_probe, read_probe

BUNDLE = REPO / 'checkpoints'


@pytest.mark.slow
def test_probes_are_found_for_checkpoints_runs_groups_and_the_bundle(group_run, tmp_path):
    probe = group_run / 'advit_l1' / 'attention_probe.npz'
    assert find_probes(group_run) == {'advit_l1': probe, 'vit': group_run / 'vit' / 'attention_probe.npz'}
    assert find_probes(group_run / 'advit_l1') == {'advit_l1': probe}
    assert find_probes(group_run / 'advit_l1' / 'best.safetensors') == {'advit_l1': probe}
    assert find_probes(BUNDLE / 'advit_l1.safetensors') == {'advit_l1': BUNDLE / 'advit_l1.probe.npz'}
    assert find_probes(BUNDLE) == {name: BUNDLE / f'{name}.probe.npz' for name in BUNDLE_STUDENTS}
    assert list(load_probes(group_run)) == ['advit_l1', 'vit']

    with pytest.raises(ProbeError, match='teacher.safetensors has no attention probe'):
        find_probes(BUNDLE / 'teacher.safetensors')  # a teacher is not distilled: nothing recorded
    with pytest.raises(ProbeError, match='holds no attention probe'):
        find_probes(tmp_path)
    with pytest.raises(ProbeError, match='does not exist'):
        find_probes(tmp_path / 'nowhere')


def _write_npz(path, **arrays):
    with open(path, 'wb') as f:
        np.savez(f, **arrays)


def test_corrupt_or_foreign_files_are_refused_with_a_message(tmp_path):
    real = BUNDLE / 'advit_l1.probe.npz'
    arrays = read_probe(real)
    run = tmp_path / 'run'
    run.mkdir()
    target = run / 'attention_probe.npz'
    cases = {
        'empty': (b'', 'not an .npz archive'),
        'text': (b'not a probe at all', 'not an .npz archive'),
        'truncated': (real.read_bytes()[:len(real.read_bytes()) // 2], 'not an .npz archive'),
        # An archive whose insides are damaged: zip's own checksum finds it.
        'damaged': (bytes(b ^ 0xFF if 1000 <= i < 1100 else b for i, b in enumerate(real.read_bytes())),
                    'not a readable attention probe file'),
    }
    for name, (content, message) in cases.items():
        target.write_bytes(content)
        with pytest.raises(ProbeError, match=message):
            load_probe(target)
    np.save(tmp_path / 'array.npy', arrays['gaps'])
    shutil.copyfile(tmp_path / 'array.npy', target)  # a lone array under the probe's name
    with pytest.raises(ProbeError, match='not an .npz archive'):
        load_probe(target)

    evaluations = len(arrays['steps'])
    broken = {
        'it has no images, teacher_layers': {k: v for k, v in arrays.items() if k not in ('images', 'teacher_layers')},
        r'gaps has shape \(6, 3, 5\)': dict(arrays, gaps=np.zeros((6, 3, 5), np.float32)),
        rf'student_maps has shape \({evaluations - 1}, 8, 4, 64\)':
            dict(arrays, student_maps=arrays['student_maps'][1:]),
        'the grid': dict(arrays, grid=np.array([4, 4])),
        'kinds should name': dict(arrays, kinds=np.array([1, 2, 3])),
        'steps should be': dict(arrays, steps=np.zeros(0, np.int64)),
        'not a readable': dict(arrays, kinds=np.array(['l1', None, 'kl'], dtype=object)),  # needs unpickling
        'come together': dict({k: v for k, v in arrays.items() if k != 'faithfulness_sources'},
                              faithfulness=np.zeros((evaluations, 5), np.float32)),
        rf'faithfulness \({evaluations}, 4\) should be float':
            dict(arrays, faithfulness=np.zeros((evaluations, 4), np.float32),
                 faithfulness_sources=np.array(['a', 'b', 'c', 'd', 'e'])),
        'then rollout': dict(arrays, faithfulness=np.zeros((evaluations, 5), np.float32),  # right count, other names
                             faithfulness_sources=np.array(['layer 1', 'layer 2', 'layer 3', 'layer 4', 'mean'])),
    }
    for message, content in broken.items():
        _write_npz(target, **content)
        with pytest.raises(ProbeError, match=message):
            load_probe(target)
        with pytest.raises(ProbeError, match=message):
            load_probes(run)  # the same message through the run folder
    with pytest.raises(ProbeError, match='no attention probe file'):
        load_probe(tmp_path / 'missing.npz')
