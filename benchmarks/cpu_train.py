"""Training speed on the CPU, all in one run: ``advit train`` against a bare loop, the attention paths,
bf16 against fp32, compiled against eager, several students in one process, and MFU.

    python benchmarks/cpu_train.py --json benchmarks/results/cpu_train.json

- **paths**: a bare timm training loop of the bundle's student and teacher with fused SDPA and with
  explicit attention math (``advit.core.attention_path``), and what ``--attn-path auto`` chooses for each.
- **bare vs ours**: the same model, batch and dtype on the same CIFAR-10 images. The bare loop is
  the least a training step can do (random batches of the uint8 training tensor, scaled and
  normalised, forward, cross-entropy, backward, AdamW) on the faster attention path; ours is
  ``advit.training.train`` (``--attn-path auto``) with its crop + flip augmentation, gradient clipping, logging
  and progress (method ``vit``). Goal: ours >= 0.9x.
- **mfu**: ours' achieved FLOP/s (3 x the forward's FLOPs from ``measure.vit_forward_flops`` per
  image) over a matmul ceiling measured in the same run, in the dtype training runs in: the best of
  the student's own MLP matmul (batch x tokens, width) @ (width, 4 width) and a square 2048 matmul,
  each the best of several short tries taken both before and after the training it divides, so that
  one slow moment (other work on the cores) cannot lower it. An MFU over 100% can only mean the
  ceiling was measured wrong: it is then reported as not measured, never as a result.
- **teacher**: the levers on the bundle teacher's step, ``advit train`` images/s of each against the
  plain step in the same run: PatchDropout (timm's ``patch_drop_rate``, a quarter of the patch tokens
  dropped while training), batch 256; and a bare step in channels-last memory format against the
  default (``advit train`` has no such switch: it is measured first). Whether a lever keeps validation
  top-1 per epoch is a training question, answered by ``scripts/cpu_sweep.py`` runs, not here.
- **profile**: where a bare step of the student spends its time (PyTorch's profiler, self CPU time of
  the top operators), on the path ``auto`` chooses.
- **bf16 vs fp32**: ``advit train`` with and without ``--no-amp`` (bf16 autocast where the CPU runs
  it natively), evaluation (``evaluate.predict``, batches of 512) both ways, and the app's case: one
  image through a model (batch 1), median of 50.
- **compile**: ``advit train --compile`` against eager, after its compilation (the first windows).
- **group**: ``--methods`` with N students and one teacher forward per batch, against N separate
  runs of one student each (their per-student images/s combined: N runs of r_i images/s deliver
  1 / sum(1 / r_i) images/s to every student).
- **relevance**: what ``advit_relevance``'s teacher backward costs. A group step (``--relevance-group`` plus
  one more student) with ``advit_relevance`` as that student, against the same group with ``advit_l2`` in its
  place (the same student-side work, no teacher backward), and against the group without a fifth student;
  and ``advit_relevance`` alone against ``advit_l1`` alone. Step times from each run's images/s.

images/s of ``advit train`` come from its own ``metrics.jsonl`` (training only, evaluation and saving
excluded), the first log window dropped as warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from advit.core.attention_path import set_attention_path, use_attention_path  # noqa: E402
from advit.core.augment import BatchTransform  # noqa: E402
from advit.core.checkpoint import save_checkpoint  # noqa: E402
from advit.core.data import CIFAR10_CLASSES, ImageSet, default_dataset, load_dataset  # noqa: E402
from advit.measure.evaluate import predict  # noqa: E402
from advit.core.precision import autocast, compute_dtype, native_bf16  # noqa: E402
from advit.core.models import CIFAR10_MEAN, CIFAR10_STD, create_model  # noqa: E402
from advit.training.train import TrainConfig, train, train_group  # noqa: E402
from measure import matmul_ceiling, utilisation, vit_forward_flops  # noqa: E402  (benchmarks/, this script's folder)

CPU = torch.device('cpu')


def bare_loop(model_name: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int,
              amp: bool, attn_path: str, profile_rows: int = 0, channels_last: bool = False) -> float | list[dict]:
    """images/s of the least a training step does, after 3 warm-up steps; with ``profile_rows``, the
    top operators of those steps by self CPU time instead (name, share of the total, ms per step);
    ``channels_last``: the model and its inputs in that memory format (for the convolutional stem)."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, drop_path_rate=0.0).train()
    set_attention_path(model, attn_path)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        index = torch.randint(len(labels), (batch_size,), generator=generator)
        inputs = ((images[index].float() / 255 - mean) / std).contiguous(memory_format=memory_format)
        with autocast(CPU, amp):
            loss = F.cross_entropy(model(inputs), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for _ in range(3):
        step()
    if profile_rows:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(steps):
                step()
        events = profiler.key_averages()
        total = sum(event.self_cpu_time_total for event in events)
        top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:profile_rows]
        return [dict(op=event.key, share=event.self_cpu_time_total / total,
                     ms_per_step=event.self_cpu_time_total / 1000 / steps) for event in top]
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def run_speed(run: Path, skip_windows: int = 1) -> float:
    """Median images/s of a run's training windows, the first ``skip_windows`` dropped (warm-up)."""
    lines = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    speeds = [line['images_per_s'] for line in lines if line['event'] == 'train'][skip_windows:]
    return statistics.median(speeds)


