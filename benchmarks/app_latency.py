"""Benchmark: how long one Attention request of ADViT Studio takes, against the models' own forward passes.

What it measures, for each teacher/student pair (random weights, 10 classes, saved as advit
checkpoints in a temporary folder; one example image from ``assets/examples``, head fusion
``mean``, opacity 0.6):

- ``cifar32``: ``vit_small_patch4_32`` (or ``--cifar-teacher vit_base_patch4_32``) teaching
  ``vit_tiny_patch4_32`` at 32x32. Goal: a request under 0.5 s server-side.
- ``224``: ``vit_base_patch16_224`` teaching ``vit_small_patch16_224`` at 224x224. Goal: under 1.0 s.

In this process, on the models as ``Studio`` caches them:

- ``forward``: both models' bare forward passes on the already prepared input tensors, under
  ``torch.inference_mode`` (no hooks): the floor of any request.
- ``attention``: ``Studio.attention`` with its models cached, split into ``inspect``
  (``inspect_pair``: image to tensors, both forwards with the [CLS] capture, alignment, gaps) and
  ``render`` (``layer_panels`` + ``gap_figure`` + ``gap_table`` + ``AttentionReport.as_dict``).
- ``first attention``: the first ``Studio.attention`` of a fresh ``Studio``, which loads both
  checkpoints (one sample).

Through the real app (skipped with ``--no-app``): ``python app.py`` runs as a subprocess on a free
local port, over the same checkpoint folder, with gradio's request profiler on
(``GRADIO_PROFILING=1``). Each request is ``gradio_client.Client(url).predict(handle_file(image),
teacher, student, 'mean', 0, 0.6, api_name='/attention')``, timed by the client, in three runs of
``--repeats`` requests per client:

- ``one_client``: one client, which also downloads the output files (the gallery's panels, one
  file each) as a browser fetches them: upload, queue, the server's work and the downloads.
- ``one_client_no_download``: the same without the downloads (``download_files=False``).
- ``concurrent_no_download``: ``--clients`` concurrent clients (threads, each with its own
  ``Client`` and its own example image, so that no two requests have the same outputs), without
  the downloads: gradio_client spends about 20 ms of CPU per downloaded file (a new HTTP client
  each), which on a 2-core machine would take the server's CPU and say nothing about the app.

For each request the server's own phases come from ``/gradio_api/profiling/traces``: ``total``
(preprocess + the app's ``attention`` function + postprocess; the queue wait is not in it), each of
those, and the queue wait. The server's process group is killed at the end.

Times come from ``time.perf_counter`` after ``--warmup`` untimed repeats; the table shows medians,
95th percentiles and the ratio of each median to the bare forward's.

    python benchmarks/app_latency.py                                   # both pairs, app included
    python benchmarks/app_latency.py --pairs cifar32 --no-app --repeats 5 --warmup 1
    python benchmarks/app_latency.py --json benchmarks/results/app_latency-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio
import gradio_client
import numpy as np
import timm
import torch
from gradio_client import Client, handle_file

from advit.app.catalog import public_name
from advit.core.checkpoint import save_checkpoint
from advit.core.data import CIFAR10_CLASSES
from advit.app.forms import AttentionRequest
from advit.app.images import load_image
from advit.measure.inspection import inspect_pair, model_input
from advit.core.models import create_model
from advit.app.render import gap_figure, gap_table, layer_panels
from advit.app.studio import Studio

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / 'tests')]
from app_server import AppServer  # noqa: E402  (tests/: the app as a server, shared with the tests)
from measure import time_repeats  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / 'assets' / 'examples' / 'dog_5000.png'
EXAMPLES = [EXAMPLE] + sorted(set((REPO / 'assets' / 'examples').glob('*.png')) - {EXAMPLE})
FUSION, HEAD, OPACITY = 'mean', 0, 0.6
SERVER_PHASES = ('total', 'fn_call', 'postprocess', 'preprocess', 'queue_wait')


@dataclass(frozen=True)
class Pair:
    """A teacher/student pair of the app's attention view, and its latency goal."""
    name: str
    teacher: str
    student: str
    image_size: int
    goal_s: float


PAIRS = {pair.name: pair for pair in (
    Pair('cifar32', 'vit_small_patch4_32', 'vit_tiny_patch4_32', 32, 0.5),
    Pair('224', 'vit_base_patch16_224', 'vit_small_patch16_224', 224, 1.0),
)}
ROLES = ('teacher', 'student')


