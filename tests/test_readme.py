"""The README's module table says of each package and module what its own first docstring line says."""
from __future__ import annotations

import ast
import re

from conftest import REPO


def test_the_module_table_is_each_packages_and_modules_first_docstring_line():
    readme = (REPO / 'README.md').read_text()
    table = dict(re.findall(r'^\| `(advit/[\w/]+(?:\.py|/))` \| (.+) \|$', readme, re.M))
    entries = {}
    for path in sorted((REPO / 'advit').rglob('*.py')):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, f'{path} has no docstring'
        relative = path.relative_to(REPO).as_posix()
        if path.name == '__init__.py' and path.parent.name != 'advit':
            relative = relative.removesuffix('__init__.py')  # a package: its folder
        entries[relative] = docstring.splitlines()[0].replace('``', '`')
    assert table == entries