def ours(base: dict, out: Path, **changes) -> float:
    run = train(TrainConfig.from_dict(dict(base, out=str(out), **changes)))
    return run_speed(run, skip_windows=2 if changes.get('compile') else 1)


def eval_speed(model_name: str, images: torch.Tensor, amp: bool, repeats: int = 3) -> float:
    model = create_model(model_name, num_classes=10)
    data = ImageSet(images, torch.zeros(len(images), dtype=torch.long), list(CIFAR10_CLASSES))
    transform = BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=0)
    predict(model, data, transform, 512, CPU, amp)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        predict(model, data, transform, 512, CPU, amp)
    return repeats * len(images) / (time.perf_counter() - start)


@torch.no_grad()
def single_image_ms(model_name: str, amp: bool, repeats: int = 50) -> float:
    model = create_model(model_name, num_classes=10).eval()
    image = torch.randn(1, 3, 32, 32)
    times = []
    for _ in range(repeats + 5):
        start = time.perf_counter()
        with autocast(CPU, amp):
            model(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:]) * 1000


def random_teacher(model_name: str, folder: Path) -> Path:
    """A teacher checkpoint of ``model_name`` with random weights (speed only), written into ``folder``."""
    torch.manual_seed(0)
    path = folder / 'teacher.safetensors'
    save_checkpoint(path, create_model(model_name, num_classes=10),
                    dict(model=model_name, model_args=dict(num_classes=10), classes=list(CIFAR10_CLASSES), image_size=32,
                         mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD)))
    return path


def group_step_s(group: dict, methods: list[str], out: Path) -> float:
    """Seconds per step of ``methods`` trained together (one teacher forward per batch), from their images/s."""
    configs = [TrainConfig.from_dict(dict(group, method=m, out=str(out / m), teacher=group['teacher'] if m != 'vit'
                                          else None)) for m in methods]
    return group['batch_size'] / run_speed(train_group(configs)[0])


