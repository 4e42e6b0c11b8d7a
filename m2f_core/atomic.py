"""Crash-safe writes: atomic file replacement, atomic folder swaps and cleanup after killed writers.

Why a module of its own: this is the one mechanism behind every write of data, exports and
checkpoints (``atomic_write``), and the temporary-name scheme it shares with ``replace_dir`` and
``remove_stale_temporaries`` must stay in one place for the cleanup to recognise its own files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write", "atomic_write_bytes", "atomic_write_json", "make_temp_dir", "remove_stale_temporaries",
    "replace_dir", "temp_prefix",
]

# Hidden temporaries of the atomic writers: ``.<target>.tmp-<pid>-<random>`` (being written) and
# ``.<target>.old-<pid>-<random>`` (a previous version moved aside during a swap). The pid tells the
# leftovers of a killed writer from the work of a running one.
_TEMP_RE = re.compile(r"\.(?P<target>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[a-z0-9_]+")


def temp_prefix(target_name: str, kind: str = "tmp") -> str:
    """Name prefix of this process's temporaries for ``target_name`` (``kind``: tmp or old)."""
    return f".{target_name}.{kind}-{os.getpid()}-"


def make_temp_dir(folder: str | Path, target_name: str, kind: str = "tmp") -> Path:
    """A new hidden folder in ``folder`` named after ``target_name`` (see ``temp_prefix``)."""
    return Path(tempfile.mkdtemp(dir=folder, prefix=temp_prefix(target_name, kind)))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it there: never call a Windows process dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Clean up after writers that were killed mid-write in ``folder``; returns what was handled.

    Only entries of the writers' own pattern (``.<target>.tmp-<pid>-*``, ``.<target>.old-*``)
    whose process no longer runs are touched. A ``.old`` entry is a previous good version moved
    aside during a swap: it is put back when ``<target>`` is missing, deleted otherwise.
    """
    folder = Path(folder)
    handled: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return handled
    for entry in entries:
        m = _TEMP_RE.fullmatch(entry.name)
        if m is None or _process_alive(int(m["pid"])):
            continue
        target = folder / m["target"]
        try:
            if m["kind"] == "old" and not os.path.lexists(target):
                os.rename(entry, target)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue  # another process cleaned it first, or it is not ours to remove
        handled.append(entry)
    return handled


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``. An existing ``final`` is first moved aside under
    the ``old`` temporary name and put back if the second rename fails; a process killed between the
    two renames leaves it for ``remove_stale_temporaries`` to restore. The rename fails, never
    merges, if another process created ``final`` meanwhile."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.rename(tmp, final)
        return
    old = make_temp_dir(final.parent, final.name, kind="old")
    os.rmdir(old)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder, which is
    fsynced and renamed over ``path`` (mode kept, 0644 for a new file), then the folder is fsynced.

    A reader (or a crash) never sees a half-written file: it sees the old file or the new one.
    The one mechanism behind every write of data, exports and checkpoints. A process killed here
    leaves a hidden ``.<name>.tmp-<pid>-*`` file, which ``remove_stale_temporaries`` cleans.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """``atomic_write`` of bytes."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``atomic_write_bytes`` of compact JSON (numpy scalars are converted)."""
    text = json.dumps(data, separators=(",", ":"), default=_json_default)
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("ascii")
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
