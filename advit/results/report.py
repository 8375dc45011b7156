"""Results tables from run folders: the paper's Table 1 over seeds, and Table 2 per class.

Table 1 has family, method, loss, top-1 and the faithfulness of the maps (the quarter drop of the last
layer's map and of rollout, ``faithfulness.py``), each as mean and standard deviation over seeds, and
parameters; Table 2 the per-class accuracy of two runs side by side.

    advit report runs/* --out report/ [--compare runs/l1 runs/deit]

writes ``table1.md`` / ``table1.csv`` and, with ``--compare``, ``table2.md`` / ``table2.csv`` and
``per_class.png``. Each run contributes its best checkpoint's evaluation (``best.eval.json``) and
metadata; runs whose configurations differ only in their seed (and where they ran: folder, device,
ranks, versions) are one row, with mean and spread; any other difference makes its own row, and
the setting column says what differs.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.checkpoint import architecture_args, read_metadata
from ..core.io import read_json
from ..measure.evaluate import evaluation_paths
from ..measure.verdicts import HEADLINE_MAPS, headline, headline_key
from ..training.run_folder import RECORD_KEYS, RunFolder
from ..training.train import fields_with_role
from .paper import PAPER_TOP1

LOSS_TYPES = {'vit': 'CE', 'deit_hard': 'CE + hard KD', 'deit_soft': 'CE + soft KD', 'advit_l1': 'CE + L1',
              'advit_l2': 'CE + L2', 'advit_kl_paper': 'CE + KL (softmax of maps)', 'advit_kl': 'CE + KL',
              'advit_relevance': 'CE + L1 to relevance'}


# config.json keys that do not change what a run learns: where it wrote, how it ran, its seed (the repeats of
# one setting differ only there), and the run's own records.
NOT_SETTINGS = fields_with_role('output', 'seed', 'runtime') | RECORD_KEYS


class ReportError(ValueError):
    """A run folder that cannot be reported on."""


@dataclass
class RunResult:
    """One evaluated run."""
    path: Path
    model: str  # the architecture: timm name, and its arguments when not the defaults
    method: str
    seed: int
    top1: float  # on the evaluation's split (the test set)
    params: int
    per_class: dict[str, float | None]
    val_top1: float | None = None  # on the held-out training images the checkpoint was selected on
    faithfulness: dict[str, dict] = field(default_factory=dict)  # verdicts.headline of its evaluation
    setting: dict[str, Any] = field(default_factory=dict)  # its config.json, less NOT_SETTINGS

    @property
    def family(self) -> str:
        return 'ViT' if self.model.split('.')[0].startswith(('vit_', 'deit_')) else 'CNN'

    @property
    def loss(self) -> str:
        return ' + '.join(dict.fromkeys(LOSS_TYPES.get(part, part) for part in self.method.split('+')))


def load_run(run: str | Path, evaluation: str | Path | None = None) -> RunResult:
    """A run folder's best checkpoint, its evaluation and its seed.

    Args:
        evaluation: An ``.eval.json`` to use instead of the checkpoint's own (the bundle's re-evaluation
            of its fp16 export).
    """
    run = Path(run)
    checkpoint = RunFolder(run).best
    metrics_path = Path(evaluation) if evaluation is not None else evaluation_paths(checkpoint)[0]
    if not checkpoint.is_file() or not metrics_path.is_file():
        raise ReportError(f'{run} has no evaluated best checkpoint (best.safetensors and {metrics_path.name})')
    evaluation = read_json(metrics_path)
    if evaluation is None:
        raise ReportError(f'{run}: {metrics_path.name} is not a readable evaluation')
    config = RunFolder(run).config()
    return checkpoint_result(checkpoint, evaluation, path=run, seed=int(config.get('seed', 0)),
                             setting={k: v for k, v in config.items() if k not in NOT_SETTINGS})


def checkpoint_result(checkpoint: Path, evaluation: dict[str, Any], path: Path, seed: int,
                      setting: dict[str, Any] | None = None) -> RunResult:
    """A checkpoint's metadata and its evaluation as a ``RunResult`` (a run folder's, or a bundle's model whose
    run folder may be gone).

    Args:
        checkpoint: The ``.safetensors`` file.
        evaluation: Its evaluation, as read from its ``.eval.json``.
        path: What the result names: the run folder, or the checkpoint.
        seed: The seed it was trained with.
        setting: Its configuration less ``NOT_SETTINGS``, where known.
    """
    meta = read_metadata(checkpoint)
    arch = architecture_args(meta)
    model = meta['model'] + (f' ({", ".join(f"{k}={v}" for k, v in sorted(arch.items()))})' if arch else '')
    return RunResult(path=path, model=model, method=meta.get('method') or 'vit', seed=seed,
                     top1=float(evaluation['top1']), params=int(meta.get('params') or 0),
                     per_class=evaluation['per_class'], val_top1=meta.get('val_top1'),
                     faithfulness=headline(evaluation), setting=setting or {})


def best_on_validation(val_top1: dict[str, float | None]) -> str | None:
    """The name of highest validation top-1 (None when there is none; the first wins a tie, and a name without
    a validation score only when none has one): how a best model is chosen, never on the test set."""
    return max(val_top1, key=lambda name: -1.0 if val_top1[name] is None else val_top1[name], default=None)


def table1(results: list[RunResult]) -> list[dict[str, Any]]:
    """Rows of Table 1: one per setting (model, method and every other field of the configuration but
    the seed), top-1 as mean and standard deviation over its seeds. Where one (model, method) has several
    settings, each row's ``setting`` names the fields that tell them apart."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for result in results:
        key = (result.model, result.method, json.dumps(result.setting, sort_keys=True, default=str))
        groups.setdefault(key, []).append(result)
    rows = []
    for (model, method, _), runs in sorted(groups.items()):
        scores = [run.top1 for run in runs]
        differing = differing_fields([group[0].setting for (m, k, _), group in groups.items()
                                      if (m, k) == (model, method)])
        faithful = {}
        for source in HEADLINE_MAPS:
            key = headline_key(source)
            drops = [run.faithfulness.get(source, {}).get('quarter_drop') for run in runs]
            drops = [drop for drop in drops if drop is not None]
            faithful[f'{key}_mean'] = statistics.fmean(drops) if drops else None
            faithful[f'{key}_std'] = statistics.stdev(drops) if len(drops) > 1 else (0.0 if drops else None)
        rows.append(dict(family=runs[0].family, model=model, method=method, loss=runs[0].loss,
                         top1_mean=statistics.fmean(scores),
                         top1_std=statistics.stdev(scores) if len(scores) > 1 else 0.0, **faithful,
                         seeds=sorted(run.seed for run in runs), params_m=runs[0].params / 1e6,
                         setting=', '.join(f'{name}={runs[0].setting.get(name)}' for name in differing)))
    return rows


