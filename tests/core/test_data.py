"""Dataset loading: the real CIFAR-10 archive, its extracted folder, the official python batches,
ImageFolder trees, the decode cache, errors, subsets and batching."""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advit.core.data import DEFAULT_STORE_SIZE, DatasetError, ImageSet, batches, load_dataset, steps_per_epoch
from advit.core.models import CIFAR10_MEAN

# The canonical CIFAR-10 label order (label i is CIFAR10_CLASSES[i]).
CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
PER_CLASS = 15  # files per class and split taken out of the archive: 300 in all


def decode(data: bytes) -> np.ndarray:
    """An independent reference decode: PIL, RGB, (3, H, W) uint8."""
    return np.asarray(Image.open(io.BytesIO(data)).convert('RGB')).transpose(2, 0, 1)


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def solid(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (height, width, 3)).copy()


@pytest.fixture(scope='module')
def archive_sample(cifar_archive):
    """One pass over the archive: every split's sorted member names, and the raw bytes of the first
    ``PER_CLASS`` files of each class in each split."""
    names: dict[str, list[str]] = {'train': [], 'test': []}
    picked: dict[str, bytes] = {}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(cifar_archive, mode='r:*') as tf:
        for member in tf:
            if not (member.isfile() and member.name.endswith('.jpg')):
                continue
            split, cls, _ = member.name.split('/')
            names[split].append(member.name)
            if counts.get((split, cls), 0) < PER_CLASS:
                counts[split, cls] = counts.get((split, cls), 0) + 1
                picked[member.name] = tf.extractfile(member).read()
    return {split: sorted(items) for split, items in names.items()}, picked


# --- the real archive -----------------------------------------------------------------------------

def test_archive_splits_classes_and_shapes(cifar):
    assert set(cifar) == {'train', 'test'}
    for split, total, per_class in (('train', 50_000, 5000), ('test', 10_000, 1000)):
        data = cifar[split]
        assert len(data) == total
        assert data.classes == CIFAR10_CLASSES
        assert data.images.dtype == torch.uint8
        assert tuple(data.images.shape) == (total, 3, 32, 32)
        assert data.labels.dtype == torch.int64
        assert torch.bincount(data.labels, minlength=10).tolist() == [per_class] * 10


def test_archive_channels_are_rgb(cifar):
    """The published CIFAR-10 channel means (R > G > B) hold on the decoded images: not BGR, not blank."""
    mean = cifar['train'].images[::10].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=0.01), mean


def test_second_load_hits_the_cache(cifar, cifar_archive, cache_dir):
    caches = sorted(cache_dir.glob('*.safetensors'))
    assert caches, 'the first load wrote no cache file'
    stamps = {path: path.stat().st_mtime_ns for path in caches}
    start = time.perf_counter()
    again = load_dataset(cifar_archive, cache_dir)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f'cached load took {elapsed:.2f}s'
    assert {path: path.stat().st_mtime_ns for path in caches} == stamps  # read, not rewritten
    for split in ('train', 'test'):
        assert torch.equal(again[split].images, cifar[split].images)
        assert torch.equal(again[split].labels, cifar[split].labels)
        assert again[split].classes == cifar[split].classes


def test_archive_pixels_match_a_reference_decode(cifar, archive_sample):
    names, picked = archive_sample
    for name, data in picked.items():
        split, cls, _ = name.split('/')
        index = names[split].index(name)
        assert cifar[split].labels[index].item() == CIFAR10_CLASSES.index(cls)
        np.testing.assert_array_equal(cifar[split].images[index].numpy(), decode(data), err_msg=name)


# --- the extracted folder and other archives of the same files -------------------------------------

def _write_tree(root: Path, picked: dict[str, bytes], test_name: str) -> None:
    for name, data in picked.items():
        split, cls, file = name.split('/')
        target = root / (test_name if split == 'test' else split) / cls / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _check_same_as_archive(loaded, cifar, archive_sample) -> None:
    names, picked = archive_sample
    for split in ('train', 'test'):
        files = sorted(name for name in picked if name.startswith(split + '/'))
        data = loaded[split]
        assert len(data) == len(files) == PER_CLASS * 10
        assert data.classes == CIFAR10_CLASSES
        index = torch.tensor([names[split].index(name) for name in files])
        assert torch.equal(data.images, cifar[split].images[index])
        assert torch.equal(data.labels, cifar[split].labels[index])
        for i, name in enumerate(files):
            np.testing.assert_array_equal(data.images[i].numpy(), decode(picked[name]))


