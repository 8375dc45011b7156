"""Benchmark: ADViT Studio under load: many concurrent Attention requests, all answered, all right, no leak.

The CIFAR-native pair of ``app_latency.py`` (``vit_small_patch4_32`` teaching ``vit_tiny_patch4_32``
at 32x32, random weights, 10 classes, saved as advit checkpoints in a temporary folder; head fusion
``mean``, opacity 0.6) is served by ``python app.py`` (a subprocess on a free local port, gradio's
request profiler off: it would keep every request's trace in the server's memory). After one untimed
request (it loads the models), ``--clients`` concurrent ``gradio_client`` clients (threads, each with
its own ``Client``, started together) send ``--requests`` Attention requests each. Client ``i``'s
``k``-th request sends example image ``(i + k) mod 20`` of ``assets/examples``, so that concurrent
requests carry different images; with ``--same-image`` every request sends the first example (everyone
clicking the same example: concurrent responses return the very same panel files). With
``--distinct`` request ``n`` of the run asks for opacity ``0.3 + 0.6 n / total`` instead of 0.6, so
every response's panels are new files (a soak of the served-image cap, ``--served-mb``).

By default the clients do not download the output files (``download_files=False``): gradio_client
fetches the gallery's 24 panels of each response one after another, with a new HTTP client each
(about 20 ms of CPU per file), which on a 2-core machine would take most of the server's CPU and
measure the client. With ``--same-image`` they do, and each panel must decode as a whole image: a
file torn while it is served shows there.

Each response is checked:

- an error (an exception from ``predict``) counts as an error;
- a wrong answer: the data JSON (the last output) lacks one record per student layer, a record lacks
  either map, a map has not ``grid[0] * grid[1]`` (64) values, a gap (``l1``, ``l2``, ``kl``) is not
  finite, or a gap differs by more than ``--tolerance`` (1e-6) from the gaps this process computes
  for the same image with ``Studio.attention`` on the same checkpoints: a request that got another
  request's maps shows there.

Latency: the client-side seconds of each request (``time.perf_counter``; upload, queue and the
server's work), p50 and p95 over all requests. Memory: the app process's resident set
(``VmRSS`` of ``/proc/<pid>/status``) read when the 20th, 100th and 200th (by default; ``--rss-at``)
request of the run has been answered, and the growth from the first reading to the last; the goal
is under 10% (no leak). At the same moments, the size of Gradio's file cache (the server's
``GRADIO_TEMP_DIR``: uploads and served images). Also the run's wall time and throughput, and the CPU seconds the server and
this process (the clients) used over it.

    python benchmarks/app_load.py                                      # 8 clients x 25 requests
    python benchmarks/app_load.py --clients 4 --requests 10 --rss-at 10,40
    python benchmarks/app_load.py --same-image --json benchmarks/results/app_load-same-image-cpu.json
    python benchmarks/app_load.py --json benchmarks/results/app_load-cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio
import gradio_client
import numpy as np
import timm
import torch
from gradio_client import Client, handle_file
from PIL import Image

from advit.app.forms import AttentionRequest
from advit.measure.inspection import GAP_KINDS
from advit.app.studio import Studio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_latency import EXAMPLES, FUSION, HEAD, OPACITY, PAIRS, ProfiledApp, save_pair, temp_root  # noqa: E402
from app_server import folder_bytes  # noqa: E402
from measure import cpu_s, rss_mib  # noqa: E402

PAIR = PAIRS['cifar32']
RSS_GROWTH_GOAL = 0.10
MAX_PROBLEMS_KEPT = 20


def undecodable(panels: list[dict[str, Any]]) -> str | None:
    """What is wrong with a response's downloaded panel files, or None when each decodes whole."""
    for panel in panels:
        try:
            with Image.open(panel['image']) as image:
                image.load()
        except Exception as err:  # noqa: BLE001 - any failure to decode is the finding
            return f'panel {Path(panel["image"]).name} does not decode: {type(err).__name__}: {err}'
    return None


