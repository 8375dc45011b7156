"""The paper's reported results (paper.py): its Table 1 in the terms advit trains, reports and shows them by."""
from __future__ import annotations

from advit.app.about import METHOD_COLUMNS
from advit.core.losses import METHODS
from advit.results.paper import PAPER_TEACHER_TOP1, PAPER_TOP1


def test_the_papers_methods_are_ones_advit_trains_and_every_student_has_them_all():
    methods = [set(scores) for scores in PAPER_TOP1.values()]
    assert methods and all(row == methods[0] for row in methods), 'Table 1 has a number for each student and method'
    assert methods[0] <= set(METHODS), 'our runs of the same method are set beside them'
    assert methods[0] <= set(METHOD_COLUMNS), 'the About page has a column for each'


def test_every_figure_is_a_percentage_and_the_teacher_is_above_every_student():
    scores = [score for row in PAPER_TOP1.values() for score in row.values()]
    assert all(0 < score <= 100 for score in [*scores, PAPER_TEACHER_TOP1])
    assert PAPER_TEACHER_TOP1 > max(scores)