def test_extracted_folder_matches_archive(tmp_path, cifar, archive_sample):
    root = tmp_path / 'cifar10'
    _write_tree(root, archive_sample[1], test_name='val')  # val/ stands for test/
    loaded = load_dataset(root, tmp_path / 'cache')
    _check_same_as_archive(loaded, cifar, archive_sample)


def test_zip_and_tar_of_a_prefixed_tree_match_archive(tmp_path, cifar, archive_sample):
    _write_tree(tmp_path / 'tree' / 'cifar10', archive_sample[1], test_name='test')
    files = sorted(p for p in (tmp_path / 'tree').rglob('*.jpg'))
    zipped, tarred = tmp_path / 'sample.zip', tmp_path / 'sample.tar.gz'
    with zipfile.ZipFile(zipped, 'w') as zf:
        for file in files:
            zf.write(file, file.relative_to(tmp_path / 'tree').as_posix())
    with tarfile.open(tarred, 'w:gz') as tf:
        tf.add(tmp_path / 'tree' / 'cifar10', arcname='cifar10')
    for archive in (zipped, tarred):
        _check_same_as_archive(load_dataset(archive, tmp_path / 'cache'), cifar, archive_sample)


# --- the official python batches -------------------------------------------------------------------

def _official_rows(images: np.ndarray) -> np.ndarray:
    """The official row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major."""
    return np.stack([np.concatenate([image[0].ravel(), image[1].ravel(), image[2].ravel()]) for image in images])


def _write_official(folder: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    expected = {'train': ([], []), 'test': ([], [])}
    files = [(f'data_batch_{i}', 'train', 3) for i in range(1, 6)] + [('test_batch', 'test', 4)]
    for name, split, count in files:
        images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=count)]
        batch = {b'batch_label': name.encode(), b'labels': labels, b'data': _official_rows(images),
                 b'filenames': [f'{name}_{i}.png'.encode() for i in range(count)]}
        with open(folder / name, 'wb') as f:
            pickle.dump(batch, f, protocol=2)
        expected[split][0].append(images)
        expected[split][1].extend(labels)
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump({b'label_names': [name.encode() for name in CIFAR10_CLASSES], b'num_cases_per_batch': 3,
                     b'num_vis': 3072}, f, protocol=2)
    return {split: (np.concatenate(images), np.array(labels)) for split, (images, labels) in expected.items()}


def test_official_batches_folder(tmp_path):
    release = tmp_path / 'release'
    expected = _write_official(release / 'cifar-10-batches-py', np.random.default_rng(0))
    # Both the batches folder itself and the folder the official tarball extracts into.
    for source in (release / 'cifar-10-batches-py', release):
        loaded = load_dataset(source, tmp_path / 'cache')
        for split, (images, labels) in expected.items():
            assert loaded[split].classes == CIFAR10_CLASSES
            assert loaded[split].images.dtype == torch.uint8
            np.testing.assert_array_equal(loaded[split].images.numpy(), images)
            np.testing.assert_array_equal(loaded[split].labels.numpy(), labels)


def test_official_batches_with_a_missing_batch(tmp_path):
    folder = tmp_path / 'cifar-10-batches-py'
    _write_official(folder, np.random.default_rng(1))
    (folder / 'data_batch_3').unlink()
    with pytest.raises(DatasetError, match='data_batch_3'):
        load_dataset(folder, tmp_path / 'cache')


# --- ImageFolder trees -----------------------------------------------------------------------------

def test_images_of_differing_sizes_are_stored_square(tmp_path):
    root = tmp_path / 'tree'
    colours = {'red': (200, 10, 10), 'blue': (10, 20, 220)}
    sizes = [(40, 30), (64, 64), (17, 90)]  # (height, width)
    for split in ('train', 'test'):
        for cls, rgb in colours.items():
            for i, (h, w) in enumerate(sizes):
                save_png(root / split / cls / f'{i}.png', solid(h, w, rgb))
    loaded = load_dataset(root, tmp_path / 'cache')
    for split in ('train', 'test'):
        data = loaded[split]
        assert data.classes == ['blue', 'red']
        assert tuple(data.images.shape) == (6, 3, DEFAULT_STORE_SIZE, DEFAULT_STORE_SIZE)
        for image, label in zip(data.images, data.labels):
            rgb = torch.tensor(colours[data.classes[label]], dtype=torch.int16).view(3, 1, 1)
            assert (image.to(torch.int16) - rgb).abs().max() <= 1  # a resized solid colour stays that colour