def differing_fields(configs: list[dict[str, Any]], ignored: Collection[str] = ()) -> list[str]:
    """The fields (other than ``ignored``) whose values are not the same in all of ``configs``."""
    keys = set().union(*configs) - set(ignored)
    return sorted(key for key in keys
                  if len({json.dumps(c.get(key), sort_keys=True, default=str) for c in configs}) > 1)


def table2(a: RunResult, b: RunResult) -> list[dict[str, Any]]:
    """Rows of Table 2: per-class top-1 of two runs and their difference."""
    if list(a.per_class) != list(b.per_class):
        raise ReportError(f'{a.path} and {b.path} were evaluated on different classes')
    rows = []
    for name in a.per_class:
        score_a, score_b = a.per_class[name], b.per_class[name]
        diff = None if score_a is None or score_b is None else score_b - score_a
        rows.append({'class': name, 'a': score_a, 'b': score_b, 'b_minus_a': diff})
    return rows


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` in ``columns`` (key, title): floats to 2 decimals, None as a dash."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'{value:.2f}'
        if isinstance(value, list):
            return ','.join(str(v) for v in value)
        return '–' if value is None else str(value)
    lines = ['| ' + ' | '.join(title for _, title in columns) + ' |', '|' + ' --- |' * len(columns)]
    lines += ['| ' + ' | '.join(cell(row[key]) for key, _ in columns) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def table2_columns(a: RunResult, b: RunResult) -> list[tuple[str, str]]:
    """Markdown columns of Table 2, headed by the two runs' folder names."""
    return [('class', 'class'), ('a', f'{a.path.name} (%)'), ('b', f'{b.path.name} (%)'), ('b_minus_a', 'difference')]


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: ','.join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


TABLE1_COLUMNS = [('family', 'family'), ('model', 'model'), ('method', 'method'), ('loss', 'loss'),
                  ('top1_mean', 'test top-1 (%)'), ('top1_std', '± std'),
                  *[column for source in HEADLINE_MAPS for column in (
                      (f'{headline_key(source)}_mean', f'faithfulness, {source} (pts)'), (f'{headline_key(source)}_std', '± std'))],
                  ('seeds', 'seeds'), ('setting', 'setting'), ('params_m', 'params (M)')]


PAPER_SETTING = 'paper: CIFAR-10 at 224, ImageNet-pretrained, ViT-B teacher'


def paper_rows() -> list[dict[str, Any]]:
    """The paper's Table 1 in the same columns, labelled with its setting."""
    return [dict(family='ViT', model=student, method=method, loss=LOSS_TYPES[method], top1_mean=score, top1_std=None,
                 **{f'{headline_key(source)}_{stat}': None for source in HEADLINE_MAPS for stat in ('mean', 'std')},
                 seeds=None, setting=PAPER_SETTING, params_m=None)
            for student, scores in PAPER_TOP1.items() for method, score in scores.items()]


# Draws Table 2's rows as a chart into a file: (rows, name of A, name of B, path). The app's package has one
# (``advit.app.render.per_class_chart``); the results layer draws nothing itself, so it needs no plotting library.
ChartWriter = Callable[[list[dict[str, Any]], str, str, Path], None]


def write_report(runs: list[str | Path], out: str | Path, compare: tuple[str, str] | None = None,
                 with_paper: bool = False, chart: ChartWriter | None = None) -> Path:
    """Write Table 1 (and Table 2 when ``compare`` names two runs) into ``out``.

    Args:
        with_paper: Add the paper's own Table 1 rows, labelled with their setting.
        chart: Draws Table 2 as ``per_class.png`` beside it; None: the tables alone.
    """
    from ..core.io import atomic_path
    results = [load_run(run) for run in runs]
    if not results:
        raise ReportError('no runs given')
    out = Path(out)
    rows = table1(results) + (paper_rows() if with_paper else [])
    outputs = {'table1.md': markdown_table(rows, TABLE1_COLUMNS), 'table1.csv': _csv(rows)}
    if compare is not None:
        a, b = load_run(compare[0]), load_run(compare[1])
        rows = table2(a, b)
        outputs['table2.md'] = markdown_table(rows, table2_columns(a, b))
        outputs['table2.csv'] = _csv(rows)
        if chart is not None:
            chart(rows, a.path.name, b.path.name, out / 'per_class.png')
    for name, text in outputs.items():
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    return out
