"""Run the Dockerfile's steps without Docker, as an unprivileged user, and reach the app over HTTP.

No Docker engine runs on the project's machines, so this plays the image build as far as a
machine can:

- the build context: a clean copy of the repository's tracked files, filtered by ``.dockerignore``;
- the base image's Python: an interpreter of the ``FROM python:X.Y`` version that the image's user
  can run, standing as ``python`` where the base image has ``/usr/local/bin``;
- the image's user: ``RUN useradd --uid N NAME`` maps to this machine's account with uid N (a Space
  runs as uid 1000), whose home (``/home/NAME`` in the image) is a fresh temporary folder;
- the container's own ``/tmp``: a fresh folder, as ``TMPDIR``;
- each ``ENV``, ``WORKDIR``, ``COPY`` (``--chown`` honoured) and ``RUN`` in order, every ``RUN``
  and the ``CMD`` as that account with only the image's environment (``env -i``): the
  virtualenv is created fresh and ``pip install`` fills it for real, from the package index;
- then ``CMD``, and it checks that the app answers on the exposed port with ADViT Studio and its
  API, from a process of that uid.

Run it as root (it becomes the account) or as an unprivileged user (it stays that user); no step
ever runs as root. A full install downloads and unpacks about 6 GB (torch with its CUDA libraries,
as on a Space) and takes a few minutes.

    python scripts/check_docker.py [--port 7860] [--python /usr/bin/python3.11] [--keep]
"""
from __future__ import annotations

import argparse
import fnmatch
import json
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
# python:3.11-slim's PATH; its interpreter lives in /usr/local/bin, which the base-bin folder stands for.
IMAGE_PATH = '/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin'


class CheckError(Exception):
    """The image cannot be played here, or a step failed."""


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


def dockerignore_patterns() -> list[str]:
    """The patterns of the repository's ``.dockerignore``."""
    return [p.strip() for p in (REPO / '.dockerignore').read_text().splitlines() if p.strip() and not p.startswith('#')]