def test_images_of_one_size_keep_it_exactly(tmp_path):
    root = tmp_path / 'tree'
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ('train', 'test'):
        for cls in ('a', 'b'):
            for i in range(2):
                array = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)  # height 24, width 20
                save_png(root / split / cls / f'{i}.png', array)
                arrays[split, cls, i] = array
    loaded = load_dataset(root, tmp_path / 'cache')
    for split in ('train', 'test'):
        assert tuple(loaded[split].images.shape) == (4, 3, 24, 20)
        expected = np.stack([arrays[split, cls, i].transpose(2, 0, 1) for cls in ('a', 'b') for i in range(2)])
        np.testing.assert_array_equal(loaded[split].images.numpy(), expected)
        assert loaded[split].labels.tolist() == [0, 0, 1, 1]


def test_grayscale_rgba_and_palette_images_become_rgb(tmp_path):
    root = tmp_path / 'tree'
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=16)
    for split in ('train', 'test'):
        save_png(root / split / 'gray' / 'g.png', gray, mode='L')
        save_png(root / split / 'rgba' / 'r.png', rgba, mode='RGBA')
        (root / split / 'palette').mkdir(parents=True)
        palette.save(root / split / 'palette' / 'p.png')
    loaded = load_dataset(root, tmp_path / 'cache')
    data = loaded['test']
    assert data.classes == ['gray', 'palette', 'rgba']
    assert tuple(data.images.shape) == (3, 3, 16, 16)
    for channel in range(3):
        np.testing.assert_array_equal(data.images[0, channel].numpy(), gray)
    np.testing.assert_array_equal(data.images[1].numpy(), np.asarray(palette.convert('RGB')).transpose(2, 0, 1))
    np.testing.assert_array_equal(data.images[2].numpy(), rgba[..., :3].transpose(2, 0, 1))


# --- errors ----------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    missing = tmp_path / 'no-such-dataset.tar.xz'
    with pytest.raises(DatasetError) as info:
        load_dataset(missing, tmp_path / 'cache')
    assert str(missing) in str(info.value)


