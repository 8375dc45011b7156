"""The README's module table says of each module what the module's own first docstring line says."""
from __future__ import annotations

import ast
import re

from conftest import REPO


def test_the_module_table_is_each_modules_first_docstring_line():
    readme = (REPO / 'README.md').read_text()
    table = dict(re.findall(r'^\| `(advit/\w+\.py)` \| (.+) \|$', readme, re.M))
    modules = {}
    for path in sorted((REPO / 'advit').glob('*.py')):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, f'{path.name} has no docstring'
        modules[f'advit/{path.name}'] = docstring.splitlines()[0].replace('``', '`')
    assert table == modules