# --- statistics --------------------------------------------------------------------------------

def summarize(times_s: list[float]) -> dict[str, Any]:
    """Median, 95th percentile and minimum of a list of seconds, and the list itself."""
    return dict(median_s=float(np.median(times_s)), p95_s=float(np.percentile(times_s, 95)),
                min_s=float(min(times_s)), n=len(times_s), times_s=[float(t) for t in times_s])


# --- the checkpoints ---------------------------------------------------------------------------

def save_pair(pair: Pair, folder: Path, seed: int) -> dict[str, str]:
    """Build the pair with random weights, save both as advit checkpoints; their names as the app lists them
    (``catalog.public_name``: a request never names a server path), by role."""
    keys = {}
    for role, name in zip(ROLES, (pair.teacher, pair.student)):
        torch.manual_seed(seed)
        model = create_model(name, num_classes=len(CIFAR10_CLASSES), img_size=pair.image_size)
        meta = dict(model=name, model_args=dict(num_classes=len(CIFAR10_CLASSES), img_size=pair.image_size),
                    classes=list(CIFAR10_CLASSES), image_size=pair.image_size,
                    mean=list(model.pretrained_cfg['mean']), std=list(model.pretrained_cfg['std']),
                    method='vit' if role == 'teacher' else 'advit_l1',
                    params=sum(p.numel() for p in model.parameters()))
        path = folder / f'{pair.name}-{role}.safetensors'
        save_checkpoint(path, model, meta)
        keys[role] = public_name(path, folder)
    return keys


# --- in this process ---------------------------------------------------------------------------

def measure_in_process(keys: dict[str, str], checkpoints: Path, warmup: int, repeats: int) -> dict[str, Any]:
    """The first (model-loading) request, then forward, attention, inspect and render timings."""
    studio = Studio(checkpoint_dirs=[checkpoints], runs_dir=None, data=checkpoints / 'no-dataset')
    request = AttentionRequest(str(EXAMPLE), keys['teacher'], keys['student'], FUSION, HEAD, OPACITY)
    start = time.perf_counter()
    studio.attention.view(request)
    first_s = time.perf_counter() - start

    (teacher, teacher_meta), (student, student_meta) = (studio.offer.models.get(studio.offer.find(keys[role]).key)
                                                        for role in ROLES)
    image = load_image(EXAMPLE)
    teacher_input, student_input = model_input(image, teacher_meta, teacher), model_input(image, student_meta, student)
    report = inspect_pair(teacher, teacher_meta, student, student_meta, image, FUSION)

    def forward() -> None:
        with torch.inference_mode():
            teacher(teacher_input)
            student(student_input)

    stages: dict[str, Callable[[], Any]] = {
        'forward': forward,
        'attention': lambda: studio.attention.view(request),
        'inspect': lambda: inspect_pair(teacher, teacher_meta, student, student_meta, image, FUSION),
        'render': lambda: (layer_panels(report, image, OPACITY), gap_figure(report), gap_table(report),
                           report.as_dict()),
    }
    results = {name: summarize(time_repeats(fn, warmup, repeats)) for name, fn in stages.items()}
    results['first_attention'] = summarize([first_s])
    return results


# --- through the app ---------------------------------------------------------------------------

class ProfiledApp(AppServer):
    """The app serving ``checkpoints`` from a scratch ``workdir`` (its runs folder, Gradio's file cache
    in ``cache``, the log), with gradio's request profiler on or off.

    Args:
        checkpoints: The folder of checkpoints (``ADVIT_CHECKPOINTS``).
        workdir: An empty folder.
        profiling: Turn gradio's request profiler on (it keeps every request's trace in memory).
        extra_env: More environment for the server (``ADVIT_SERVED_MB=...``).
    """

    def __init__(self, checkpoints: Path, workdir: Path, profiling: bool = True, app: Path = REPO / 'app.py',
                 **extra_env: str) -> None:
        (workdir / 'runs').mkdir()
        self.cache = workdir / 'gradio'
        super().__init__(workdir / 'server.log', app, ADVIT_CHECKPOINTS=str(checkpoints), ADVIT_RUNS=str(workdir / 'runs'),
                         GRADIO_TEMP_DIR=str(self.cache), GRADIO_PROFILING='1' if profiling else '0', **extra_env)

    def clear_traces(self) -> None:
        """Forget the profiler's traces so far."""
        urllib.request.urlopen(urllib.request.Request(f'{self.url}/gradio_api/profiling/clear', method='POST'),
                               timeout=10).close()

    def attention_traces(self, expected: int, timeout_s: float = 10.0, fn_name: str = 'attention') -> list[dict[str, Any]]:
        """The profiler's traces of ``fn_name`` requests (``/attention``), once ``expected`` of them are recorded."""
        deadline = time.perf_counter() + timeout_s
        while True:
            with urllib.request.urlopen(f'{self.url}/gradio_api/profiling/traces', timeout=10) as response:
                traces = [t for t in json.loads(response.read()) if t['fn_name'] == fn_name]
            if len(traces) >= expected or time.perf_counter() > deadline:
                return traces
            time.sleep(0.1)  # a trace is stored just after its response is sent


