"""The real app as a server process (``python app.py`` on a free local port), for tests and benchmarks.

Benchmarks import it too (``benchmarks/app_latency.py``): it needs nothing from pytest.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class AppServer:
    """``python app.py`` in its own process group, bound to 127.0.0.1 (unless ``GRADIO_SERVER_NAME`` is
    given) on a free port, its output in ``log``.

    Args:
        log: The file the server's stdout and stderr go to.
        app: The app to run (another checkout's, to compare versions); default this one's.
        env: More environment for the server (``ADVIT_CHECKPOINTS=...``).
    """

    def __init__(self, log: Path, app: Path = REPO / 'app.py', **env: str) -> None:
        port = free_port()
        self.url, self.log_path = f'http://127.0.0.1:{port}', Path(log)
        environment = {**os.environ, 'GRADIO_SERVER_NAME': '127.0.0.1', 'GRADIO_SERVER_PORT': str(port), **env}
        with open(self.log_path, 'wb') as out:
            self.process = subprocess.Popen([sys.executable, str(app)], cwd=Path(app).parent, env=environment,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds until the app answers HTTP; raises with the server's log if it exits or times out."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f'app.py exited with {self.process.returncode}:\n{self.log_tail()}')
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f'app.py did not answer within {timeout_s:.0f} s:\n{self.log_tail()}')

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output."""
        return self.log_path.read_text(errors='replace')[-chars:]

    def stop(self) -> None:
        """Terminate the server's process group (kill it if it does not exit in 20 s)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> 'AppServer':
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def raw_call(url: str, endpoint: str, data: str, image: Path | None = None) -> str:
    """One call to the app's HTTP API with the JSON list of inputs ``data`` as written (``NaN``, ``Infinity``:
    what a browser or a script may send, and gradio_client refuses to); ``IMAGE`` in it stands for ``image``,
    uploaded first. Returns the server's answer stream, its error message or its output; a call refused before
    it is queued (a validator's verdict, an unknown endpoint) as ``HTTP <status>: <body>``."""
    import json
    import httpx
    with httpx.Client(base_url=url, timeout=120) as http:
        if image is not None:
            with open(image, 'rb') as file:
                [path] = http.post('/gradio_api/upload', files={'files': (image.name, file, 'image/png')}).json()
            data = data.replace('IMAGE', json.dumps({'path': path, 'meta': {'_type': 'gradio.FileData'}}))
        queued = http.post(f'/gradio_api/call/{endpoint}', content='{"data": ' + data + '}',
                           headers={'Content-Type': 'application/json'})
        if queued.status_code != 200:
            return f'HTTP {queued.status_code}: {queued.text}'
        return http.get(f'/gradio_api/call/{endpoint}/{queued.json()["event_id"]}').text


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, such as the server's file cache (a file the server removes
    while it is counted is skipped)."""
    total = 0
    for path in Path(folder).rglob('*'):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            pass
    return total


@contextlib.contextmanager
def running_app(log: Path, **env: str) -> Iterator[str]:
    """Start app.py with extra environment, wait until it serves, yield its URL, stop it."""
    with AppServer(log, **env) as server:
        server.wait_until_ready()
        yield server.url
