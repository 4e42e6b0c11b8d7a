"""Where the programs write exports and fine-tuning runs: ``M2F_CORRECTIONS_DIR`` / ``M2F_RUNS_DIR``, else the
current folder, never the installed package.

Why a module of its own: the FiftyOne CLI and the FiftyOne plugin (which runs inside the App server, whose
working folder is FiftyOne's own package) must agree on these folders, and neither may write into a
package folder of an installed project.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CORRECTIONS_ENV", "RUNS_ENV", "corrections_dir", "runs_dir", "workspace_env"]

CORRECTIONS_ENV = "M2F_CORRECTIONS_DIR"
RUNS_ENV = "M2F_RUNS_DIR"
_DEFAULTS = {CORRECTIONS_ENV: Path("datasets") / "corrections", RUNS_ENV: Path("runs")}  # as launch.py's
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding app/, m2f_core/, training/


def _inside_package(folder: Path) -> bool:
    """True for a folder of installed code: site-packages, or one of this project's packages."""
    if any(part in ("site-packages", "dist-packages") for part in folder.parts):
        return True
    return any(folder == _PACKAGE_ROOT / p or _PACKAGE_ROOT / p in folder.parents for p in ("app", "m2f_core",
                                                                                            "training"))


def _base() -> Path:
    """The current folder, or ``~/m2f-workbench`` when the current folder is installed code (the App server's)."""
    cwd = Path.cwd().resolve()
    return Path.home() / "m2f-workbench" if _inside_package(cwd) else cwd


def _folder(env: str) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser().resolve() if value else _base() / _DEFAULTS[env]


def corrections_dir() -> Path:
    """Root of the export folders: ``$M2F_CORRECTIONS_DIR``, else ``./datasets/corrections`` (launch.py's default)."""
    return _folder(CORRECTIONS_ENV)


def runs_dir() -> Path:
    """Root of the fine-tuning runs: ``$M2F_RUNS_DIR``, else ``./runs``."""
    return _folder(RUNS_ENV)


def workspace_env() -> dict[str, str]:
    """Both folders as absolute paths, for a process started elsewhere (the FiftyOne App server) to inherit."""
    return {CORRECTIONS_ENV: str(corrections_dir()), RUNS_ENV: str(runs_dir())}
