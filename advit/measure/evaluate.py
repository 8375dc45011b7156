"""Evaluation: top-1, per-class accuracy (paper Table 2), confusion matrix, every prediction, and the maps' faithfulness.

Evaluating checkpoint ``D/NAME.safetensors`` writes ``D/NAME.eval.json`` (metrics, and for a ViT the
faithfulness curves of its maps on a fixed random ``TEST_IMAGES`` test images under every removal protocol)
and ``D/NAME.predictions.npz`` (per test image: label, prediction, class probabilities), which the app's
comparison gallery (paper Table 3) reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..core.attention_path import use_attention_path
from ..core.augment import BatchTransform
from ..core.capture import trained_normalization
from ..core.checkpoint import Checkpoint, load_checkpoint
from ..core.data import ImageSet, batches, load_dataset
from ..core.distributed import resolve_device
from ..core.io import atomic_path, read_json, write_json
from ..core.models import model_image_size, model_normalization
from ..core.precision import autocast, compute_dtype
from .faithfulness import has_cls_attention, measure_faithfulness
from .removal import PROTOCOLS
from .verdicts import HEADLINE_PROTOCOL, evaluation_key

TEST_IMAGES = 1000  # test images a checkpoint's curves are measured on (a fixed random subset: ImageSet.subset)


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, transform: BatchTransform, batch_size: int,
            device: torch.device, amp: bool = True,
            progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """Class probabilities (float32, on the CPU) of every image of a split, in order.

    Args:
        progress: Called with the fraction done after each batch.
    """
    was_training = model.training
    model.eval()
    probs = []
    for images, _ in batches(data, batch_size, shuffle=False):
        with autocast(device, amp):
            logits = model(transform.eval(images.to(device)))
        probs.append(logits.float().softmax(dim=-1).cpu())
        if progress is not None:
            progress(min(1.0, len(probs) * batch_size / len(data)))
    model.train(was_training)
    return torch.cat(probs)


def summarize(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Top-1 and per-class accuracy in percent, and the confusion matrix (rows: true class), of class
    probabilities (``summarize_predictions`` of their argmax)."""
    return summarize_predictions(probs.argmax(dim=-1), labels, classes)


