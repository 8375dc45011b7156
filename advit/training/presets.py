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

# The bundle on a lent GPU: the strong recipe of small ViTs trained from scratch (TrivialAugment + random
# erasing, mixup / CutMix on every batch, label smoothing folded into the mixed targets), batch 512 in bf16.
# Not yet run on a GPU: its values are first choices (benchmarks/results/presets-notes.md says why each).
_GPU_BUNDLE = dict(_CIFAR32, recipe='cifar32_strong', batch_size=512, mixup=0.8, cutmix=1.0, mix_prob=1.0,
                   eval_every=1000)

# The quick bundle, on a 2-core CPU in bf16 within a wall-time budget (the script gives it): shallow conv-stem
# ViTs (8x8 tokens), crop + flip only, no stochastic depth, batch 128, AdamW at 1e-3, label smoothing 0.1,
# evaluated on the 5,000 held-out training images every 500 steps. The short runs behind each choice, and the
# levers measured and left out: benchmarks/results/presets-notes.md.
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
