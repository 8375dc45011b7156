"""The checkpoint bundle: fp16 weights, evaluations and a model card, exported from its run folders.

    advit bundle runs/bundle --out checkpoints

``scripts/train_bundle.sh`` trains the runs (``teacher``, then the students ``vit``, ``deit_hard``,
``advit_l1``, ``advit_l2``, ``advit_kl``, ``advit_kl_paper``, ``advit_relevance``) and calls this; students of
the bundle's seed trained later join it through ``ship_students`` (``advit seeds``). Within the size limit
(80 MB: the app's Docker image carries the bundle) go the fp16 weights of every run when they fit
(the CPU bundle's small models), else of the teacher, ``vit``, ``deit_hard`` and the best ADViT
student, each re-evaluated as shipped (``NAME.eval.json``,
``NAME.predictions.npz``), the other runs' evaluations, and ``README.md``, the model card.
Runs not (yet) finished are left out, and named in the card, so a cut-short session still
exports what it has. The best ADViT student is the one of highest top-1 on the held-out training
images (validation), never chosen on the test set. Each run's attention probe (``probe.py``) is
copied as ``NAME.probe.npz``; the sweep behind the recipe (``scripts/cpu_sweep.py``), when given,
goes into the card.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open

from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.data import ImageSet, load_dataset
from ..core.checks import shown_value
from ..core.io import atomic_path
from ..core.machine import machine
from ..core.weights import TRAIN_STATE_PREFIX
from ..measure.evaluate import TEST_IMAGES, evaluate_split, evaluation_paths, read_evaluation
from ..measure.faithfulness import ROLLOUT, WHOLE_MODEL_MAPS, FaithfulnessCurves
from ..measure.probe_file import PROBE_FILE, shipped_probe
from ..measure.removal import REMOVED_AS
from ..measure.verdicts import (
    FAITHFUL_BAR,
    HEADLINE_MAPS,
    HEADLINE_PROTOCOL,
    NOISE_MARGIN,
    evaluation_key,
    headline,
    headline_key,
    last_layer,
    verdict,
)
from ..training.presets import PRESETS
from ..training.run_folder import RunFolder, read_metrics, read_sessions
from ..training.train import fields_with_role
from .agreement import agreement_markdown
from .paper import PAPER_TEACHER_TOP1, PAPER_TOP1
from .report import (
    RunResult,
    best_on_validation,
    checkpoint_result,
    differing_fields,
    load_run,
    markdown_table,
    table2,
    table2_columns,
)
from .seeds import (
    BUNDLE_SEED,
    RECIPE_FILE,
    SEEDS_DIR,
    SeedError,
    check_same_training,
    seeds_tables,
    write_recipe,
)

TEACHER = 'teacher'
STUDENTS = ('vit', 'deit_hard', 'advit_l1', 'advit_l2', 'advit_kl', 'advit_kl_paper', 'advit_relevance')  # scripts/train_bundle.sh trains them in this order
ALWAYS_SHIPPED = (TEACHER, 'vit', 'deit_hard')  # and the best ADViT student, when not all fit
SHIP_ALL_SHARE = 0.9  # every run's weights are shipped if they take at most this share of the size limit
MAX_MB = 80.0
# Test top-1 (%) asked of each bundle recipe (scripts/train_bundle.sh's BUNDLE, the presets' family): the quick
# 2-core CPU bundle, and the long one trained across sessions (issue #42). A recipe not here sets none.
GOALS = {'bundle': {TEACHER: 85.0, 'best student': 80.0}, 'long-bundle': {TEACHER: 88.0, 'best student': 82.0}}
RECIPE = 'bundle'  # the recipe of a card that names none (written before recipes were named)
GOALS_START = 'Goals set for this bundle'  # the card's account of them begins so (``refresh_goals``)
CARD = 'README.md'
# A bundle trained by a longer recipe keeps the one it replaces whole in this folder of its own (weights, evaluations,
# probes, seeds, recipe, card): its seeds stay the evidence over seeds, its card the history, its models on offer.
EARLIER = 'quick'
COMMANDS = 'commands.tsv'  # written by the script: run name, wall seconds, command; one line per command


class BundleError(Exception):
    """Nothing to export, or a bundle over its size limit."""


def bundle_recipes() -> list[str]:
    """The presets' bundle families: each NAME with a ``NAME-teacher`` and a ``NAME-student`` preset."""
    families = {name.removesuffix('-teacher') for name in PRESETS if name.endswith('-teacher')}
    return sorted(family for family in families if f'{family}-student' in PRESETS)


def check_recipe(recipe: str) -> None:
    """Refuse a recipe that names no bundle family of the presets (``bundle_recipes``)."""
    if recipe not in bundle_recipes():
        raise BundleError(f'unknown bundle recipe {shown_value(recipe)}: choose one of {", ".join(bundle_recipes())}')


