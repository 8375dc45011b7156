"""Datasets: CIFAR-10 (JPEG archive, extracted folder or official python batches) and any ImageFolder tree.

Every source is decoded once into uint8 arrays and cached as a safetensors file, so a second load
reads one file. Images stay uint8 (N, 3, H, W) in memory, on the GPU when training there;
augmentation runs batch-wise on that tensor (``augment.py``), with no DataLoader workers.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import lzma
import os
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file, save

from .io import REPO, atomic_path

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.gif', '.tif', '.tiff')
ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.xz', '.txz', '.tar.bz2', '.zip')
TEST_SPLIT_NAMES = ('test', 'val')
OFFICIAL_CIFAR10 = 'cifar10'  # the name that asks for the official release
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
# Images of a tree whose sizes differ are stored at this square size (enough for a 224 crop).
DEFAULT_STORE_SIZE = 256
# The project's CIFAR-10 copy: beside the repository, in the shared data folder.
SHARED_CIFAR10 = REPO.parent / 'shared' / 'data' / 'cifar10' / 'cifar10-jpeg.tar.xz'


def default_dataset() -> str:
    """The dataset used when none is given: ``ADVIT_DATA``, else the shared CIFAR-10 archive, as an
    absolute path (so that a run started from any folder finds it, and its config says where)."""
    return os.environ.get('ADVIT_DATA') or str(SHARED_CIFAR10)


class DatasetError(Exception):
    """A dataset path that is missing, unreadable or not in a known layout."""


@dataclass
class ImageSet:
    """One split held in memory.

    Args:
        images: uint8 tensor (N, 3, H, W).
        labels: int64 tensor (N,).
        classes: Class names, index = label.
    """
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the images and labels, computed once per set (caches of predictions are keyed by it)."""
        digest = hashlib.sha256(self.labels.cpu().numpy().tobytes())
        digest.update(self.images.cpu().numpy().tobytes())
        return digest.hexdigest()

    def subset(self, count: int | None) -> 'ImageSet':
        """A fixed random subset of ``count`` images, the same every call (all when None)."""
        if count is None or count >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:count]
        order = order.sort().values
        return ImageSet(self.images[order], self.labels[order], self.classes)

    def holdout(self, count: int) -> tuple['ImageSet', 'ImageSet']:
        """Split off a fixed validation set: (the rest, ``count`` held-out images).

        The same images for every run, seed and model (a permutation seeded apart from ``subset``'s),
        so that checkpoints selected on it are selected alike and never see the test split.
        """
        if not 0 < count < len(self):
            raise ValueError(f'cannot hold out {count} of {len(self)} images for validation')
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(10_007))
        held, rest = order[:count].sort().values, order[count:].sort().values
        return (ImageSet(self.images[rest], self.labels[rest], self.classes),
                ImageSet(self.images[held], self.labels[held], self.classes))

    def to(self, device: torch.device | str) -> 'ImageSet':
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)


def load_dataset(path: str | Path, cache_dir: str | Path | None = None) -> dict[str, ImageSet]:
    """Load the ``train`` and ``test`` splits of a dataset, decoding it once and caching it.

    Args:
        path: The CIFAR-10 JPEG archive (or any archive of an ImageFolder tree), its extracted
            folder, an official ``cifar-10-batches-py`` folder, or any ImageFolder root with
            ``train/`` and ``test/`` (or ``val/``) class folders.
            ``cifar10`` (when no such path exists) downloads the official release into the cache
            folder, where a network allows.
        cache_dir: Where decoded arrays are cached (default ``$ADVIT_CACHE`` or ``~/.cache/advit``).
    """
    source = Path(path).expanduser()
    if str(path) == OFFICIAL_CIFAR10 and not source.exists():
        source = download_cifar10(Path(cache_dir or default_cache_dir()))
    if not source.exists():
        raise DatasetError(f'dataset not found: {source}')
    cache = Path(cache_dir or default_cache_dir()) / f'{_cache_key(source)}.safetensors'
    if cache.is_file():
        try:
            return _read_cache(cache)
        except Exception:  # a cache torn by a crash or from another version is rebuilt, not trusted
            cache.unlink(missing_ok=True)
    splits = _decode(source)
    cache.parent.mkdir(parents=True, exist_ok=True)
    _write_cache(cache, splits)
    return splits


