"""Tables 1 and 2 over seeds: the bundle's students and those of further seeds, from their evaluation files.

The bundle ships its students' evaluations as ``NAME.eval.json`` (seed ``BUNDLE_SEED``, the training
default). Further seeds of the same recipe on the shipped teacher (``scripts/train_seeds.sh``) keep
only their evaluations, never their weights: ``seeds/seed<N>/NAME.eval.json`` in the bundle folder
(``add_seeds``). They replay the students' settings the bundle records (``RECIPE_FILE``, written by
``advit bundle``), not a preset's of today, so that the seed is the only difference. Each method's test top-1 and map faithfulness are then given as mean and standard
deviation over its seeds, as is each class's top-1 of DeiT and of the best ADViT student (chosen on
validation, from the shipped checkpoints); a difference between two methods is said to exceed the spread
only when it is larger than the sum of their standard deviations (two seeds each at least).
"""
from __future__ import annotations

import re
import shutil
import statistics
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.io import atomic_path, read_json, write_json
from ..measure.evaluate import evaluation_paths, read_evaluation
from ..measure.removal import PROTOCOLS
from ..measure.verdicts import HEADLINE_MAPS, HEADLINE_PROTOCOL, headline, headline_key
from ..training.run_folder import RECORD_KEYS, RunFolder
from ..training.train import TrainConfig, fields_with_role
from .report import markdown_table

BUNDLE_SEED = 0  # scripts/train_bundle.sh passes no --seed: the bundle's runs have TrainConfig's default
SEEDS_DIR = 'seeds'
SEED_RECORD = 'seed.json'  # in seeds/seed<N>/: the seed's steps and, per training of its students, time and machines
RECIPE_FILE = 'students.recipe.json'  # the students' shared settings, which scripts/train_seeds.sh replays
TRAINED_STEPS = 'steps'  # the steps the students trained, as TrainConfig's own key: `--config` gives a seed as many
# What each student or each run sets for itself (the script gives them), what never changes learning, and
# config.json's bookkeeping.
# The students a seed record that does not list its methods trained together: the bundle's six of that time.
STUDENTS_BEFORE = ('vit', 'deit_hard', 'advit_l1', 'advit_l2', 'advit_kl', 'advit_kl_paper')
NOT_RECIPE = fields_with_role('output', 'student', 'data', 'length', 'seed', 'runtime') | RECORD_KEYS
_SEED_FOLDER = re.compile(r'seed(\d+)')


class SeedError(ValueError):
    """Seed runs that cannot join the bundle's table (unfinished, the bundle's own seed, mixed seeds)."""


@dataclass
class MethodSeeds:
    """One method's results over its seeds."""
    method: str
    seeds: list[int] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    # removal protocol -> headline map -> quarter drops (a seed whose file lacks a protocol has none there)
    faithfulness: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    per_class: dict[str, list[float]] = field(default_factory=dict)  # class -> its test top-1 per seed

    def add(self, seed: int, evaluation: dict) -> None:
        self.seeds.append(seed)
        self.top1.append(float(evaluation['top1']))
        for name, score in (evaluation.get('per_class') or {}).items():  # None: no test image of the class
            self.per_class.setdefault(name, []).extend([] if score is None else [float(score)])
        for protocol in PROTOCOLS:
            for source, entry in headline(evaluation, protocol).items():
                if entry['quarter_drop'] is not None:
                    self.faithfulness.setdefault(protocol, {}).setdefault(source, []).append(float(entry['quarter_drop']))

    def drops(self, source: str, protocol: str = HEADLINE_PROTOCOL) -> list[float]:
        """The quarter drops of one headline map under one removal protocol, over the seeds that measured it."""
        return self.faithfulness.get(protocol, {}).get(source, [])


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _seed_folders(bundle: Path) -> list[tuple[int, Path]]:
    """(seed, folder) of the bundle's further seeds, in seed order."""
    return sorted((int(match.group(1)), path) for path in (bundle / SEEDS_DIR).glob('seed*')
                  if path.is_dir() and (match := _SEED_FOLDER.fullmatch(path.name)))


