"""Shared fixtures: the real CIFAR-10 archive, a per-session decode cache, tiny models and a tiny teacher."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = Path(os.environ.get('ADVIT_CIFAR', REPO.parent / 'shared' / 'data' / 'cifar10' / 'cifar10-jpeg.tar.xz'))
# Small enough for two CPU steps in a second, deep enough to test layer mapping.
TINY = dict(depth=2, embed_dim=48, num_heads=3)


def tiny_vit(seed: int = 0, name: str = 'vit_tiny_patch4_32', **overrides):
    """A tiny CIFAR-native ViT (eval mode) with seeded random weights."""
    import timm
    import torch
    import advit  # noqa: F401  (registers the CIFAR models)
    torch.manual_seed(seed)
    return timm.create_model(name, **dict(TINY, **overrides)).eval()


# The shipped bundle's students, each with its probe (checkpoints/NAME.probe.npz), in the order a folder lists them.
BUNDLE_STUDENTS = ('advit_kl', 'advit_l1', 'advit_relevance', 'deit_hard', 'vit')
# The quick bundle the shipped one replaced, kept whole inside it: its seven students and the evidence over seeds.
QUICK_BUNDLE = REPO / 'checkpoints' / 'quick'


def load_probes(target):
    """Each student's checked attention probe in a run or bundle folder, by name (``find_probes`` then ``load_probe``)."""
    from advit.measure.probe_file import find_probes, load_probe
    return {name: load_probe(path) for name, path in find_probes(target).items()}


def noise_image(size: int = 32, seed: int = 0):
    """A seeded random RGB image (PIL)."""
    import numpy as np
    from PIL import Image
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def write_small_cifar(root: Path, splits: dict, test_per_class: int, train_per_class: int) -> Path:
    """An ImageFolder tree (``train/<class>/``, ``test/<class>/``) of the first real CIFAR-10 images of each class,
    as PNG files.

    Args:
        splits: The decoded CIFAR-10 (``load_dataset``'s ``train`` and ``test`` ImageSets).
    """
    import numpy as np
    from PIL import Image
    for split, per_class in (('test', test_per_class), ('train', train_per_class)):
        source = splits[split]
        labels = source.labels.numpy()
        for label, name in enumerate(source.classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == label)[:per_class]:
                Image.fromarray(source.images[i].permute(1, 2, 0).numpy()).save(folder / f'{i:05d}.png')
    return root


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC, for PNG files written by hand."""
    import struct
    import zlib
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def wait_until(what: str, check, timeout: float, *managers):
    """Poll ``check`` (moving the queues of the job ``managers``) until it is truthy and return it; fail
    after ``timeout`` seconds, listing the first manager's jobs."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        for manager in managers:
            manager.poll()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            states = [(job['name'], job['state'], job['step'], job['error']) for job in managers[0].list()] \
                if managers else []
            pytest.fail(f'not within {timeout}s: {what}; jobs: {states}')
        time.sleep(0.05)


def tiny_flags(**overrides) -> list[str]:
    """``--model-arg`` flags for a tiny student."""
    args = dict(TINY, **overrides)
    return [flag for key, value in args.items() for flag in ('--model-arg', f'{key}={value}')]


@pytest.fixture(scope='module')
def x():
    """A seeded batch of two random 32x32 RGB inputs (a torch tensor) for the CIFAR models."""
    import torch
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='session')
def cifar_archive() -> Path:
    if not CIFAR_ARCHIVE.is_file():
        pytest.fail(f'CIFAR-10 archive not found at {CIFAR_ARCHIVE} (set ADVIT_CIFAR)')
    return CIFAR_ARCHIVE


