"""Run the Dockerfile's steps without Docker, and reach the app it starts over HTTP.

No Docker engine runs on the project's machines, so this plays the image build as far as a
machine can: a clean copy of the repository filtered by ``.dockerignore`` as the build context,
a fresh user site for the base image's Python, each ``ENV``, ``WORKDIR``, ``COPY`` and
``RUN`` in order (``RUN useradd`` excepted: users are the host's), then ``CMD``, and it checks
that the app answers on the exposed port with ADViT Studio and its API.

    python scripts/check_docker.py [--port 7860] [--keep]

The image installs with ``pip install --user``; here that goes to a fresh, empty user site in a
temporary home (the image's home, ``/home/user``, is mapped there), on this machine's Python,
whose own packages satisfy most requirements: the ``pip install`` steps run for real, and
download only what is missing.
Steps run as the Dockerfile's ``USER`` when this machine has that user and it can run this
interpreter; otherwise as the current user, and the report says so.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_HOME = '/home/user'  # the Space user's home in the image


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    text = re.sub(r'\\\n', ' ', dockerfile.read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            keyword, _, rest = line.partition(' ')
            steps.append((keyword.upper(), rest.strip()))
    return steps


def build_context(target: Path) -> None:
    """The repository's tracked files, less what ``.dockerignore`` leaves out."""
    patterns = [p.strip() for p in (REPO / '.dockerignore').read_text().splitlines() if p.strip()
                and not p.startswith('#')]
    files = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        parts = Path(name).parts
        ignored = any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name, p.removeprefix('**/'))
                      or any(fnmatch.fnmatch('/'.join(parts[:i]), p.removeprefix('**/')) for i in range(1, len(parts)))
                      for p in patterns)
        if not ignored and (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r'\$\{?(\w+)\}?', lambda m: env.get(m.group(1), ''), text)


def runner(user: str | None) -> tuple[list[str], str]:
    """The command prefix that runs a step as ``user``, and who that is."""
    if user is None or os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(user)
    except KeyError:
        return [], f'root (this machine has no user {user!r})'
    probe = subprocess.run(['runuser', '-u', user, '--', sys.executable, '-c', 'pass'], capture_output=True)
    if probe.returncode != 0:
        return [], f'root ({user!r} cannot run {sys.executable} here)'
    return ['runuser', '-u', user, '--'], user


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=7860)
    parser.add_argument('--keep', action='store_true', help='keep the temporary folder')
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix='advit-docker-'))
    context, home = root / 'context', root / 'home'
    context.mkdir()
    home.mkdir()
    build_context(context)
    env = {'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}', 'HOME': str(home), 'LANG': 'C.UTF-8',
           'PIP_DISABLE_PIP_VERSION_CHECK': '1'}
    workdir, user, server, port = home, None, None, None
    try:
        for keyword, rest in instructions(REPO / 'Dockerfile'):
            if keyword == 'FROM':
                wanted = re.search(r'python:(\d+\.\d+)', rest)
                here = f'{sys.version_info.major}.{sys.version_info.minor}'
                print(f'FROM {rest}: Python {here} here' + ('' if wanted and wanted.group(1) == here else ' (differs!)'))
            elif keyword == 'USER':
                user = rest
            elif keyword == 'ENV':
                for item in shlex.split(rest):
                    key, _, value = item.partition('=')
                    env[key] = expand(value, env).replace(IMAGE_HOME, str(home))
            elif keyword == 'WORKDIR':
                workdir = Path(expand(rest, env).replace(IMAGE_HOME, str(home)))
                workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == 'COPY':
                sources_and_target = [part for part in shlex.split(rest) if not part.startswith('--')]
                *sources, target = sources_and_target
                destination = workdir / target if not target.startswith('/') else Path(expand(target, env))
                for source in sources:
                    path = context / source
                    if path.is_dir():
                        shutil.copytree(path, destination, dirs_exist_ok=True)
                    else:
                        shutil.copy2(path, destination / path.name if destination.is_dir() else destination)
            elif keyword == 'RUN':
                if rest.startswith('useradd'):
                    print(f'RUN {rest}: skipped (the host\'s users are used)')
                    continue
                prefix, who = runner(user)
                print(f'RUN {rest}  (as {who})', flush=True)
                subprocess.run([*prefix, 'env', *(f'{k}={v}' for k, v in env.items()), 'bash', '-c', rest],
                               cwd=workdir, check=True)
            elif keyword == 'EXPOSE':
                port = int(rest.split('/')[0])
            elif keyword == 'CMD':
                command = shlex.split(rest) if not rest.startswith('[') else __import__('json').loads(rest)
                env['GRADIO_SERVER_PORT'] = str(args.port)  # the image's port, moved if asked
                prefix, who = runner(user)
                print(f'CMD {command} on port {args.port} (EXPOSE {port}; as {who})', flush=True)
                server = subprocess.Popen([*prefix, 'env', *(f'{k}={v}' for k, v in env.items()), *command],
                                          cwd=workdir, start_new_session=True)
        url = f'http://127.0.0.1:{args.port}'
        deadline = time.time() + 180
        while True:
            try:
                page = urllib.request.urlopen(url, timeout=3).read().decode()
                break
            except OSError:
                if server is None or server.poll() is not None or time.time() > deadline:
                    print('FAILED: the app did not answer', file=sys.stderr)
                    return 1
                time.sleep(1)
        info = urllib.request.urlopen(f'{url}/gradio_api/info', timeout=10).read().decode()
        ok = 'ADViT Studio' in page and '/attention' in info and '/compare' in info
        print(f'{url}: {"OK" if ok else "FAILED"}: the page is ADViT Studio and serves /attention and /compare')
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
