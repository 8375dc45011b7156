"""Distillation over time, chosen (probe_views.py): the probed models and runs on offer, a student's record drawn
from the shipped bundle's probes and a live run's, and what cannot be shown refused in words."""
from __future__ import annotations

import numpy as np
import pytest

from advit.app.forms import ProbeRequest
from advit.app.offer import StudioError
from advit.app.probe_views import ProbeOutline
from advit.app.studio import Studio
from conftest import QUICK_BUNDLE, REPO


def test_distillation_over_time_from_the_shipped_bundles_records(tmp_path, cifar_archive):
    import shutil
    from advit.app.figure import Layout
    from advit.app.render import PANEL_SIZE
    from advit.measure.probe_file import load_probe
    runs = tmp_path / 'runs'
    bundle = Studio([REPO / 'checkpoints'], runs, cifar_archive)
    sources = bundle.probes.probed()
    assert 'checkpoints/advit_l1.safetensors' in sources and 'checkpoints/teacher.safetensors' not in sources
    view = bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', kind='l2', evaluation=2, image=1))
    probe = load_probe(REPO / 'checkpoints' / 'advit_l1.probe.npz')
    assert view.student == 'advit_l1' and 'vit' in view.students_names and view.data['steps'] == probe.steps.tolist()
    np.testing.assert_array_equal(np.asarray(view.heatmap.data[0].z), probe.gap('l2').T)
    assert len(view.curves.data) == probe.layers and len(view.students.data) == len(view.students_names)
    assert view.frame.size == Layout.of(PANEL_SIZE).size(probe.layers)
    assert f'step {probe.steps[2]}, probe image 1' in view.summary
    # Another step draws other student maps over the same probe image.
    last = bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', kind='l2', evaluation=-1, image=1))
    assert not np.array_equal(np.asarray(last.frame), np.asarray(view.frame))
    assert bundle.probes.outline('checkpoints/advit_l1.safetensors') == ProbeOutline(
        students=view.students_names, student='advit_l1', evaluations=len(probe.steps), images=len(probe.images))
    # A live job's run folder is offered once it has evaluated, by its runs name, never by a path.
    (runs / 'live' / 'advit_l2').mkdir(parents=True)
    shutil.copy(QUICK_BUNDLE / 'advit_l2.probe.npz', runs / 'live' / 'advit_l2' / 'attention_probe.npz')
    assert 'runs/live' in bundle.probes.probed()
    assert bundle.probes.view(ProbeRequest('runs/live')).student == 'advit_l2'
    for source, message in (('checkpoints/teacher.safetensors', 'not a model or run with an attention probe'),
                            (str(REPO / 'checkpoints' / 'advit_l1.safetensors'), 'not a model or run'),
                            ('/etc', 'not a model or run')):
        with pytest.raises(StudioError, match=message):
            bundle.probes.view(ProbeRequest(source))
    with pytest.raises(StudioError, match='evaluation 99 out of range'):
        bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', evaluation=99))
    with pytest.raises(StudioError, match="no student 'nobody'"):
        bundle.probes.view(ProbeRequest('checkpoints/advit_l1.safetensors', student='nobody'))
    (runs / 'live' / 'advit_l2' / 'attention_probe.npz').write_bytes(b'torn')
    with pytest.raises(StudioError) as corrupt:
        bundle.probes.view(ProbeRequest('runs/live'))
    assert str(tmp_path) not in str(corrupt.value)  # the message names the run, not the server's folders
