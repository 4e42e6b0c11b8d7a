"""The one error type of the dataset readers and writers.

Every problem with a dataset file (missing, not JSON, wrong keys or types, ids that do not match)
is a ``DatasetError``: a ``ValueError`` whose message is a single line naming the file and the
problem, so that CLIs can print it as is instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """Malformed or missing dataset input; ``str(err)`` is one line: ``"<file>: <problem>"``."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = " ".join(str(problem).split())  # one line, whatever the cause said
        super().__init__(f"{self.source}: {self.problem}")
