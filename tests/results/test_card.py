"""The shipped bundle's card brought up to date from the bundle's own files (its run folders may be gone)."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from advit.results.bundle import GOALS, GOALS_START, RECIPE, refresh_goals
from conftest import QUICK_BUNDLE, REPO

SHIPPED = REPO / 'checkpoints'


def split_at_account(card: str) -> tuple[list[str], list[str], list[str]]:
    """A card's lines before the goals account, the account (its heading line, a blank, its list), and after."""
    lines = card.split('\n')
    begin = next(index for index, line in enumerate(lines) if line.startswith(GOALS_START))
    end = lines.index('', begin + 2)
    return lines[:begin], lines[begin:end], lines[end:]


@pytest.mark.parametrize('shipped', [SHIPPED, QUICK_BUNDLE], ids=['shipped', 'quick'])
def test_the_goals_account_is_rewritten_from_the_bundles_files_in_place(tmp_path, shipped):
    """The account of the shipped bundle (its recipe named on the card) and of the quick one it keeps (a card of
    before recipes were named: the quick recipe's goals)."""
    bundle = tmp_path / 'checkpoints'
    shutil.copytree(shipped, bundle)
    card = (bundle / 'README.md').read_text()
    old_before, old_account, old_after = split_at_account(card)
    named = re.match(GOALS_START + r' \(recipe `([\w-]+)`\)', old_account[0])
    recipe = named.group(1) if named else RECIPE
    # A stale account (its list cut to one wrong line) is replaced by the whole one, under the recipe it names.
    (bundle / 'README.md').write_text('\n'.join(old_before + old_account[:2] + ['- 99% reached'] + old_after))
    refresh_goals(bundle)
    refreshed = (bundle / 'README.md').read_text()
    before, account, after = split_at_account(refreshed)
    teacher = json.loads((bundle / 'teacher.eval.json').read_text())['top1']
    goals = GOALS[recipe]
    assert account[0] == (old_account[0] if named else  # a heading of before: now naming the recipe it was read as
                          old_account[0].replace(', on the test set:', f' (recipe `{recipe}`), on the test set:'))
    assert account[2] == f"- teacher test top-1 at least {goals['teacher']:g}%: {teacher:.2f}%, **" + \
        ('reached**' if teacher >= goals['teacher'] else 'not reached**')
    assert account[3].startswith(f"- best student test top-1 at least {goals['best student']:g}%")
    ours, deit = (json.loads((bundle / f'{name}.eval.json').read_text())['top1'] for name in ('advit_l1', 'deit_hard'))
    assert account[4].startswith(f"- `advit_l1` ahead of `deit_hard` in test top-1 (the paper's claim): {ours:.2f}% "
                                 f"against {deit:.2f}%, **" + (f'ahead by {ours - deit:.2f}' if ours > deit
                                                               else f'not ahead: behind by {deit - ours:.2f}'))
    assert account[5].startswith("- the teacher's maps faithful") and 'gradient rollout' in account[5]
    assert account[6].startswith("- the best ADViT student's maps at least as faithful as the DeiT student's")
    # Everything else is kept as it was, and a second refresh changes nothing.
    assert (before, after) == (old_before, old_after) and '99%' not in refreshed
    refresh_goals(bundle)
    assert (bundle / 'README.md').read_text() == refreshed


def test_each_recipe_states_its_own_goals_and_an_unknown_recipe_is_refused(tmp_path):
    from advit.results.bundle import BundleError, bundle_recipes, export_bundle, goals_account
    assert set(GOALS) <= set(bundle_recipes()) and {'bundle', 'long-bundle'} <= set(GOALS)
    assert GOALS['long-bundle'] == {'teacher': 88.0, 'best student': 82.0}  # issue #42's bars
    assert 'sets no test top-1 goals' in goals_account({}, None, 'gpu-bundle')
    with pytest.raises(BundleError, match="unknown bundle recipe 'long'"):
        export_bundle(tmp_path / 'runs', tmp_path / 'out', recipe='long')
    assert not (tmp_path / 'out').exists()


