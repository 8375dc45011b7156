"""Training presets: plain dicts of ``TrainConfig`` fields; command-line flags override them.

``paper-*`` follow the paper (224x224, ImageNet-pretrained timm students, ViT-Base teacher,
AdamW, 300 epochs) with part of DeiT's augmentation: RandomResizedCrop, horizontal flip and random
erasing (``rrc224``), mixup 0.8 and CutMix 1.0 (each on half the batches) with label smoothing 0.1;
not DeiT's RandAugment or repeated augmentation. They need pretrained weights (a network or local
files) and a GPU. ``cifar32-*`` train from scratch at 32x32 (ViTs with patch 4) and run on a CPU at small
scale. ``paper-<cnn>`` / ``cifar32-<cnn>`` train the paper's CNN baselines by cross-entropy.
``bundle-teacher`` / ``bundle-student`` train the shipped checkpoint bundle on a 2-core CPU
(``scripts/train_bundle.sh``); ``long-bundle-*`` the same recipe several times longer, trained across
sessions; ``gpu-bundle-*`` the stronger recipe for a lent GPU.
"""
from __future__ import annotations

from typing import Any

_PAPER = dict(image_size=224, recipe='rrc224', pretrained=True, epochs=300, batch_size=256,
              lr=2.5e-4, weight_decay=0.05, warmup_fraction=5 / 300, drop_path=0.1, mixup=0.8, cutmix=1.0,
              label_smoothing=0.1)
_CIFAR32 = dict(image_size=32, recipe='cifar32', pretrained=False, epochs=100, batch_size=256,
                lr=1e-3, weight_decay=0.05, warmup_fraction=0.05, drop_path=0.1, label_smoothing=0.1)

# The checkpoint bundle, from scratch at 32x32 in minutes on one GPU. Crop + flip alone plateaued: a
# ViT-Small teacher reached 74.75% in 270 s (68 epochs) on an H200 with cifar32-small at batch 512. So
# the strong recipe of small ViTs trained from scratch: TrivialAugment + random erasing
# (cifar32_strong), mixup 0.8 / CutMix 1.0 on every batch, label smoothing 0.1 (folded into the mixed
# targets), AdamW at 1e-3 for batch 512 in bf16, 5% warmup, cosine. Evaluated every 1000 steps (about
# 10 epochs) rather than each epoch, since evaluating and saving count against the time budget.
# NOT YET RUN ON A GPU: lr, warmup, drop_path and the mixing strength are first choices, to check
# against the first GPU run. Lengths: the teacher 100 epochs at most (the script gives a time budget),
# the students 10 epochs, all the same (the script may change both). `BUNDLE=gpu-bundle` picks these.
_GPU_BUNDLE = dict(_CIFAR32, recipe='cifar32_strong', batch_size=512, mixup=0.8, cutmix=1.0, mix_prob=1.0,
                   eval_every=1000)

# The shipped bundle, on a 2-core CPU in bf16 within a wall-time budget (the script gives it). ViTs
# learn slowly from scratch, so for minutes rather than hours: shallow conv-stem ViTs (8x8 tokens),
# crop + flip only (heavier augmentation pays at long budgets), no stochastic depth, batch 128, AdamW
# at 1e-3 (2e-3 until the sweep below), label smoothing 0.1. At 5 minutes each (scripts/cpu_sweep.py, in checkpoints/README.md)
# the 6x128 conv-stem ViT beat the 6x192 one (49.2% against 39.9% test top-1: twice the images
# per second) and the 4x128 one (47.3%): the teacher is the 6x128, the students the faster 4x128,
# since six of them share the students' time. Evaluated on the 5,000 held-out training images every
# 500 steps (a few seconds each on 2 cores).
# The learning rate from the sweep of 2026-12-03 (benchmarks/results/bundle-sweep-cpu.jsonl: the teacher's model,
# about 660 steps each, fp32 EPYC, validation top-1): 1e-3 53.6% against 51.2% at the earlier 2e-3 and 37.1% at
# 4e-3; batch 256 at 3e-3 47.6%; no label smoothing 52.0%; Hide-and-Seek (hide_patches 0.5) 46.1% with maps no
# more faithful. The students' model was not swept apart: it shares the teacher's recipe.
# No convnet teacher for the teacher: cnn_airbench_32 reached 86.5% validation top-1 in 15 minutes, but the
# teacher's ViT trained 15 minutes by deit_hard from it reached 66.5% against 68.3% alone (its forward costs
# a fifth of each step; 2026-12-06, AMD EPYC 2 cores bf16, benchmarks/results/cnn-teacher-probe-cpu.jsonl).
_CPU_BUNDLE = dict(_CIFAR32, batch_size=128, lr=1e-3, drop_path=0.0, eval_every=500)