def request_attention(client: Client, keys: dict[str, str], image: Path) -> None:
    """One Attention request, as the app's API names it."""
    client.predict(handle_file(str(image)), keys['teacher'], keys['student'], FUSION, HEAD, OPACITY,
                   api_name='/attention')


def client_latencies(server: ProfiledApp, keys: dict[str, str], clients: int, requests: int,
                     downloads: Path | None) -> list[float]:
    """Client-side seconds of each request, ``clients`` concurrent clients sending ``requests`` each.

    Client ``i`` sends ``EXAMPLES[i]`` (``EXAMPLE`` for the first), so concurrent requests differ.

    Args:
        downloads: Where the clients download the output files (the gallery's panels), as a
            browser fetches them; None: they do not download them.
    """
    made = [Client(server.url, verbose=False, download_files=str(downloads) if downloads else False)
            for _ in range(clients)]
    start_together = threading.Barrier(clients)

    def run(index: int) -> list[float]:
        start_together.wait()
        image = EXAMPLES[index % len(EXAMPLES)]
        return time_repeats(lambda: request_attention(made[index], keys, image), warmup=0, repeats=requests)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return [t for times in pool.map(run, range(clients)) for t in times]


def measure_app(server: ProfiledApp, keys: dict[str, str], clients: int, warmup: int, repeats: int,
                downloads: Path) -> dict[str, Any]:
    """Client-side and server-side times of Attention requests (see the module docstring for the runs)."""
    client_latencies(server, keys, 1, max(warmup, 1), downloads)  # the first request loads the models
    runs = {'one_client': (1, downloads), 'one_client_no_download': (1, None)}
    if clients > 1:
        runs['concurrent_no_download'] = (clients, None)
    results = {}
    for name, (count, folder) in runs.items():
        server.clear_traces()
        times = client_latencies(server, keys, count, repeats, folder)
        traces = server.attention_traces(expected=len(times))
        results[name] = dict(
            clients=count, downloads=folder is not None, client=summarize(times),
            server={phase: summarize([t[f'{phase}_ms'] / 1e3 for t in traces]) for phase in SERVER_PHASES})
    return results