def export_bundle(runs: str | Path, out: str | Path, max_mb: float = MAX_MB, device: str = 'auto',
                  sweep: str | Path | None = None, earlier: str | Path | None = None, recipe: str = RECIPE) -> int:
    """Export the finished bundle runs into ``out``; return the folder's size in bytes.

    Args:
        runs: Folder of the run folders (named as ``TEACHER`` and ``STUDENTS``).
        out: The bundle folder, e.g. ``checkpoints``.
        max_mb: Size limit of the whole folder, in MB of 10^6 bytes; over it, the card is not written
            and ``BundleError`` says what is there.
        device: Where the exported weights are evaluated.
        sweep: A ``sweep.jsonl`` of ``scripts/cpu_sweep.py`` to record in the card (and the reasoning written
            beside it, the same name ending ``.md``, cited there where it exists).
        earlier: A bundle this one replaces, kept whole in ``out/EARLIER`` (``keep_earlier``).
        recipe: The presets' family the runs were trained by (``bundle``, ``long-bundle``...): the card states its
            goals (``GOALS``).
    """
    runs, out = Path(runs), Path(out)
    check_recipe(recipe)
    names = [name for name in (TEACHER, *STUDENTS)
             if RunFolder(runs / name).finished()]
    if not names:
        raise BundleError(f'no finished bundle run in {runs} (looked for {", ".join((TEACHER, *STUDENTS))})')
    if earlier is not None:
        keep_earlier(Path(earlier), out)
    # Chosen on validation; the first in STUDENTS order wins a tie (and where no run held images out).
    best_attention = best_attention_student({name: load_run(runs / name) for name in names if name != TEACHER})
    # Every run's weights where they fit (small CPU models), else the most wanted ones.
    if sum(_fp16_bytes(RunFolder(runs / name).best) for name in names) > SHIP_ALL_SHARE * max_mb * 1e6:
        shipped = [name for name in names if name in ALWAYS_SHIPPED or name == best_attention]
    else:
        shipped = names
    out.mkdir(parents=True, exist_ok=True)
    # Further seeds' evaluations (`advit seeds`) belong to the students of the teacher being replaced.
    shutil.rmtree(out / SEEDS_DIR, ignore_errors=True)
    test_sets: dict[tuple, ImageSet] = {}
    for name in names:
        target = out / f'{name}.safetensors'
        if name in shipped:
            _export_weights(runs / name, target, device, test_sets, RunFolder(runs / TEACHER).best)
        else:
            target.unlink(missing_ok=True)  # an earlier export's weights, no longer shipped
            for source, copy in zip(evaluation_paths(RunFolder(runs / name).best), evaluation_paths(target)):
                _copy(source, copy)
        if (runs / name / PROBE_FILE).is_file():
            _copy(runs / name / PROBE_FILE, shipped_probe(out / f'{name}.safetensors'))
    try:  # the card says so where the students' settings differ: then no seed can replay them
        write_recipe([runs / name for name in names if name != TEACHER], out)
    except SeedError:
        (out / RECIPE_FILE).unlink(missing_ok=True)  # an earlier export's, of other students
    files = sorted(path for path in out.rglob('*') if path.is_file() and path.name != CARD)
    sweep_rows = [json.loads(line) for line in Path(sweep).read_text().splitlines() if line.strip()] if sweep else []
    sweep_notes = Path(sweep).with_suffix('.md') if sweep else None
    card = model_card(runs, out, names, shipped=shipped, best=best_attention,
                      files_size=sum(path.stat().st_size for path in files), max_mb=max_mb, sweep=sweep_rows,
                      sweep_notes=str(sweep_notes) if sweep_notes and sweep_notes.is_file() else None, recipe=recipe)
    size = sum(path.stat().st_size for path in files) + len(card.encode())
    if size > max_mb * 1e6:
        (out / CARD).unlink(missing_ok=True)  # an earlier card would describe other files
        listing = ', '.join(f'{path.name} {path.stat().st_size / 1e6:.1f} MB' for path in files)
        raise BundleError(f'the bundle {out} would be {size / 1e6:.1f} MB, over its {max_mb:g} MB limit; '
                          f'no model card written. Files: {listing}')
    with atomic_path(out / CARD) as tmp:
        tmp.write_text(card)
    return size


def keep_earlier(earlier: Path, out: Path) -> Path:
    """Copy the bundle in ``earlier`` whole into ``out/EARLIER`` (its own earlier bundle stays where it was, inside
    it); return that folder. An earlier copy there is replaced; the earlier bundle already there is kept as it is
    (a new bundle written where the shipped one is, ``checkpoints`` keeping ``checkpoints/quick``).

    Args:
        earlier: A bundle folder with its card.
        out: The new bundle's folder (not ``earlier`` itself, nor inside it).
    """
    earlier, target = Path(earlier), Path(out) / EARLIER
    if not (earlier / CARD).is_file():
        raise BundleError(f'{earlier} is not a bundle (it has no {CARD}) to keep as the earlier one')
    if Path(out).resolve() == earlier.resolve() or Path(out).resolve().is_relative_to(earlier.resolve()):
        raise BundleError(f'the new bundle {out} must be written apart from the earlier one {earlier}, which it keeps')
    if target.resolve() == earlier.resolve():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for path in sorted(earlier.rglob('*')):
        if path.is_file():
            _copy(path, target / path.relative_to(earlier))
    return target


def seeds_evidence(out: Path) -> Path | None:
    """The folder whose students have further seeds, which the card and the About page show over seeds: the bundle
    ``out`` itself, or the earlier bundle it keeps (``EARLIER``); None where neither has."""
    for folder in (out, out / EARLIER):
        if (folder / SEEDS_DIR).is_dir() and any((folder / SEEDS_DIR).iterdir()):
            return folder
    return None


def history_section(out: Path) -> str:
    """The card's account of the earlier bundle it keeps (``EARLIER``): its models' test top-1 as it shipped them,
    and where its own card is; '' for a bundle that replaced none."""
    earlier = out / EARLIER
    if not (earlier / CARD).is_file():
        return ''
    results = bundle_results(earlier)
    rows = [dict(model=name, top1=result.top1, val=result.val_top1) for name, result in results.items()]
    return (f'## History: the bundle before this one\n\nThe bundle this one replaced, trained by the quick CPU recipe, is '
            f'kept whole in `{EARLIER}/` (weights, evaluations, probes, seeds; its card `{EARLIER}/{CARD}` says how it '
            'was made), and the app offers its models beside these. Its test top-1 as shipped:\n\n'
            + markdown_table(rows, [('model', 'model'), ('top1', 'test top-1 (%)'), ('val', 'validation top-1 (%)')]))


