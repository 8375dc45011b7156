"""The paper's model sizes (224x224 inputs, 16-pixel patches: a 14x14 grid), trained here for one step by the real
command line, as a GPU run of ``advit train --preset paper-*`` would save them.

A ViT-B/16 teacher (12 heads); ViT-Ti/16 students (3 heads) by vit, deit_hard and advit_l1 in one group run; a
ViT-S/16 student (6 heads) by advit_l2; a DeiT-Ti/16 student with a distillation token; a ResNet-10t; and a plain
timm state dict (``.pth``) made a checkpoint by ``advit import``. Their weights are random plus one step, so
their accuracy means nothing: the tests check that the architectures go through every view, not how well
they do. The paper's pretrained weights would need a network (``--no-pretrained`` turns them off).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = 'paper-base'
# A checkpoint of the paper folder (its stem) -> the run folder, under the runs folder, whose best checkpoint it is.
PAPER_RUNS = {
    'teacher': 'paper-base',
    'vit_tiny_vit': 'paper-tiny/vit',
    'vit_tiny_deit_hard': 'paper-tiny/deit_hard',
    'vit_tiny_advit_l1': 'paper-tiny/advit_l1',
    'vit_small_advit_l2': 'paper-small',
    'deit_tiny_distilled': 'paper-deit-distilled',
    'resnet10t': 'paper-resnet10t',
}
# Enough to take one step and evaluate: the held-out images select the checkpoint, the test images score it.
ONE_STEP = ['--no-pretrained', '--steps', '1', '--batch-size', '4', '--val-size', '8', '--eval-batch-size', '16',
            '--faithfulness-images', '0', '--device', 'cpu', '--attn-path', 'fused', '--log-every', '1']


def advit(*args: str | Path) -> None:
    """``python -m advit ARGS`` in a subprocess; fails with its output."""
    done = subprocess.run([sys.executable, '-m', 'advit', *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'advit {" ".join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}')


def train_paper_models(runs: Path, data: Path) -> None:
    """Each paper-size run of ``PAPER_RUNS``, one step each, in ``runs``."""
    common = ['--data', data, *ONE_STEP]
    advit('train', '--preset', 'paper-base', '--method', 'vit', '--out', runs / 'paper-base', *common)
    teacher = runs / 'paper-base' / 'best.safetensors'
    advit('train', '--preset', 'paper-tiny', '--methods', 'vit,deit_hard,advit_l1', '--teacher', teacher,
          '--out', runs / 'paper-tiny', *common)
    advit('train', '--preset', 'paper-small', '--method', 'advit_l2', '--teacher', teacher,
          '--out', runs / 'paper-small', *common)
    advit('train', '--preset', 'paper-tiny', '--model', 'deit_tiny_distilled_patch16_224', '--method', 'deit_hard',
          '--teacher', teacher, '--out', runs / 'paper-deit-distilled', *common)
    advit('train', '--preset', 'paper-resnet10t', '--out', runs / 'paper-resnet10t', *common)


def paper_folder(runs: Path, folder: Path) -> Path:
    """A checkpoint folder as the README's "GPU checkpoints" says to make one: each run's ``best.safetensors``
    with its evaluation files, under one name, and a plain timm state dict brought in by ``advit import``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, run in PAPER_RUNS.items():
        for source in (runs / run).glob('best.*'):
            shutil.copy(source, folder / f'{name}{source.name[len("best"):]}')
    # The ViT-S/16 student's weights as timm saves a state dict: no metadata, the architecture given on import.
    import torch
    from advit.core.checkpoint import load_checkpoint
    state = load_checkpoint(folder / 'vit_small_advit_l2.safetensors').model.state_dict()
    torch.save(state, folder / 'timm_state_dict.pth')
    advit('import', folder / 'timm_state_dict.pth', '--model', 'vit_small_patch16_224', '--method', 'advit_l2',
          '--out', folder / 'vit_small_imported.safetensors')
    return folder