@contextmanager
def temp_root(folder: Path) -> Iterator[None]:
    """Point ``tempfile`` at ``folder``: gradio_client leaves an empty folder there per downloaded file."""
    folder.mkdir(exist_ok=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


# --- the Attention tab against an earlier version ---------------------------------------------------

BUNDLE_PAIR = ('checkpoints/teacher.safetensors', 'checkpoints/advit_l1.safetensors')
# What the tab asks of the server now: "Show attention" draws the maps, the figure, the gaps and the
# downloads; the layer slider one layer large; "Show more views" rollout, its mask, the last layer's
# heads and the prefix shares.
TAB_REQUESTS = {
    'attention': lambda client, image: client.predict(handle_file(str(image)), *BUNDLE_PAIR, FUSION, HEAD, OPACITY,
                                                      api_name='/attention'),
    'attention_layer': lambda client, image: client.predict(handle_file(str(image)), *BUNDLE_PAIR, FUSION, HEAD,
                                                            OPACITY, 1, api_name='/attention_layer'),
    'more_views': lambda client, image: client.predict(handle_file(str(image)), *BUNDLE_PAIR, FUSION, 0.0, 0.6, OPACITY,
                                                       api_name='/more_views'),
}


def measure_against(ref: str, warmup: int, repeats: int) -> dict[str, Any]:
    """Server time of the Attention tab on the shipped bundle's pair, this checkout against ``ref``'s
    ``/attention`` (a git worktree of it): both apps up at once, their requests alternated, so that
    the machine's drift falls on both alike. One client, no downloads."""
    with tempfile.TemporaryDirectory(prefix='advit-against-') as tmp:
        work = Path(tmp)
        baseline = work / 'baseline'
        subprocess.run(['git', 'worktree', 'add', '--detach', str(baseline), ref], cwd=REPO, check=True,
                       capture_output=True)
        try:
            (work / 'old').mkdir(), (work / 'new').mkdir()
            with ProfiledApp(baseline / 'checkpoints', work / 'old', app=baseline / 'app.py') as old, \
                    ProfiledApp(REPO / 'checkpoints', work / 'new') as new, temp_root(work / 'client-tmp'):
                old.wait_until_ready(), new.wait_until_ready()
                old_client, new_client = (Client(server.url, verbose=False, download_files=False)
                                          for server in (old, new))
                for index in range(warmup + repeats):
                    if index == warmup:
                        old.clear_traces(), new.clear_traces()
                    image = EXAMPLES[index % len(EXAMPLES)]
                    TAB_REQUESTS['attention'](old_client, image)
                    for request in TAB_REQUESTS.values():
                        request(new_client, image)
                servers = dict(before=old.attention_traces(repeats),
                               **{name: new.attention_traces(repeats, fn_name=name) for name in TAB_REQUESTS})
        finally:
            subprocess.run(['git', 'worktree', 'remove', '--force', str(baseline)], cwd=REPO, check=False,
                           capture_output=True)
    totals = {name: summarize([t['total_ms'] / 1e3 for t in traces]) for name, traces in servers.items()}
    before = totals['before']['median_s']
    attention, layer, more = (totals[name]['median_s'] for name in ('attention', 'attention_layer', 'more_views'))
    return dict(ref=ref, pair=list(BUNDLE_PAIR), server_total=totals, ratios={
        'attention': attention / before, 'attention + more_views': (attention + more) / before,
        'all three': (attention + layer + more) / before})


def print_against(result: dict[str, Any]) -> None:
    print(f'the Attention tab on {", ".join(result["pair"])}: server total, median / p95 ms, x {result["ref"]}\'s /attention')
    before = result['server_total']['before']['median_s']
    for name, summary in result['server_total'].items():
        print(f'{name:<20}{summary["median_s"] * 1e3:>9.1f}{summary["p95_s"] * 1e3:>9.1f}{summary["median_s"] / before:>7.2f}x')
    for name, ratio in result['ratios'].items():
        print(f'ratio {name}: {ratio:.2f}x (goal <= 1.5x: {"met" if ratio <= 1.5 else "MISSED"})')


# --- the whole run -----------------------------------------------------------------------------

def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Save the pairs' checkpoints, measure each in this process, then through the app."""
    pairs = [replace(PAIRS[name], teacher=args.cifar_teacher) if name == 'cifar32' else PAIRS[name]
             for name in args.pairs]
    results: dict[str, Any] = {}
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix='advit-app-latency-') as tmp:
        workdir = Path(tmp)
        checkpoints = workdir / 'checkpoints'
        checkpoints.mkdir()
        keys = {}
        for pair in pairs:
            print(f'{pair.name}: saving checkpoints, timing in this process ...', file=sys.stderr, flush=True)
            keys[pair.name] = save_pair(pair, checkpoints, args.seed)
            results[pair.name] = dict(pair=asdict(pair), in_process=measure_in_process(
                keys[pair.name], checkpoints, args.warmup, args.repeats))
        app_startup_s = None
        if not args.no_app:
            print('starting app.py ...', file=sys.stderr, flush=True)
            with ProfiledApp(checkpoints, workdir) as server, temp_root(workdir / 'client-tmp'):
                app_startup_s = server.wait_until_ready()
                for pair in pairs:
                    print(f'{pair.name}: timing requests to the app ...', file=sys.stderr, flush=True)
                    results[pair.name]['app'] = measure_app(server, keys[pair.name], args.clients, args.warmup,
                                                            args.repeats, workdir / 'downloads')
    return dict(config=describe(args, app_startup_s, (load_at_start, os.getloadavg()[0])), pairs=results)


def describe(args: argparse.Namespace, app_startup_s: float | None, loads: tuple[float, float]) -> dict[str, Any]:
    """The settings and versions a result was produced with, and the 1-minute load average at start and end
    (other work on the machine shows there)."""
    return dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                threads=torch.get_num_threads(), repeats=args.repeats, warmup=args.warmup, clients=args.clients,
                image=EXAMPLE.name, torch=torch.__version__, timm=timm.__version__, gradio=gradio.__version__,
                gradio_client=gradio_client.__version__, app_startup_s=app_startup_s,
                load_start=loads[0], load_end=loads[1])


