"""Benchmark: what each removal protocol of the faithfulness measure costs, on the shipped bundle.

    python benchmarks/faithfulness_protocols.py --json benchmarks/results/faithfulness-protocols-cpu.json

- **the app's view**: ``Studio.attention.faithfulness`` on one example image, the bundle's default teacher and
  student (the Attention tab's deletion curves: three maps of both models), median of ``--repeats`` after one
  warm-up, per protocol. The issue's bar: at most 2 s on 2 cores at 32x32.
- **the dataset measure**: every curve of one model (every layer, rollout, gradient rollout; deletion and
  insertion) on ``--images`` test images, as ``advit faithfulness --protocol`` runs it, per protocol.

Everything in one process, one protocol after another on the same models, so the ratios compare like with like.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from advit.app.studio import Studio  # noqa: E402
from advit.app.forms import AttentionRequest  # noqa: E402
from advit.core.data import default_dataset, load_dataset  # noqa: E402
from advit.core.machine import machine  # noqa: E402
from advit.measure.evaluate import load_for_evaluation  # noqa: E402
from advit.measure.evaluate import split_faithfulness  # noqa: E402
from advit.measure.removal import PROTOCOLS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bundle', type=Path, default=REPO / 'checkpoints')
    parser.add_argument('--data', default=default_dataset())
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--images', type=int, default=1000)
    parser.add_argument('--json', type=Path)
    args = parser.parse_args()
    studio = Studio([args.bundle], None, Path(args.data))
    defaults = studio.offer.defaults()
    example = str(sorted((REPO / 'assets' / 'examples').glob('*.png'))[0])
    results: dict = dict(machine=machine(), torch=torch.__version__, threads=torch.get_num_threads(),
                         teacher=defaults.teacher, student=defaults.student, app_view_s={}, dataset_s={})
    for protocol in PROTOCOLS:
        request = AttentionRequest(example, defaults.teacher, defaults.student, protocol=protocol)
        studio.attention.faithfulness(request)  # warm-up (and the models' first load)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            studio.attention.faithfulness(request)
            times.append(time.perf_counter() - start)
        results['app_view_s'][protocol] = statistics.median(times)
        print(f'app view, {protocol}: median {statistics.median(times):.3f} s over {args.repeats}', flush=True)
    test = load_dataset(args.data)['test']
    loaded, transform, device = load_for_evaluation(args.bundle / 'teacher.safetensors', test, 256, 'cpu')
    for protocol in PROTOCOLS:
        start = time.perf_counter()
        split_faithfulness(loaded.model, loaded.meta, test, transform.eval, args.images, 256, True, protocol)
        results['dataset_s'][protocol] = time.perf_counter() - start
        print(f'teacher on {args.images} test images, {protocol}: {results["dataset_s"][protocol]:.1f} s', flush=True)
    results['dataset_over_mean'] = {p: results['dataset_s'][p] / results['dataset_s']['mean'] for p in PROTOCOLS}
    results['app_view_over_mean'] = {p: results['app_view_s'][p] / results['app_view_s']['mean'] for p in PROTOCOLS}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
    main()
