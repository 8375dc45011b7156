"""The shipped bundle's card brought up to date from the bundle's own files (its run folders may be gone)."""
from __future__ import annotations

import json
import shutil

from advit.results.bundle import GOALS, GOALS_START, refresh_goals
from conftest import REPO

SHIPPED = REPO / 'checkpoints'


def split_at_account(card: str) -> tuple[list[str], list[str], list[str]]:
    """A card's lines before the goals account, the account (its heading line, a blank, its list), and after."""
    lines = card.split('\n')
    begin = next(index for index, line in enumerate(lines) if line.startswith(GOALS_START))
    end = lines.index('', begin + 2)
    return lines[:begin], lines[begin:end], lines[end:]


def test_the_goals_account_is_rewritten_from_the_bundles_files_in_place(tmp_path):
    bundle = tmp_path / 'checkpoints'
    shutil.copytree(SHIPPED, bundle)
    card = (bundle / 'README.md').read_text()
    old_before, _, old_after = split_at_account(card)
    # A stale account, as an earlier version wrote it (one line), is replaced by the whole one.
    (bundle / 'README.md').write_text('\n'.join(old_before + [f'{GOALS_START}: 99% reached'] + old_after))
    refresh_goals(bundle)
    refreshed = (bundle / 'README.md').read_text()
    before, account, after = split_at_account(refreshed)
    teacher = json.loads((bundle / 'teacher.eval.json').read_text())['top1']
    assert account[2] == f"- teacher test top-1 at least {GOALS['teacher']:g}%: {teacher:.2f}%, **" + \
        ('reached**' if teacher >= GOALS['teacher'] else 'not reached**')
    assert account[3].startswith(f"- best student test top-1 at least {GOALS['best student']:g}%")
    assert account[4].startswith("- the teacher's maps faithful") and 'gradient rollout' in account[4]
    assert account[5].startswith("- the best ADViT student's maps at least as faithful as the DeiT student's")
    # Everything else is kept as it was, and a second refresh changes nothing.
    assert (before, after) == (old_before, old_after) and '99%' not in refreshed
    refresh_goals(bundle)
    assert (bundle / 'README.md').read_text() == refreshed


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