def _fp16_bytes(checkpoint: Path) -> int:
    """About the size of a float32 checkpoint once exported in fp16 (its float tensors halved)."""
    with safe_open(str(checkpoint), framework='pt') as f:
        return sum(math.prod(f.get_slice(key).get_shape()) * 2 for key in f.keys()
                   if not key.startswith(TRAIN_STATE_PREFIX))


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _export_weights(run: Path, target: Path, device: str, test_sets: dict[tuple, ImageSet],
                    bundle_teacher: Path) -> None:
    """The run's best checkpoint as fp16 safetensors, evaluated as shipped on the run's own test split; a student
    of the bundle's teacher (``bundle_teacher``, its run's checkpoint) names it as shipped beside it."""
    loaded = load_checkpoint(RunFolder(run).best)
    config = RunFolder(run).config()
    key = (config['data'], config.get('test_subset'), config.get('cache_dir'))
    if key not in test_sets:
        test_sets[key] = load_dataset(config['data'], config.get('cache_dir'))['test'].subset(config.get('test_subset'))
    meta = dict(loaded.meta)
    if meta.get('teacher') and Path(meta['teacher']).resolve() == bundle_teacher.resolve():
        meta['teacher'] = f'{TEACHER}.safetensors'  # the app shows it beside the shipped files, not a runs/ path
    save_checkpoint(target, loaded.model, meta, half=True)
    # The shipped file's own figures (fp16 weights can flip a few predictions), in its evaluation file.
    evaluate_split(target, test_sets[key], config['data'], device=device)


def _paper_top1(name: str, result: RunResult) -> float | None:
    """The paper's number for the same role: its ViT-Base teacher, or its student of the same size."""
    if name == TEACHER:
        return PAPER_TEACHER_TOP1
    # The paper's ViT-Small for ours of that name; its smaller student, ViT-Tiny, for the other (smaller) ViTs.
    size = 'ViT-Small' if result.model.startswith('vit_small') else 'ViT-Tiny'
    if not result.model.startswith(('vit_', 'deit_')):
        return None
    return PAPER_TOP1.get(size, {}).get(result.method)


FAITHFULNESS_COLUMNS = [(headline_key(source), f'faithfulness, {source} (pts)') for source in HEADLINE_MAPS]
FAITHFULNESS_HEADING = '## Faithfulness of the maps'
SEEDS_HEADING = '## Tables 1 and 2 over seeds'


def faithfulness_section(out: Path, names: list[str]) -> str:
    """The card's account of how faithful each model's maps are (``faithfulness.py``), from the bundle's
    evaluation files: every layer's, rollout's and gradient rollout's quarter drop with its verdict, and
    the deletion and insertion areas of the last layer and both rollouts against a random order."""
    evaluations = {name: read_evaluation(out / f'{name}.safetensors') or {} for name in names}
    key = evaluation_key(HEADLINE_PROTOCOL)
    measured = {name: FaithfulnessCurves.from_dict(e[key]) for name, e in evaluations.items() if key in e}
    intro = (f'{FAITHFULNESS_HEADING}\n\nDoes a model use the patches its [CLS] map points at? On a fixed random '
             f'{TEST_IMAGES} test images, patches are removed ({REMOVED_AS[HEADLINE_PROTOCOL]}: the headline '
             'protocol, argued in the project\'s README; the others in the next section) in the order of each map, '
             'most attended first, and accuracy and the true class\'s probability are read as they go; a random '
             'order is the baseline. **Quarter drop**: points of accuracy lost by removing the map\'s top quarter of '
             'patches beyond those lost by removing a random quarter, with its standard error over the images (positive: '
             f'the map points at what the model uses). Verdicts: within {NOISE_MARGIN:g} standard errors of 0 "no '
             'better than random"; above that "weakly faithful", and "faithful" from '
             f'{FAITHFUL_BAR:g} points; below it "points away from what the model uses". Table 1\'s faithfulness '
             'columns are the last layer\'s, rollout\'s and gradient rollout\'s (Chefer et al. 2021: attention '
             'weighted by the gradient of the predicted class\'s score, the map that asks what the model used). '
             'The measure says whether a map is about what the model uses, not whether it is about the object a '
             'person sees: it can be background.\n\n')
    if not measured:
        return intro + ('Not measured for these files yet: `advit faithfulness checkpoints/*.safetensors --protocol '
                        f'{HEADLINE_PROTOCOL}`.\n')
    sources = max((curves.sources for curves in measured.values()), key=len)
    rows = [dict(run=name, **{source: (f'{curves.quarter_drop(source):+.1f} ± {curves.quarter_drop_error(source):.1f}'
                                       if source in curves.sources and curves.quarter_drop_se is not None else
                                       curves.quarter_drop(source) if source in curves.sources else None)
                              for source in sources}) for name, curves in measured.items()]
    drops = markdown_table(rows, [('run', 'run')] + [(source, f'{source} (pts)') for source in sources])
    area_rows = []
    for name, curves in measured.items():
        for source in [last_layer(curves.sources), *(name for name in WHOLE_MODEL_MAPS if name in curves.sources)]:
            drop, error = curves.quarter_drop(source), curves.quarter_drop_error(source)
            area_rows.append(dict(run=name, map=source, drop=drop, se=error, verdict=verdict(drop, error), **{
                f'{mode}_{order}': curves.area('probability', mode, source, order)
                for mode in ('deletion', 'insertion') for order in ('map', 'random', 'reversed')}))
    areas = markdown_table(area_rows, [
        ('run', 'run'), ('map', 'map'), ('drop', 'quarter drop (pts)'), ('se', '± se'), ('verdict', 'verdict'),
        ('deletion_map', 'deletion area, map'), ('deletion_random', 'random'), ('deletion_reversed', 'reversed'),
        ('insertion_map', 'insertion area, map'), ('insertion_random', 'random'), ('insertion_reversed', 'reversed')])
    return (intro + 'Quarter drop of every map (points ± standard error):\n\n' + drops + '\nAreas under the true class\'s probability as '
            'patches are deleted (lower: more faithful) or inserted (higher: more faithful), in the map\'s order, a '
            'random one and the reversed map\'s:\n\n' + areas)


PROTOCOLS_HEADING = '## Faithfulness under every removal protocol'


