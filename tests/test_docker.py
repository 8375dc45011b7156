"""The Dockerfile's steps, played without Docker (scripts/check_docker.py), end in a serving app."""
from __future__ import annotations

import subprocess
import sys

from app_server import free_port
from conftest import REPO


def test_dockerfile_steps_install_and_start_the_app():
    result = subprocess.run([sys.executable, 'scripts/check_docker.py', '--port', str(free_port())], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert 'OK: the page is ADViT Studio and serves /attention and /compare' in result.stdout
    assert 'RUN pip install --no-cache-dir --user -r requirements.txt' in result.stdout


def test_dockerignore_keeps_runs_caches_and_tests_out_of_the_image(tmp_path):
    sys.path.insert(0, str(REPO / 'scripts'))
    try:
        from check_docker import build_context
    finally:
        sys.path.pop(0)
    build_context(tmp_path)
    assert (tmp_path / 'app.py').is_file() and (tmp_path / 'advit' / 'train.py').is_file()
    assert (tmp_path / 'assets' / 'examples').is_dir()
    for left_out in ('tests', 'runs', '.ci', 'benchmarks/results'):
        assert not (tmp_path / left_out).exists(), left_out
