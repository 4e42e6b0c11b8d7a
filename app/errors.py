"""The app's two kinds of failure: a user's mistake (a one-line message) and everything else (a bug).

``UserError`` is raised where the app detects a mistake of the person using it: nothing selected, an
unknown class, a bad export name, no export to fine-tune on... The library's errors about bad input
files (``ImageError``, ``DatasetError``, ``CheckpointError``) are user errors too: the message names
the file and the problem. ``USER_ERRORS`` lists them; the workbench shows them as they are.

Anything else that escapes an action (a ``KeyError``, an ``AssertionError``, a plain ``ValueError``
raised by a bug deep in the code) is an internal error: it is logged with its traceback and the page
says "Internal error" and where the log is (``internal_error_message``), so a bug never looks like a
user's mistake.

The bottom layer of ``app``: it imports nothing of the app.
"""

from __future__ import annotations

from pathlib import Path

from m2f_core.data.errors import DatasetError
from m2f_core.errors import CheckpointError
from m2f_core.images import ImageError

__all__ = ["USER_ERRORS", "UserError", "internal_error_message", "is_user_error"]


class UserError(ValueError):
    """A mistake of the user's, detected by the app; ``str(err)`` is the one-line message to show."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ImageError, DatasetError, CheckpointError)


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is a user's mistake (shown as its message) rather than a bug (logged, shown as internal)."""
    return isinstance(e, USER_ERRORS)


def internal_error_message(e: BaseException, log_path: str | Path | None) -> str:
    """The one line the page shows for an unexpected failure: what failed, and where its traceback is."""
    text = " ".join(str(e).split()) or "no message"
    where = f"see {log_path}" if log_path else "see the server log (stderr of launch.py)"
    return f"Internal error: {type(e).__name__}: {text[:300]} ({where})"