def summarize_predictions(preds: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Top-1 and per-class accuracy in percent, and the confusion matrix (rows: true class), of predicted
    classes: the one rule the evaluation files, the model card and the Compare tab all use.

    A class without test images has per-class accuracy None, not 0.
    """
    labels, preds = torch.as_tensor(labels).cpu().long(), torch.as_tensor(preds).cpu().long()
    num_classes = len(classes)
    confusion = torch.bincount(labels * num_classes + preds, minlength=num_classes ** 2).view(num_classes, -1)
    support = confusion.sum(dim=1)
    per_class = [float(hit) / float(count) * 100 if count else None  # None: no test image of that class
                 for hit, count in zip(confusion.diag(), support)]
    return {
        'top1': float((preds == labels).double().mean() * 100),
        'count': int(len(labels)),
        'per_class': dict(zip(classes, per_class)),
        'confusion': confusion.tolist(),
        'classes': classes,
    }


def evaluation_paths(checkpoint: str | Path) -> tuple[Path, Path]:
    """Where the evaluation of a checkpoint is written: (metrics JSON, predictions npz)."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.with_suffix('')
    return stem.with_name(stem.name + '.eval.json'), stem.with_name(stem.name + '.predictions.npz')


def save_evaluation(checkpoint: str | Path, probs: torch.Tensor, labels: torch.Tensor,
                    classes: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """Write a checkpoint's metrics and predictions beside it, atomically; return the metrics. An evaluation of the
    checkpoint on more images or on other data is never replaced by a smaller or foreign one (``ValueError``): the
    bundle's and a run's test figures, which the app and the card read, are not lost to a quick look at a subset."""
    metrics_path, predictions_path = evaluation_paths(checkpoint)
    metrics = dict(extra, **summarize(probs, labels, classes))
    earlier = read_json(metrics_path)  # None: missing or unreadable, nothing worth keeping
    if earlier is not None and isinstance(earlier.get('count'), int) and (
            earlier['count'] > metrics['count'] or earlier.get('data') not in (None, metrics.get('data'))):
        raise ValueError(f'{metrics_path.name} holds an evaluation on {earlier["count"]} test images of '
                         f'{earlier.get("data")}; this one, on {metrics["count"]} of {metrics.get("data")}, would '
                         'replace it: evaluate the whole test split of that data, or a copy of the checkpoint')
    with atomic_path(predictions_path) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, labels=labels.cpu().numpy().astype(np.int16),
                     preds=probs.argmax(dim=-1).numpy().astype(np.int16),
                     probs=probs.numpy().astype(np.float16))
    write_json(metrics_path, metrics)
    return metrics


def read_evaluation(checkpoint: str | Path) -> dict[str, Any] | None:
    """A checkpoint's evaluation (``evaluation_paths``), the one record of its test figures: top-1, per class, the
    confusion matrix and its maps' faithfulness under each protocol; None where it has none or it cannot be read."""
    return read_json(evaluation_paths(checkpoint)[0])


def recorded_test_top1(evaluation: dict[str, Any] | None, meta: dict[str, Any]) -> float | None:
    """A checkpoint's test top-1 as its evaluation records it (None: not evaluated). A checkpoint of before
    evaluation files, whose metadata alone held it (``meta``'s ``test_top1``), is read here and nowhere else.

    Args:
        evaluation: Its evaluation (``read_evaluation``), or None.
        meta: Its metadata.
    """
    top1 = evaluation.get('top1') if evaluation is not None else meta.get('test_top1')
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100:  # NaN fails too
        return None  # a file that lies about it shows no figure rather than a wrong one
    return float(top1)


def load_predictions(checkpoint: str | Path) -> dict[str, np.ndarray]:
    """The saved predictions of a checkpoint (labels, preds, probs)."""
    with np.load(evaluation_paths(checkpoint)[1], allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def evaluate_checkpoint(
        checkpoint: str | Path,
        data: str | Path,
        batch_size: int = 256,
        device: str = 'auto',
        subset: int | None = None,
        cache_dir: str | Path | None = None,
        model_name: str | None = None,
        progress: Callable[[float], None] | None = None,
        faithfulness_images: int = TEST_IMAGES,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset's test split and save metrics and predictions beside it.

    Args:
        checkpoint: The checkpoint file.
        data: Dataset path (see ``data.load_dataset``).
        batch_size: Images per forward.
        device: ``auto``, ``cpu`` or ``cuda``.
        subset: Evaluate on a fixed subset of this many test images.
        cache_dir: Decoded-dataset cache folder.
        model_name: Architecture, for a state dict without advit metadata.
        progress: Called with the fraction of test images done.
        faithfulness_images: Test images the maps' faithfulness is measured on (0: not measured).
    """
    test = load_dataset(data, cache_dir)['test'].subset(subset)
    return evaluate_split(checkpoint, test, str(data), batch_size=batch_size, device=device, model_name=model_name,
                          progress=progress, faithfulness_images=faithfulness_images)


def evaluate_split(
        checkpoint: str | Path,
        test: ImageSet,
        data_name: str,
        batch_size: int = 256,
        device: str | torch.device = 'auto',
        model_name: str | None = None,
        progress: Callable[[float], None] | None = None,
        faithfulness_images: int = TEST_IMAGES,
        amp: bool = True,
        extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a test split in memory; save metrics and predictions beside it. A ViT's
    evaluation also holds its maps' faithfulness (``split_faithfulness``).

    Args:
        checkpoint: The checkpoint file.
        test: The images and labels.
        data_name: Where the split came from, recorded in the metrics.
        batch_size: Images per forward.
        device: ``auto``, ``cpu`` or ``cuda``, or a torch device.
        model_name: Architecture, for a state dict without advit metadata.
        progress: Called with the fraction of test images done.
        faithfulness_images: Test images the maps' faithfulness is measured on under every removal protocol
            (0: not measured).
        amp: bf16 autocast where the device runs it natively.
        extra: More to record in the metrics (how the checkpoint was chosen, the split's name).
    """
    loaded, transform, target = load_for_evaluation(checkpoint, test, batch_size, device, model_name)
    probs = predict(loaded.model, test, transform, batch_size=batch_size, device=target, amp=amp, progress=progress)
    chosen = {key: loaded.meta[key] for key in ('step', 'val_top1') if key in loaded.meta}
    record = {'checkpoint': str(checkpoint), 'data': data_name, 'model': loaded.meta.get('model'),
              'method': loaded.meta.get('method'), **chosen, **(extra or {})}
    for protocol in PROTOCOLS:  # every one, so that a verdict can be checked against the others
        curves = split_faithfulness(loaded.model, loaded.meta, test.to(target), transform.eval,
                                    count=faithfulness_images, batch_size=batch_size, amp=amp, protocol=protocol)
        if curves is None:  # not a model with [CLS] attention, or nothing to measure
            break
        record[evaluation_key(protocol)] = curves
    return save_evaluation(checkpoint, probs, test.labels, test.classes, record)


def measure_checkpoint_faithfulness(checkpoint: str | Path, test: ImageSet, count: int = TEST_IMAGES,
                                    batch_size: int = 256, device: str = 'auto', model_name: str | None = None,
                                    protocol: str = HEADLINE_PROTOCOL) -> dict[str, Any]:
    """Measure a ViT checkpoint's faithfulness on a test split under a removal protocol and add it to its
    evaluation file beside it (under ``verdicts.evaluation_key``; the rest of the file as it was, or a file
    of its own if there is none); return the curves.

    Args:
        checkpoint: The checkpoint file.
        test: The split (``count`` of its images are measured).
        count: Images measured.
        batch_size, device, model_name: as ``evaluate_split``'s.
        protocol: How patches are removed (``removal.PROTOCOLS``).
    """
    key = evaluation_key(protocol)
    loaded, transform, target = load_for_evaluation(checkpoint, test, batch_size, device, model_name)
    faithfulness = split_faithfulness(loaded.model, loaded.meta, test.to(target), transform.eval, count=count,
                                      batch_size=batch_size, amp=True, protocol=protocol)
    if faithfulness is None:
        raise ValueError(f'{checkpoint}: {loaded.meta.get("model")} has no [CLS] attention to measure')
    metrics = read_evaluation(checkpoint) or {'checkpoint': str(checkpoint)}
    write_json(evaluation_paths(checkpoint)[0], dict(metrics, **{key: faithfulness}))
    return faithfulness


def split_faithfulness(model: nn.Module, meta: dict[str, Any], data: ImageSet,
                       prepare: Callable[[torch.Tensor], torch.Tensor], count: int = TEST_IMAGES,
                       batch_size: int = 256, amp: bool = False, protocol: str = 'mean') -> dict[str, Any] | None:
    """Every curve of a checkpoint on a fixed random ``count`` images of a split (``ImageSet.subset``:
    every class, the same images for every model), JSON-ready; None for a model without [CLS]
    attention, or ``count`` 0. What an evaluation file carries.

    Args:
        model: The checkpoint's model.
        meta: Its metadata (``attn_norm``, ``head_fusion`` as trained).
        data: The split.
        prepare: The evaluation transform (a uint8 batch to normalised inputs).
        count: Images measured.
        batch_size: Images per forward.
        amp: bf16 autocast where the device runs it natively.
        protocol: How patches are removed (``removal.PROTOCOLS``).
    """
    if not count or not has_cls_attention(model):
        return None
    chosen = data.subset(count)
    inputs = torch.cat([prepare(chosen.images[start:start + batch_size])
                        for start in range(0, len(chosen), batch_size)])
    curves = measure_faithfulness(model, inputs, chosen.labels, attn_norm=trained_normalization(meta),
                                  head_fusion=meta.get('head_fusion') or 'mean', batch_size=batch_size, amp=amp,
                                  protocol=protocol)
    return curves.as_dict()


def load_for_evaluation(checkpoint: str | Path, test: ImageSet, batch_size: int = 256, device: str = 'auto',
                        model_name: str | None = None) -> tuple[Checkpoint, BatchTransform, torch.device]:
    """A checkpoint's model on its device, checked against the split's classes, with its evaluation
    transform and its fastest attention path for ``batch_size``.

    Args: as ``evaluate_split``'s.
    """
    target = device if isinstance(device, torch.device) else resolve_device(device)
    loaded = load_checkpoint(checkpoint, model_name=model_name, device=target)
    classes = loaded.meta.get('classes', test.classes)
    if list(classes) != list(test.classes):
        raise ValueError(f'{checkpoint} was trained on classes {classes}, the dataset has {test.classes}')
    mean, std = loaded.meta.get('mean'), loaded.meta.get('std')
    if mean is None or std is None:
        mean, std = model_normalization(loaded.model)
    size = loaded.meta.get('image_size') or model_image_size(loaded.model)  # a CNN takes the size it trained at
    transform = BatchTransform('cifar32', size, mean, std, seed=0, device=target)
    use_attention_path(loaded.model, 'auto', target, batch_size, training=False, dtype=compute_dtype(target))
    return loaded, transform, target


def checkpoint_probs(
        checkpoint: str | Path,
        test: ImageSet,
        batch_size: int = 256,
        device: str = 'auto',
        model_name: str | None = None,
        progress: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A checkpoint's class probabilities on a test split, and its metadata; nothing is written.

    Args: as ``evaluate_split``'s.
    """
    loaded, transform, target = load_for_evaluation(checkpoint, test, batch_size, device, model_name)
    return predict(loaded.model, test, transform, batch_size, target, progress=progress), loaded.meta