# The long bundle (BUNDLE=long-bundle): the quick bundle's recipe at 100 epochs for the teacher and 30 for the
# students, counted in epochs (steps), so that a slower machine only takes longer, with the learning rate
# decayed linearly to zero over the whole length. The teacher is the 6x192 conv-stem ViT, trained with
# PatchDropout (a quarter of the patch tokens dropped while training, none at evaluation); why these, from
# short runs before it started: benchmarks/results/long-bundle-probes-cpu.md. `last` every 500 steps: under 10
# minutes of 2-core CPU on every machine seen, so that a stop loses less.
_LONG_BUNDLE = dict(_CPU_BUNDLE, lr_decay='linear', min_lr=0.0, eval_every=2000, save_every=500)

# The paper's CNN baselines (Table 1), trained by cross-entropy: ImageNet weights at 224, or from scratch at 32.
CNN_BASELINES = ('resnet10t', 'resnet34', 'efficientnet_b1', 'efficientnet_b4')

PRESETS: dict[str, dict[str, Any]] = {
    'paper-tiny': dict(_PAPER, model='vit_tiny_patch16_224.augreg_in21k_ft_in1k'),
    'paper-small': dict(_PAPER, model='vit_small_patch16_224.augreg_in21k_ft_in1k'),
    'paper-base': dict(_PAPER, model='vit_base_patch16_224.augreg_in21k_ft_in1k'),
    'cifar32-tiny': dict(_CIFAR32, model='vit_tiny_patch4_32'),
    'cifar32-small': dict(_CIFAR32, model='vit_small_patch4_32'),
    'cifar32-base': dict(_CIFAR32, model='vit_base_patch4_32'),
    # Stochastic depth (cifar32's 0.1) only for the teacher: ten epochs of ViT-Tiny are too short to need it.
    'bundle-teacher': dict(_CPU_BUNDLE, model='vit_mini6_convstem_32', method='vit'),
    # Six students share each step: evaluated twice as often in steps, about as often in minutes.
    'bundle-student': dict(_CPU_BUNDLE, model='vit_mini4_convstem_32', eval_every=250),
    'long-bundle-teacher': dict(_LONG_BUNDLE, model='vit_tiny6_convstem_32', method='vit', epochs=100,
                                model_args={'patch_drop_rate': 0.25}),
    # Four students share each step: evaluated and saved more often in steps, about as often in minutes.
    'long-bundle-student': dict(_LONG_BUNDLE, model='vit_mini4_convstem_32', epochs=30, eval_every=1000,
                                save_every=200),
    'gpu-bundle-teacher': dict(_GPU_BUNDLE, model='vit_small_patch4_32', method='vit', epochs=100),
    'gpu-bundle-student': dict(_GPU_BUNDLE, model='vit_tiny_patch4_32', epochs=10, drop_path=0.0),
    **{f'paper-{cnn}': dict(_PAPER, model=cnn, method='vit', drop_path=0.0) for cnn in CNN_BASELINES},
    **{f'cifar32-{cnn}': dict(_CIFAR32, model=cnn, method='vit', drop_path=0.0) for cnn in CNN_BASELINES},
}


def preset(name: str) -> dict[str, Any]:
    """A copy of a preset's fields."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}: choose one of {", ".join(PRESETS)}')
    return dict(PRESETS[name])