def dockerignored(name: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore``'s ``patterns`` leave the file ``name`` (relative to the context) out: a pattern
    matches the file or a folder above it; ``**/`` at its start matches at any depth.

    Args:
        name: A file's path in the build context, with ``/``.
        patterns: ``dockerignore_patterns()``.
    """
    parts = Path(name).parts
    paths = [(start, '/'.join(parts[start:end])) for end in range(1, len(parts) + 1) for start in range(end)]
    return any(fnmatch.fnmatch(path, pattern.removeprefix('**/'))
               for pattern in patterns for start, path in paths if start == 0 or pattern.startswith('**/'))


def build_context(target: Path) -> None:
    """The repository's tracked files (a Space builds from its git repository), less what ``.dockerignore``
    leaves out."""
    patterns = dockerignore_patterns()
    files = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if not dockerignored(name, patterns) and (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r'\$\{?(\w+)\}?', lambda m: env.get(m.group(1), ''), text)


def image_account(steps: list[tuple[str, str]]) -> pwd.struct_passwd:
    """This machine's account that plays the image's user: the uid of ``useradd --uid``, or this process's."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())  # already unprivileged: steps run as this user
    useradd = next((rest for keyword, rest in steps if keyword == 'RUN' and rest.startswith('useradd')), '')
    uid = re.search(r'(?:--uid|-u)\s+(\d+)', useradd)
    if uid is None:
        raise CheckError('the Dockerfile creates no user with a fixed uid (useradd --uid): a Space needs uid 1000')
    try:
        account = pwd.getpwuid(int(uid.group(1)))
    except KeyError:
        raise CheckError(f'this machine has no account with uid {uid.group(1)} to play the image\'s user') from None
    if account.pw_uid == 0:
        raise CheckError('the image\'s user is root')
    return account


def as_account(account: pwd.struct_passwd, env: dict[str, str], command: list[str]) -> list[str]:
    """``command`` run as ``account`` with exactly ``env`` (nothing inherited from this process)."""
    switch = ['runuser', '-u', account.pw_name, '--'] if os.geteuid() == 0 else []
    return [*switch, 'env', '-i', *(f'{k}={v}' for k, v in env.items()), *command]


def base_python(version: str, account: pwd.struct_passwd, wanted: str | None) -> str:
    """An interpreter of ``version`` with venv that ``account`` can run: the base image's Python."""
    candidates = [wanted] if wanted else [shutil.which(f'python{version}'), f'/usr/bin/python{version}',
                                          sys.executable]
    for candidate in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        probe = as_account(account, {'PATH': IMAGE_PATH}, [candidate, '-c', (
            'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2])')])
        result = subprocess.run(probe, capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip() == version:
            return candidate
    raise CheckError(f'no Python {version} with venv that {account.pw_name} can run '
                     f'(tried {", ".join(c for c in candidates if c)}): pass --python')


def owned_by(path: Path, account: pwd.struct_passwd) -> None:
    """Give ``path`` and everything under it to ``account`` (COPY --chown, the user's home)."""
    if os.geteuid() != 0:
        return
    for item in [path, *path.rglob('*')]:
        os.lchown(item, account.pw_uid, account.pw_gid)


def process_uid(pid: int) -> int:
    """The real uid of a running process (Linux)."""
    with open(f'/proc/{pid}/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('Uid:'))


def serving_pid(session: int, command: list[str]) -> int | None:
    """The process of the CMD's session that runs ``command`` (not the ``runuser`` above it)."""
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                if (os.getsid(int(entry.name)) == session
                        and (entry / 'cmdline').read_text().split('\0')[:len(command)] == command):
                    return int(entry.name)
            except OSError:
                continue
    return None


def play(args: argparse.Namespace, root: Path) -> int:
    """Build from the Dockerfile in ``root``, start the app, and check it over HTTP."""
    steps = instructions(REPO / 'Dockerfile')
    account = image_account(steps)
    context, home, base_bin, tmp = root / 'context', root / 'home', root / 'base-bin', root / 'tmp'
    for folder in (context, home, base_bin, tmp):
        folder.mkdir()
    tmp.chmod(0o1777)
    build_context(context)
    # A container has its own /tmp: this machine's may hold other users' files (gradio's cache, say).
    env = {'PATH': f'{base_bin}:{IMAGE_PATH}', 'LANG': 'C.UTF-8', 'TMPDIR': str(tmp)}
    image_home, workdir, server = '/', root, None
    who = f'{account.pw_name}, uid {account.pw_uid}'
    try:
        for keyword, rest in steps:
            if keyword == 'FROM':
                version = re.search(r'python:(\d+\.\d+)', rest)
                if version is None:
                    raise CheckError(f'FROM {rest}: only python:X.Y base images can be played here')
                python = base_python(version.group(1), account, args.python)
                for name in ('python', 'python3', f'python{version.group(1)}'):
                    (base_bin / name).symlink_to(python)
                print(f'FROM {rest}: Python {version.group(1)} is {python}')
            elif keyword == 'USER':
                image_home = f'/home/{rest}'
                owned_by(home, account)
                print(f'USER {rest}: played by {who}; {image_home} is {home}')
            elif keyword == 'ENV':
                for item in shlex.split(rest):
                    key, _, value = item.partition('=')
                    env[key] = expand(value, env).replace(image_home, str(home))
            elif keyword == 'WORKDIR':
                workdir = Path(expand(rest, env).replace(image_home, str(home)))
                workdir.mkdir(parents=True, exist_ok=True)
                owned_by(workdir, account)
            elif keyword == 'COPY':
                options = [part for part in shlex.split(rest) if part.startswith('--')]
                *sources, target = [part for part in shlex.split(rest) if not part.startswith('--')]
                destination = workdir / target
                for source in sources:
                    path = context / source
                    if path.is_dir():
                        shutil.copytree(path, destination, dirs_exist_ok=True)
                    else:
                        shutil.copy2(path, destination / path.name if destination.is_dir() else destination)
                if any(option.startswith('--chown') for option in options):
                    owned_by(destination, account)
            elif keyword == 'RUN':
                if rest.startswith('useradd'):
                    print(f'RUN {rest}: played by this machine\'s {who}')
                    continue
                print(f'RUN {rest}  (as {who})', flush=True)
                if subprocess.run(as_account(account, env, ['bash', '-c', rest]), cwd=workdir).returncode:
                    raise CheckError(f'RUN {rest} failed')
            elif keyword == 'EXPOSE':
                env['GRADIO_SERVER_PORT'] = str(args.port)  # the image's port, moved if asked
                print(f'EXPOSE {rest}: served on {args.port} here')
            elif keyword == 'CMD':
                command = json.loads(rest) if rest.startswith('[') else shlex.split(rest)
                print(f'CMD {command}  (as {who})', flush=True)
                server = subprocess.Popen(as_account(account, env, command), cwd=workdir, start_new_session=True)
        if server is None:
            raise CheckError('the Dockerfile has no CMD')
        return reach(server, command, args.port)
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


def reach(server: subprocess.Popen, command: list[str], port: int) -> int:
    """Wait for the app's page, then check it, its API, and the uid that serves it."""
    url = f'http://127.0.0.1:{port}'
    deadline = time.time() + 180
    while True:
        try:
            page = urllib.request.urlopen(url, timeout=3).read().decode()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise CheckError('the app did not answer') from None
            time.sleep(1)
    info = urllib.request.urlopen(f'{url}/gradio_api/info', timeout=10).read().decode()
    app_pid = serving_pid(server.pid, command)
    uid = process_uid(app_pid) if app_pid else None
    ok = 'ADViT Studio' in page and '/attention' in info and '/compare' in info and uid not in (None, 0)
    print(f'{url}: {"OK" if ok else "FAILED"}: the page is ADViT Studio and serves /attention and /compare, '
          f'from a process of uid {uid}')
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=7860)
    parser.add_argument('--python', help='the interpreter that plays the base image\'s Python')
    parser.add_argument('--keep', action='store_true', help='keep the temporary folder')
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix='advit-docker-'))
    root.chmod(0o755)  # the image's user reaches its home and the base Python's stand-in through it
    try:
        return play(args, root)
    except CheckError as err:
        print(f'FAILED: {err}', file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f'kept {root}')
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
