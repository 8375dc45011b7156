"""Faithfulness of attention maps: does the model use the patches its map points at?

Deletion and insertion (Petsiuk et al. 2018, "RISE"; the perturbation tests of Chefer et al. 2021):
the patches of each image are masked in the order a map gives, most attended first (deletion), or
revealed in that order into an image whose patches are all masked (insertion), and at each step the
model's accuracy and its probability of the true class are read. A map that points at what the model
uses makes the deletion curve fall faster, and the insertion curve rise faster, than a random order
of the same patches does; the reversed map (least attended first) is the other bound. How a patch
is removed is a named protocol (``removal.PROTOCOLS``): its pixels set to the mean the model
normalises with (``mean``, the default), its token dropped from the sequence (``drop``), or its pixels
blurred (``blur``); the curves record which.

Measured for each layer's [CLS] map (heads fused and normalised as the model was trained, exactly
as the loss and the app take them), for attention rollout, and for gradient rollout (Chefer, Gur &
Wolf 2021: each layer's attention weighted by the gradient of the predicted class's score, kept
where positive, rolled out; ``rollout.gradient_rollout``), which asks the model what it used rather
than where it looked. Two summaries:

- the **area** under each curve (trapezoids over the fraction of patches, in [0, 1]): deletion,
  lower is more faithful; insertion, higher is;
- the **quarter drop**, one number in points: the accuracy lost when the map's most-attended
  quarter of the patches is masked, minus the accuracy lost when a random quarter is. Positive: the
  map points at patches the model needs more than random ones; near 0: no better than chance;
  negative: it points away from what the model uses.
- the **relevance gain**: the area under the deletion curve (true class's probability) with the least
  attended patches removed first, minus with the most attended first (Bluecher et al. 2024); positive
  when the map ranks what the model uses first, and less swayed by the removal itself than one curve.

What it does not say: masked images are unlike training images, so every order costs accuracy, and
only the difference between orders speaks of the map; the measure is about the model's reliance on
whole patches, not on finer detail; a faithful map shows what the model uses, which may be
background or a shortcut rather than the object a person would point at.

This module measures and nothing else: which maps and protocol the tables show, where evaluation files keep
the curves and how a quarter drop is worded are ``verdicts.py``'s; a checkpoint measured on a data split,
``evaluate.split_faithfulness``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.alignment import fuse_heads
from ..core.capture import DEFAULT_NORMALIZATION, ClsAttentionCapture
from ..core.families import attention_modules
from ..core.models import patch_grid
from ..core.precision import autocast
from .removal import check_protocol, removed_logits
from .rollout import explain, rollout

MODES = ('deletion', 'insertion')
ORDERS = ('map', 'random', 'reversed')
# 0, 1/4, ..., 1 of the patches: symmetric, so insertion needs only its random orders' copies beyond deletion's.
FRACTIONS = tuple(i / 4 for i in range(5))
QUARTER = 0.25
ROLLOUT = 'rollout'
GRADIENT_ROLLOUT = 'gradient rollout'  # attention weighted by the class score's gradient (Chefer et al. 2021)
WHOLE_MODEL_MAPS = (ROLLOUT, GRADIENT_ROLLOUT)  # measured after the layers' own maps


def has_cls_attention(model: nn.Module) -> bool:
    """True for a ViT whose [CLS] attention can be measured (blocks of a registered family and a class token)."""
    try:
        attention_modules(model)
    except TypeError:
        return False
    return getattr(model, 'cls_token', None) is not None


def source_names(layers: int) -> list[str]:
    """The maps measured for a ViT of ``layers`` blocks: ``layer 1`` ... ``layer L``, ``rollout`` and
    ``gradient rollout``."""
    return [f'layer {index + 1}' for index in range(layers)] + list(WHOLE_MODEL_MAPS)


@torch.no_grad()
def attention_sources(model: nn.Module, inputs: torch.Tensor, attn_norm: str = DEFAULT_NORMALIZATION,
                      head_fusion: str | int = 'mean', amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (batch, classes), maps (batch, layers + 2, patches)) in the order of ``source_names``: each
    layer's [CLS] map as the capture, fusion and normalisation of training take it, then the rollout and
    the gradient rollout (for the predicted class) of the same forward (``rollout.explain``).

    Args:
        model: A timm ViT (eval mode).
        inputs: Normalised images.
        attn_norm: How each head's [CLS] row becomes a map (``capture.NORMALIZATIONS``).
        head_fusion: How the heads are fused (``'none'`` is taken as ``'mean'``: one map per layer).
        amp: bf16 autocast where the device runs it natively.
    """
    fusion = 'mean' if head_fusion == 'none' else head_fusion
    with ClsAttentionCapture(model, attn_norm) as capture, autocast(inputs.device, amp):
        explained = explain(model, inputs)  # one forward and backward; the capture records along
        layers = fuse_heads(capture.pop().detach(), fusion)[:, :, 0]
    flow = rollout(explained.attention, int(model.num_prefix_tokens))
    return explained.logits.float(), torch.cat([layers.float(), flow[:, None], explained.relevance[:, None]], dim=1)