def relevance_cost(group: dict, beside: list[str], out: Path) -> dict:
    """``advit_relevance``'s step cost (see the module's docstring), as ratios of step times."""
    times = {name: group_step_s(group, methods, out / name) for name, methods in (
        ('with_relevance', [*beside, 'advit_relevance']), ('with_l2_instead', [*beside, 'advit_l2']),
        ('without', beside), ('relevance_alone', ['advit_relevance']), ('l1_alone', ['advit_l1']))}
    ratios = dict(group_with_over_l2_instead=times['with_relevance'] / times['with_l2_instead'],
                  group_with_over_without=times['with_relevance'] / times['without'],
                  relevance_alone_over_l1_alone=times['relevance_alone'] / times['l1_alone'])
    for name, ratio in ratios.items():
        print(f'relevance cost, {name.replace("_", " ")}: {ratio:.3f}', flush=True)
    return dict(relevance_group=[*beside, 'advit_relevance'], relevance_step_s=times, relevance_ratios=ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default=default_dataset())
    parser.add_argument('--model', default='vit_mini4_convstem_32', help='the student (the bundle\'s)')
    parser.add_argument('--teacher-model', default='vit_mini6_convstem_32', help='the bundle\'s teacher')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=60, help='steps of each single-student measurement')
    parser.add_argument('--group', default='vit,deit_hard,advit_l1,advit_l2,advit_kl,advit_kl_paper')
    parser.add_argument('--group-steps', type=int, default=20)
    parser.add_argument('--relevance-group', default='vit,deit_hard,advit_l1,advit_kl',
                        help='the students beside advit_relevance (the long bundle\'s)')
    parser.add_argument('--parts', default='paths,bare,mfu,teacher,profile,dtype,compile,eval,group,relevance')
    parser.add_argument('--json', type=Path)
    args = parser.parse_args(argv)
    parts = args.parts.split(',')
    train_set = load_dataset(args.data)['train']
    base = dict(data=args.data, model=args.model, method='vit', steps=args.steps, batch_size=args.batch_size,
                log_every=10, eval_every=10 ** 9, val_size=0, test_subset=512, drop_path=0.0, recipe='cifar32',
                faithfulness_images=0)  # speed only: no measure of the maps at the end
    results: dict = dict(model=args.model, batch_size=args.batch_size, torch=torch.__version__,
                         timm=timm.__version__, threads=torch.get_num_threads(), native_bf16=native_bf16(CPU))
    amp = native_bf16(CPU)
    dtype = compute_dtype(CPU, amp)
    results['dtype'] = str(dtype).removeprefix('torch.')

    def bare(model_name: str, path: str, **kwargs) -> float:
        return bare_loop(model_name, train_set.images, train_set.labels, args.batch_size, args.steps, amp, path,
                         **kwargs)

    def auto_path(model_name: str) -> str:
        """What --attn-path auto chooses for a model training at this batch, measured now."""
        return use_attention_path(create_model(model_name, num_classes=10), 'auto', CPU, args.batch_size,
                                  training=True, dtype=dtype)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if 'paths' in parts or 'bare' in parts:
            for role, name in (('student', args.model), ('teacher', args.teacher_model)):
                if role == 'teacher' and 'paths' not in parts:
                    continue
                speeds = {path: bare(name, path) for path in ('fused', 'explicit')}
                results[f'bare_{role}_images_per_s'] = speeds
                results[f'{role}_explicit_over_fused'] = speeds['explicit'] / speeds['fused']
                results[f'{role}_auto_path'] = auto_path(name)
                print(f"bare loop of {name}: fused {speeds['fused']:.1f} img/s, explicit {speeds['explicit']:.1f} "
                      f"img/s: explicit / fused {results[f'{role}_explicit_over_fused']:.3f}; auto chooses "
                      f"{results[f'{role}_auto_path']}", flush=True)
        if 'bare' in parts:
            best_path = max(results['bare_student_images_per_s'], key=results['bare_student_images_per_s'].get)
            results['bare_images_per_s'] = results['bare_student_images_per_s'][best_path]
            results['bare_path'] = best_path
            results['ours_images_per_s'] = ours(base, tmp / 'ours')
            results['ours_over_bare'] = results['ours_images_per_s'] / results['bare_images_per_s']
            print(f"bare timm loop ({best_path}, the faster) {results['bare_images_per_s']:.1f} img/s, advit train "
                  f"{results['ours_images_per_s']:.1f} img/s: ours / bare {results['ours_over_bare']:.3f}", flush=True)
        if 'mfu' in parts:
            model = create_model(args.model, num_classes=10)
            tokens = model.patch_embed.num_patches + model.num_prefix_tokens
            width = model.embed_dim
            shapes = {'student_mlp': (args.batch_size * tokens, width, 4 * width), 'square_2048': (2048, 2048, 2048)}
            before = {name: matmul_ceiling(*shape, dtype) for name, shape in shapes.items()}
            speed = ours(base, tmp / 'mfu')  # measured between the two ceilings, not earlier in the run
            ceilings = {name: max(before[name], matmul_ceiling(*shape, dtype)) for name, shape in shapes.items()}
            achieved = speed * 3 * vit_forward_flops(model)
            results.update(matmul_ceiling_flops=ceilings, achieved_flops=achieved,
                           mfu=utilisation(achieved, max(ceilings.values())))
            verdict = f"{results['mfu']:.1%}" if results['mfu'] is not None else \
                'not measured: the achieved FLOP/s exceed the ceiling, so the ceiling measurement failed'
            print(f"MFU: ours {achieved / 1e9:.1f} GFLOP/s against a {dtype} matmul ceiling of "
                  f"{max(ceilings.values()) / 1e9:.1f} GFLOP/s (best of before and after training; student's MLP "
                  f"shape {ceilings['student_mlp'] / 1e9:.1f}, 2048^2 {ceilings['square_2048'] / 1e9:.1f}): {verdict}",
                  flush=True)
        if 'teacher' in parts:
            teacher_base = dict(base, model=args.teacher_model)
            plain = ours(teacher_base, tmp / 'teacher-plain')
            levers = {'patch_drop_0.25': ours(teacher_base, tmp / 'teacher-pd', model_args={'patch_drop_rate': 0.25}),
                      'batch_256': ours(teacher_base, tmp / 'teacher-b256', batch_size=2 * args.batch_size)}
            path = auto_path(args.teacher_model)
            channels = {layout: bare_loop(args.teacher_model, train_set.images, train_set.labels, args.batch_size,
                                          args.steps, amp, path, channels_last=layout == 'channels_last')
                        for layout in ('contiguous', 'channels_last')}
            results['teacher'] = dict(model=args.teacher_model, plain_images_per_s=plain,
                                      levers_over_plain={k: v / plain for k, v in levers.items()},
                                      bare_channels_last_over_contiguous=(channels['channels_last']
                                                                          / channels['contiguous']))
            print(f"teacher {args.teacher_model}: advit train {plain:.1f} img/s; "
                  + ', '.join(f'{k} {v / plain:.3f}x' for k, v in levers.items())
                  + '; bare step channels-last / contiguous '
                  + f"{results['teacher']['bare_channels_last_over_contiguous']:.3f}",
                  flush=True)
        if 'profile' in parts:
            path = results.get('student_auto_path') or auto_path(args.model)
            results['profile'] = dict(path=path, top=bare(args.model, path, profile_rows=12))
            print(f'where a bare step of {args.model} ({path} attention) spends its time:', flush=True)
            for row in results['profile']['top']:
                print(f"  {row['share']:6.1%} {row['ms_per_step']:8.2f} ms/step  {row['op']}", flush=True)
        if 'dtype' in parts:
            results['ours_bf16_images_per_s'] = results.get('ours_images_per_s') or ours(base, tmp / 'bf16')
            results['ours_fp32_images_per_s'] = ours(base, tmp / 'fp32', amp=False)
            results['train_bf16_over_fp32'] = results['ours_bf16_images_per_s'] / results['ours_fp32_images_per_s']
            print(f"advit train bf16 / fp32: {results['train_bf16_over_fp32']:.3f}", flush=True)
        if 'compile' in parts:
            start = time.perf_counter()
            results['ours_compiled_images_per_s'] = ours(base, tmp / 'compiled', compile=True, steps=args.steps + 20)
            results['compiled_run_wall_s'] = time.perf_counter() - start
            eager = results.get('ours_images_per_s') or ours(base, tmp / 'eager')
            results['compiled_over_eager'] = results['ours_compiled_images_per_s'] / eager
            print(f"--compile / eager: {results['compiled_over_eager']:.3f} after compiling "
                  f"(the compiled run took {results['compiled_run_wall_s']:.0f}s wall)", flush=True)
        if 'eval' in parts:
            images = load_dataset(args.data)['test'].images[:2048]
            for name in (args.model, args.teacher_model):
                bf16, fp32 = eval_speed(name, images, True), eval_speed(name, images, False)
                results[f'eval_{name}_bf16_over_fp32'] = bf16 / fp32
                print(f'evaluation of {name}: bf16 {bf16:.0f} img/s, fp32 {fp32:.0f} img/s: {bf16 / fp32:.3f}', flush=True)
                bf16_ms, fp32_ms = single_image_ms(name, True), single_image_ms(name, False)
                results[f'one_image_{name}_ms'] = dict(bf16=bf16_ms, fp32=fp32_ms)
                print(f'one image through {name}: bf16 {bf16_ms:.2f} ms, fp32 {fp32_ms:.2f} ms', flush=True)
        group = dict(base, steps=args.group_steps, log_every=5, teacher=str(random_teacher(args.teacher_model, tmp)))
        if 'group' in parts:
            methods = args.group.split(',')
            together = args.batch_size / group_step_s(group, methods, tmp / 'group')
            separate = [ours(group, tmp / 'separate' / m, method=m, teacher=group['teacher'] if m != 'vit' else None)
                        for m in methods]
            combined = 1 / sum(1 / r for r in separate)
            results.update(group_methods=methods, group_images_per_s_per_student=together,
                           separate_images_per_s=dict(zip(methods, separate)),
                           separate_images_per_s_per_student=combined, group_over_separate=together / combined)
            print(f'{len(methods)} students in one process: {together:.1f} img/s each; as separate runs '
                  f'{combined:.1f} img/s each: group / separate {together / combined:.3f}', flush=True)
        if 'relevance' in parts:
            results.update(relevance_cost(group, args.relevance_group.split(','), tmp / 'relevance'))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
    main()