def protocols_section(out: Path, names: list[str]) -> str:
    """The card's section on whether the maps' verdicts hold when a removed patch is filled with the mean, its
    token dropped or its pixels blurred (``agreement``), from the bundle's evaluation files."""
    evaluations = {name: read_evaluation(out / f'{name}.safetensors') or {} for name in names}
    return (f'{PROTOCOLS_HEADING}\n\nEach headline map under each removal protocol (`advit/measure/removal.py`) on '
            'the same test images, and how far the protocols agree: Kendall\'s tau over the (model, map) pairs and '
            'the share of verdicts that are the same. A claim the card makes about a map holds where its verdict '
            'is the same under all three.\n\n' + agreement_markdown(evaluations) + '\n')


def refresh_faithfulness(out: str | Path) -> None:
    """Bring an existing card's faithfulness up to date with the bundle's evaluation files, in place: Table
    1's faithfulness columns and the faithfulness section (the rest of the card, made from run folders that
    may be gone, is kept as written). ``advit faithfulness`` measures the files first."""
    out = Path(out)
    card = (out / CARD).read_text()
    lines = card.split('\n')
    start = lines.index(next(line for line in lines if line.startswith('## Table 1'))) + 2
    end = next(index for index in range(start, len(lines)) if not lines[index].startswith('|'))
    header = [cell.strip() for cell in lines[start].strip('|').split('|')]
    titles = [title for _, title in FAITHFULNESS_COLUMNS]
    kept = [index for index, title in enumerate(header) if title not in titles]
    at = next(position for position, index in enumerate(kept) if header[index] == 'test top-1 (%)') + 1
    names = [line.strip('|').split('|')[0].strip() for line in lines[start + 2:end]]
    results = {name: headline(read_evaluation(out / f'{name}.safetensors') or {}) for name in names}

    def row(cells: list[str], extra: list[str]) -> str:
        chosen = [cells[index] for index in kept]
        return '| ' + ' | '.join(chosen[:at] + extra + chosen[at:]) + ' |'
    table = [row(header, titles), '|' + ' --- |' * (len(kept) + len(titles))]
    for line, name in zip(lines[start + 2:end], names):
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        values = [results[name][source]['quarter_drop'] for source in HEADLINE_MAPS]
        table.append(row(cells, [f'{value:.2f}' if value is not None else '–' for value in values]))
    lines[start:end] = table
    text = _with_section('\n'.join(lines), FAITHFULNESS_HEADING, faithfulness_section(out, names), '## Table 2')
    text = _with_section(text, PROTOCOLS_HEADING, protocols_section(out, names), '## Table 2')
    with atomic_path(out / CARD) as tmp:
        tmp.write_text(text)
    refresh_goals(out)  # the teacher's maps are among them


def _with_section(card: str, heading: str, section: str, before: str) -> str:
    """``card`` with its section under ``heading`` replaced by ``section`` (which starts with the heading), or
    with ``section`` put before the heading ``before`` where the card has none yet."""
    if heading + '\n' in card:
        begin = card.index(heading + '\n')
        return card[:begin] + section + '\n' + card[card.index('\n## ', begin + 1) + 1:]
    return card.replace(before, section + '\n' + before, 1)


def seeds_section(out: Path) -> str:
    """The card's Tables 1 and 2 over seeds (``seeds.seeds_tables``), from the evaluation files of the bundle or of
    the earlier bundle it keeps (``seeds_evidence``), said which."""
    evidence = seeds_evidence(out) or out
    where, folder = ('', '') if evidence == out else (
        f'This bundle is one seed of its recipe. The evidence over seeds is the earlier bundle\'s, of the quick recipe, '
        f'kept in `{EARLIER}/`: ', f'{EARLIER}/')
    return (f'{SEEDS_HEADING}\n\n{where}The students of the bundle (seed {BUNDLE_SEED}) and of further seeds of the same '
            f'recipe and number of steps on the shipped teacher (`scripts/train_seeds.sh`, evaluations in '
            f'`{folder}{SEEDS_DIR}/seed<N>/` with how each was trained, no weights), each method as mean and standard '
            'deviation over its seeds. A difference is said to exceed the spread when it is larger than the two '
            f'standard deviations added. Seed {BUNDLE_SEED}\'s numbers are of the shipped (fp16) weights, as '
            'evaluated for the bundle; a further seed\'s of its checkpoint selected on validation as trained, evaluated '
            'at the end of its run: the same test images and faithfulness measure.\n\n'
            + bundle_seeds_tables(evidence))


def refresh_seeds(out: str | Path) -> None:
    """Bring an existing card's Tables 1 and 2 over seeds up to date with the evaluations in ``out``, in place."""
    out = Path(out)
    text = _with_section((out / CARD).read_text(), SEEDS_HEADING, seeds_section(out), FAITHFULNESS_HEADING)
    with atomic_path(out / CARD) as tmp:
        tmp.write_text(text)


def bundle_results(out: Path) -> dict[str, RunResult]:
    """The bundle's own models as ``RunResult``s, from each shipped ``NAME.safetensors``' metadata and its
    ``NAME.eval.json`` (the run folders they came from may be gone)."""
    results = {}
    for name in (TEACHER, *STUDENTS):
        path = out / f'{name}.safetensors'
        evaluation = read_evaluation(path)
        if path.is_file() and evaluation is not None:
            results[name] = checkpoint_result(path, evaluation, path=path, seed=BUNDLE_SEED)
    return results


def best_attention_student(results: dict[str, RunResult]) -> str | None:
    """The best ADViT student, chosen on validation (the first in ``STUDENTS`` order wins a tie); None if none.

    Args:
        results: The runs by name, in ``STUDENTS`` order.
    """
    return best_on_validation({name: result.val_top1 for name, result in results.items() if name.startswith('advit_')})