def collect(bundle: Path, methods: list[str]) -> dict[str, MethodSeeds]:
    """Each method's evaluations in ``bundle``: its shipped file (seed ``BUNDLE_SEED``) and every
    ``seeds/seed<N>/`` file, in seed order.

    Args:
        bundle: The bundle folder.
        methods: The student methods, in the table's order.
    """
    found = {method: MethodSeeds(method) for method in methods}
    for seed, folder in [(BUNDLE_SEED, bundle)] + _seed_folders(bundle):
        for method in methods:
            evaluation = read_evaluation(folder / f'{method}.safetensors')
            if evaluation is not None and 'top1' in evaluation:
                found[method].add(seed, evaluation)
    return {method: entry for method, entry in found.items() if entry.seeds}


def seeds_table(found: dict[str, MethodSeeds]) -> str:
    """Markdown: Table 1 over seeds (test top-1 and each headline map's quarter drop, mean ± standard
    deviation), then each ADViT method against ``deit_hard`` and ``vit``, and whether the difference
    exceeds the spread.

    Args:
        found: Each method's results over its seeds (``collect``), in the table's order.
    """
    if not found:
        return 'No evaluated students.\n'
    rows = []
    for entry in found.values():
        mean, std = _mean_std(entry.top1)
        row = dict(method=entry.method, seeds=entry.seeds, top1=mean, top1_std=std)
        for source in HEADLINE_MAPS:
            row[headline_key(source)], row[headline_key(source) + '_std'] = _mean_std(entry.drops(source))
        rows.append(row)
    table = markdown_table(rows, [('method', 'method'), ('seeds', 'seeds'), ('top1', 'test top-1 (%)'),
                                  ('top1_std', '± std'), *[column for source in HEADLINE_MAPS for column in (
                                      (headline_key(source), f'faithfulness, {source} (pts)'),
                                      (headline_key(source) + '_std', '± std'))]])
    comparisons = [_difference(found[ours], found[base]) for ours in found if ours.startswith('advit_')
                   for base in ('deit_hard', 'vit') if base in found]
    return table + ('\n' + '\n'.join(comparisons) + '\n' if comparisons else '')


def protocols_table(found: dict[str, MethodSeeds]) -> str:
    """Markdown: each method's last-layer map and gradient rollout under every removal protocol, mean and standard
    deviation of the quarter drop over its seeds, then the last layer's differences that the goals ask about (each
    ADViT method against ``deit_hard``, ``advit_relevance`` against ``advit_l1`` too) per protocol.

    Args:
        found: Each method's results over its seeds (``collect``), in the table's order.
    """
    maps = (HEADLINE_MAPS[0], HEADLINE_MAPS[-1])
    rows, columns = [], [('method', 'method')]
    for protocol in PROTOCOLS:
        for source in maps:
            key = f'{protocol}_{headline_key(source)}'
            columns += [(key, f'{source}, {protocol} (pts)'), (key + '_std', '± std'), (key + '_n', 'seeds')]
    for entry in found.values():
        row = dict(method=entry.method)
        for protocol in PROTOCOLS:
            for source in maps:
                key, values = f'{protocol}_{headline_key(source)}', entry.drops(source, protocol)
                (row[key], row[key + '_std']), row[key + '_n'] = _mean_std(values), len(values) or None
        rows.append(row)
    pairs = [(ours, base) for ours in found if ours.startswith('advit_') for base in ('deit_hard', 'advit_l1')
             if base in found and ours != base and (base == 'deit_hard' or ours == 'advit_relevance')]
    lines = [_drop_difference(found[ours], found[base], HEADLINE_MAPS[0]) for ours, base in pairs]
    return markdown_table(rows, columns) + ('\n' + '\n'.join(lines) + '\n' if lines else '')


def _drop_difference(ours: MethodSeeds, base: MethodSeeds, source: str) -> str:
    """One line: under each protocol, the difference of one map's mean quarter drops and whether it exceeds the
    two spreads added."""
    parts = []
    for protocol in PROTOCOLS:
        a, b = ours.drops(source, protocol), base.drops(source, protocol)
        if not a or not b:
            parts.append(f'{protocol}: not measured for both')
            continue
        exceeds = _exceeds(a, b)
        told = 'spread not known' if exceeds is None else ('exceeds the spread' if exceeds else 'within the spread')
        parts.append(f'{protocol} {statistics.mean(a) - statistics.mean(b):+.1f} points ({told})')
    return f'- `{ours.method}` - `{base.method}`, {source} map\'s quarter drop: ' + '; '.join(parts)


