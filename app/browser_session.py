"""What one browser session owns (``BrowserSession``) and what the page shows after an action (``Screen``).

Why a module of its own: these plain dataclasses are shared by ``Workbench`` and its parts
(``app.shared_model``, ``app.edit_engine``, ``app.loop_controller``) and by the Gradio and FiftyOne
layers, which only read them; keeping them apart from the actions avoids import cycles.
``unique_name`` (a free file or run name), ``short_label`` (weights for the status line) and
``milliseconds`` (timings) are the small helpers those modules share.

Not to be confused with ``EditSession`` (``app.editing``): the editable annotation of one image. A
browser session holds a workspace of images, each with its own ``EditSession``.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .canvas_sync import CanvasSync
from .state import WorkspaceState

if TYPE_CHECKING:
    from m2f_core.structures import Candidate

    from .wand import WandClick

__all__ = ["BrowserSession", "Screen", "milliseconds", "short_label", "unique_name"]


@dataclass
class Screen:
    """Everything the page shows after an action, as plain values.

    ``canvas`` is the canvas payload (``app.canvas_sync``: what changed since the browser's last one;
    ``{"empty": True}`` when no image is open)."""

    canvas: dict
    rows: list[list]
    status: str
    relabel: list[tuple[str, int]]
    relabel_value: int | None
    position: str
    export_file: str | None = None


@dataclass
class BrowserSession:
    """What one browser session owns (its images, selection, view options, counters).
    Created per session by ``Workbench.new_session``."""

    workspace: WorkspaceState
    upload_dir: Path
    selected: list[int] = field(default_factory=list)  # in click order; the first keeps its class on merge
    selection_seq: int = 0  # the canvas's number of its last selection (its answers carry it back)
    candidates: list[Candidate] = field(default_factory=list)  # Recover's offer at the last clicked pixel
    wand: WandClick | None = None  # the magic wand's last click (its region is previewed until Enter)
    wand_threshold: float = 0.5
    uncertainty: bool = False  # the canvas shows the model's uncertainty (sent once per image)
    ground_truth: bool = False  # the canvas may show the dataset's ground truth (sent once per image)
    full_photo: bool = False  # the canvas zoomed in past the display copy: send the photo at full size
    sync: CanvasSync = field(default_factory=CanvasSync)  # what the browser's canvas holds
    model_runs: int = 0
    message: str = ""  # the last action's message (an action that changes nothing keeps it)
    timings: dict[str, float] = field(default_factory=dict)  # ms of the last model run / render / edit
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __deepcopy__(self, memo):  # gr.State deep-copies its default; a session is never shared or copied
        return self


def unique_name(stem: str, suffix: str, taken: set[str]) -> str:
    """``stem + suffix``, or ``stem-2 + suffix``, ``stem-3`` ... whichever is not in ``taken``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._") or "image"
    safe = safe[:80]
    for n in itertools.count(1):
        name = f"{safe}{'' if n == 1 else f'-{n}'}{suffix}"
        if name not in taken:
            return name
    raise AssertionError("unreachable")


def short_label(label: str) -> str:
    """A weights label for the status line: a path as its last three parts (``runs/ft/model``)."""
    parts = Path(label).parts
    return str(Path(*parts[-3:])) if "/" in label and len(parts) > 3 else label


def milliseconds(seconds: float) -> float:
    """Seconds as milliseconds rounded to 0.1 (the status line's timings)."""
    return round(seconds * 1000.0, 1)
