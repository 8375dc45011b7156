"""Atomic file writes (a reader sees the old file or the new one, never a torn one), JSON read back, and where the project lies."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

# The repository root: the app's default folders, and the working directory of the jobs it launches.
REPO = Path(__file__).resolve().parents[2]  # advit/core/io.py: the repository root


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    Args:
        target: The file to write. On an exception the temporary file is removed and
            ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    fd, tmp = tempfile.mkstemp(prefix=f'.{target.name}.{os.getpid()}.', suffix='.tmp', dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, 'rb') as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode an ordinary write would have.
        os.chmod(tmp_path, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _remove_orphans(target: Path) -> None:
    """Delete temporary files of ``target`` left by writers that were killed (their process is gone)."""
    for stale in target.parent.glob(f'.{target.name}.*.tmp'):
        pid = stale.name[len(target.name) + 2:].split('.', 1)[0]
        if pid.isdigit() and not Path(f'/proc/{pid}').exists():
            stale.unlink(missing_ok=True)


def write_json(target: str | Path, payload: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + '\n')


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file (a run folder's ``status.json`` or ``config.json``, an evaluation, a job's record), or
    None where it is missing, unreadable, torn by a kill or not an object: readers go on as if not written yet."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('Umask:'):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