def _exceeds(ours: list[float], base: list[float]) -> bool | None:
    """Whether the difference of the means is larger than the two standard deviations added (None: a spread
    is not known, one value of either)."""
    (mean_a, std_a), (mean_b, std_b) = _mean_std(ours), _mean_std(base)
    return None if std_a is None or std_b is None else abs(mean_a - mean_b) > std_a + std_b


def _difference(ours: MethodSeeds, base: MethodSeeds) -> str:
    """One line: the difference of mean test top-1 and whether it exceeds the two spreads added."""
    (mean_a, std_a), (mean_b, std_b) = _mean_std(ours.top1), _mean_std(base.top1)
    head = f'- `{ours.method}` - `{base.method}`: {mean_a - mean_b:+.2f} points of test top-1'
    exceeds = _exceeds(ours.top1, base.top1)
    if exceeds is None:
        return head + ' (one seed of one of them: the spread is not known, so the difference is not told from noise)'
    return head + (f', {"exceeds" if exceeds else "within"} the spread (± {std_a:.2f} and ± {std_b:.2f} over '
                   f'{len(ours.seeds)} and {len(base.seeds)} seeds)')


def per_class_table(found: dict[str, MethodSeeds], base: str, ours: str) -> str:
    """Markdown: Table 2 over seeds, each class's test top-1 of ``base`` and ``ours`` as mean ± standard
    deviation over their seeds, the difference of the means, and whether it exceeds the two spreads added
    ('' where either has no evaluation).

    Args:
        found: Each method's results over its seeds (``collect``).
        base: The method compared against (``deit_hard``).
        ours: The ADViT method.
    """
    if base not in found or ours not in found:
        return ''
    rows = []
    for name in found[base].per_class:
        a, b = found[base].per_class[name], found[ours].per_class.get(name, [])
        (mean_a, std_a), (mean_b, std_b) = _mean_std(a), _mean_std(b)
        exceeds = _exceeds(b, a)
        rows.append({'class': name, 'a': mean_a, 'a_std': std_a, 'b': mean_b, 'b_std': std_b,
                     'difference': None if mean_a is None or mean_b is None else mean_b - mean_a,
                     'exceeds': None if exceeds is None else ('yes' if exceeds else 'no')})
    return markdown_table(rows, [('class', 'class'), ('a', f'{base} (%)'), ('a_std', '± std'), ('b', f'{ours} (%)'),
                                 ('b_std', '± std'), ('difference', 'difference'), ('exceeds', 'exceeds the spread')])