def download_cifar10(root: Path) -> Path:
    """The official ``cifar-10-batches-py`` folder under ``root``, downloaded (and checked) once."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive
    folder = root / CIFAR10.base_folder
    if not (folder / 'test_batch').is_file():
        try:  # torchvision's URL and checksum; the batches are decoded by _decode_cifar_batches
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad checksum a RuntimeError
            raise DatasetError(f'cannot download the official CIFAR-10 release ({err}): without a network, give '
                               'the JPEG archive (../shared/data/cifar10/cifar10-jpeg.tar.xz) or a folder') from err
    return folder


def default_cache_dir() -> Path:
    """``$ADVIT_CACHE``, read at each call, or ``~/.cache/advit``."""
    return Path(os.environ.get('ADVIT_CACHE') or Path.home() / '.cache' / 'advit')


def _cache_key(source: Path) -> str:
    """Changes whenever the source (its path, size or modification time) changes."""
    stat = source.stat()
    if source.is_dir():  # a folder's mtime misses edits deep inside; its listing does not
        stamp = sorted((str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns)
                       for p in source.rglob('*') if p.is_file())
    else:
        stamp = (stat.st_size, stat.st_mtime_ns)
    text = json.dumps([str(source.resolve()), stamp, DEFAULT_STORE_SIZE, 1])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_cache(cache: Path, splits: dict[str, ImageSet]) -> None:
    tensors, classes = {}, None
    for name, split in splits.items():
        tensors[f'{name}.images'] = split.images.numpy()
        tensors[f'{name}.labels'] = split.labels.numpy()
        classes = split.classes
    payload = save(tensors, metadata={'classes': json.dumps(classes)})
    with atomic_path(cache) as tmp:
        tmp.write_bytes(payload)


def _read_cache(cache: Path) -> dict[str, ImageSet]:
    from safetensors import safe_open
    with safe_open(str(cache), framework='np') as f:
        classes = json.loads(f.metadata()['classes'])
    arrays = load_file(str(cache))
    return {name: ImageSet(torch.from_numpy(arrays[f'{name}.images']), torch.from_numpy(arrays[f'{name}.labels']),
                           classes)
            for name in ('train', 'test')}


def _decode(source: Path) -> dict[str, ImageSet]:
    if source.is_dir() and (source / 'data_batch_1').is_file():
        return _decode_cifar_batches(source)
    if source.is_dir() and (source / 'cifar-10-batches-py').is_dir():
        return _decode_cifar_batches(source / 'cifar-10-batches-py')
    if source.is_dir():
        return _decode_tree(_walk_folder(source), f'folder {source}')
    if source.name.lower().endswith(ARCHIVE_SUFFIXES):
        try:
            return _decode_tree(_walk_archive(source), f'archive {source}')
        except (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, EOFError, OSError) as err:
            raise DatasetError(f'cannot read archive {source}: {err}') from err
    raise DatasetError(f'{source} is neither a folder nor an archive ({", ".join(ARCHIVE_SUFFIXES)})')


def _walk_folder(root: Path) -> Iterator[tuple[str, bytes]]:
    for file in sorted(root.rglob('*')):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            yield file.relative_to(root).as_posix(), file.read_bytes()


def _walk_archive(archive: Path) -> Iterator[tuple[str, bytes]]:
    if archive.name.lower().endswith('.zip'):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.lower().endswith(IMAGE_SUFFIXES):
                    yield name, zf.read(name)
        return
    with tarfile.open(archive, mode='r:*') as tf:
        for member in tf:  # streaming: an xz archive is read once, front to back
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                yield member.name, tf.extractfile(member).read()


def _split_of(parts: list[str]) -> tuple[str, str] | None:
    """(split, class) of a path ``[prefix/]<split>/<class>/<file>``, or None."""
    for i, part in enumerate(parts[:-2]):
        if part == 'train':
            return 'train', parts[i + 1]
        if part in TEST_SPLIT_NAMES:
            return 'test', parts[i + 1]
    return None


def _decode_tree(files: Iterable[tuple[str, bytes]], what: str) -> dict[str, ImageSet]:
    found: dict[str, list[tuple[str, str, Image.Image]]] = {'train': [], 'test': []}
    for name, data in files:
        located = _split_of(name.split('/'))
        if located is None:
            continue
        split, cls = located
        try:
            image = Image.open(io.BytesIO(data))
            image = image.convert('RGB')
        except Exception as err:
            raise DatasetError(f'cannot decode image {name} in {what}: {err}') from err
        found[split].append((name, cls, image))
    missing = [split for split, items in found.items() if not items]
    if missing:
        raise DatasetError(
            f'{what} has no images under {" or ".join(missing)}/<class>/: expected an ImageFolder layout '
            'with train/ and test/ (or val/)')
    classes = sorted({cls for items in found.values() for _, cls, _ in items})
    sizes = {image.size for items in found.values() for _, _, image in items}
    square = None if len(sizes) == 1 else DEFAULT_STORE_SIZE
    index = {cls: i for i, cls in enumerate(classes)}
    splits = {}
    for split, items in found.items():
        items.sort(key=lambda item: item[0])
        images = np.stack([_to_array(image, square) for _, _, image in items])
        labels = np.array([index[cls] for _, cls, _ in items], dtype=np.int64)
        splits[split] = ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)
    return splits


def _to_array(image: Image.Image, square: int | None) -> np.ndarray:
    if square is not None:
        image = image.resize((square, square), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _decode_cifar_batches(folder: Path) -> dict[str, ImageSet]:
    """The official python release: pickled dicts of 3072-byte rows (trusted format, as in torchvision)."""
    def read(name: str) -> dict:
        try:
            with open(folder / name, 'rb') as f:
                return pickle.load(f, encoding='bytes')
        except (OSError, pickle.UnpicklingError, EOFError) as err:
            raise DatasetError(f'cannot read {folder / name}: {err}') from err

    classes = [c.decode() for c in read('batches.meta')[b'label_names']]
    splits = {}
    for split, names in (('train', [f'data_batch_{i}' for i in range(1, 6)]), ('test', ['test_batch'])):
        batches = [read(name) for name in names]
        images = np.concatenate([b[b'data'] for b in batches]).reshape(-1, 3, 32, 32).astype(np.uint8)
        labels = np.concatenate([b[b'labels'] for b in batches]).astype(np.int64)
        splits[split] = ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)
    return splits


def batches(
        data: ImageSet,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 image batches and labels of one epoch, on the device the data lives on.

    Training (``shuffle``) walks one permutation, seeded by (seed, epoch) so every rank and a
    resumed run agree, in global batches of ``batch_size * world_size`` images (the last partial one
    dropped), of which each rank takes its own slice: a torchrun run sees the batches one process
    with the same global batch size sees.

    Args:
        data: The split.
        batch_size: Images per batch on this rank.
        shuffle: Shuffle and shard for training; otherwise all images in order.
        seed: Base seed of the shuffle.
        epoch: Epoch number (changes the permutation).
        rank: This process's rank.
        world_size: Number of processes.
        skip: Batches of this epoch already done (on resume).
    """
    count = len(data)
    if shuffle:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        step = batch_size * world_size
        starts = range(skip * step + rank * batch_size, count - count % step, step)
    else:
        order, starts = torch.arange(count), range(0, count, batch_size)
    order = order.to(data.images.device)
    for start in starts:
        index = order[start:start + batch_size]
        yield data.images[index], data.labels[index]


def steps_per_epoch(count: int, batch_size: int, world_size: int = 1) -> int:
    """Training batches per epoch on each rank (``batch_size`` images a rank, global batches of
    ``batch_size * world_size``)."""
    return count // (batch_size * world_size)
