"""Measure test-time flips (a lever of the bundle's issue) on held-out training images, never the test set.

For each checkpoint, validation top-1 of its class probabilities alone and averaged with those of the
horizontally flipped images (the training augmentation flips, so a model has seen both), on the validation
split every run holds out; one JSON line per checkpoint, with the machine.

    python scripts/flip_averaging.py checkpoints/*.safetensors [--out benchmarks/results/flip-averaging-cpu.jsonl]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from advit.core.data import ImageSet, load_dataset
from advit.measure.evaluate import load_for_evaluation, predict, summarize
from advit.core.machine import machine
from advit.training.train import TrainConfig

BATCH_SIZE = 256


def top1(probs: torch.Tensor, data: ImageSet) -> float:
    """Top-1 (%) as the project's evaluation computes it, to two decimals."""
    return round(summarize(probs, data.labels, data.classes)['top1'], 2)


def flip_record(checkpoint: Path, val: ImageSet) -> dict:
    """Validation top-1 (%) of ``checkpoint`` without and with the flipped copy's probabilities averaged in."""
    loaded, transform, device = load_for_evaluation(checkpoint, val, BATCH_SIZE)
    flipped = ImageSet(val.images.flip(-1), val.labels, val.classes)
    plain = predict(loaded.model, val, transform, BATCH_SIZE, device)
    both = (plain + predict(loaded.model, flipped, transform, BATCH_SIZE, device)) / 2
    return dict(checkpoint=str(checkpoint), images=len(val), val_top1=top1(plain, val),
                val_top1_flips=top1(both, val), machine=machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoints', nargs='+', type=Path)
    parser.add_argument('--data', default='../shared/data/cifar10/cifar10-jpeg.tar.xz')
    parser.add_argument('--out', type=Path, help='JSON lines to append to (default: print only)')
    args = parser.parse_args()
    val = load_dataset(args.data)['train'].holdout(TrainConfig().val_size)[1]
    for checkpoint in args.checkpoints:
        line = json.dumps(flip_record(checkpoint, val))
        print(line)
        if args.out:
            with open(args.out, 'a') as f:
                f.write(line + '\n')


if __name__ == '__main__':
    main()