def expected_gaps(keys: dict[str, str], checkpoints: Path) -> dict[str, dict[str, list[float]]]:
    """Per example image (by name): each gap kind's per-layer values, from ``Studio.attention`` here."""
    studio = Studio(checkpoint_dirs=[checkpoints], runs_dir=None, data=checkpoints / 'no-dataset')
    expected = {}
    for image in EXAMPLES:
        data = studio.attention.view(AttentionRequest(str(image), keys['teacher'], keys['student'], FUSION, HEAD,
                                                      OPACITY)).data
        expected[image.name] = {kind: [layer[kind] for layer in data['layers']] for kind in GAP_KINDS}
    return expected


def min_separation(expected: dict[str, dict[str, list[float]]]) -> float:
    """The smallest, over pairs of example images, of the largest gap difference between their answers:
    how far apart two images' answers are, against the tolerance."""
    gaps = [np.array([values[kind] for kind in GAP_KINDS]) for values in expected.values()]
    return float(min(np.abs(a - b).max() for i, a in enumerate(gaps) for b in gaps[i + 1:]))


def check_answer(data: Any, expected: dict[str, list[float]], layers: int, tolerance: float) -> tuple[str | None, float]:
    """(what is wrong with one response's data JSON, or None; its largest gap difference from ``expected``)."""
    if not isinstance(data, dict) or not isinstance(data.get('layers'), list):
        return f'data is not a dict with layers: {str(data)[:200]}', math.inf
    records, grid = data['layers'], data.get('grid')
    if len(records) != layers:
        return f'{len(records)} layer records, expected {layers}', math.inf
    if not (isinstance(grid, list) and len(grid) == 2):
        return f'bad grid {grid!r}', math.inf
    cells = grid[0] * grid[1]
    worst = 0.0
    for index, record in enumerate(records):
        for name in ('teacher_map', 'student_map'):
            values = record.get(name)
            if not isinstance(values, list) or len(values) != cells:
                return f'layer {index}: {name} has {len(values) if isinstance(values, list) else values!r} values, ' \
                       f'expected {cells}', math.inf
        for kind in GAP_KINDS:
            value = record.get(kind)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return f'layer {index}: gap {kind} = {value!r}', math.inf
            worst = max(worst, abs(value - expected[kind][index]))
    if worst > tolerance:
        return f'gaps differ from this image\'s by up to {worst:.3g}', worst
    return None, worst


class Load:
    """The run's shared record: latencies, errors, wrong answers and RSS readings, under one lock."""

    def __init__(self, pid: int, rss_at: list[int], cache: Path) -> None:
        self.pid, self.rss_at, self.cache = pid, set(rss_at), cache
        self.lock = threading.Lock()
        self.answered = 0
        self.times_s: list[float] = []
        self.errors = self.wrong = 0
        self.worst_gap_diff = 0.0
        self.problems: list[str] = []
        self.rss_mib: dict[int, float] = {}
        self.cache_mib: dict[int, float] = {}

    def record(self, seconds: float, problem: str | None, error: bool, gap_diff: float) -> None:
        with self.lock:
            self.answered += 1
            self.times_s.append(seconds)
            if error:
                self.errors += 1
            elif problem:
                self.wrong += 1
            if math.isfinite(gap_diff):
                self.worst_gap_diff = max(self.worst_gap_diff, gap_diff)
            if problem and len(self.problems) < MAX_PROBLEMS_KEPT:
                self.problems.append(problem)
            if self.answered in self.rss_at:
                self.rss_mib[self.answered] = rss_mib(self.pid)
                self.cache_mib[self.answered] = folder_bytes(self.cache) / 2**20