def bundle_seeds_tables(out: Path, methods: tuple[str, ...] = STUDENTS) -> str:
    """Tables 1 and 2 over seeds (``seeds.seeds_tables``) of the bundle in ``out``, Table 2 for its best ADViT
    student (``best_attention_student`` of its shipped checkpoints).

    Args:
        out: The bundle folder.
        methods: The student methods, in the table's order.
    """
    return seeds_tables(out, list(methods), best_attention_student(bundle_results(out)))


def refresh_goals(out: str | Path) -> None:
    """Bring an existing card's account of the goals (``goals_account``: its recipe's ``GOALS`` and the maps'
    faithfulness) up to date with the bundle's files, in place (``advit faithfulness --card`` calls it)."""
    out = Path(out)
    results = bundle_results(out)
    best = best_attention_student(results)
    lines = (out / CARD).read_text().split('\n')
    begin = next(index for index, line in enumerate(lines) if line.startswith(GOALS_START))
    named = re.match(GOALS_START + r' \(recipe `([\w-]+)`\)', lines[begin])
    recipe = named.group(1) if named else RECIPE
    end = begin + 1  # the account: its first line, then its list (a card of an earlier version: one line)
    while end < len(lines) and (lines[end].startswith('- ') or
                                (lines[end] == '' and end + 1 < len(lines) and lines[end + 1].startswith('- '))):
        end += 1
    with atomic_path(out / CARD) as tmp:
        tmp.write_text('\n'.join(lines[:begin] + goals_account(results, best, recipe).rstrip('\n').split('\n')
                                 + lines[end:]))


def sessions_text(runs: Path, names: list[str]) -> str:
    """Each run's sittings (``run_folder.read_sessions``: machine, steps, wall time, when it started) and their
    sums, for a bundle trained across sessions; '' where no run recorded them (runs from before they were)."""
    rows = []
    for name in names:
        sittings = read_sessions(runs / name)
        for index, sitting in enumerate(sittings, 1):
            started = sitting.get('started')
            rows.append(dict(run=name, sitting=index, machine=sitting.get('machine'),
                             started=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started)) if started else None,
                             steps=f"{sitting.get('first_step')}-{sitting.get('last_step')}",
                             wall=sitting.get('wall_s')))
        if len(sittings) > 1:
            trained = sum((s.get('last_step') or 0) - (s.get('first_step') or 0) for s in sittings)
            rows.append(dict(run=name, sitting='all', machine=f"{len({s.get('machine') for s in sittings})} machine(s)",
                             started=None, steps=f'{trained} trained', wall=round(sum(s.get('wall_s') or 0
                                                                                     for s in sittings), 1)))
    if not rows:
        return ''
    return ('\nEach run\'s sittings (`sessions.json`): a run resumed in a later session, or on another machine, '
            'adds one. Steps a killed sitting made after its last save are made again by the next, so the steps '
            'summed can exceed the run\'s length; the wall time is the sitting\'s own clock, from start to its last '
            'record.\n\n' + markdown_table(rows, [('run', 'run'), ('sitting', 'sitting'), ('machine', 'machine'),
                                                  ('started', 'started'), ('steps', 'steps'),
                                                  ('wall', 'wall time (s)')]))


def _curves(runs: Path, names: list[str]) -> str:
    """Validation top-1 at each evaluation, one column per run."""
    curves = {}
    for name in names:
        lines = read_metrics(runs / name)
        curves[name] = {line['step']: line['val_top1'] for line in lines
                        if line.get('event') == 'eval' and line.get('val_top1') is not None}
    steps = sorted(set().union(*curves.values()))
    rows = [dict(step=step, **{name: curves[name].get(step) for name in names}) for step in steps]
    return markdown_table(rows, [('step', 'step')] + [(name, name) for name in names]) if rows else 'No evaluations.\n'


def _sweep_table(sweep: list[dict[str, Any]]) -> str:
    def drop(record: dict[str, Any], last: bool) -> float | None:
        """A record's validation quarter drop of its last layer or rollout (older records lack it)."""
        drops = record.get('val_faithfulness') or {}
        return drops.get(last_layer(list(drops)) if last else ROLLOUT) if drops else None
    def budget(record: dict[str, Any]) -> str:
        """A run's length: its steps where it counted them (its time budget then unused), else its seconds."""
        steps = record['settings'].get('steps')
        return f'{steps} steps' if steps else f"{record['seconds']:g} s"
    budget_keys = ('steps', 'time_budget')
    rows = [dict(model=r['model'], budget=budget(r), wall=r.get('wall_s'), images_per_s=r['images_per_s'],
                 settings=', '.join(f'{k}={v}' for k, v in r['settings'].items() if k not in budget_keys) or 'preset',
                 val=r['best_val_top1'], faith_last=drop(r, last=True), faith_rollout=drop(r, last=False),
                 test=r['test_top1'])
            for r in sweep]
    return markdown_table(rows, [('model', 'model'), ('settings', 'settings'), ('budget', 'budget'),
                                 ('wall', 'wall (s)'), ('images_per_s', 'images/s'), ('val', 'val top-1 (%)'),
                                 ('faith_last', 'val quarter drop, last layer (pts)'),
                                 ('faith_rollout', 'val quarter drop, rollout (pts)'), ('test', 'test top-1 (%)')])