def seed_trainings(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A seed record's trainings, each its ``methods`` (None: the bundle's students, as a record of before
    students were added to a seed says), ``train_s`` and ``machines``."""
    if 'trainings' in record:
        return record['trainings']
    return [dict(methods=None, train_s=record.get('train_s', 0.0), machines=record.get('machines') or [])]


def seed_runs(bundle: Path) -> str:
    """Markdown: one line per further seed in ``bundle``, how it was trained (its ``SEED_RECORD``)."""
    lines = []
    for seed, folder in _seed_folders(bundle):
        record = read_json(folder / SEED_RECORD)
        if record is None:
            lines.append(f'- seed {seed}: not recorded how it was trained')
            continue
        trainings, recorded = [], seed_trainings(record)
        for index, training in enumerate(recorded):
            where = ', then '.join(training['machines']) or 'a machine not recorded'
            trainings.append(f"{_trained(training, recorded[index + 1:])} in {training['train_s'] / 60:.0f} minutes "
                             f"(evaluations included) on {where}")
        lines.append(f"- seed {seed}: {record['steps']} steps; " + '; '.join(trainings))
    return '\n'.join(lines) + '\n' if lines else ''


def _trained(training: dict[str, Any], later: list[dict[str, Any]]) -> str:
    """Who a seed's training trained, in words: the students whose evaluations it still gives, and those of its
    students trained again by a ``later`` training (their evaluations are that one's)."""
    methods = training['methods'] or list(STUDENTS_BEFORE)
    again = {method for other in later for method in (other['methods'] or STUDENTS_BEFORE)}
    kept, replaced = [m for m in methods if m not in again], [m for m in methods if m in again]
    if not replaced:
        return 'the students together' if training['methods'] is None else (
            ', '.join(f'`{m}`' for m in methods) + (' together' if len(methods) > 1 else ' alone'))
    if not kept:
        return ', '.join(f'`{m}`' for m in methods) + ', every one trained again later'
    return (', '.join(f'`{m}`' for m in kept) + ' (trained together with ' + ', '.join(f'`{m}`' for m in replaced) +
            ', whose evaluations are of their later training)')


def seeds_tables(bundle: Path, methods: list[str], best: str | None) -> str:
    """Markdown: how each further seed was trained (``seed_runs``), Table 1 over seeds (``seeds_table``),
    then Table 2 over seeds (``per_class_table``) of ``deit_hard`` and the best ADViT student where the
    bundle has both.

    Args:
        bundle: The bundle folder.
        methods: The student methods, in the table's order.
        best: The bundle's best ADViT student, chosen on validation (None: no Table 2).
    """
    found = collect(bundle, methods)
    table2 = per_class_table(found, 'deit_hard', best) if best is not None else ''
    runs = seed_runs(bundle)
    return (runs + '\n' if runs else '') + seeds_table(found) + (
        '\nThe maps\' faithfulness under every removal protocol (a patch\'s pixels set to the mean, its token dropped, '
        'its pixels blurred: `advit/measure/removal.py`), over the seeds that measured each:\n\n'
        + protocols_table(found)) + (
        f'\nPer-class test top-1 over seeds (Table 2) of DeiT (`deit_hard`) and the best ADViT student (`{best}`, '
        f'chosen on validation):\n\n{table2}' if table2 else '')


def students_recipe(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings the students of one run share (their ``config.json`` less ``NOT_RECIPE``).

    Args:
        configs: The students' saved configurations.
    """
    # A setting added since a configuration was written reads as its default, as TrainConfig.from_dict reads it.
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(TrainConfig) if f.name not in NOT_RECIPE}
    recipes = [{key: value for key, value in dict(defaults, **config).items() if key not in NOT_RECIPE}
               for config in configs]
    if not recipes:
        raise SeedError('no student configuration to take the recipe from')
    differing = sorted({key for recipe in recipes for key in recipe if recipe.get(key) != recipes[0].get(key)})
    if differing:
        raise SeedError(f'the students do not share one recipe: they differ in {", ".join(differing)}')
    return recipes[0]


def trained_steps(students: list[Path]) -> set[int | None]:
    """The steps the students' runs trained, as their status says (one value for students trained together)."""
    return {RunFolder(run).status().get('step') for run in students}


def write_recipe(students: list[Path], bundle: Path) -> Path:
    """Record the students' shared settings in the bundle (``RECIPE_FILE``), for further seeds to replay, with
    the number of steps they trained (``TRAINED_STEPS``, from their status: not the step of the checkpoint
    chosen on validation, and a step count, not a time budget, which a slower CPU would turn into fewer steps).

    Args:
        students: The students' run folders.
        bundle: The bundle folder.
    """
    recipe = students_recipe([RunFolder(run).config() for run in students])
    steps = trained_steps(students)
    if len(steps) != 1 or not isinstance(next(iter(steps)), int):
        raise SeedError(f'the students did not train one number of steps: {sorted(map(str, steps))}')
    path = bundle / RECIPE_FILE
    write_json(path, dict(recipe, **{TRAINED_STEPS: steps.pop()}))
    return path


def check_same_training(run: Path, students: list[Path], bundle: Path) -> None:
    """Refuse a seed whose students were not trained as the bundle's were: the recipe it records
    (``RECIPE_FILE``) and as many steps as they trained, so that the seed is the only difference."""
    recipe = read_json(bundle / RECIPE_FILE)
    if recipe is None or TRAINED_STEPS not in recipe:
        raise SeedError(f'the bundle records no students\' settings and steps ({RECIPE_FILE}, written by advit '
                        'bundle): a further seed cannot be shown to differ from its students by the seed alone')
    bundle_steps = recipe.pop(TRAINED_STEPS)
    recipe = students_recipe([recipe])  # read by today's rule: an older file also recorded runtime settings
    theirs = students_recipe([RunFolder(student).config() for student in students])
    differing = sorted(key for key in recipe.keys() | theirs.keys() if recipe.get(key) != theirs.get(key))
    if differing:
        raise SeedError(f'{run} was not trained with the bundle\'s recipe: ' + ', '.join(
            f'{key} {theirs.get(key)!r} (the bundle\'s {recipe.get(key)!r})' for key in differing))
    steps = trained_steps(students)
    if steps != {bundle_steps}:
        raise SeedError(f'{run} trained {", ".join(map(str, sorted(steps, key=str)))} steps, the bundle\'s students '
                        f'{bundle_steps}: a seed takes as many as they did')


def run_seed(run: Path, methods: list[str]) -> int:
    """The seed the students of a group run folder share.

    Args:
        run: A group run folder (one subfolder per method).
        methods: The student methods looked for.
    """
    students = [run / method for method in methods if RunFolder(run / method).config_file.is_file()]
    if not students:
        raise SeedError(f'{run} holds no student run of {", ".join(methods)}')
    seeds = {RunFolder(student).config().get('seed') for student in students}
    if len(seeds) != 1 or not isinstance(next(iter(seeds)), int):
        raise SeedError(f'the students in {run} do not share one seed: {sorted(map(str, seeds))}')
    return seeds.pop()


def add_seeds(runs: list[Path], bundle: Path, methods: list[str]) -> list[Path]:
    """Copy the evaluations of finished seed runs into ``bundle/seeds/seed<N>/`` (no weights), with how each
    seed was trained (``SEED_RECORD``: steps, training time, the machines its runs' configs name); return
    the files written.

    Args:
        runs: Group run folders of ``scripts/train_seeds.sh`` (one subfolder per method), each of one seed.
        bundle: The bundle folder.
        methods: The student methods the bundle's table has.
    """
    written = []
    for run in runs:
        seed = run_seed(run, methods)
        students = [run / method for method in methods if RunFolder(run / method).config_file.is_file()]
        if seed == BUNDLE_SEED:
            raise SeedError(f'{run} has seed {seed}, the bundle\'s own: train further seeds with another --seed')
        unfinished = [student.name for student in students
                      if not RunFolder(student).finished()]
        if unfinished:
            raise SeedError(f'{run}: not finished: {", ".join(unfinished)}')
        check_same_training(run, students, bundle)
        target = bundle / SEEDS_DIR / f'seed{seed}'
        target.mkdir(parents=True, exist_ok=True)
        write_json(target / SEED_RECORD, seed_record(read_json(target / SEED_RECORD), seed, students))
        written.append(target / SEED_RECORD)
        for student in students:
            source = evaluation_paths(RunFolder(student).best)[0]
            copy = evaluation_paths(target / f'{student.name}.safetensors')[0]
            with atomic_path(copy) as tmp:
                shutil.copyfile(source, tmp)
            written.append(copy)
    return written


def seed_record(earlier: dict[str, Any] | None, seed: int, students: list[Path]) -> dict[str, Any]:
    """A seed's ``SEED_RECORD`` with the training of ``students`` (one group run) added to what ``earlier`` says
    of other students of that seed (trained before, in another run), or in its place where it trained them too.

    Args:
        earlier: The seed's record so far, or None.
        seed: The seed.
        students: The run folders of the students trained together.
    """
    statuses = [RunFolder(student).status() for student in students]
    machines = [name for student in students for name in RunFolder(student).config().get('machines', [])]
    methods = [student.name for student in students]
    training = dict(methods=methods, train_s=round(max(status.get('elapsed', 0.0) for status in statuses), 1),
                    machines=list(dict.fromkeys(machines)))
    # An earlier training all of whose students are trained again here is replaced; one of the bundle's first
    # records (methods None: the students together) only by a training of every bundle student.
    others = [t for t in seed_trainings(earlier) if not set(t['methods'] or STUDENTS_BEFORE) <= set(methods)] \
        if earlier else []
    return dict(seed=seed, steps=max(status.get('step', 0) for status in statuses), trainings=[*others, training])