def report_rows(result: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, summary) of each measurement of one pair, in the order of the table."""
    local = result['in_process']
    yield 'bare forward, teacher + student', local['forward']
    yield 'Studio.attention (models cached)', local['attention']
    yield '  inspect_pair', local['inspect']
    yield '  render: panels, figure, table, data', local['render']
    yield 'first Studio.attention (loads models)', local['first_attention']
    for name, run in result.get('app', {}).items():
        label = f'app, {run["clients"]} client{"s" if run["clients"] > 1 else ""}'
        if not run['downloads']:
            label += ', no downloads'
        yield f'{label}: client side', run['client']
        if name == 'one_client_no_download':
            continue  # the server's work is one_client's
        yield '  server total', run['server']['total']
        yield '  server: attention function', run['server']['fn_call']
        yield '  server: postprocess', run['server']['postprocess']
        yield '  server: preprocess', run['server']['preprocess']
        if run['clients'] > 1:
            yield '  server: queue wait (not in total)', run['server']['queue_wait']


def server_side(result: dict[str, Any]) -> tuple[str, float]:
    """The figure the goal is judged on: the app's server total for one client, else Studio.attention."""
    if 'app' in result:
        return 'app server total, 1 client', result['app']['one_client']['server']['total']['median_s']
    return 'Studio.attention (no app run)', result['in_process']['attention']['median_s']


def print_report(report: dict[str, Any]) -> None:
    """A table per pair with ratios to the bare forward, and whether the goal is met."""
    print(' '.join(f'{key}={value:.1f}' if isinstance(value, float) else f'{key}={value}'
                   for key, value in report['config'].items()))
    for result in report['pairs'].values():
        pair = result['pair']
        print(f'\n{pair["name"]}: teacher {pair["teacher"]}, student {pair["student"]}, '
              f'{pair["image_size"]}x{pair["image_size"]}')
        print(f'{"measurement":<44}{"median ms":>11}{"p95 ms":>10}{"x forward":>11}{"n":>5}')
        forward = result['in_process']['forward']['median_s']
        for label, summary in report_rows(result):
            print(f'{label:<44}{summary["median_s"] * 1e3:>11.1f}{summary["p95_s"] * 1e3:>10.1f}'
                  f'{summary["median_s"] / forward:>11.2f}{summary["n"]:>5}')
        label, seconds = server_side(result)
        verdict = 'met' if seconds < pair['goal_s'] else 'MISSED'
        print(f'goal: a request under {pair["goal_s"] * 1e3:.0f} ms server-side; {label} median '
              f'{seconds * 1e3:.1f} ms ({seconds / forward:.2f}x the bare forward) -> {verdict}')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--pairs', default='cifar32,224', help=f'comma-separated, of {", ".join(PAIRS)}')
    parser.add_argument('--cifar-teacher', default='vit_small_patch4_32',
                        choices=('vit_small_patch4_32', 'vit_base_patch4_32'), help='teacher of the cifar32 pair')
    parser.add_argument('--repeats', type=int, default=20, help='timed repeats (requests per client in the app)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed repeats first')
    parser.add_argument('--clients', type=int, default=4, help='clients of the concurrent app run')
    parser.add_argument('--no-app', action='store_true', help='skip the requests through app.py')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=Path, help='write the results here')
    parser.add_argument('--against', metavar='GIT_REF', help='instead: the Attention tab on the shipped bundle now '
                                                             'against this version\'s (1 client, alternated)')
    args = parser.parse_args(argv)
    args.pairs = [name.strip() for name in args.pairs.split(',') if name.strip()]
    unknown = [name for name in args.pairs if name not in PAIRS]
    if unknown or not args.pairs:
        parser.error(f'--pairs: unknown {unknown or "(none given)"}; choose from {", ".join(PAIRS)}')
    if args.repeats < 1 or args.warmup < 0 or args.clients < 1:
        parser.error('--repeats and --clients must be at least 1, --warmup at least 0')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.against:
        report = dict(config=describe(args, None, (os.getloadavg()[0],) * 2),
                      against=measure_against(args.against, args.warmup, args.repeats))
        print_against(report['against'])
    else:
        report = run_all(args)
        print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + '\n')


if __name__ == '__main__':
    main()