def patch_ranks(maps: torch.Tensor, order: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each patch's place in the masking order, (..., patches): 0 is masked (or revealed) first. The
    reversed order of ranks ``r`` is ``patches - 1 - r``.

    Args:
        maps: Attention maps (..., patches).
        order: ``'map'`` (most attended first) or ``'random'`` (a random permutation per map, from ``generator``).
    """
    if order not in ('map', 'random'):
        raise ValueError(f'unknown order {order!r}: choose map or random')
    scores = maps if order == 'map' else torch.rand(maps.shape, generator=generator).to(maps.device)
    # Ties (equal attention) are broken by patch index, so a rank is the same on every machine.
    ordering = scores.argsort(dim=-1, descending=True, stable=True)
    return ordering.argsort(dim=-1)


@dataclass
class FaithfulnessCurves:
    """Deletion and insertion curves of several maps of one model on a set of images.

    ``accuracy`` (top-1, %) and ``probability`` (of the true class, mean) have shape (modes, sources,
    orders, fractions) in the order of ``modes``, ``sources``, ``orders``, ``fractions``;
    ``quarter_drop_se`` (sources,) the standard error of each quarter drop over the images, where measured.
    """
    modes: list[str]
    sources: list[str]
    orders: list[str]
    fractions: list[float]
    accuracy: np.ndarray
    probability: np.ndarray
    count: int
    quarter_drop_se: np.ndarray | None = None
    protocol: str = 'mean'  # how the patches were removed (``removal.PROTOCOLS``)

    def curve(self, metric: str, mode: str, source: str, order: str) -> np.ndarray:
        values = self.accuracy if metric == 'accuracy' else self.probability
        return values[self.modes.index(mode), self.sources.index(source), self.orders.index(order)]

    def area(self, metric: str, mode: str, source: str, order: str) -> float | None:
        """Area under a curve over the fraction of patches (None unless the fractions run from 0 to 1)."""
        if len(self.fractions) < 3 or self.fractions[0] != 0 or self.fractions[-1] != 1:
            return None
        values, steps = self.curve(metric, mode, source, order), np.diff(self.fractions)
        return float(np.sum((values[1:] + values[:-1]) / 2 * steps))

    def quarter_drop(self, source: str) -> float | None:
        """Points of accuracy lost by masking the map's top quarter of patches beyond a random quarter."""
        if 'deletion' not in self.modes or QUARTER not in self.fractions or not {'map', 'random'} <= set(self.orders):
            return None
        at = self.fractions.index(QUARTER)
        return float(self.curve('accuracy', 'deletion', source, 'random')[at]
                     - self.curve('accuracy', 'deletion', source, 'map')[at])

    def quarter_drop_error(self, source: str) -> float | None:
        """The standard error of ``quarter_drop``: of the per-image difference (random quarter masked,
        right or wrong, minus top quarter masked), over the images."""
        return None if self.quarter_drop_se is None else float(self.quarter_drop_se[self.sources.index(source)])

    def relevance_gain(self, source: str) -> float | None:
        """Least-relevant-first minus most-relevant-first: the area under the deletion curve of the true class's
        probability with the map's least attended patches removed first, minus with its most attended removed
        first (Bluecher et al. 2024's symmetric relevance gain). Both curves suffer the removal alike, so their
        difference speaks of the map more than either curve alone; positive: the map ranks what the model uses
        first. None unless both orders were measured over the whole range."""
        if 'deletion' not in self.modes or not {'map', 'reversed'} <= set(self.orders):
            return None
        least, most = (self.area('probability', 'deletion', source, order) for order in ('reversed', 'map'))
        return None if least is None or most is None else least - most

    def summary(self) -> dict[str, Any]:
        """Per source: the quarter drop, its standard error, the relevance gain, and the areas of the probability
        curves by mode and order (what the metadata, reports and the card carry), under the named protocol."""
        per_source = {}
        for source in self.sources:
            entry: dict[str, Any] = {'quarter_drop': self.quarter_drop(source),
                                     'quarter_drop_se': self.quarter_drop_error(source),
                                     'relevance_gain': self.relevance_gain(source)}
            for mode in self.modes:
                areas = {order: self.area('probability', mode, source, order) for order in self.orders}
                if all(value is not None for value in areas.values()):
                    entry[f'{mode}_auc'] = areas
            per_source[source] = entry
        return dict(count=self.count, protocol=self.protocol, sources=per_source)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every curve and the summary."""
        return dict(modes=self.modes, sources=self.sources, orders=self.orders, fractions=self.fractions,
                    count=self.count, protocol=self.protocol, accuracy=self.accuracy.tolist(),
                    probability=self.probability.tolist(),
                    quarter_drop_se=None if self.quarter_drop_se is None else self.quarter_drop_se.tolist(),
                    summary=self.summary())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'FaithfulnessCurves':
        return cls(modes=list(data['modes']), sources=list(data['sources']), orders=list(data['orders']),
                   fractions=[float(f) for f in data['fractions']], accuracy=np.asarray(data['accuracy']),
                   probability=np.asarray(data['probability']), count=int(data['count']),
                   quarter_drop_se=None if data.get('quarter_drop_se') is None else np.asarray(data['quarter_drop_se']),
                   protocol=data.get('protocol', 'mean'))  # curves from before protocols were named: all mean


@torch.no_grad()
def perturbation_curves(
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        maps: torch.Tensor,
        sources: list[str],
        fractions: tuple[float, ...] = FRACTIONS,
        modes: tuple[str, ...] = MODES,
        orders: tuple[str, ...] = ORDERS,
        random_orders: int = 1,
        batch_size: int = 256,
        amp: bool = False,
        seed: int = 0,
        protocol: str = 'mean',
) -> FaithfulnessCurves:
    """Deletion and insertion curves of ``maps`` for ``model`` on ``inputs``, in batches.

    Each (mode, source, order, fraction) is one masked copy of every image, run once however many curves
    it serves: a random order serves every source, nothing or everything masked every order, and an
    insertion step the deletion step of the reversed order that masks the same patches.

    Args:
        model: The model the maps are of (eval mode).
        inputs: Normalised images (N, channels, H, W).
        labels: The class each image's probability is read for (N,): the true class, or the class the
            model predicts on the whole image.
        maps: (N, sources, patches) maps over the model's patch grid.
        sources: A name per map (``source_names``).
        fractions: Shares of the patches masked (deletion) or revealed (insertion), each step rounded
            to whole patches.
        modes: ``MODES`` or one of them.
        orders: ``ORDERS`` or some of them.
        random_orders: Random permutations averaged for the ``'random'`` order (more: a smoother
            curve for a single image).
        batch_size: Images per forward.
        amp: bf16 autocast where the device runs it natively.
        seed: Seed of the random orders.
        protocol: How a patch is removed (``removal.PROTOCOLS``): filled with the mean, its token dropped, or blurred.
    """
    check_protocol(model, protocol)
    count, num_sources, patches = maps.shape
    grid = patch_grid(model)
    if grid[0] * grid[1] != patches or len(sources) != num_sources or len(inputs) != count:
        raise ValueError(f'{count} images with maps of {num_sources} sources over {patches} patches do not fit '
                         f'{len(inputs)} inputs, {len(sources)} names and a {grid} grid')
    if not all(0 <= f <= 1 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise ValueError(f'fractions must rise within [0, 1], got {fractions}')
    unknown = sorted(set(modes) - set(MODES)) + sorted(set(orders) - set(ORDERS))
    if unknown:
        raise ValueError(f'unknown modes or orders: {unknown}')
    plan = RemovalPlan.build(maps, modes=modes, orders=orders, fractions=fractions, random_orders=random_orders,
                             seed=seed)
    correct, probability = _read_copies(model, inputs, labels, plan, grid=grid, protocol=protocol,
                                        batch_size=batch_size, amp=amp)
    shape = (len(modes), num_sources, len(orders), len(fractions))
    accuracy, mean_probability = np.zeros(shape), np.zeros(shape)
    for (mode, source, order, fraction), averaged in plan.layout.items():
        rows = plan.rows(averaged)
        at = (modes.index(mode), source, orders.index(order), fractions.index(fraction))
        accuracy[at] = float(correct[rows].mean()) * 100
        mean_probability[at] = float(probability[rows].mean())
    quarter_drop_se = None
    if 'deletion' in modes and QUARTER in fractions and {'map', 'random'} <= set(orders):
        # Per image: right with a random quarter masked (averaged over the random orders) minus right with
        # the map's top quarter masked; the drop is their mean, its standard error theirs.
        def rows(source: int, order: str) -> list[int]:
            return plan.rows(plan.layout['deletion', source, order, QUARTER])
        differences = torch.stack([correct[rows(source, 'random')].mean(dim=0) - correct[rows(source, 'map')][0]
                                   for source in range(num_sources)]) * 100
        quarter_drop_se = (differences.std(dim=1) / count ** 0.5).numpy() if count > 1 else np.zeros(num_sources)
    return FaithfulnessCurves(modes=list(modes), sources=list(sources), orders=list(orders),
                              fractions=[float(f) for f in fractions], accuracy=accuracy,
                              probability=mean_probability, count=count, quarter_drop_se=quarter_drop_se,
                              protocol=protocol)


@dataclass
class RemovalPlan:
    """Which copies of the images a set of curves needs: each distinct removal once, however many curves it serves
    (a random order serves every source, nothing or everything removed every order, and an insertion step the
    deletion step of the reversed order that removes the same patches)."""
    variants: dict[tuple, torch.Tensor]  # each distinct copy: (N, patches) True where removed
    layout: dict[tuple, list[tuple]]  # (mode, source, order, fraction) -> the copies averaged for it

    @functools.cached_property
    def _index_of(self) -> dict[tuple, int]:
        return {key: k for k, key in enumerate(self.variants)}

    def rows(self, keys: list[tuple]) -> list[int]:
        """The copies' indices in ``variants``' order (the order ``_read_copies`` reads them in)."""
        return [self._index_of[key] for key in keys]

    @classmethod
    def build(cls, maps: torch.Tensor, modes: Sequence[str], orders: Sequence[str], fractions: Sequence[float],
              random_orders: int, seed: int) -> 'RemovalPlan':
        """The plan of ``perturbation_curves``' curves (its arguments of the same names)."""
        count, num_sources, patches = maps.shape
        # Orders as rank tensors, each with its exact reverse: revealing the first k patches of an order
        # (insertion) masks what deleting the first P - k of the reversed order masks, so both modes share copies.
        generator = torch.Generator().manual_seed(seed)
        ranks: dict[tuple, torch.Tensor] = {}
        for index in range(num_sources):
            ranks['map', index] = patch_ranks(maps[:, index], 'map')
            ranks['reversed', index] = patches - 1 - ranks['map', index]
        for r in range(random_orders if 'random' in orders else 0):
            ranks['random', r] = patch_ranks(maps[:, 0], 'random', generator)
            ranks['random reversed', r] = patches - 1 - ranks['random', r]
        reverse = {'map': 'reversed', 'reversed': 'map', 'random': 'random reversed'}
        variants: dict[tuple, torch.Tensor] = {}

        def deletion_key(mode: str, order: str, index: int, taken: int) -> tuple:
            """The masked copy as a deletion: (order, its source or random draw, patches deleted first)."""
            if mode == 'insertion':
                order, taken = reverse[order], patches - taken
            if taken in (0, patches):  # nothing or everything masked: the same copy for every order
                return ('all',) if taken else ('none',)
            key = (order, index, taken)
            variants.setdefault(key, ranks[order, index] < taken)
            return key

        layout: dict[tuple, list[tuple]] = {}
        for mode in modes:
            for fraction in fractions:
                taken = round(fraction * patches)
                for source in range(num_sources):
                    for order in orders:
                        draws = range(random_orders) if order == 'random' else [source]
                        layout[mode, source, order, fraction] = [deletion_key(mode, order, index, taken)
                                                                 for index in draws]
        for key in {key for keys in layout.values() for key in keys if len(key) == 1}:
            variants[key] = torch.full((count, patches), key == ('all',))
        return cls(variants=variants, layout=layout)


def _read_copies(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, plan: RemovalPlan, *,
                 grid: tuple[int, int], protocol: str, batch_size: int, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every (copy, image) pair of a plan in full batches: (right or not, the label's probability), each
    (copies, images) in ``plan.variants``' order."""
    keys, count, device = list(plan.variants), len(inputs), inputs.device
    pairs = [(k, i) for k in range(len(keys)) for i in range(count)]
    correct, probability = torch.zeros(len(keys), count), torch.zeros(len(keys), count)
    labels = labels.to(device)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        key_index = torch.tensor([k for k, _ in chunk])
        image_index = torch.tensor([i for _, i in chunk])
        masked = torch.stack([plan.variants[keys[k]][i] for k, i in chunk]).to(device)
        with autocast(device, amp):
            logits = removed_logits(model, inputs[image_index.to(device)], masked, grid, protocol)
        probs = logits.float().softmax(dim=-1)
        chunk_labels = labels[image_index.to(device)]
        correct[key_index, image_index] = (probs.argmax(dim=-1) == chunk_labels).float().cpu()
        probability[key_index, image_index] = probs.gather(1, chunk_labels[:, None])[:, 0].cpu()
    return correct, probability


@torch.no_grad()
def measure_faithfulness(
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor | None = None,
        attn_norm: str = DEFAULT_NORMALIZATION,
        head_fusion: str | int = 'mean',
        batch_size: int = 256,
        amp: bool = False,
        progress: Callable[[float], None] | None = None,
        sources: Sequence[str] | None = None,
        **curve_args: Any,
) -> FaithfulnessCurves:
    """Deletion and insertion curves of every layer's [CLS] map and of rollout, on ``inputs``.

    Args:
        model: A timm ViT (eval mode).
        inputs: Normalised images (N, channels, H, W) as the model takes them.
        labels: True classes; None: each image's class predicted on the whole image.
        attn_norm: The model's map normalisation (as trained).
        head_fusion: The model's head fusion (as trained).
        batch_size: Images per forward.
        amp: bf16 autocast where the device runs it natively.
        progress: Called with the share done (0.1 once the maps are taken, 1 at the end).
        sources: The maps measured, by ``source_names``' names (None: all; fewer maps, fewer masked copies:
            the app's view of one image measures the three it shows).
        curve_args: ``perturbation_curves``' fractions, modes, orders, random_orders, seed.
    """
    was_training = model.training
    model.eval()
    try:
        logits, maps = [], []
        for start in range(0, len(inputs), batch_size):
            chunk_logits, chunk_maps = attention_sources(model, inputs[start:start + batch_size], attn_norm,
                                                         head_fusion, amp)
            logits.append(chunk_logits)
            maps.append(chunk_maps)
        logits, maps = torch.cat(logits), torch.cat(maps)
        if progress is not None:
            progress(0.1)
        targets = logits.argmax(dim=-1) if labels is None else labels
        names = source_names(maps.shape[1] - len(WHOLE_MODEL_MAPS))
        if sources is not None:
            unknown = [name for name in sources if name not in names]
            if unknown:
                raise ValueError(f'no map {", ".join(unknown)} in this model: it has {", ".join(names)}')
            maps, names = maps[:, [names.index(name) for name in sources]], list(sources)
        curves = perturbation_curves(model, inputs, targets, maps, names, batch_size=batch_size, amp=amp, **curve_args)
        if progress is not None:
            progress(1.0)
        return curves
    finally:
        model.train(was_training)


def quarter_drops(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, protocol: str,
                  attn_norm: str = DEFAULT_NORMALIZATION, head_fusion: str | int = 'mean', batch_size: int = 256,
                  amp: bool = False) -> dict[str, float]:
    """The quarter drop of every layer's map and of rollout, and nothing else: what each evaluation of
    a run records (whole images, a quarter removed by each map, a random quarter: (layers + 3) forwards
    of ``inputs``).

    Args:
        model: A timm ViT.
        inputs: Normalised images.
        labels: True classes.
        protocol: How patches are removed (``removal.PROTOCOLS``); the caller names it, since which one a
            run records is a choice of how results are read (``verdicts.HEADLINE_PROTOCOL``), not of the measure.
        attn_norm, head_fusion, batch_size, amp: as ``measure_faithfulness``'s.
    """
    curves = measure_faithfulness(model, inputs, labels, attn_norm=attn_norm, head_fusion=head_fusion,
                                  batch_size=batch_size, amp=amp, fractions=(0, QUARTER), modes=('deletion',),
                                  orders=('map', 'random'), protocol=protocol)
    return {source: round(curves.quarter_drop(source), 3) for source in curves.sources}
