"""advit_relevance's target chosen on validation: short runs of each target measured on held-out training images.

Each arm is one ``advit train`` of ``advit_relevance`` on the shipped teacher with the bundle's student recipe,
600 steps (a quarter of the bundle's), differing only in ``--relevance-target``:

    for target in layers rollout_last; do
      python -m advit train --config checkpoints/students.recipe.json --method advit_relevance \\
        --teacher checkpoints/teacher.safetensors --steps 600 --eval-every 200 --faithfulness-images 0 \\
        --relevance-target $target --out ../runs/relevance-target/$target
    done
    python benchmarks/relevance_target.py ../runs/relevance-target/layers ../runs/relevance-target/rollout_last \\
        --json benchmarks/results/relevance-target-cpu.json

This script measures each arm's selected checkpoint (``best``, chosen on validation) on ``--images`` validation
images (the run's own held-out split, never the test set): top-1, and the quarter drop of its last layer's
[CLS] map and of its gradient rollout under every removal protocol, with standard errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from advit.core.augment import BatchTransform  # noqa: E402
from advit.core.checkpoint import load_checkpoint  # noqa: E402
from advit.core.data import load_dataset  # noqa: E402
from advit.core.machine import machine  # noqa: E402
from advit.measure.evaluate import predict, summarize  # noqa: E402
from advit.measure.evaluate import split_faithfulness  # noqa: E402
from advit.measure.faithfulness import GRADIENT_ROLLOUT, FaithfulnessCurves  # noqa: E402
from advit.measure.verdicts import last_layer  # noqa: E402
from advit.measure.removal import PROTOCOLS  # noqa: E402
from advit.core.io import read_json  # noqa: E402


def measure(run: Path, images: int) -> dict:
    """One arm's selected checkpoint on its validation split: top-1 and the maps' quarter drops by protocol."""
    config = read_json(run / 'config.json') or {}
    loaded = load_checkpoint(run / 'best.safetensors')
    model, meta = loaded.model, loaded.meta
    train = load_dataset(config['data'], config.get('cache_dir'))['train']
    _, val = train.holdout(config['val_size'])
    transform = BatchTransform(config['recipe'], config['image_size'], meta['mean'], meta['std'], seed=0,
                               device=torch.device('cpu'))
    top1 = summarize(predict(model, val, transform, 512, torch.device('cpu')), val.labels, val.classes)['top1']
    result = dict(run=str(run), relevance_target=config.get('relevance_target'), step=meta.get('step'),
                  val_top1=top1, images=images, quarter_drop={})
    for protocol in PROTOCOLS:
        curves = FaithfulnessCurves.from_dict(split_faithfulness(model, meta, val, transform.eval, images, amp=True,
                                                                 protocol=protocol))
        result['quarter_drop'][protocol] = {
            source: dict(drop=curves.quarter_drop(source), se=curves.quarter_drop_error(source))
            for source in (last_layer(curves.sources), GRADIENT_ROLLOUT)}
        print(f'{run.name}: val top-1 {top1:.2f}, {protocol}: ' + ', '.join(
            f'{source} {entry["drop"]:+.1f} ± {entry["se"]:.1f}' for source, entry in
            result['quarter_drop'][protocol].items()), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs='+', type=Path, help='the arms\' run folders')
    parser.add_argument('--images', type=int, default=1000, help='validation images the maps are measured on')
    parser.add_argument('--json', type=Path)
    args = parser.parse_args(argv)
    results = dict(machine=machine(), threads=torch.get_num_threads(),
                   arms=[measure(run, args.images) for run in args.runs])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
    main()