def goals_account(results: dict[str, RunResult], best_attention: str | None, recipe: str = RECIPE) -> str:
    """The card's account of the bundle's goals, each reached or not with its number: the teacher's and the
    best student's test top-1 (the recipe's ``GOALS``), ADViT-L1 ahead of DeiT (the paper's claim), the teacher's
    maps faithful (a quarter drop of ``FAITHFUL_BAR`` points, every headline map given), and the best ADViT
    student's maps against the DeiT student's.

    Args:
        results: The runs by name.
        best_attention: The best ADViT student, chosen on validation.
        recipe: The presets' family the runs were trained by.
    """
    best_student = best_on_validation({name: result.val_top1 for name, result in results.items() if name != TEACHER})
    reached = {TEACHER: results[TEACHER].top1 if TEACHER in results else None,
               'best student': results[best_student].top1 if best_student else None}
    lines = [f'- {role} test top-1 at least {goal:g}%: ' + ('not trained' if reached[role] is None else
             f"{reached[role]:.2f}%, **{'reached' if reached[role] >= goal else 'not reached'}**")
             + (f' (the best student on validation: `{best_student}`)' if role != TEACHER and best_student else '')
             for role, goal in GOALS.get(recipe, {}).items()] or [f'- the recipe `{recipe}` sets no test top-1 goals']
    if 'advit_l1' in results and 'deit_hard' in results:
        ours, deit = results['advit_l1'].top1, results['deit_hard'].top1
        lines.append(f'- `advit_l1` ahead of `deit_hard` in test top-1 (the paper\'s claim): {ours:.2f}% against '
                     f'{deit:.2f}%, ' + (f'**ahead by {ours - deit:.2f} points**' if ours > deit
                                         else f'**not ahead: behind by {deit - ours:.2f} points**'))

    def drop(name: str, source: str) -> str:
        entry = results[name].faithfulness.get(source, {})
        if entry.get('quarter_drop') is None:
            return 'not measured'
        error = entry.get('quarter_drop_se')
        return f"{entry['quarter_drop']:+.1f}" + (f' ± {error:.1f}' if error is not None else '')
    if TEACHER in results:
        teacher = results[TEACHER].faithfulness
        faithful = [source for source in HEADLINE_MAPS if (teacher.get(source, {}).get('quarter_drop') or -1e9)
                    >= FAITHFUL_BAR]
        lines.append(f'- the teacher\'s maps faithful (a quarter drop of at least {FAITHFUL_BAR:g} points on the test '
                     f'images, patches {REMOVED_AS[HEADLINE_PROTOCOL]}): ' + ', '.join(f'{source} {drop(TEACHER, source)}' for source in HEADLINE_MAPS)
                     + (f"; **reached** by {', '.join(faithful)}" if faithful else '; **not reached** by any map'))
    if best_attention is not None and 'deit_hard' in results:
        def verdict_of(source: str) -> str:
            ours, deit = (results[name].faithfulness.get(source, {}).get('quarter_drop')
                          for name in (best_attention, 'deit_hard'))
            if ours is None or deit is None:
                return ''
            return ' (as faithful or more)' if ours >= deit else ' (**less faithful**)'
        comparisons = [f'{source}: `{best_attention}` {drop(best_attention, source)}, `deit_hard` '
                       f'{drop("deit_hard", source)}{verdict_of(source)}' for source in HEADLINE_MAPS]
        lines.append('- the best ADViT student\'s maps at least as faithful as the DeiT student\'s (quarter drops, '
                     f'points, patches {REMOVED_AS[HEADLINE_PROTOCOL]}): ' + '; '.join(comparisons))
    return f'{GOALS_START} (recipe `{recipe}`), on the test set:\n\n' + '\n'.join(lines) + '\n'


TABLE1_COLUMNS = [
    ('run', 'run'), ('model', 'model'), ('method', 'method'), ('loss', 'loss'), ('val', 'val top-1 (%)'),
    ('top1', 'test top-1 (%)'), *FAITHFULNESS_COLUMNS, ('paper', 'paper top-1 (%)'), ('params_m', 'params (M)'),
    ('steps', 'steps'), ('seconds', 'training (s)'), ('weights', 'weights shipped')]


def table1_row(name: str, result: RunResult, status: dict[str, Any], shipped: bool) -> dict[str, Any]:
    """A run's row of the card's Table 1 (``TABLE1_COLUMNS``).

    Args:
        name: The run's name in the bundle.
        result: Its figures (``report.load_run``).
        status: Its ``status.json`` (steps and training time).
        shipped: Whether its weights are in the bundle.
    """
    return dict(run=name, model=result.model, method=result.method, loss=result.loss, val=result.val_top1,
                top1=result.top1, **{headline_key(source): result.faithfulness.get(source, {}).get('quarter_drop')
                                     for source in HEADLINE_MAPS}, paper=_paper_top1(name, result),
                params_m=result.params / 1e6, steps=status.get('step'), seconds=status.get('elapsed'),
                weights='yes' if shipped else 'no (evaluation only)')


def ship_students(run: Path, out: Path, device: str = 'auto', max_mb: float = MAX_MB) -> list[str]:
    """Add students of the bundle's own seed trained after it (a method it did not have) to the bundle: their
    weights exported and evaluated as the bundle's are, their probes, a Table 1 row each with a note of how they
    were trained, and the card's sections over seeds, faithfulness and goals brought up to date; return their names.

    Args:
        run: A group run folder of ``scripts/train_seeds.sh 0`` (one subfolder per method), on the bundle's teacher,
            with its recipe and steps.
        out: The bundle folder.
        device: Where the exported weights are evaluated.
        max_mb: The bundle's size limit; over it, nothing is added.
    """
    students = [run / name for name in STUDENTS if RunFolder(run / name).config_file.is_file()]
    if not students:
        raise BundleError(f'{run} holds no student run of {", ".join(STUDENTS)}')
    present = [s.name for s in students if evaluation_paths(out / f'{s.name}.safetensors')[0].is_file()]
    if present:
        raise BundleError(f'the bundle already has {", ".join(present)}: its own seed\'s students are not replaced')
    unfinished = [s.name for s in students if not RunFolder(s).finished()]
    if unfinished:
        raise BundleError(f'{run}: not finished: {", ".join(unfinished)}')
    teacher = out / f'{TEACHER}.safetensors'
    foreign = [s.name for s in students if not Path(RunFolder(s).config().get('teacher') or '')
               .resolve() == teacher.resolve()]
    if foreign:
        raise BundleError(f'{", ".join(foreign)} in {run} did not learn from the bundle\'s teacher {teacher}')
    check_same_training(run, students, out)
    added, test_sets = [], {}
    try:
        for student in students:
            _export_weights(student, out / f'{student.name}.safetensors', device, test_sets, teacher)
            added += [*evaluation_paths(out / f'{student.name}.safetensors'), out / f'{student.name}.safetensors']
            if (student / PROBE_FILE).is_file():
                _copy(student / PROBE_FILE, shipped_probe(out / f'{student.name}.safetensors'))
                added.append(shipped_probe(out / f'{student.name}.safetensors'))
        size = sum(path.stat().st_size for path in out.rglob('*') if path.is_file())
        if size > max_mb * 1e6:
            raise BundleError(f'with {", ".join(s.name for s in students)} the bundle would be {size / 1e6:.1f} MB, '
                              f'over its {max_mb:g} MB limit: nothing added')
    except BaseException:
        for path in added:
            path.unlink(missing_ok=True)
        raise
    _add_table1_rows(out, students)
    refresh_seeds(out)
    refresh_faithfulness(out)  # Table 1's new rows' faithfulness, the sections, then the goals
    return [s.name for s in students]


