"""Write the app's example images: the first two CIFAR-10 test images of each class, as PNG, into assets/examples/.

    python scripts/make_assets.py [--data ../shared/data/cifar10/cifar10-jpeg.tar.xz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from advit.core.data import load_dataset

PER_CLASS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default='../shared/data/cifar10/cifar10-jpeg.tar.xz')
    parser.add_argument('--out', default=str(Path(__file__).resolve().parents[1] / 'assets' / 'examples'))
    args = parser.parse_args()
    test = load_dataset(args.data)['test']
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(test.classes):
        indices = (test.labels == label).nonzero().flatten()[:PER_CLASS]
        for index in indices.tolist():
            Image.fromarray(test.images[index].permute(1, 2, 0).numpy()).save(out / f'{name}_{index}.png')


if __name__ == '__main__':
    main()
