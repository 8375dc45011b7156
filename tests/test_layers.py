"""The package's layers: core, measure, training, results, the app. A module imports only from its own layer
and the layers below it, and only the app's package imports gradio, plotly or matplotlib, so that the
training core installs and runs without the app's extras."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LAYERS = ('core', 'measure', 'training', 'results', 'app')  # each may import those before it
APP_ONLY = {'gradio', 'plotly', 'matplotlib'}
MODULES = sorted((REPO / 'advit').rglob('*.py'))


def imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import in a file, those inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ''))
    return found


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(REPO / 'advit').parts
    return parts[0] if len(parts) > 1 else None  # None: the package's top (cli, __init__, __main__)


def imported_layer(path: Path, level: int, module: str) -> str | None:
    if level == 0:
        parts = module.split('.')
        return parts[1] if parts[0] == 'advit' and len(parts) > 1 and parts[1] in LAYERS else None
    base = path.parent
    for _ in range(level - 1):
        base = base.parent
    target = (base / module.replace('.', '/')).relative_to(REPO / 'advit').parts
    return target[0] if target and target[0] in LAYERS else None


def test_every_module_sits_in_a_layer_and_every_layer_is_a_package():
    top = {path.name for path in (REPO / 'advit').glob('*.py')}
    assert top == {'__init__.py', '__main__.py', 'cli.py'}, 'a module outside the layers'
    assert {path.name for path in (REPO / 'advit').iterdir() if path.is_dir() and path.name != '__pycache__'} \
        == set(LAYERS)


@pytest.mark.parametrize('path', [p for p in MODULES if layer_of(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_imports_only_its_own_layer_and_those_below(path):
    own = LAYERS.index(layer_of(path))
    for level, module in imports(path):
        target = imported_layer(path, level, module)
        if target is not None:
            assert LAYERS.index(target) <= own, f'{path.name} ({LAYERS[own]}) imports {module} ({target}): upwards'
        if layer_of(path) != 'app':
            assert module.split('.')[0] not in APP_ONLY, f'{path.name} imports {module}: the app\'s package only'


def test_the_training_core_imports_and_trains_without_the_apps_extras(tmp_path):
    """Every module below the app imports, and `advit` answers, in an interpreter where gradio, plotly and
    matplotlib cannot be imported (as after `pip install advit` without the app extra)."""
    below_app = [
        '.'.join(path.relative_to(REPO).with_suffix('').parts) for path in MODULES
        if layer_of(path) not in (None, 'app') and path.name != '__init__.py']
    code = f'''
import importlib.abc, sys
class NoAppExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {sorted(APP_ONLY)!r}:
            raise ImportError(f'{{name}} is not installed')
sys.meta_path.insert(0, NoAppExtras())
import importlib
for name in {below_app!r}:
    importlib.import_module(name)
from advit.cli import main
sys.exit(main(['train', '--help']))
'''
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '--methods' in result.stdout


def test_no_function_over_80_lines_and_no_class_over_300_in_the_package():
    """Issue #38's size rule, held: a reader takes in any function on a screen or two."""
    import ast
    found = []
    for path in sorted((REPO / 'advit').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, 'lineno') else 0
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > 80 or \
                    isinstance(node, ast.ClassDef) and lines > 300:
                found.append(f'{path.relative_to(REPO)}: {node.name} ({lines} lines)')
    assert found == []