def _add_table1_rows(out: Path, students: list[Path]) -> None:
    """The card's Table 1 with a row for each of ``students`` (exported into ``out``) and a line on how they
    were trained; their names taken off the card's list of runs not in the bundle."""
    rows = [table1_row(s.name, checkpoint_result(out / f'{s.name}.safetensors',
                                                 read_evaluation(out / f'{s.name}.safetensors') or {},
                                                 path=out / f'{s.name}.safetensors', seed=BUNDLE_SEED),
                       RunFolder(s).status(), True) for s in students]
    lines = (out / CARD).read_text().split('\n')
    start = lines.index(next(line for line in lines if line.startswith('## Table 1'))) + 2
    end = next(index for index in range(start, len(lines)) if not lines[index].startswith('|'))
    header = [cell.strip() for cell in lines[start].strip('|').split('|')]
    keys = {title: key for key, title in TABLE1_COLUMNS}  # the card's own order of columns
    new_rows = markdown_table(rows, [(keys[title], title) for title in header]).rstrip('\n').split('\n')[2:]
    names = ', '.join(f'`{s.name}`' for s in students)
    note = (f'{names} joined the bundle later: trained on the shipped teacher with the students\' recipe and number '
            'of steps and the same seed (`scripts/train_seeds.sh 0`), in a run of its own, so not on the very same '
            'batches as the others.')
    missing = [i for i, line in enumerate(lines) if line.startswith('Not finished, so not in the bundle:')]
    for index in missing:
        left = [name for name in lines[index].split(':', 1)[1].strip(' .').split(', ')
                if name.strip('`') not in {s.name for s in students}]
        lines[index] = f"Not finished, so not in the bundle: {', '.join(left)}." if left else ''
    lines[end:end] = new_rows + ['', note]
    with atomic_path(out / CARD) as tmp:
        tmp.write_text('\n'.join(lines))


def model_card(runs: Path, out: Path, names: list[str], shipped: list[str], best: str | None, files_size: int,
               max_mb: float = MAX_MB, sweep: list[dict[str, Any]] | None = None, sweep_notes: str | None = None,
               recipe: str = RECIPE) -> str:
    """The bundle's README: setting, Tables 1 and 2 beside the paper's, and how every run was made.

    Args:
        runs: Folder of the run folders.
        out: The bundle folder, holding each run's ``NAME.eval.json``.
        names: The exported runs (finished).
        shipped: Those whose weights are in the bundle.
        best: The best ADViT run (chosen on validation), if any.
        files_size: Bytes of the bundle's files other than the card.
        max_mb: The bundle's size limit.
        sweep: Records of ``scripts/cpu_sweep.py`` (the short runs behind the recipe), if any.
        sweep_notes: The file that reasons from them to the recipe, if any.
        recipe: The presets' family the runs were trained by (its ``GOALS``).
    """
    results = {name: load_run(runs / name, evaluation_paths(out / f'{name}.safetensors')[0]) for name in names}
    configs = {name: RunFolder(runs / name).config() for name in names}
    students = [name for name in names if name != TEACHER]
    return '\n'.join([
        _card_intro(configs, read_evaluation(out / f'{names[0]}.safetensors') or {}),
        _table1_section(runs, out, results, configs=configs, shipped=shipped, best=best, max_mb=max_mb,
                        recipe=recipe),
        seeds_section(out),
        faithfulness_section(out, names),
        protocols_section(out, names),
        _table2_section(results, best),
        '## Learning curves: validation top-1 (%) at each evaluation\n',
        _curves(runs, [name for name in names if name == TEACHER]),
        _curves(runs, students) if students else '',
        _sweep_section(sweep, sweep_notes) if sweep else '',
        _how_made_section(runs, names, shipped, files_size),
        history_section(out)])


def _card_intro(configs: dict[str, dict[str, Any]], evaluation: dict[str, Any]) -> str:
    """The card's opening: what the models are, where and with what they were made, which split each number is on,
    and how far this is from the paper's setting."""
    versions = sorted({f"torch {c['versions']['torch']}, timm {c['versions']['timm']}"
                       for c in configs.values() if 'versions' in c})
    versions = versions or [f'torch {torch.__version__}, timm {timm.__version__}']
    machines = list(dict.fromkeys(name for c in configs.values() for name in c.get('machines', [])))
    made_on = (f"Trained on **{'**, then **'.join(machines)}**" if machines
               else f'Made on **{machine()}** (the runs do not record where they trained)')
    val_sizes = sorted({c.get('val_size') for c in configs.values()}, key=str)
    data = next(iter(configs.values())).get('data', '?')
    return f'''# ADViT Studio checkpoint bundle

CIFAR-10 classifiers for the app: a ViT teacher and ViT students trained from it by each method of
the ADViT paper, all **from scratch at 32x32** (an 8x8 grid of patch tokens) on `{data}` (CIFAR-10,
JPEG q75 copy). {made_on} with {'; '.join(versions)}.

**Which split each number is on.** {', '.join(str(v) for v in val_sizes)} training images are held out
as a validation split (the same images for every run); every checkpoint choice (each run's `best`,
and the best ADViT student shipped) is made on it ("val top-1"). The test set
({evaluation.get('count', '?')} images) is evaluated once per run, on the chosen checkpoint ("test top-1").

**Not the paper's setting.** The paper fine-tunes ImageNet-pretrained timm ViTs at 224x224 for 300
epochs on GPUs, with a ViT-Base teacher ({PAPER_TEACHER_TOP1}%); here every model starts from random
weights at 32x32 and trains for minutes to hours on a CPU, and the models are small conv-stem ViTs
sized to that budget.
The paper's numbers stand beside ours to compare the ranking of the methods, not the accuracies. The
paper's ADViT-KL is `advit_kl_paper`; `advit_kl` (KL on the maps themselves) is this project's.
'''