def test_truncated_archive(tmp_path, cifar_archive):
    truncated = tmp_path / 'cifar10-jpeg.tar.xz'
    with open(cifar_archive, 'rb') as f:
        truncated.write_bytes(f.read(os.path.getsize(cifar_archive) // 20))
    with pytest.raises(DatasetError, match='cifar10-jpeg.tar.xz'):
        load_dataset(truncated, tmp_path / 'cache')
    assert not list((tmp_path / 'cache').glob('*'))  # nothing cached, no temporary file left


@pytest.mark.parametrize('name', ['random.tar.xz', 'random.zip', 'random.tar.gz'])
def test_random_bytes_archive(tmp_path, name):
    bogus = tmp_path / name
    bogus.write_bytes(np.random.default_rng(0).bytes(100_000))
    with pytest.raises(DatasetError, match=name):
        load_dataset(bogus, tmp_path / 'cache')


def test_file_that_is_no_archive(tmp_path):
    text = tmp_path / 'dataset.txt'
    text.write_text('not a dataset')
    with pytest.raises(DatasetError, match='neither a folder nor an archive'):
        load_dataset(text, tmp_path / 'cache')


def test_folder_without_splits(tmp_path):
    root = tmp_path / 'flat'
    save_png(root / 'cat' / '0.png', solid(8, 8, (1, 2, 3)))
    save_png(root / 'dog' / '0.png', solid(8, 8, (4, 5, 6)))
    with pytest.raises(DatasetError, match='train.*test'):
        load_dataset(root, tmp_path / 'cache')


def test_folder_with_train_only(tmp_path):
    root = tmp_path / 'half'
    save_png(root / 'train' / 'cat' / '0.png', solid(8, 8, (1, 2, 3)))
    with pytest.raises(DatasetError) as info:
        load_dataset(root, tmp_path / 'cache')
    assert 'test' in str(info.value) and 'no images under train' not in str(info.value)


def test_undecodable_image(tmp_path):
    root = tmp_path / 'tree'
    for split in ('train', 'test'):
        save_png(root / split / 'cat' / '0.png', solid(8, 8, (1, 2, 3)))
    (root / 'train' / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
    with pytest.raises(DatasetError, match='broken.jpg'):
        load_dataset(root, tmp_path / 'cache')


# --- the cache -------------------------------------------------------------------------------------

def _small_tree(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ('train', 'test'):
        for cls in ('a', 'b'):
            array = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            save_png(root / split / cls / '0.png', array)
            arrays[split, cls] = array
    return arrays


def test_corrupt_cache_is_rebuilt(tmp_path):
    root, cache = tmp_path / 'tree', tmp_path / 'cache'
    arrays = _small_tree(root)
    first = load_dataset(root, cache)
    (cache_file,) = cache.glob('*.safetensors')
    cache_file.write_bytes(b'garbage, not a safetensors file' * 10)
    again = load_dataset(root, cache)
    for split in ('train', 'test'):
        assert torch.equal(again[split].images, first[split].images)
        assert torch.equal(again[split].labels, first[split].labels)
        np.testing.assert_array_equal(again[split].images[1].numpy(), arrays[split, 'b'].transpose(2, 0, 1))
    # The cache file was rewritten, and reads back as a valid cache.
    assert not cache_file.read_bytes().startswith(b'garbage')
    assert list(cache.glob('*.safetensors')) == [cache_file]
    assert torch.equal(load_dataset(root, cache)['test'].images, first['test'].images)


def test_cache_follows_added_files(tmp_path):
    root, cache = tmp_path / 'tree', tmp_path / 'cache'
    _small_tree(root)
    assert len(load_dataset(root, cache)['train']) == 2
    save_png(root / 'train' / 'a' / '1.png', solid(8, 8, (9, 9, 9)))
    reloaded = load_dataset(root, cache)['train']
    assert len(reloaded) == 3
    assert (reloaded.images[1] == 9).all()


def test_cache_follows_same_size_edits(tmp_path):
    root, cache = tmp_path / 'tree', tmp_path / 'cache'
    for split in ('train', 'test'):
        for cls in ('a', 'b'):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(solid(8, 8, (0, 0, 0))).save(root / split / cls / '0.bmp')
    assert int(load_dataset(root, cache)['train'].images[0].max()) == 0
    edited = root / 'train' / 'a' / '0.bmp'
    size = edited.stat().st_size
    Image.fromarray(solid(8, 8, (255, 255, 255))).save(edited)
    assert edited.stat().st_size == size  # BMP: the same size, other pixels
    assert int(load_dataset(root, cache)['train'].images[0].min()) == 255


def test_cache_dir_follows_advit_cache_set_after_import(tmp_path, monkeypatch):
    import advit.core.data
    # Where the default pointed when advit.core.data was imported (kept inside tmp_path, not the real home).
    monkeypatch.setattr(advit.core.data, 'DEFAULT_CACHE_DIR', tmp_path / 'import-time', raising=False)
    monkeypatch.setenv('ADVIT_CACHE', str(tmp_path / 'from-env'))
    root = tmp_path / 'tree'
    _small_tree(root)
    load_dataset(root)
    assert list((tmp_path / 'from-env').glob('*.safetensors'))


# --- subsets and batches ---------------------------------------------------------------------------

def indexed_set(count: int) -> ImageSet:
    """A split whose labels are the image indices, and whose pixels encode them too."""
    images = (torch.arange(count) % 251).to(torch.uint8).view(-1, 1, 1, 1).expand(count, 3, 4, 4).contiguous()
    return ImageSet(images, torch.arange(count), classes=[str(i) for i in range(count)])


def test_subset_is_fixed_and_sized(cifar):
    train = cifar['train']
    first, second = train.subset(1000), train.subset(1000)
    assert len(first) == 1000
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.classes == train.classes
    assert 50 < torch.bincount(first.labels, minlength=10).min()  # spread over classes, not the first 1000
    data = indexed_set(500)
    picked = data.subset(100).labels
    assert len(picked.unique()) == 100  # distinct images
    assert torch.equal(data.subset(100).images[:, 0, 0, 0], (picked % 251).to(torch.uint8))  # pixels follow labels
    assert not torch.equal(picked, torch.arange(100))
    assert data.subset(None) is data and data.subset(500) is data and len(data.subset(10_000)) == 500


def test_ranks_take_their_slices_of_the_global_batches_one_process_sees():
    """Two ranks of 8 see, step by step, the two halves of the 16-image batch one process sees."""
    data = indexed_set(103)
    alone = list(batches(data, 16, shuffle=True, seed=3, epoch=1))
    ranks = [list(batches(data, 8, shuffle=True, seed=3, epoch=1, rank=rank, world_size=2)) for rank in range(2)]
    assert len(alone) == len(ranks[0]) == len(ranks[1]) == 103 // 16 == steps_per_epoch(103, 8, 2)
    for (_, whole), (_, first), (_, second) in zip(alone, *ranks):
        assert torch.equal(whole, torch.cat([first, second]))


def test_shuffled_batches_shard_disjointly_and_drop_last():
    data, batch_size, world = indexed_set(103), 8, 2
    shards = []
    for rank in range(world):
        got = list(batches(data, batch_size, shuffle=True, seed=3, epoch=1, rank=rank, world_size=world))
        assert len(got) == 103 // (batch_size * world) == steps_per_epoch(103, batch_size, world)
        for images, labels in got:
            assert images.shape == (batch_size, 3, 4, 4) and labels.shape == (batch_size,)
            assert torch.equal(images[:, 0, 0, 0], (labels % 251).to(torch.uint8))  # images and labels agree
        shards.append(torch.cat([labels for _, labels in got]))
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert all(len(set(shard.tolist())) == len(shard) for shard in shards)
    again = torch.cat([labels for _, labels in batches(data, batch_size, True, seed=3, epoch=1, rank=0,
                                                       world_size=world)])
    assert torch.equal(again, shards[0])  # the same (seed, epoch) on any call
    other_epoch = torch.cat([labels for _, labels in batches(data, batch_size, True, seed=3, epoch=2, rank=0,
                                                             world_size=world)])
    assert not torch.equal(other_epoch, shards[0])
    assert not torch.equal(shards[0], shards[0].sort().values)  # shuffled


def test_skip_resumes_at_the_right_batch():
    data = indexed_set(100)
    full = list(batches(data, 8, shuffle=True, seed=1, epoch=4, rank=1, world_size=2))
    resumed = list(batches(data, 8, shuffle=True, seed=1, epoch=4, rank=1, world_size=2, skip=3))
    assert len(resumed) == len(full) - 3
    for (_, want), (_, got) in zip(full[3:], resumed):
        assert torch.equal(want, got)
    assert list(batches(data, 8, shuffle=True, seed=1, epoch=4, rank=1, world_size=2, skip=len(full))) == []


def test_unshuffled_batches_cover_everything_in_order():
    data = indexed_set(21)
    got = list(batches(data, 8, shuffle=False))
    assert [len(labels) for _, labels in got] == [8, 8, 5]  # the last partial batch is kept
    assert torch.equal(torch.cat([labels for _, labels in got]), torch.arange(21))
    assert torch.equal(torch.cat([images for images, _ in got]), data.images)



def _md5(path: Path) -> str:
    import hashlib
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def local_release(tmp_path, monkeypatch):
    """An official-format CIFAR-10 release served over real HTTP from localhost.

    The one stand-in: torchvision's download URL and checksums point at this small release
    instead of the real 170 MB one, which cannot be fetched here (no network)."""
    import http.server
    import threading
    from torchvision.datasets import CIFAR10
    served = tmp_path / 'served'
    expected = _write_official(served / 'cifar-10-batches-py', np.random.default_rng(2))
    with tarfile.open(served / 'cifar-10-python.tar.gz', 'w:gz') as tf:
        tf.add(served / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(CIFAR10, 'url', f'http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz')
    monkeypatch.setattr(CIFAR10, 'tgz_md5', _md5(served / 'cifar-10-python.tar.gz'))
    yield expected
    server.shutdown()


def test_official_release_downloads_once_and_loads(tmp_path, local_release):
    cache = tmp_path / 'cache'
    loaded = load_dataset('cifar10', cache)
    for split, (images, labels) in local_release.items():
        np.testing.assert_array_equal(loaded[split].images.numpy(), images)
        np.testing.assert_array_equal(loaded[split].labels.numpy(), labels)
    assert (cache / 'cifar-10-batches-py' / 'test_batch').is_file()


def test_official_release_download_fails_clearly_without_a_network(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    monkeypatch.setattr(CIFAR10, 'url', 'http://127.0.0.1:9/cifar-10-python.tar.gz')  # nothing listens there
    with pytest.raises(DatasetError, match='cannot download the official CIFAR-10 release'):
        load_dataset('cifar10', tmp_path)
    assert not (tmp_path / 'cifar-10-batches-py').exists()