@pytest.fixture(scope='session', autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """One decode cache for the session, also seen by subprocesses through ADVIT_CACHE."""
    path = tmp_path_factory.mktemp('advit-cache')
    os.environ['ADVIT_CACHE'] = str(path)
    return path


@pytest.fixture(scope='session')
def cifar(cifar_archive, cache_dir):
    from advit.core.data import load_dataset
    return load_dataset(cifar_archive, cache_dir)


@pytest.fixture(scope='session')
def data_flags(cifar_archive, cifar) -> list[str]:
    """Flags for a 256-image run on the real archive, 128 held out for validation (``cifar`` warms the cache first)."""
    return ['--data', str(cifar_archive), '--subset', '256', '--val-size', '128', '--test-subset', '128',
            '--batch-size', '64', '--log-every', '1']


@pytest.fixture(scope='session')
def teacher_checkpoint(tmp_path_factory, data_flags) -> Path:
    """A tiny teacher trained for two steps through the CLI (deeper than the students: 4 layers)."""
    from advit.cli import main
    out = tmp_path_factory.mktemp('teacher') / 'run'
    assert main(['train', '--method', 'vit', '--steps', '2', '--out', str(out), *data_flags,
                 *tiny_flags(depth=4, num_heads=4)]) == 0
    return out / 'best.safetensors'


def save_tiny_checkpoint(path: Path, method: str, seed: int, **arch) -> Path:
    """A tiny CIFAR-native ViT with random weights, saved as a self-describing advit checkpoint."""
    from advit.core.checkpoint import save_checkpoint
    from advit.core.data import CIFAR10_CLASSES
    from advit.core.models import CIFAR10_MEAN, CIFAR10_STD
    args = dict(TINY, **arch)
    name = 'deit_tiny_distilled_patch4_32' if method.startswith('deit') else 'vit_tiny_patch4_32'
    model = tiny_vit(seed, name, **arch)
    save_checkpoint(path, model, dict(
        model=name, model_args=dict(args, num_classes=10, img_size=32), classes=list(CIFAR10_CLASSES),
        image_size=32, mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD), method=method, teacher=None,
        params=sum(p.numel() for p in model.parameters())))
    return path


@pytest.fixture(scope='session')
def tiny_bundle(tmp_path_factory, cifar_archive, cifar) -> Path:
    """A checkpoint folder like the shipped bundle, with tiny models evaluated on the real test set,
    and one corrupt file that must be listed as unusable."""
    from advit.measure.evaluate import evaluate_checkpoint
    folder = tmp_path_factory.mktemp('bundle')
    for method, seed, arch in (('vit', 0, dict(depth=4, num_heads=4, embed_dim=64)), ('advit_l1', 1, {}),
                               ('deit_hard', 2, {})):
        path = save_tiny_checkpoint(folder / f'{"teacher" if method == "vit" else method}.safetensors',
                                    method, seed, **arch)
        evaluate_checkpoint(path, cifar_archive, device='cpu', faithfulness_images=256)
    (folder / 'broken.safetensors').write_bytes(b'\x00' * 100)
    return folder


@pytest.fixture(scope='module')
def studio(tiny_bundle, cifar_archive, tmp_path_factory):
    """The app's views over the tiny bundle, with an empty runs folder (one per test module)."""
    from advit.app.studio import Studio
    return Studio([tiny_bundle], tmp_path_factory.mktemp('runs'), cifar_archive)


@pytest.fixture(scope='session')
def paper_models(tmp_path_factory, cifar):
    """The paper's model sizes trained one step each by the CLI (``tests/paper_models.py``), on a small real
    CIFAR-10 tree: (its ``runs`` folder, its checkpoint folder ``paper``, the dataset), all under one root."""
    from paper_models import paper_folder, train_paper_models
    root = tmp_path_factory.mktemp('paper')
    data = write_small_cifar(root / 'data', cifar, test_per_class=3, train_per_class=4)
    train_paper_models(root / 'runs', data)
    return root / 'runs', paper_folder(root / 'runs', root / 'paper'), data


def group_gone(pid: int) -> bool:
    """True when no process of the group led by ``pid`` is left."""
    import os
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_jobs(runs: Path, managers=(), launches=()) -> None:
    """Test clean-up: SIGKILL every live job process group recorded under ``runs`` (and ``launches``:
    extra (pid, process start) pairs), then reap the managers' children."""
    import json
    import os
    import signal
    from advit.training.jobs import _process_start
    recorded = set(launches)
    for job_json in runs.glob('*/job.json'):
        recorded |= {(launch['pid'], launch['process_start'])
                     for launch in json.loads(job_json.read_text()).get('launches', [])}
    for pid, started in recorded:
        if started is not None and _process_start(pid) == started:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for manager in managers:
        for child in manager._children.values():
            child.kill()
            child.wait(timeout=30)


@pytest.fixture(scope='session')
def group_run(tmp_path_factory, data_flags, teacher_checkpoint):
    """A plain ViT and an ADViT-L1 student trained together for 6 steps, evaluated (and probed) every 2."""
    from advit.cli import main
    out = tmp_path_factory.mktemp('view') / 'group'
    assert main(['train', '--methods', 'vit,advit_l1', '--teacher', str(teacher_checkpoint), '--steps', '6',
                 '--eval-every', '2', '--out', str(out), *data_flags, *tiny_flags()]) == 0
    return out