def _table1_section(runs: Path, out: Path, results: dict[str, RunResult], configs: dict[str, dict[str, Any]],
                    shipped: list[str], best: str | None, max_mb: float, recipe: str) -> str:
    """Table 1 with what the rows share, the goals' account (the ``recipe``'s), and what the bundle's files are."""
    status = {name: RunFolder(runs / name).status() for name in results}
    table1 = markdown_table([table1_row(name, result, status[name], name in shipped)
                             for name, result in results.items()], TABLE1_COLUMNS)
    students = [name for name in results if name != TEACHER]
    differing = differing_fields([configs[name] for name in students],
                                 ignored=fields_with_role('output', 'student'))
    together = len(students) > 1 and all(configs[name].get('group') == configs[students[0]].get('group')
                                         and configs[name].get('group') for name in students)
    same_text = ('The students\' settings (`config.json`) are the same apart from the method and teacher: same '
                 'length, schedule, augmentation and seed' + (
                     ', and they were trained together in one process on the very same batches (order, '
                     'augmentation, mixing), one teacher forward per batch shared by all.' if together else '.')
                 if not differing else f'The students\' settings differ in {", ".join(differing)}: '
                 'they are not compared like for like.')
    missing = [name for name in (TEACHER, *STUDENTS) if name not in results and (runs / name).is_dir()]  # begun only
    missing_text = f"Not finished, so not in the bundle: {', '.join(f'`{name}`' for name in missing)}.\n" \
        if missing else ''
    unshipped_text = '' if len(shipped) == len(results) else (
        'The runs without shipped weights keep their evaluation (`NAME.eval.json`, `NAME.predictions.npz`) '
        f'to keep the bundle under {max_mb:g} MB.\n')
    recipe_text = (f"`{RECIPE_FILE}` holds the students' shared settings and the number of steps they trained, which "
                   '`scripts/train_seeds.sh` replays for further seeds.\n' if (out / RECIPE_FILE).is_file() else '')
    return f'''## Table 1: top-1 per method

{table1}
{missing_text}{same_text}

{goals_account(results, best, recipe)}

Weights are fp16 safetensors (`NAME.safetensors`); the top-1 of a shipped model is the fp16 file's.
{unshipped_text}"paper top-1" is the paper's ViT-Base teacher for ours, and its ViT-Tiny student by the same
method for each of our students. `NAME.probe.npz` holds each run's attention gap to the teacher,
per layer, at every evaluation, on 256 held-out training images, and the maps of 8 of them.
{recipe_text}'''


def _table2_section(results: dict[str, RunResult], best: str | None) -> str:
    """Table 2: per-class top-1 of DeiT and the best ADViT student."""
    if 'deit_hard' in results and best is not None:
        a, b = results['deit_hard'], results[best]
        table2_text = (f'Per-class test top-1 (%) of DeiT (`deit_hard`) and the best ADViT student (`{best}`, '
                       'chosen on validation):\n\n' + markdown_table(table2(a, b), table2_columns(a, b)))
    else:
        table2_text = 'Not made: it needs the `deit_hard` run and an ADViT run.\n'
    return ('## Table 2: per class\n\n' + table2_text + '\nThe paper\'s Table 2 makes this comparison at 224x224 '
            'with pretrained students; its per-class numbers\nare not repeated here.\n')


def _sweep_section(sweep: list[dict[str, Any]], notes: str | None) -> str:
    """The short runs behind the recipe (``scripts/cpu_sweep.py``), and where the choice is reasoned."""
    reasoned = f'The choice made from them, and why: `{notes}` in the project.\n' if notes else ''
    return ('## The sweep behind the recipe\n\nShort runs of `scripts/cpu_sweep.py` on one machine before the '
            'bundle was trained, each model alone (method `vit`) for the budget in its row (a wall time, or a '
            'number of steps), compared on the validation images (quarter drops on its 256 probe images, about '
            '±3 points of noise); one seed each, so differences of a point are noise:\n\n' + _sweep_table(sweep)
            + '\n' + reasoned)


def _how_made_section(runs: Path, names: list[str], shipped: list[str], files_size: int) -> str:
    """The commands the script ran, each run's sittings, and the bundle's files."""
    commands = (runs / COMMANDS).read_text().splitlines() if (runs / COMMANDS).is_file() else []
    command_rows = [dict(zip(('run', 'wall', 'command'), line.split('\t', 2))) for line in commands if line.strip()]
    for row in command_rows:
        row['command'] = f"`{row['command'].strip()}`"
    runs_text = markdown_table(command_rows, [('run', 'run'), ('wall', 'wall time (s)'), ('command', 'command')]) \
        if command_rows else f'No `{COMMANDS}` in `{runs}`: the runs were not made by `scripts/train_bundle.sh`.\n'
    return f'''## How it was made

`scripts/train_bundle.sh` ran these commands (wall time includes start-up and evaluation), then
`advit bundle`:

{runs_text}{sessions_text(runs, names)}
Bundle: {len(shipped)} weight files, {len(names)} evaluations, {files_size / 1e6:.1f} MB without this card.
'''