def run_load(server: ProfiledApp, keys: dict[str, str], expected: dict[str, dict[str, list[float]]], layers: int,
             args: argparse.Namespace) -> Load:
    """``args.clients`` concurrent clients sending ``args.requests`` checked Attention requests each."""
    load = Load(server.process.pid, args.rss_at, server.cache)
    downloads = server.cache.parent / 'downloads' if args.same_image else None  # removed with the server's folder
    clients = [Client(server.url, verbose=False, download_files=f'{downloads}/{i}' if downloads else False)
               for i in range(args.clients)]
    start_together = threading.Barrier(args.clients)

    def run(index: int) -> None:
        start_together.wait()
        for k in range(args.requests):
            image = EXAMPLES[0 if args.same_image else (index + k) % len(EXAMPLES)]
            opacity = 0.3 + 0.6 * (index * args.requests + k) / (args.clients * args.requests) if args.distinct \
                else OPACITY  # the gaps do not depend on it: the expected answer holds
            start = time.perf_counter()
            try:
                outputs = clients[index].predict(handle_file(str(image)), keys['teacher'], keys['student'], FUSION,
                                                 HEAD, opacity, api_name='/attention')
            except Exception as err:  # noqa: BLE001 - every failure of a request is the result
                load.record(time.perf_counter() - start, f'client {index} request {k} ({image.name}): '
                            f'{type(err).__name__}: {err}', True, math.inf)
                continue
            seconds = time.perf_counter() - start
            problem, diff = check_answer(outputs[5], expected[image.name], layers, args.tolerance)  # the maps JSON
            if downloads and problem is None:
                problem = undecodable(outputs[0])
            load.record(seconds, problem and f'client {index} request {k} ({image.name}): {problem}', False, diff)

    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        for future in [pool.submit(run, index) for index in range(args.clients)]:
            future.result()
    return load


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Save the checkpoints, compute the expected gaps, start the app, load it, and gather the figures."""
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix='advit-app-load-') as tmp:
        workdir = Path(tmp)
        checkpoints = workdir / 'checkpoints'
        checkpoints.mkdir()
        print('saving checkpoints, computing the expected gaps of each example ...', file=sys.stderr, flush=True)
        keys = save_pair(PAIR, checkpoints, args.seed)
        expected = expected_gaps(keys, checkpoints)
        layers = len(next(iter(expected.values()))['l1'])
        separation = min_separation(expected)
        print('starting app.py ...', file=sys.stderr, flush=True)
        served = {'ADVIT_SERVED_MB': str(args.served_mb)} if args.served_mb else {}
        with ProfiledApp(checkpoints, workdir, profiling=False, **served) as server, \
                temp_root(workdir / 'client-tmp'):
            startup_s = server.wait_until_ready()
            warm = Client(server.url, verbose=False, download_files=False)
            warm.predict(handle_file(str(EXAMPLES[0])), keys['teacher'], keys['student'], FUSION, HEAD, OPACITY,
                         api_name='/attention')  # loads the models: not part of the run
            rss_before = rss_mib(server.process.pid)
            print(f'{args.clients} clients x {args.requests} requests ...', file=sys.stderr, flush=True)
            server_cpu, client_cpu, start = cpu_s(server.process.pid), cpu_s(os.getpid()), time.perf_counter()
            load = run_load(server, keys, expected, layers, args)
            wall_s = time.perf_counter() - start
            server_cpu, client_cpu = cpu_s(server.process.pid) - server_cpu, cpu_s(os.getpid()) - client_cpu
            alive = server.process.poll() is None
            log_tail = server.log_tail(2000) if (load.errors or load.wrong or not alive) else None
    readings = [load.rss_mib[n] for n in sorted(load.rss_mib)]
    growth = (readings[-1] / readings[0] - 1) if len(readings) >= 2 else None
    times = load.times_s
    results = dict(
        requests=load.answered, errors=load.errors, wrong_answers=load.wrong, problems=load.problems,
        max_gap_diff=load.worst_gap_diff, min_separation=separation, layers=layers,
        p50_s=float(np.percentile(times, 50)), p95_s=float(np.percentile(times, 95)), max_s=float(max(times)),
        wall_s=wall_s, throughput_per_s=len(times) / wall_s, server_cpu_s=server_cpu, clients_cpu_s=client_cpu, times_s=[float(t) for t in times],
        rss_before_mib=rss_before, rss_mib={str(n): v for n, v in sorted(load.rss_mib.items())},
        gradio_cache_mib={str(n): v for n, v in sorted(load.cache_mib.items())},
        rss_growth=growth, server_alive_at_end=alive, server_log_tail=log_tail)
    results['passed'] = bool(load.errors == 0 and load.wrong == 0 and load.answered == args.clients * args.requests
                             and growth is not None and growth < RSS_GROWTH_GOAL and alive)
    config = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=torch.get_num_threads(),
                  teacher=PAIR.teacher, student=PAIR.student, image_size=PAIR.image_size, clients=args.clients,
                  requests_per_client=args.requests, tolerance=args.tolerance, rss_at=args.rss_at,
                  images=1 if args.same_image else len(EXAMPLES), download_files=args.same_image,
                  distinct_panels=args.distinct, served_mb=args.served_mb, torch=torch.__version__, timm=timm.__version__,
                  gradio=gradio.__version__, gradio_client=gradio_client.__version__, app_startup_s=startup_s,
                  load_start=load_at_start, load_end=os.getloadavg()[0])
    return dict(config=config, results=results)


def print_report(report: dict[str, Any]) -> None:
    """The settings, then the table of the run and the verdict."""
    print(' '.join(f'{key}={value:.3g}' if isinstance(value, float) else f'{key}={value}'
                   for key, value in report['config'].items()))
    r = report['results']
    rss_columns = [f'RSS@{n} MiB' for n in r['rss_mib']]
    header = ['requests', 'errors', 'wrong', 'p50 ms', 'p95 ms', *rss_columns, 'growth %']
    growth = f'{r["rss_growth"] * 100:+.1f}' if r['rss_growth'] is not None else 'n/a'
    row = [str(r['requests']), str(r['errors']), str(r['wrong_answers']), f'{r["p50_s"] * 1e3:.1f}',
           f'{r["p95_s"] * 1e3:.1f}', *(f'{v:.1f}' for v in r['rss_mib'].values()), growth]
    widths = [max(len(h), len(v)) + 2 for h, v in zip(header, row)]
    print(''.join(h.rjust(w) for h, w in zip(header, widths)))
    print(''.join(v.rjust(w) for v, w in zip(row, widths)))
    print(f'max request {r["max_s"] * 1e3:.1f} ms; {r["wall_s"]:.1f} s for the run, {r["throughput_per_s"]:.2f} '
          f'requests/s; CPU over the run: server {r["server_cpu_s"]:.1f} s, clients {r["clients_cpu_s"]:.1f} s; '
          f'largest gap difference from the in-process answer {r["max_gap_diff"]:.2g} (two '
          f'example images\' answers differ by at least {r["min_separation"]:.2g}); RSS after the '
          f'warm-up request {r["rss_before_mib"]:.1f} MiB; server alive at the end: {r["server_alive_at_end"]}')
    for problem in r['problems']:
        print(f'  problem: {problem}')
    if r['server_log_tail']:
        print('server log (end):\n' + r['server_log_tail'])
    print('Gradio file cache MiB at ' + ', '.join(f'{n}: {v:.2f}' for n, v in r['gradio_cache_mib'].items()))
    print(f'goal: no errors, every answer right, RSS growth under {RSS_GROWTH_GOAL:.0%} -> '
          f'{"met" if r["passed"] else "MISSED"}')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--clients', type=int, default=8, help='concurrent clients')
    parser.add_argument('--requests', type=int, default=25, help='requests per client')
    parser.add_argument('--rss-at', default='20,100,200', help='read the server RSS after these many answers')
    parser.add_argument('--tolerance', type=float, default=1e-6, help='largest gap difference from the in-process one')
    parser.add_argument('--same-image', action='store_true',
                        help='every request sends the same example, and each response\'s panels are downloaded')
    parser.add_argument('--distinct', action='store_true', help='a new opacity for every request: all panels new')
    parser.add_argument('--served-mb', type=float, help='the server\'s cap on served images (ADVIT_SERVED_MB)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=Path, help='write the results here')
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error('--clients and --requests must be at least 1')
    try:
        args.rss_at = sorted({int(n) for n in args.rss_at.split(',') if n.strip()})
    except ValueError:
        parser.error(f'--rss-at: comma-separated integers, got {args.rss_at!r}')
    total = args.clients * args.requests
    if not args.rss_at or args.rss_at[0] < 1 or args.rss_at[-1] > total:
        parser.error(f'--rss-at: between 1 and {total} (clients x requests)')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_all(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + '\n')
    return 0 if report['results']['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
