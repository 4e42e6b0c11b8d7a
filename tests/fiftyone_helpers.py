"""FiftyOne for the tests: its database and plugins in a temporary folder, no tracking, no progress bars."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest


@contextlib.contextmanager
def fiftyone_env(root: Path) -> Iterator[SimpleNamespace]:
    """``SimpleNamespace(root, env, fo, made, tag)``; at the end the datasets made meanwhile are deleted.

    Every FiftyOne process on a machine shares the first database service started, so the datasets of
    other processes are left alone: only those new since the context opened (and those listed in
    ``made``) go. ``tag`` makes dataset names unique to one run.
    """
    env = {"FIFTYONE_DATABASE_DIR": str(root / "db"), "FIFTYONE_DO_NOT_TRACK": "true",
           "FIFTYONE_DATABASE_VALIDATION": "false", "FIFTYONE_PLUGINS_DIR": str(root / "plugins"),
           "FIFTYONE_SHOW_PROGRESS_BARS": "false"}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    fo = pytest.importorskip("fiftyone")
    fo.config.database_dir = env["FIFTYONE_DATABASE_DIR"]  # in case FiftyOne was imported before
    fo.config.plugins_dir = env["FIFTYONE_PLUGINS_DIR"]
    fo.config.show_progress_bars = False
    before = set(fo.list_datasets())
    ns = SimpleNamespace(root=root, env=env, fo=fo, made=[], tag=uuid.uuid4().hex[:8])
    try:
        yield ns
    finally:
        for name in (set(fo.list_datasets()) - before) | set(ns.made):
            if fo.dataset_exists(name):
                fo.delete_dataset(name)
        mp.undo()
