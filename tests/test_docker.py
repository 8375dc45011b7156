"""The Dockerfile's steps, played without Docker (scripts/check_docker.py), end in a serving app."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from app_server import free_port
from conftest import REPO

pytestmark = pytest.mark.slow  # a fresh virtualenv and a served app: `make test`, not `make check`


def test_dockerfile_steps_install_and_start_the_app_as_an_unprivileged_user():
    """A fresh virtualenv filled by the image's own pip steps, as the uid-1000 account: 5.9 GB, 75 s here."""
    result = subprocess.run([sys.executable, 'scripts/check_docker.py', '--port', str(free_port())], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    steps = re.findall(r'^RUN (.+?)  \(as (\S+), uid (\d+)\)$', result.stdout, flags=re.M)
    assert [step for step, _, _ in steps] == [
        'python -m venv $VIRTUAL_ENV', 'pip install --no-cache-dir -r requirements.txt',
        'pip install --no-cache-dir --no-deps .']
    # As root the image's uid (useradd --uid in the Dockerfile); as an unprivileged user, that user.
    image_uid = re.search(r'useradd .*--uid (\d+)', (REPO / 'Dockerfile').read_text()).group(1)
    expected = image_uid if os.geteuid() == 0 else str(os.geteuid())
    assert {uid for _, _, uid in steps} == {expected} != {'0'}
    served = re.search(r'OK: the page is ADViT Studio and serves /attention and /compare, from a process of uid (\d+)',
                       result.stdout)
    assert served and served.group(1) == steps[0][2]


def test_dockerignore_keeps_runs_caches_and_tests_out_of_the_image(tmp_path):
    sys.path.insert(0, str(REPO / 'scripts'))
    try:
        from check_docker import build_context, dockerignore_patterns, dockerignored
    finally:
        sys.path.pop(0)
    build_context(tmp_path)
    assert (tmp_path / 'app.py').is_file() and (tmp_path / 'advit' / 'training' / 'train.py').is_file()
    assert (tmp_path / 'assets' / 'examples').is_dir()
    for left_out in ('tests', 'runs', '.ci', 'benchmarks/results'):
        assert not (tmp_path / left_out).exists(), left_out

    # A local `docker build .` also sends what git does not track: a checkout's runs, caches and test debris.
    patterns = dockerignore_patterns()
    for debris in ('runs/seeds/seed1/vit/last.safetensors', '.hypothesis/examples/x', '.benchmarks/Linux/0001.json',
                   '.pytest_cache/v/x', 'advit/__pycache__/train.cpython-311.pyc', '.cache/timm-1.0.29/timm/x.py',
                   'advit.egg-info/PKG-INFO', '.git/HEAD', 'benchmarks/results/x.json'):
        assert dockerignored(debris, patterns), debris
    for kept in ('app.py', 'advit/training/train.py', 'checkpoints/teacher.safetensors', 'assets/examples/ship_8000.png',
                 'benchmarks/README.md', 'requirements.txt'):
        assert not dockerignored(kept, patterns), kept
