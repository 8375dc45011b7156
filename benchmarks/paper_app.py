"""Benchmark: what a user of the app waits for with the paper's model sizes, on this machine.

A ViT-B/16 teacher and a ViT-S/16 student at 224x224 (random weights, 10 classes, saved as advit checkpoints by
``app_latency.save_pair``, as a GPU run's ``best.safetensors`` would be), served by ``python app.py``
(``tests/app_server.py``) and asked through ``gradio_client`` by one client, without downloading the files:

- ``attention``: "Show attention" (every layer's maps, the Fig. 2 figure of 12 rows, the gaps, the downloads),
  client side, over ``--repeats`` requests after ``--warmup``; then, once each, what the page asks next:
  ``faithfulness`` (both models' deletion curves on the image: 44 masked copies each), ``layer`` (one layer
  large) and ``more views`` (rollout, mass mask, gradient rollout, every last-layer head);
- ``peak memory``: the server's resident memory once started, and its high-water mark (``VmHWM``) at the end;
- ``compare``: Compare's first computation of a model's predictions on the CIFAR-10 test set (what
  ``compare.saved_predictions`` does when nothing is saved: load, then predict at 224 in batches of
  ``compare.PREDICTION_BATCH`` on the CPU), in this process after the server has stopped, on the first
  ``--compare-images`` test images, and at that rate for all 10,000.

    python benchmarks/paper_app.py --json benchmarks/results/paper_app-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from gradio_client import Client, handle_file

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / 'tests')]
from app_latency import PAIRS, save_pair, summarize  # noqa: E402
from app_server import AppServer  # noqa: E402
from measure import cpu_s, rss_mib  # noqa: E402

from advit.core.machine import machine  # noqa: E402
from advit.measure.compare import PREDICTION_BATCH  # noqa: E402
from advit.core.data import default_dataset, load_dataset  # noqa: E402
from advit.measure.evaluate import checkpoint_probs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / 'assets' / 'examples' / 'horse_7000.png'
TEST_IMAGES = 10_000


def wait_until_idle(pid: int, timeout_s: float = 600) -> None:
    """Return once process ``pid`` has used under 0.1 s of CPU in a second."""
    deadline, used = time.monotonic() + timeout_s, cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_s(pid)
        if now - used < 0.1:
            return
        used = now
    raise RuntimeError(f'process {pid} still busy after {timeout_s:.0f} s')


def measure_app(keys: dict[str, str], folder: Path, workdir: Path, warmup: int, repeats: int) -> dict:
    pair = dict(image=handle_file(str(EXAMPLE)), teacher=keys['teacher'], student=keys['student'])
    form = dict(pair, fusion='trained', head=0, opacity=0.6)
    with AppServer(workdir / 'app.log', ADVIT_CHECKPOINTS=str(folder), ADVIT_RUNS=str(workdir / 'runs'),
                   ADVIT_JOBS='off') as server:
        server.wait_until_ready()
        wait_until_idle(server.process.pid)  # the opening views are made in the background at start
        started_mib = rss_mib(server.process.pid)
        client = Client(server.url, verbose=False, download_files=False)
        times = []
        for index in range(warmup + repeats):
            start = time.perf_counter()
            client.predict(**form, api_name='/attention')
            if index >= warmup:
                times.append(time.perf_counter() - start)
        once = {}
        for name, call in (('faithfulness', lambda: client.predict(**pair, api_name='/faithfulness')),
                           ('layer', lambda: client.predict(**form, layer=12, api_name='/attention_layer')),
                           ('more views', lambda: client.predict(**pair, fusion='mean', discard=0.0, keep=0.6,
                                                                 opacity=0.6, api_name='/more_views'))):
            start = time.perf_counter()
            call()
            once[name] = time.perf_counter() - start
        return dict(attention=summarize(times), once_s=once, server_started_mib=started_mib,
                    server_peak_mib=rss_mib(server.process.pid, 'VmHWM'))


def measure_compare(keys: dict[str, str], images: int) -> dict:
    test = load_dataset(default_dataset())['test']
    first = type(test)(test.images[:images], test.labels[:images], test.classes)
    rates = {}
    for role, key in keys.items():
        start = time.perf_counter()
        probs, _ = checkpoint_probs(key, first, batch_size=PREDICTION_BATCH, device='cpu')
        seconds = time.perf_counter() - start
        assert len(probs) == images
        rates[role] = dict(seconds=seconds, images=images, images_per_s=images / seconds,
                           estimated_10000_min=TEST_IMAGES / (images / seconds) / 60)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--compare-images', type=int, default=512)
    parser.add_argument('--json', type=Path, help='write the figures here')
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'paper'
        folder.mkdir()
        keys = save_pair(PAIRS['224'], folder, seed=0)
        app = measure_app(keys, folder, Path(tmp), args.warmup, args.repeats)
        compare = measure_compare(keys, args.compare_images)
    result = dict(machine=machine(), torch=torch.__version__, pair='ViT-B/16 teacher, ViT-S/16 student, 224x224',
                  app=app, compare=compare)
    attention = app['attention']
    print(f"{result['machine']}, torch {torch.__version__}, {result['pair']}")
    print(f"attention: median {attention['median_s'] * 1000:.0f} ms, p95 {attention['p95_s'] * 1000:.0f} ms "
          f"(n={attention['n']}); " + ', '.join(f'{name} {seconds:.1f} s' for name, seconds in app['once_s'].items()))
    print(f"server memory: {app['server_started_mib']:.0f} MiB started, {app['server_peak_mib']:.0f} MiB peak")
    for role, rate in compare.items():
        print(f"compare, {role}: {rate['images_per_s']:.1f} images/s on {rate['images']} test images: "
              f"10,000 in about {rate['estimated_10000_min']:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
    main()