def test_the_card_adds_up_a_run_trained_across_sittings(tmp_path):
    """The long bundle's runs resume across sessions and machines: each sitting a row, and their sums."""
    from advit.core.io import write_json
    from advit.results.bundle import sessions_text
    run = tmp_path / 'teacher'
    run.mkdir()
    write_json(run / 'sessions.json', {'sessions': [
        dict(machine='AMD EPYC, 2 cores, bf16 natively', started=1.8e9, first_step=0, last_step=1200, wall_s=3600.0),
        dict(machine='Intel Xeon, 2 cores, bf16 natively', started=1.8e9 + 86400, first_step=1000, last_step=3000,
             wall_s=2400.5)]})
    text = sessions_text(tmp_path, ['teacher', 'vit'])  # vit: a run from before sittings were recorded
    assert '| teacher | 1 | AMD EPYC, 2 cores, bf16 natively | 2027-01-15 08:00 UTC | 0-1200 | 3600.00 |' in text
    assert '| teacher | all | 2 machine(s) | – | 3200 trained | 6000.50 |' in text
    assert '| vit |' not in text and sessions_text(tmp_path, ['vit']) == ''


def test_a_longer_bundle_keeps_the_one_it_replaces_whole_its_seeds_and_its_history(tmp_path):
    """The long bundle is one seed: the evidence over seeds stays the quick bundle's, kept whole in EARLIER/ with
    its card (the history), and said to be so on the card and the About page."""
    from advit.app.about import about_markdown
    from advit.app.about import METHOD_COLUMNS
    from advit.app.studio import bundle_folders
    from advit.results.bundle import (CARD, EARLIER, BundleError, bundle_results, bundle_seeds_tables,
                                      history_section, keep_earlier, seeds_evidence, seeds_section)
    shipped, out = QUICK_BUNDLE, tmp_path / 'long'
    out.mkdir()
    assert seeds_evidence(out) is None and history_section(out) == '' and bundle_folders(out) == [out]
    kept = keep_earlier(shipped, out)
    assert kept == out / EARLIER and bundle_folders(out) == [out, kept]
    copied = sorted(p.relative_to(kept) for p in kept.rglob('*') if p.is_file())
    assert copied == sorted(p.relative_to(shipped) for p in shipped.rglob('*') if p.is_file())
    assert all((kept / p).read_bytes() == (shipped / p).read_bytes() for p in copied)

    assert seeds_evidence(out) == kept and seeds_evidence(shipped) == shipped
    section = seeds_section(out)
    assert f'kept in `{EARLIER}/`' in section and f'`{EARLIER}/seeds/seed<N>/`' in section
    assert section.endswith(bundle_seeds_tables(shipped))  # the same tables the quick bundle's own card has
    history = history_section(out)
    assert f'`{EARLIER}/{CARD}`' in history
    for name, result in bundle_results(shipped).items():
        assert f'| {name} | {result.top1:.2f} |' in history
    about = about_markdown([], out)
    assert "The earlier bundle's students (the quick recipe" in about
    assert bundle_seeds_tables(shipped, METHOD_COLUMNS) in about
    assert "### The bundle's students over seeds" in about_markdown([], shipped)

    with pytest.raises(BundleError, match='must be written apart from the earlier one'):
        keep_earlier(shipped, shipped)
    with pytest.raises(BundleError, match='must be written apart from the earlier one'):
        keep_earlier(kept, kept / 'inside')
    with pytest.raises(BundleError, match='is not a bundle'):
        keep_earlier(tmp_path / 'nothing', tmp_path / 'new')
    # Written where the shipped bundle is (checkpoints, keeping checkpoints/quick): the earlier one stays as it is.
    files = {p: p.read_bytes() for p in kept.rglob('*') if p.is_file()}
    assert keep_earlier(kept, out) == kept and {p: p.read_bytes() for p in kept.rglob('*') if p.is_file()} == files
