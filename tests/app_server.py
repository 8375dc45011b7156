"""The real app, launched as a server process for tests (``python app.py`` on a free port)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(log: Path, **env: str) -> Iterator[str]:
    """Start app.py with extra environment (bound to 127.0.0.1 unless ``GRADIO_SERVER_NAME`` is given),
    wait until it serves, yield its URL, stop it."""
    port = free_port()
    environment = {**os.environ, 'GRADIO_SERVER_NAME': '127.0.0.1', 'GRADIO_SERVER_PORT': str(port), **env}
    with open(log, 'w') as out:
        process = subprocess.Popen([sys.executable, 'app.py'], cwd=REPO, env=environment, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f'the app exited with {process.returncode}:\n{log.read_text()[-3000:]}')
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f'the app did not answer in time:\n{log.read_text()[-3000:]}') from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
